"""``fraudflow evaluate``: detection metrics of a scores file, and a report with plots."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import date
from pathlib import Path
from typing import Any, Callable, Optional

from dataflows.cli.common import existing_file, iso_date, positive_int
from dataflows.errors import FraudflowError

__all__ = ["register"]

log = logging.getLogger("fraudflow")


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
                raise FraudflowError(f"{path}:{lineno}: not a valid record ({exc})") from None
            if row is not None:
                out.append(row)
    return out


def _tx_row(d: dict) -> tuple:
    """``(tx_id, account_id, POSIX ts)`` of a transaction or alert record."""
    from datetime import datetime

    return d["tx_id"], d["account_id"], datetime.fromisoformat(d["ts"].replace("Z", "+00:00")).timestamp()


def fraud_ids(labels_path: str) -> set[str]:
    """The tx_ids a labels file marks fraud (a record without ``is_fraud`` is an error)."""
    return {r[0] for r in _read_jsonl(labels_path, lambda d: (d["tx_id"],) if d["is_fraud"] else None)}


def load_evaluation(scores_path: str, labels_path: str, transactions_path: str):
    from learners.evaluation import from_records

    scores = _read_jsonl(scores_path, lambda d: (d["tx_id"], float(d["score"])))
    frauds = fraud_ids(labels_path)
    txs = _read_jsonl(transactions_path, _tx_row)
    if not scores:
        raise FraudflowError(f"{scores_path}: no scores")
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
    precision = _alert_precision(args, list(runs)) if args.alerts else None
    if precision:
        result["alert_precision"] = {name: {"alerted_cards": sum(n for _, n, _ in rows),
                                            "fraud_cards": sum(h for _, _, h in rows),
                                            "per_day": [{"date": d, "cards": n, "fraud": h} for d, n, h in rows]}
                                     for name, rows in precision.items()}
    if args.report:
        from learners.report import write_report

        path = write_report(args.report, runs, test_start, args.test_days, args.delay_days,
                            args.known_lookback_days, args.k)
        if precision:
            _report_alert_precision(path, precision)
        result["report"] = str(path)
    if len(runs) > 1:
        result["compare"] = {name: {k: v for k, v in r.items() if not k.endswith("per_day")}
                             for name, (_, r) in runs.items()}
    print(json.dumps(result, indent=2))
    return 0


def _alert_precision(args: argparse.Namespace, names: list[str]) -> dict[str, list]:
    """Alert precision per day of each run's alerts file (``--alerts``, in the runs' order)."""
    from learners.report import alert_precision_by_day

    if len(args.alerts) != len(names):
        raise FraudflowError(f"--alerts: give one alerts file per run ({len(names)}: the scores file and each "
                             f"--compare file, in that order), got {len(args.alerts)}")
    frauds = fraud_ids(args.labels)
    return {name: alert_precision_by_day(_read_jsonl(path, _tx_row), frauds) for name, path in zip(names, args.alerts)}


def _report_alert_precision(report: Path, precision: dict[str, list]) -> None:
    from learners.report import plot_alert_precision

    plot_alert_precision(report.parent / "alert_precision.png", precision)
    lines = ["", "## Alert precision per day", "", "![Alert precision per day](alert_precision.png)", "",
             "Share of the cards alerted each day (event time of the alert) that were alerted on a fraud: what "
             "the analysts' time bought.", "", "| run | alerted cards | on a fraud | precision |", "|---|---:|---:|---:|"]
    for name, rows in precision.items():
        n, hits = sum(r[1] for r in rows), sum(r[2] for r in rows)
        lines.append(f"| **{name}** | {n:,} | {hits:,} | {hits / n if n else float('nan'):.1%} |")
    with open(report, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _default_test_start(data) -> date:
    """The last full week of the data, after one label delay of training."""
    import numpy as np

    last_day = int(np.max(data.day))
    return date.fromordinal(date(1970, 1, 1).toordinal() + last_day - 6)



def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="detection metrics of a scores file (and a report with plots)",
                       description="AUC ROC, average precision and card precision@k over a test window, with the "
                                   "handbook's protocol: cards already known compromised before a test day are left "
                                   "out of that day.")
    p.add_argument("scores", type=existing_file, help="scores JSONL (from replay --scores)")
    p.add_argument("labels", type=existing_file, help="labels JSONL (frauds-only files work too)")
    p.add_argument("transactions", type=existing_file, help="transactions JSONL")
    p.add_argument("--test-start", type=iso_date, help="first test day (default: the last 7 days of the data)")
    p.add_argument("--test-days", type=positive_int, default=7, help="test days (default %(default)s)")
    p.add_argument("--delay-days", type=int, default=7, help="label delay of the protocol (default %(default)s)")
    p.add_argument("--known-lookback-days", type=int, default=7,
                   help="frauds this far before the delay gap mark cards known (default %(default)s)")
    p.add_argument("--k", type=positive_int, default=100, help="cards per day for card precision (default %(default)s)")
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with PNG plots here")
    p.add_argument("--compare", nargs="+", metavar="SCORES", type=existing_file,
                   help="other scores files to compare side by side")
    p.add_argument("--alerts", nargs="+", metavar="ALERTS", type=existing_file,
                   help="each run's alerts file (the scores file's first, then each --compare's): adds the alert "
                        "precision per day (share of alerted cards that are fraud) and its plot")
    p.set_defaults(func=cmd_evaluate)
