"""``fraudflow rules test``: what rules would have done on recorded traffic (a backtest)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from dataflows.cli.common import existing_file
from dataflows.errors import FraudflowError

__all__ = ["add_test_command", "cmd_test"]

log = logging.getLogger("fraudflow")


def _cell(value: Any, share: bool = False) -> str:
    """A table cell: ``share`` values as percentages, other floats with one decimal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if share:
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(result: dict[str, Any]) -> str:
    """One line per rule (and the model's alerts for reference)."""
    head = ("rule", "action", "alerts", "per day", "max/day", "cards", "frauds", "precision", "also model", "new")
    rows = [head]
    for s in [result["model"], *result["rules"]]:
        if s["action"] == "allow":
            rows.append((s["rule"], "allow", f"suppresses {s['suppressed_model_alerts']:,} model alerts "
                         f"({s['frauds_among_suppressed']:,} frauds) on {s['cards']:,} cards", "", "", "", "", "", "",
                         ""))
            continue
        rows.append((s["rule"], s["action"], _cell(s["alerts"]), _cell(s["alerts_per_day"]),
                     _cell(s["max_alerts_per_day"]), _cell(s["cards"]), _cell(s["frauds"]), _cell(s["precision"], share=True),
                     _cell(s["overlap_with_model"]) if s["rule"] != "model" else "",
                     _cell(s["new_alerts"]) if s["rule"] != "model" else ""))
    widths = [max(len(r[i]) for r in rows if not (r[1] == "allow" and i == 2)) for i in range(len(head))]
    lines = []
    for r in rows:
        if r[1] == "allow" and r[0] != "rule":
            lines.append(f"{r[0]:<{widths[0]}}  allow   {r[2]}")
        else:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def cmd_test(args: argparse.Namespace) -> int:
    from connectors.events import DeadLetter
    from connectors.files import read_events
    from dataflows.cli.evaluate import _read_jsonl, fraud_ids
    from learners.backtest import backtest, featured, plot_backtest
    from learners.rules import RuleError, read_rules

    try:
        rules = read_rules(args.rules)
    except RuleError as exc:
        raise FraudflowError(str(exc)) from None
    if not rules:
        raise FraudflowError(f"{args.rules}: no rules")
    scores = dict(_read_jsonl(args.scores, lambda d: (d["tx_id"], float(d["score"]))))
    if not scores:
        raise FraudflowError(f"{args.scores}: no scores")
    frauds = fraud_ids(args.labels)
    model_alerts = None
    if args.alerts:
        model_alerts = {r[0] for r in _read_jsonl(args.alerts, lambda d: (d["tx_id"],))}
    log.info("backtesting %d rules on %s (features recomputed by the flow's account and terminal stages)",
             len(rules), args.transactions)
    rejected: list = []

    def events():
        for event in read_events(args.transactions, args.labels):
            if type(event) is DeadLetter:
                rejected.append(event)
            else:
                yield event

    result = backtest(rules, featured(events()), scores, frauds, model_alerts,
                      threshold=args.threshold, cooldown_s=args.cooldown_hours * 3600.0)
    if rejected:
        first = rejected[0]
        log.warning("%d record(s) rejected as the flow would (left out); the first: %s (%s:%s)", len(rejected),
                    first.reason, first.origin.source, first.origin.position)
    if not result.transactions:
        raise FraudflowError(f"{args.transactions}: no transactions")
    summary = result.summary()
    summary["model"]["rule"] = "model" + (" (alerts file)" if args.alerts else f" (score >= {args.threshold:g})")
    if result.unscored:
        log.warning("%d of %d transactions have no score in %s (rules on score see no value for them)",
                    result.unscored, result.transactions, args.scores)
    if args.report:
        report = Path(args.report)
        report.mkdir(parents=True, exist_ok=True)
        plot_backtest(report / "rules_backtest.png", result)
        (report / "rules_backtest.json").write_text(json.dumps(summary, indent=2))
        summary["report"] = str(report / "rules_backtest.png")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        first, last = summary["period"]
        print(f"{result.transactions:,} transactions, {first} to {last} ({result.days} days); "
              f"alerts counted after a {args.cooldown_hours:g} h per-card cool-down")
        print(_table(summary))
        if args.report:
            print(f"plots: {summary['report']}")
    return 0


def add_test_command(rules_sub: Any) -> None:
    """``rules test`` under the ``rules`` command group."""
    p = rules_sub.add_parser(
        "test", help="backtest rules on recorded traffic before turning them on",
        description="For each rule in RULES (enabled or not): the alerts it would have raised per day (after the "
                    "flow's per-card cool-down), on how many cards, its precision against the labels, and how many "
                    "of its alerts the model raised anyway; for an allow rule, the model alerts it would have "
                    "suppressed and the frauds among them. Features are recomputed from the transactions and labels "
                    "by the flow's own stages; the scores are the recorded ones (fraudflow replay --scores).")
    p.add_argument("rules", type=existing_file, help="rules file (YAML or JSON)")
    p.add_argument("--scores", required=True, type=existing_file, help="scores JSONL (fraudflow replay --scores)")
    p.add_argument("--transactions", required=True, type=existing_file, help="transactions JSONL")
    p.add_argument("--labels", required=True, type=existing_file, help="labels JSONL (the truth)")
    p.add_argument("--alerts", type=existing_file,
                   help="the model's alerts JSONL of the same run (default: transactions scored >= --threshold)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="the score threshold rules see as `threshold`, and the model's alerts without --alerts "
                        "(default %(default)s)")
    p.add_argument("--cooldown-hours", type=float, default=24.0,
                   help="at most one alert per card and rule within this many hours, as the flow (default "
                        "%(default)s)")
    p.add_argument("--report", metavar="DIR", help="write rules_backtest.png and rules_backtest.json here")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=cmd_test)
