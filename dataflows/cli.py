"""The ``fraudflow`` command line.

    fraudflow simulate --out PREFIX        write a simulated stream as contract JSONL files
    fraudflow replay TX.jsonl LABELS.jsonl run the dataflow on recorded files (backtest)
    fraudflow evaluate SCORES LABELS TX    detection metrics (JSON) and an optional report
    fraudflow settings                     every FRAUDFLOW_* setting with its default

Errors a user can cause (a missing file, a bad setting) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import MISSING, fields
from datetime import date
from pathlib import Path
from typing import Callable, Optional, Sequence

from dataflows.errors import FraudflowError

__all__ = ["main"]

log = logging.getLogger("fraudflow")

UserError = FraudflowError  # the name the commands here and in connectors/ use


def _existing_file(path: str) -> str:
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


# -- simulate ------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from connectors.events import Transaction, label_to_json, transaction_to_json
    from connectors.simulator import Simulation, SimulatorConfig

    try:
        cfg = SimulatorConfig(
            customers=args.customers, terminals=args.terminals, days=args.days, start=args.start,
            seed=args.seed, radius=args.radius, label_delay_days=args.label_delay_days, labels=args.labels,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    prefix = args.out
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tx_path, label_path = f"{prefix}.transactions.jsonl", f"{prefix}.labels.jsonl"
    import msgspec

    enc = msgspec.json.Encoder()
    sim = Simulation(cfg, keep_truth=True)
    n_tx = n_labels = n_fraud = 0
    started = time.monotonic()
    last_day = -1
    with open(tx_path, "wb") as tx_fh, open(label_path, "wb") as label_fh:
        for event in sim.events():
            if isinstance(event, Transaction):
                tx_fh.write(enc.encode(transaction_to_json(event)) + b"\n")
                n_tx += 1
                truth = sim.truth.pop(event.tx_id)
                if truth.is_fraud:
                    n_fraud += 1
                    sim.truth[event.tx_id] = truth  # kept until its label is written
                day = int((event.event_ts - cfg.start_ts) // 86_400)
                if day != last_day and day % 30 == 0:
                    log.info("simulated day %d/%d (%s transactions)", day, cfg.days, f"{n_tx:,}")
                last_day = day
            else:
                doc = label_to_json(event)
                truth = sim.truth.pop(event.tx_id, None)
                if truth is not None and truth.is_fraud:
                    doc["fraud_scenario"] = truth.scenario
                label_fh.write(enc.encode(doc) + b"\n")
                n_labels += 1
    print(json.dumps({
        "transactions": tx_path, "labels": label_path, "n_transactions": n_tx, "n_labels": n_labels,
        "n_frauds": n_fraud, "fraud_share": round(n_fraud / max(n_tx, 1), 5),
        "seconds": round(time.monotonic() - started, 1),
    }))
    return 0


# -- replay --------------------------------------------------------------------------------
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
        raise UserError(f"bad setting: {exc}") from None
    for path in (settings.alerts, settings.dlq, settings.scores):
        truncate(path)
    parts = build_flow(settings, shards=settings.model_shards or args.workers)
    cli_main(parts.flow, workers_per_process=args.workers)
    if not args.quiet:
        parts.stats.print_summary(settings)
        if settings.scores:
            print(f"  scores written to     {settings.scores}", file=sys.stderr)
    return 0


# -- evaluate ------------------------------------------------------------------------------
def _read_jsonl(path: str, pick: Callable[[dict], Optional[tuple]]) -> list[tuple]:
    import msgspec

    dec = msgspec.json.Decoder()
    out = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = pick(dec.decode(line))
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                raise UserError(f"{path}:{lineno}: not a valid record ({exc})") from None
            if row is not None:
                out.append(row)
    return out


def load_evaluation(scores_path: str, labels_path: str, transactions_path: str):
    from datetime import datetime

    from learners.evaluation import from_records

    def ts(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    scores = _read_jsonl(scores_path, lambda d: (d["tx_id"], float(d["score"])))
    frauds = {r[0] for r in _read_jsonl(labels_path, lambda d: (d["tx_id"],) if d["is_fraud"] else None)}
    txs = _read_jsonl(transactions_path, lambda d: (d["tx_id"], d["account_id"], ts(d["ts"])))
    if not scores:
        raise UserError(f"{scores_path}: no scores")
    return from_records(scores, txs, frauds)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from learners.evaluation import evaluate

    data = load_evaluation(args.scores, args.labels, args.transactions)
    test_start = args.test_start or _default_test_start(data)
    result = evaluate(data, test_start, args.test_days, args.delay_days, args.known_lookback_days, args.k)
    runs = {Path(args.scores).stem: (data, result)}
    for other in args.compare or []:
        other_data = load_evaluation(other, args.labels, args.transactions)
        runs[Path(other).stem] = (other_data, evaluate(other_data, test_start, args.test_days, args.delay_days,
                                                       args.known_lookback_days, args.k))
    if args.report:
        from learners.report import write_report

        path = write_report(args.report, runs, test_start, args.test_days, args.delay_days,
                            args.known_lookback_days, args.k)
        result["report"] = str(path)
    if len(runs) > 1:
        result["compare"] = {name: {k: v for k, v in r.items() if not k.endswith("per_day")}
                             for name, (_, r) in runs.items()}
    print(json.dumps(result, indent=2))
    return 0


def _default_test_start(data) -> date:
    """The last full week of the data, after one label delay of training."""
    import numpy as np

    last_day = int(np.max(data.day))
    return date.fromordinal(date(1970, 1, 1).toordinal() + last_day - 6)


# -- settings ------------------------------------------------------------------------------
def cmd_settings(args: argparse.Namespace) -> int:
    from dataflows.settings import PREFIX, Settings

    for f in fields(Settings):
        default = "" if f.default is MISSING else f.default
        if isinstance(default, date):
            default = default.isoformat()
        name = PREFIX + f.name.upper() if f.name != "kafka_options" else PREFIX + "KAFKA_OPT_*"
        print(f"{name:40s} default {default!s:32s} {f.metadata.get('help', '')}")
    return 0


# -- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudflow",
        description="Real-time card-fraud detection with a Bytewax dataflow and River online models.",
        epilog="The flow itself runs with `python -m bytewax.run dataflows.fraud:flow`; "
               "its settings are FRAUDFLOW_* variables (`fraudflow settings` lists them).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("simulate", help="write a simulated stream (transactions and labels) as JSONL",
                       description="Generate transactions and their delayed labels with the handbook's simulator "
                                   "and write PREFIX.transactions.jsonl and PREFIX.labels.jsonl (event-time order).")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix, e.g. data/sim")
    p.add_argument("--customers", type=_positive_int, default=5_000, help="cards (default %(default)s)")
    p.add_argument("--terminals", type=_positive_int, default=10_000, help="merchants (default %(default)s)")
    p.add_argument("--days", type=_positive_int, default=183, help="days to simulate (default %(default)s)")
    p.add_argument("--start", type=_iso_date, default=date(2018, 4, 1), help="first day (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--radius", type=float, default=5.0, help="usable terminal radius (default %(default)s)")
    p.add_argument("--label-delay-days", type=float, default=7.0, help="label delay (default %(default)s)")
    p.add_argument("--labels", choices=("all", "frauds"), default="all",
                   help="a label for every transaction, or for frauds only (default %(default)s)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="run the dataflow on recorded files (backtest)",
                       description="Run the fraud dataflow on a transactions file and a labels file merged by "
                                   "event time; the model settings come from FRAUDFLOW_* variables.")
    p.add_argument("transactions", type=_existing_file, help="transactions JSONL")
    p.add_argument("labels", type=_existing_file, help="labels JSONL")
    p.add_argument("--scores", metavar="FILE", help="write one score per transaction here")
    p.add_argument("--alerts", metavar="FILE", default="fraudflow-output/alerts.jsonl",
                   help="alerts JSONL, - for stdout (default %(default)s)")
    p.add_argument("--dlq", metavar="FILE", default="fraudflow-output/dlq.jsonl",
                   help="dead letters JSONL (default %(default)s)")
    p.add_argument("-w", "--workers", type=_positive_int, default=1, help="Bytewax workers (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("evaluate", help="detection metrics of a scores file (and a report with plots)",
                       description="AUC ROC, average precision and card precision@k over a test window, with the "
                                   "handbook's protocol: cards already known compromised before a test day are left "
                                   "out of that day.")
    p.add_argument("scores", type=_existing_file, help="scores JSONL (from replay --scores)")
    p.add_argument("labels", type=_existing_file, help="labels JSONL (frauds-only files work too)")
    p.add_argument("transactions", type=_existing_file, help="transactions JSONL")
    p.add_argument("--test-start", type=_iso_date, help="first test day (default: the last 7 days of the data)")
    p.add_argument("--test-days", type=_positive_int, default=7, help="test days (default %(default)s)")
    p.add_argument("--delay-days", type=int, default=7, help="label delay of the protocol (default %(default)s)")
    p.add_argument("--known-lookback-days", type=int, default=7,
                   help="frauds this far before the delay gap mark cards known (default %(default)s)")
    p.add_argument("--k", type=_positive_int, default=100, help="cards per day for card precision (default %(default)s)")
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with PNG plots here")
    p.add_argument("--compare", nargs="+", metavar="SCORES", type=_existing_file,
                   help="other scores files to compare side by side")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("settings", help="list every FRAUDFLOW_* setting with its default and meaning")
    p.set_defaults(func=cmd_settings)

    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands() -> list[Callable]:
    """Commands defined next to what they manage (Kafka housekeeping, snapshots)."""
    found = []
    for module_name in ("connectors.kafka_cli", "learners.snapshots_cli", "dataflows.state_cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError as exc:
            if exc.name != module_name:
                raise
            continue
        found.append(module.register)
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"fraudflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # Run the imported module's main: as `python -m dataflows.cli` this file is loaded twice
    # (as __main__ and as dataflows.cli) and commands raise dataflows.cli.UserError.
    from dataflows.cli import main as _main

    sys.exit(_main())
