"""Analysts in the loop: detection quality with and without their verdicts (issue 22, part 5).

For each seed of the published simulator configuration (5,000 cards, 10,000 terminals, 183
days, 7-day label delay) the dataflow runs twice on the very same simulated stream, in a fresh
process each:

* ``labels``: the label feed alone (chargebacks 7 days after each transaction), as
  ``benchmarks.quality`` runs it;
* ``analysts``: the same feed plus simulated analysts inside the loop, as ``fraudflow replay
  --analysts`` has them (:class:`learners.analysts.AnalystDesk` over
  :class:`connectors.sources.EventListSource`): the flow's alerts are investigated, at most
  ``--capacity`` cards a day, and answered with the truth ``--delay-hours`` after the alert,
  together with the card's other transactions from ``--review-days`` before it up to the
  verdict (decisions 0066, 0067); the verdicts are learned as labels at their ts (decision 0050).

Both are evaluated on the handbook's test week (2018-08-08 to 08-14) with its protocol
(``learners.evaluation.evaluate``; the cards it leaves out as already known compromised are
decided from the label feed in both runs, so both are scored on the same transactions), and
the alert precision per day (share of the cards alerted that day alerted on a fraud,
``learners.report.alert_precision_by_day``) over the whole stream and the test week.
Results go to ``benchmarks/results/feedback.json``.

    python -m benchmarks.feedback [--seeds 0 1 2] [--modes labels analysts] [--capacity 100] [--delay-hours 4]
                                  [--review-days 3] [--jobs 1]
    python -m benchmarks.feedback --combine NAME... [--out feedback]   # runs split over invocations
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import DEFAULT_MODEL, in_subprocess, save
from benchmarks.quality import METRICS
from dataflows.cli.common import REVIEW_DAYS

MODES = ("labels", "analysts")
TEST_START, TEST_DAYS = "2018-08-08", 7
WEEKLY_FROM = "2018-05-02"  # a month in: the model has learned from three weeks of labels


def one_run(seed: str, mode: str, capacity: str = "100", delay_hours: str = "4", days: str = "183",
            customers: str = "5000", terminals: str = "10000", verdict_warmup_days: str = "",
            review_days: str = "0") -> dict:
    """Simulate, run the dataflow with or without analysts, evaluate; in a fresh process."""
    from bytewax.testing import TestingSink, run_main

    from connectors.events import Transaction
    from connectors.simulator import SimulatorConfig, simulate
    from connectors.sources import EventListSource
    from dataflows.fraud import build_flow
    from dataflows.settings import Settings
    from learners.analysts import AnalystConfig, AnalystDesk
    from learners.evaluation import evaluate, from_records
    from learners.report import alert_precision_by_day

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = SimulatorConfig(seed=int(seed), days=int(days), customers=int(customers), terminals=int(terminals))
    truth: dict = {}
    events = list(simulate(cfg, truth=truth))
    frauds = frozenset(tx_id for tx_id, t in truth.items() if t.is_fraud)
    desk = None
    if mode == "analysts":
        desk = AnalystDesk(AnalystConfig(int(capacity), float(delay_hours) * 3600.0, float(review_days) * 86_400.0),
                           frauds)
    values = {"model_kind": DEFAULT_MODEL, "progress": False, "snapshot_dir": "off"}
    if verdict_warmup_days:
        values["verdict_warmup_days"] = float(verdict_warmup_days)
    settings = Settings.from_values(values)
    alerts, dlq, scores = [], [], []
    parts = build_flow(settings, source=EventListSource(events, desk=desk), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=1, desk=desk)
    started = time.perf_counter()
    run_main(parts.flow)
    elapsed = time.perf_counter() - started
    txs = [(e.tx_id, e.account_id, e.event_ts) for e in events if type(e) is Transaction]
    data = from_records([(s.tx_id, s.score) for s in scores], txs, frauds)
    last = max(ts for _, _, ts in txs) if txs else 0.0
    if _ts(TEST_START + "T00:00:00Z") + TEST_DAYS * 86_400 <= last + 86_400:
        result = evaluate(data, TEST_START, TEST_DAYS)
        result.pop("card_precision_at_100_per_day")
    else:  # a shorter stream (a diagnosis of the first weeks): no test week
        result = {m: None for m in METRICS}
    weekly = _weekly(data, evaluate, last)
    per_day = alert_precision_by_day([(a.tx_id, a.account_id, _ts(a.ts)) for a in alerts], frauds)
    test_days = [row for row in per_day if TEST_START <= row[0] < _day_after(TEST_START, TEST_DAYS)]
    counts = parts.stats.counts()
    run = {"seed": int(seed), "mode": mode, **result,
           "scored": len(scores), "dead_letters": len(dlq), "alerts": len(alerts),
           "alert_precision": _precision(per_day), "alert_precision_test_week": _precision(test_days),
           "alert_precision_per_day": [{"date": d, "cards": n, "fraud": h} for d, n, h in per_day],
           "weekly": weekly,
           "labels_learned": counts["labels_learned"], "frauds_learned": counts["frauds_learned"],
           "feedback": counts["feedback"], "seconds": round(elapsed, 1)}
    if desk is not None:
        run["desk"] = {**desk.counts, "summary": desk.summary(),
                       "capacity": int(capacity), "delay_hours": float(delay_hours),
                       "review_days": float(review_days)}
    return run


def _default_warmup() -> float:
    from learners.config import ModelConfig

    return ModelConfig().verdict_warmup_days


def _weekly(data, evaluate, last_ts: float) -> list[dict]:
    """The handbook's protocol on every full week from ``WEEKLY_FROM`` (a week apart) to the
    end of the stream: the same comparison on ~20 test weeks instead of one."""
    from datetime import date, timedelta

    out = []
    start = date.fromisoformat(WEEKLY_FROM)
    while _ts(start.isoformat() + "T00:00:00Z") + 7 * 86_400 <= last_ts + 86_400:
        r = evaluate(data, start.isoformat(), 7)
        out.append({"start": start.isoformat(), "frauds": r["frauds"], **{m: r[m] for m in METRICS}})
        start += timedelta(days=7)
    return out


def _ts(text: str) -> float:
    from learners.analysts import _ts as parse

    return parse(text)


def _day_after(day: str, n: int) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) + timedelta(days=n)).isoformat()


def _precision(rows: list) -> dict:
    """Alerted cards, of them on a fraud, their share, and the mean of the daily shares.

    >>> _precision([("2018-08-08", 4, 3), ("2018-08-09", 2, 2)])
    {'cards': 6, 'fraud': 5, 'precision': 0.8333, 'mean_daily_precision': 0.875}
    """
    cards, hits = sum(r[1] for r in rows), sum(r[2] for r in rows)
    daily = [r[2] / r[1] for r in rows if r[1]]
    return {"cards": cards, "fraud": hits, "precision": round(hits / cards, 4) if cards else None,
            "mean_daily_precision": round(sum(daily) / len(daily), 4) if daily else None}


def compare(runs: list[dict]) -> list[dict]:
    """Per seed, analysts minus labels-only: the test week's metrics and alert precision, the
    alert precision from ``WEEKLY_FROM`` on (past the first weeks), and the weekly metrics
    (mean difference, weeks not below)."""
    by = {(r["seed"], r["mode"]): r for r in runs}
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        a, b = by.get((seed, "analysts")), by.get((seed, "labels"))
        if a is None or b is None or a["average_precision"] is None or b["average_precision"] is None:
            continue
        diff = {m: round(a[m] - b[m], 4) for m in METRICS}
        diff["alert_precision"] = round(a["alert_precision"]["precision"] - b["alert_precision"]["precision"], 4)
        row = {"seed": seed, "analysts_minus_labels": diff,
               "not_below": {m: a[m] >= b[m] for m in ("average_precision", "card_precision_at_100")}}
        later = {mode: _precision([(d["date"], d["cards"], d["fraud"]) for d in r.get("alert_precision_per_day", [])
                                   if d["date"] >= WEEKLY_FROM]) for mode, r in (("analysts", a), ("labels", b))}
        if later["labels"]["cards"]:
            row["alert_precision_from_" + WEEKLY_FROM] = later
        weeks_a, weeks_b = a.get("weekly", []), b.get("weekly", [])
        if weeks_a and len(weeks_a) == len(weeks_b):
            row["weekly"] = {"weeks": len(weeks_a), **{
                m: {"mean_difference": round(sum(x[m] - y[m] for x, y in zip(weeks_a, weeks_b)) / len(weeks_a), 4),
                    "weeks_not_below": sum(x[m] >= y[m] for x, y in zip(weeks_a, weeks_b))} for m in METRICS}}
        out.append(row)
    return out


def combine(names: list[str], out: str) -> dict:
    """One result file from several (runs split over invocations): runs, then the pairs again.
    Of two runs of the same seed and mode, the later file's is kept (e.g. only the analysts'
    runs re-run after a change that leaves the label feed's runs as they were)."""
    from benchmarks.common import RESULTS

    parts = [json.loads((RESULTS / f"{name}.json").read_text()) for name in names]
    latest = {(r["seed"], r["mode"]): r for p in parts for r in p["runs"]}  # a later file's run replaces an earlier's
    runs = sorted(latest.values(), key=lambda r: (r["seed"], r["mode"]))
    keep = {k: v for k, v in parts[0].items() if k not in ("benchmark", "when", "machine", "paired", "runs")}
    result = {**keep, "combined_from": names, "paired": compare(runs), "runs": runs}
    save(out, result)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--capacity", type=int, default=100, help="analysts: cards a day (default %(default)s)")
    parser.add_argument("--delay-hours", type=float, default=4.0, help="analysts: alert to verdict (default %(default)s)")
    parser.add_argument("--review-days", type=float, default=REVIEW_DAYS,
                        help="analysts: a case also answers the card's transactions from this many days before "
                             "the alert up to the verdict, as replay --analysts (default %(default)s; 0: the "
                             "alerted one only)")
    parser.add_argument("--days", type=int, default=183, help="simulated days (default %(default)s; the test week "
                                                                "needs >= 136)")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="which runs per seed (default: both; one alone is paired later with --combine)")
    parser.add_argument("--verdict-warmup-days", type=float, metavar="D",
                        help="analysts: FRAUDFLOW_VERDICT_WARMUP_DAYS (default: the setting's default)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each its own process (default %(default)s)")
    parser.add_argument("--out", default="feedback", help="result name under benchmarks/results (default %(default)s)")
    parser.add_argument("--combine", nargs="+", metavar="NAME",
                        help="run nothing: merge these result files (runs split over invocations) into --out")
    args = parser.parse_args(argv)
    if args.combine:
        result = combine(args.combine, args.out)
        print(json.dumps({"paired": result["paired"]}, indent=2))
        return result
    modes = [m for m in MODES if m in args.modes]
    jobs = [(seed, mode) for i, seed in enumerate(args.seeds)
            for mode in (modes if i % 2 == 0 else modes[::-1])]  # alternate the order: the machine's load drifts

    def run(job: tuple[int, str]) -> dict:
        r = in_subprocess("benchmarks.feedback", "one_run", str(job[0]), job[1], str(args.capacity),
                          str(args.delay_hours), str(args.days), str(args.customers), str(args.terminals),
                          "" if args.verdict_warmup_days is None else str(args.verdict_warmup_days),
                          str(args.review_days), timeout=3 * 3600)
        print(json.dumps({k: v for k, v in r.items() if k not in ("alert_precision_per_day", "weekly")}), flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:  # runs are deterministic: only their seconds feel the sharing
        runs = list(pool.map(run, jobs))
    paired = compare(runs)
    result = {"model": DEFAULT_MODEL, "capacity": args.capacity, "delay_hours": args.delay_hours,
              "review_days": args.review_days, "days": args.days,
              "customers": args.customers, "terminals": args.terminals, "test_start": TEST_START,
              "verdict_warmup_days": args.verdict_warmup_days if args.verdict_warmup_days is not None
              else _default_warmup(),
              "test_days": TEST_DAYS, "paired": paired, "runs": runs}
    path = save(args.out, result)
    print(json.dumps({"paired": paired, "results": str(path)}, indent=2))
    return result


if __name__ == "__main__":
    main()
