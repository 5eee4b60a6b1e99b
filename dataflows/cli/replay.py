"""``fraudflow replay``: the dataflow on recorded files (a backtest)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dataflows.cli.common import REVIEW_DAYS, existing_file, non_negative_days, positive_hours, positive_int
from dataflows.errors import FraudflowError

__all__ = ["register"]

log = logging.getLogger("fraudflow")


def cmd_replay(args: argparse.Namespace) -> int:
    from bytewax.run import cli_main

    from connectors.files import truncate
    from dataflows.fraud import build_flow
    from dataflows.runtime import tune_gc
    from dataflows.settings import Settings, SettingsError

    tune_gc()
    if args.capacity < 0:
        raise FraudflowError(f"--capacity: must be >= 0, got {args.capacity}")
    desk = None
    if args.analysts:
        from learners.analysts import DAY, AnalystConfig, AnalystDesk, read_frauds

        desk = AnalystDesk(AnalystConfig(args.capacity, args.delay_hours * 3600.0, args.review_days * DAY),
                           read_frauds(args.labels))
    try:
        settings = Settings.from_env().replace(
            source="files", transactions_file=args.transactions, labels_file=args.labels,
            alerts=args.alerts, dlq=args.dlq, scores=args.scores or "", progress=not args.quiet,
            feedback_file=args.feedback or "",
            **({"rules_file": args.rules} if args.rules else {}),
        )
        settings._check_consistency()
        for path in (settings.outputs.alerts, settings.outputs.dlq, settings.outputs.scores):
            truncate(path)
        parts = build_flow(settings, shards=settings.model.shards or args.workers, desk=desk)
    except SettingsError as exc:
        raise FraudflowError(f"bad setting: {exc}") from None
    cli_main(parts.flow, workers_per_process=args.workers)
    if desk is not None and args.verdicts:
        _write_verdicts(args.verdicts, desk)
    if not args.quiet:
        parts.stats.print_summary(settings.outputs)
        if desk is not None:
            print(f"  simulated analysts    {desk.summary()}", file=sys.stderr)
        if settings.outputs.scores:
            print(f"  scores written to     {settings.outputs.scores}", file=sys.stderr)
    return 0



def _write_verdicts(path: str, desk: Any) -> None:
    from connectors.events import verdict_to_json
    from connectors.files import write_jsonl

    write_jsonl(path, (verdict_to_json(v) for v in desk.answered))


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="run the dataflow on recorded files (backtest)",
                       description="Run the fraud dataflow on a transactions file and a labels file merged by "
                                   "event time; the model settings come from FRAUDFLOW_* variables.")
    p.add_argument("transactions", type=existing_file, help="transactions JSONL")
    p.add_argument("labels", type=existing_file, help="labels JSONL")
    p.add_argument("--scores", metavar="FILE", help="write one score per transaction here")
    p.add_argument("--alerts", metavar="FILE", default="fraudflow-output/alerts.jsonl",
                   help="alerts JSONL, - for stdout (default %(default)s)")
    p.add_argument("--dlq", metavar="FILE", default="fraudflow-output/dlq.jsonl",
                   help="dead letters JSONL (default %(default)s)")
    p.add_argument("--feedback", metavar="FILE", type=existing_file,
                   help="analysts' verdicts JSONL (contract feedback), learned as labels at their ts")
    p.add_argument("--analysts", action="store_true",
                   help="simulated analysts inside the loop: the flow's alerts are answered after --delay-hours "
                        "with the truth of LABELS, and the verdicts are learned (one process)")
    p.add_argument("--capacity", type=int, default=100, help="--analysts: cards a day (default %(default)s)")
    p.add_argument("--delay-hours", type=positive_hours, default=4.0,
                   help="--analysts: hours from alert to verdict, event time (default %(default)s)")
    p.add_argument("--review-days", type=non_negative_days, default=REVIEW_DAYS, metavar="D",
                   help="--analysts: a case also answers the card's other transactions from D days before the "
                        "alert up to the verdict, each once (default %(default)g; 0: the alerted transaction only)")
    p.add_argument("--verdicts", metavar="FILE", help="--analysts: also write the verdicts here")
    p.add_argument("--rules", type=existing_file, metavar="FILE",
                   help="rules (YAML or JSON) every model shard applies from the first event (FRAUDFLOW_RULES_FILE)")
    p.add_argument("-w", "--workers", type=positive_int, default=1, help="Bytewax workers (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_replay)
