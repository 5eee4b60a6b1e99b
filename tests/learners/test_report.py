"""The evaluation report: Markdown with a metrics table and valid PNG plots."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from learners.evaluation import EvaluationData, evaluate
from learners.report import HANDBOOK_BASELINES, PLOTS, daily_alerts, weekly_average_precision, write_report

DAY = 86_400
START = 1_530_403_200  # 2018-07-01T00:00:00Z
TEST_START = date(2018, 8, 5)  # the last week of six


def _synthetic_run(seed: int, separation: float, n: int = 4_000, cards: int = 300) -> EvaluationData:
    """Six weeks of transactions; frauds (about 3 %) score higher by ``separation``."""
    rng = np.random.default_rng(seed)
    ts = np.sort(START + rng.uniform(0, 42 * DAY, n))
    card = rng.integers(0, cards, n)
    compromised = rng.random(cards) < 0.08
    y = compromised[card] & (rng.random(n) < 0.4)
    logit = rng.normal(-3.0, 1.0, n) + separation * y
    score = 1.0 / (1.0 + np.exp(-logit))
    ids = np.array([f"t-{i:06d}" for i in range(n)])
    return EvaluationData(ids, np.array([f"c-{c}" for c in card]), ts.astype(float), y, score)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    runs = {}
    for name, seed, separation in (("logreg-all", 1, 4.0), ("arf-frauds", 1, 2.0)):
        data = _synthetic_run(seed, separation)
        runs[name] = (data, evaluate(data, TEST_START, 7, 7, 7, k=20))
    out = tmp_path_factory.mktemp("report")
    path = write_report(out / "r", runs, TEST_START, 7, 7, 7, 20, threshold=0.5)
    return path, runs


def test_report_embeds_every_plot(report):
    path, _ = report
    assert path.name == "report.md" and path.is_file()
    text = path.read_text()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(PLOTS)
    for name in pngs:
        assert f"]({name})" in text, name


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_every_plot_is_a_real_image(report, name):
    path, _ = report
    png = path.parent / name
    assert png.stat().st_size > 5_000
    pixels = imread(png)
    height, width = pixels.shape[:2]
    assert 300 <= height <= 2_000 and 400 <= width <= 2_000, (height, width)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20  # not a blank canvas
    assert float(rgb.std()) > 0.05


def test_metrics_table_has_both_runs_and_their_numbers(report):
    path, runs = report
    text = path.read_text()
    rows = {line.split("|")[1].strip(" *"): line for line in text.splitlines() if line.startswith("| ")}
    for name, (_, metrics) in runs.items():
        row = rows[name]
        for key in ("auc_roc", "average_precision", "card_precision_at_20"):
            assert f"{metrics[key]:.4f}" in row, (name, key, row)
        assert f"{metrics['transactions']:,}" in row
    assert runs["logreg-all"][1]["average_precision"] > runs["arf-frauds"][1]["average_precision"]
    for baseline, (auc, ap, cp) in HANDBOOK_BASELINES.items():
        row = rows[f"handbook: {baseline}"]
        assert f"{auc:.3f}" in row and f"{ap:.3f}" in row and f"{cp:.3f}" in row


def test_per_day_card_precision_table(report):
    path, runs = report
    text = path.read_text()
    days = re.findall(r"^\| (2018-08-\d\d) \|", text, flags=re.M)
    assert days == [f"2018-08-{d:02d}" for d in range(5, 12)]


def test_weekly_average_precision_skips_weeks_without_frauds():
    data = _synthetic_run(3, 4.0)
    weeks = weekly_average_precision(data)
    assert 5 <= len(weeks) <= 7
    assert all(monday.weekday() == 0 for monday, _, _ in weeks)
    assert all(0.0 < ap <= 1.0 and frauds > 0 for _, ap, frauds in weeks)
    no_fraud = EvaluationData(data.tx_ids, data.cards, data.ts, np.zeros_like(data.y), data.score)
    assert weekly_average_precision(no_fraud) == []


def test_daily_alerts_count_scores_at_the_threshold():
    data = _synthetic_run(4, 4.0)
    days, alerts, confirmed = daily_alerts(data, 0.5)
    assert alerts.sum() == (data.score >= 0.5).sum()
    assert confirmed.sum() == ((data.score >= 0.5) & data.y).sum()
    assert len(days) == 42 and (confirmed <= alerts).all()


def test_single_run_without_test_frauds_still_writes_a_report(tmp_path):
    data = _synthetic_run(5, 3.0)
    data.y[data.day >= (TEST_START - date(1970, 1, 1)).days] = False
    path = write_report(tmp_path, {"quiet-week": (data, evaluate(data, TEST_START))}, TEST_START.isoformat())
    text = path.read_text()
    assert "no fraud in the test window" in text
    assert all((tmp_path / name).stat().st_size > 0 for name in PLOTS)
