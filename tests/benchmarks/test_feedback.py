"""The feedback measurement's bookkeeping (benchmarks.feedback); the runs themselves are the
flow with analysts in the loop, tested in tests/dataflows/test_feedback_flow.py."""

from __future__ import annotations

from benchmarks.feedback import WEEKLY_FROM, _precision, compare


def _run(mode: str, ap: float, cp: float, weekly_ap: list[float], days: list[tuple[str, int, int]]) -> dict:
    return {"seed": 3, "mode": mode, "auc_roc": 0.88, "average_precision": ap, "card_precision_at_100": cp,
            "alert_precision": _precision(days),
            "alert_precision_per_day": [{"date": d, "cards": n, "fraud": h} for d, n, h in days],
            "weekly": [{"auc_roc": 0.88, "average_precision": w, "card_precision_at_100": cp} for w in weekly_ap]}


def test_compare_pairs_each_seeds_runs_and_counts_weeks_not_below() -> None:
    early, later = ("2018-04-10", 1500, 17), (WEEKLY_FROM, 50, 48)
    runs = [_run("labels", 0.7169, 0.2857, [0.70, 0.72, 0.71], [("2018-04-10", 13, 10), later]),
            _run("analysts", 0.7154, 0.2886, [0.71, 0.71, 0.73], [early, (WEEKLY_FROM, 50, 49)])]
    [row] = compare(runs)
    assert row["seed"] == 3
    assert row["analysts_minus_labels"]["average_precision"] == -0.0015
    assert row["not_below"] == {"average_precision": False, "card_precision_at_100": True}
    # the early burst counts in the whole stream, not from WEEKLY_FROM on
    assert row["analysts_minus_labels"]["alert_precision"] < -0.5
    assert row["alert_precision_from_" + WEEKLY_FROM]["analysts"]["precision"] == 0.98
    assert row["weekly"]["weeks"] == 3
    assert row["weekly"]["average_precision"] == {"mean_difference": 0.0067, "weeks_not_below": 2}


def test_a_seed_without_its_pair_or_test_week_is_left_out() -> None:
    alone = _run("labels", 0.7, 0.3, [], [])
    assert compare([alone]) == []
    short = [{**alone, "average_precision": None}, {**alone, "mode": "analysts", "average_precision": None}]
    assert compare(short) == []
