"""``fraudflow replay``: the dataflow on recorded files (a backtest)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dataflows.cli.common import existing_file, positive_int
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
    try:
        settings = Settings.from_env().replace(
            source="files", transactions_file=args.transactions, labels_file=args.labels,
            alerts=args.alerts, dlq=args.dlq, scores=args.scores or "", progress=not args.quiet,
        )
        settings._check_consistency()
    except SettingsError as exc:
        raise FraudflowError(f"bad setting: {exc}") from None
    for path in (settings.outputs.alerts, settings.outputs.dlq, settings.outputs.scores):
        truncate(path)
    parts = build_flow(settings, shards=settings.model.shards or args.workers)
    cli_main(parts.flow, workers_per_process=args.workers)
    if not args.quiet:
        parts.stats.print_summary(settings.outputs)
        if settings.outputs.scores:
            print(f"  scores written to     {settings.outputs.scores}", file=sys.stderr)
    return 0



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
    p.add_argument("-w", "--workers", type=positive_int, default=1, help="Bytewax workers (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_replay)
