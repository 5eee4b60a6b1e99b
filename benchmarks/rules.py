"""What 50 active rules cost the dataflow (issue 22): events per second of the flow (1 worker)
with no rules against the same flow with 50 rules, in the same run, alternating A/B for
several rounds (each run in its own interpreter); and the cost of ``RuleBook.evaluate`` per
transaction measured alone.

The 50 rules are a realistic mix: allow-lists by card and by terminal (``in`` lists of 50
ids), amount / score / feature thresholds, and tags.

    python -m benchmarks.rules [--customers 1000 --days 30 --rounds 4]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEFAULT_MODEL, in_subprocess, load, save, workload

TARGET_COST = 0.10  # at most 10 % of throughput with 50 active rules


def fifty_rules(events: list, seed: int = 0) -> list[dict]:
    """50 rule specs: 10 card allow-lists, 5 terminal allow-lists, 15 amount/score thresholds,
    10 feature thresholds, 10 tags (ids partly from the stream, so some match)."""
    rng = random.Random(seed)
    accounts = sorted({e.account_id for e in events})
    terminals = sorted({getattr(e, "terminal_id", None) for e in events} - {None})

    def ids(pool: list, prefix: str) -> list:
        return [rng.choice(pool) if rng.random() < 0.1 else f"{prefix}-x{rng.randrange(10**6)}" for _ in range(50)]

    rules = []
    for i in range(10):
        rules.append({"id": f"vip-cards-{i}", "version": 1, "action": "allow",
                      "when": f"account_id in {ids(accounts, 'c')!r}"})
    for i in range(5):
        rules.append({"id": f"trusted-terminals-{i}", "version": 1, "action": "allow",
                      "when": f"terminal_id in {ids(terminals, 'm')!r} and amount < {rng.choice([100, 200, 500])}"})
    for i in range(15):
        rules.append({"id": f"amount-score-{i}", "version": 1, "action": "alert",
                      "when": f"amount > {rng.randrange(200, 2000)} and score > {rng.choice([0.05, 0.1, 0.2, 0.3])}"})
    features = ["acct_nb_tx_1d > 8", "term_risk_7d > 0.5 and amount > 50", "tx_during_night == 1 and amount > 300",
                "acct_amount_robust_z > 4 and score > 0.1", "acct_new_terminal == 1 and amount > 400",
                "term_nb_tx_1d > 30", "acct_sum_amount_1d > 2000", "acct_amount_new_high == 1 and amount > 250",
                "hour >= 2 and hour < 5 and amount > 150", "currency != 'EUR' and amount > 100"]
    for i, when in enumerate(features):
        rules.append({"id": f"feature-{i}", "version": 1, "action": "alert", "when": when})
    for i in range(10):
        rules.append({"id": f"tag-{i}", "version": 1, "action": "tag", "tag": f"band-{i}",
                      "when": f"amount > {100 * (i + 1)} and score < {0.5 + i / 20:.2f}"})
    return rules


def rules_file(path: str) -> str:
    events = load(path)
    out = Path(tempfile.mkdtemp(prefix="fraudflow-bench-rules-")) / "rules.json"
    out.write_text(json.dumps(fifty_rules(events)))
    return str(out)


def dataflow(path: str, rules: str = "", model_kind: str = DEFAULT_MODEL) -> dict:
    from bytewax.testing import TestingSink, run_main

    from connectors.sources import EventListSource
    from dataflows.fraud import build_flow
    from dataflows.settings import Settings

    events = load(path)
    alerts, dlq, scores = [], [], []
    settings = Settings().replace(progress=False, model_kind=model_kind, snapshot_dir="off", rules_file=rules)
    parts = build_flow(settings, source=EventListSource(events), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=1)
    started = time.perf_counter()
    run_main(parts.flow)
    elapsed = time.perf_counter() - started
    c = parts.stats.counts()
    return {"rules": c["rules_active"], "events": len(events), "transactions": len(scores), "alerts": len(alerts),
            "rule_alerts": c["rule_alerts"], "allowed": c["rule_allowed"],
            "tagged": sum(1 for s in scores if s.tags), "seconds": round(elapsed, 3),
            "events_per_s": round(len(events) / elapsed)}


def evaluate_cost(path: str, rules: str, repeat: str = "5") -> dict:
    """Per-transaction cost of RuleBook.evaluate with the 50 rules, over the workload's
    transactions with real feature vectors (scored by the reference loop once)."""
    from learners.pipeline import SequentialPipeline
    from learners.rules import RuleBook, read_rules

    scored = list(SequentialPipeline().run(load(path)))
    book = RuleBook(read_rules(rules))
    evaluate = book.evaluate
    rows = [(s.tx, s.features, s.score, s.threshold) for s in scored]
    best = float("inf")
    for _ in range(int(repeat)):
        started = time.perf_counter()
        for tx, features, score, threshold in rows:
            evaluate(tx, features, score, threshold)
        best = min(best, time.perf_counter() - started)
    matched = sum(1 for r in rows if evaluate(*r) is not None)
    return {"rules": len(book), "transactions": len(rows), "us_per_transaction": round(best / len(rows) * 1e6, 2),
            "matched_share": round(matched / len(rows), 4)}


def _tx_share(runs: dict) -> float:
    """Transactions per event of the workload (labels are events too)."""
    first = runs["no_rules"][0]
    return first["transactions"] / first["events"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--terminals", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    path = str(workload(args.customers, args.terminals, args.days))
    rules = rules_file(path)
    runs: dict[str, list] = {"no_rules": [], "fifty_rules": []}
    for i in range(args.rounds):  # A/B, then B/A: neither always runs first
        order = [("no_rules", ""), ("fifty_rules", rules)]
        for name, file in order if i % 2 == 0 else order[::-1]:
            runs[name].append(in_subprocess("benchmarks.rules", "dataflow", path, file))
    none = [r["events_per_s"] for r in runs["no_rules"]]
    fifty = [r["events_per_s"] for r in runs["fifty_rules"]]
    ratios = [b / a for a, b in zip(none, fifty)]
    cost = in_subprocess("benchmarks.rules", "evaluate_cost", path, rules)
    ratio = statistics.median(ratios)
    result = {
        "workload": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                     "events": runs["no_rules"][0]["events"], "transactions": runs["no_rules"][0]["transactions"]},
        "rules": json.loads(Path(rules).read_text()),
        "no_rules": runs["no_rules"],
        "fifty_rules": runs["fifty_rules"],
        "events_per_s_median": {"no_rules": statistics.median(none), "fifty_rules": statistics.median(fifty)},
        "paired_ratios": [round(r, 3) for r in ratios],
        "ratio_fifty_to_none_median": round(ratio, 3),
        "throughput_cost": round(1 - ratio, 3),
        "evaluate": cost,
        "target": f"throughput cost <= {TARGET_COST:.0%} with 50 rules",
        # evaluate()'s time against the flow's time per transaction (no-rules runs): a cost
        # estimate that machine noise moves far less than the paired flow ratios
        "evaluate_share_of_transaction_time": round(
            cost["us_per_transaction"] * 1e-6 * statistics.median(none) * _tx_share(runs), 3),
        "paired_ratio_spread": round(max(ratios) - min(ratios), 3),
    }
    spread_ok = result["paired_ratio_spread"] <= TARGET_COST
    result["met"] = ((1 - ratio <= TARGET_COST) if spread_ok else None)  # None: the paired runs are too noisy
    result["met_by_evaluate_share"] = result["evaluate_share_of_transaction_time"] <= TARGET_COST
    out = save("rules", result)
    print(json.dumps({k: result[k] for k in ("workload", "events_per_s_median", "paired_ratios",
                                             "ratio_fifty_to_none_median", "throughput_cost", "evaluate",
                                             "evaluate_share_of_transaction_time", "met", "met_by_evaluate_share")}
                     | {"results": str(out)}, indent=2))
    return result


if __name__ == "__main__":
    main()
