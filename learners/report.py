"""Evaluation report: a Markdown page with PNG plots, for ``fraudflow evaluate --report DIR``.

One or more *runs* (scores of the same transactions by different configurations) are
compared side by side; the first run is the main one. The report holds:

* a metrics table (AUC ROC, average precision, card precision@k) with the handbook's
  baselines (Le Borgne et al., ch. 3–5);
* the precision-recall and ROC curves on the test window, after the known-card mask of the
  handbook's protocol (:func:`learners.evaluation.evaluation_mask`);
* the learning curve: average precision of each ISO week's transactions over the whole
  scored period (weeks without frauds are skipped);
* the score distribution of frauds and legitimate transactions in the test window;
* alerts per day (score at or above the threshold) and the share of them that are frauds.

Plots are drawn with Matplotlib's Agg canvas directly (no ``pyplot``, no display, no global
backend change).
"""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Container, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learners.evaluation import (
    EvaluationData,
    average_precision,
    evaluation_mask,
    precision_recall_curve,
    roc_curve,
)

__all__ = ["HANDBOOK_BASELINES", "PLOTS", "write_report"]

log = logging.getLogger(__name__)

DAY = 86_400
_EPOCH = date(1970, 1, 1)

# Test-week results of the handbook's batch models (Le Borgne et al., "Reproducible Machine
# Learning for Credit Card Fraud Detection", ch. 3.4, 4.2 and 5.3): AUC ROC, AP, CP@100.
HANDBOOK_BASELINES: dict[str, tuple[float, float, float]] = {
    "logistic regression": (0.871, 0.606, 0.291),
    "random forest": (0.867, 0.658, 0.287),
    "XGBoost, tuned": (0.869, 0.687, 0.303),
}

# File name -> (title, what to read in it); the report embeds them in this order.
PLOTS: dict[str, tuple[str, str]] = {
    "precision_recall.png": (
        "Precision-recall curve (test window)",
        "Each point is a threshold: the share of alerts that are frauds (precision) against the share of "
        "frauds caught (recall). Higher and further right is better; the area is the average precision.",
    ),
    "roc.png": (
        "ROC curve (test window)",
        "True-positive rate against false-positive rate; the diagonal is a random score. With about one "
        "fraud in a hundred transactions the ROC curve flatters every model: read it with the PR curve.",
    ),
    "learning_curve.png": (
        "Learning curve: average precision week by week",
        "Average precision of each ISO week's transactions over the whole scored period (weeks without "
        "frauds are skipped). The online models start cold and improve as labels arrive; the shaded band "
        "is the test window.",
    ),
    "score_distribution.png": (
        "Score distribution (test window)",
        "Histograms of the scores of frauds and of legitimate transactions (log scale). Good separation "
        "puts the frauds on the right of the threshold and the legitimate mass on the left.",
    ),
    "alerts_per_day.png": (
        "Alerts per day and the share confirmed",
        "Bars: transactions scored at or above the threshold each day (the analysts' load, before the "
        "per-card cool-down). Line: the share of them that are frauds.",
    ),
}

Runs = Mapping[str, tuple[EvaluationData, dict]]


# -- helpers -------------------------------------------------------------------------------
def _day_index(d: date | str) -> int:
    if isinstance(d, str):
        d = date.fromisoformat(d)
    return (d - _EPOCH).days


def _date_of(day: int) -> date:
    return _EPOCH + timedelta(days=int(day))


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _new_figure(width: float = 7.0, height: float = 5.0, rows: int = 1, cols: int = 1,
                sharex: bool = False, sharey: bool = False):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    log.debug("wrote %s", path)
    return path


def _fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _iso_week_start(day: np.ndarray) -> np.ndarray:
    """The Monday of each day's ISO week (1970-01-01, day 0, was a Thursday)."""
    return day - (day + 3) % 7


# -- plots ---------------------------------------------------------------------------------
def _test_rows(data: EvaluationData, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return data.y[mask], data.score[mask]


def plot_precision_recall(path: Path, runs: Runs, masks: Mapping[str, np.ndarray]) -> Path:
    """Precision-recall curve of every run over its masked test rows."""
    fig, axes = _new_figure()
    ax = axes[0, 0]
    base_rate = None
    for i, (name, (data, _)) in enumerate(runs.items()):
        y, s = _test_rows(data, masks[name])
        if y.sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ap = average_precision(y, s)
        ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color=_colour(i),
                label=f"{name} (AP {ap:.3f})")
        base_rate = base_rate if base_rate is not None else float(y.mean())
    if base_rate is not None:
        ax.axhline(base_rate, color="grey", linestyle=":", label=f"random (fraud rate {base_rate:.2%})")
    ax.set(xlabel="recall (share of frauds caught)", ylabel="precision (share of alerts that are frauds)",
           xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, test window")
    ax.grid(alpha=0.3)
    if base_rate is None:
        ax.text(0.5, 0.5, "no fraud in the test window", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def plot_roc(path: Path, runs: Runs, masks: Mapping[str, np.ndarray]) -> Path:
    """ROC curve of every run over its masked test rows."""
    fig, axes = _new_figure(6.0, 5.5)
    ax = axes[0, 0]
    for i, (name, (data, metrics)) in enumerate(runs.items()):
        y, s = _test_rows(data, masks[name])
        if y.sum() == 0 or y.all():
            continue
        fpr, tpr = roc_curve(y, s)
        ax.plot(fpr, tpr, color=_colour(i), label=f"{name} (AUC {_fmt(metrics.get('auc_roc'), 3)})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC, test window")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def weekly_average_precision(data: EvaluationData) -> list[tuple[date, float, int]]:
    """(ISO week's Monday, average precision, frauds) for each week that has frauds.

    >>> import numpy as np
    >>> d = EvaluationData(np.array(["a", "b", "c"]), np.array(["x", "x", "y"]),
    ...                    np.array([0.0, 3600.0, 8 * 86400.0]), np.array([True, False, False]),
    ...                    np.array([0.9, 0.1, 0.5]))
    >>> weekly_average_precision(d)
    [(datetime.date(1969, 12, 29), 1.0, 1)]
    """
    week = _iso_week_start(data.day)
    out = []
    for monday in np.unique(week).tolist():
        sel = week == monday
        frauds = int(data.y[sel].sum())
        if frauds == 0:
            continue
        out.append((_date_of(monday), average_precision(data.y[sel], data.score[sel]), frauds))
    return out


def plot_learning_curve(path: Path, runs: Runs, test_start: date, test_days: int) -> Path:
    """Average precision by ISO week over the whole scored period, one line per run."""
    fig, axes = _new_figure(9.0, 4.5)
    ax = axes[0, 0]
    for i, (name, (data, _)) in enumerate(runs.items()):
        weeks = weekly_average_precision(data)
        if not weeks:
            continue
        mondays, aps, _ = zip(*weeks)
        midweek = [m + timedelta(days=3, hours=12) for m in mondays]
        ax.plot(midweek, aps, marker="o", markersize=3, color=_colour(i), label=name)
    ax.axvspan(test_start, test_start + timedelta(days=test_days), color="grey", alpha=0.15, label="test window")
    ax.set(xlabel="ISO week (each point at mid-week)", ylabel="average precision of the week", ylim=(0, 1.02),
           title="Learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_score_distribution(path: Path, runs: Runs, masks: Mapping[str, np.ndarray], threshold: float) -> Path:
    """Histograms of fraud and legitimate scores in the test window, one panel per run."""
    n = len(runs)
    fig, axes = _new_figure(min(5.0 * n, 15.0), 4.5, cols=n, sharey=True)
    for i, (name, (data, _)) in enumerate(runs.items()):
        ax = axes[0, i]
        y, s = _test_rows(data, masks[name])
        lo = min(0.0, float(s.min())) if s.size else 0.0
        hi = max(1.0, float(s.max())) if s.size else 1.0
        bins = np.linspace(lo, hi, 41)
        if (~y).any():
            ax.hist(s[~y], bins=bins, color="tab:blue", alpha=0.6, label=f"legitimate ({int((~y).sum()):,})")
        if y.any():
            ax.hist(s[y], bins=bins, color="tab:red", alpha=0.6, label=f"frauds ({int(y.sum()):,})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_yscale("log")
        ax.set(title=name, xlabel="score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0, 0].set_ylabel("transactions (log scale)")
    return _save(fig, path)


def daily_alerts(data: EvaluationData, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(days, alerts per day, confirmed frauds among them) over the whole scored period.

    >>> import numpy as np
    >>> d = EvaluationData(np.array(["a", "b", "c"]), np.array(["x", "x", "y"]),
    ...                    np.array([0.0, 3600.0, 86400.0]), np.array([True, False, False]),
    ...                    np.array([0.9, 0.7, 0.1]))
    >>> daily_alerts(d, 0.5)
    (array([0, 1]), array([2, 0]), array([1, 0]))
    """
    day = data.day
    first = int(day.min())
    span = int(day.max()) - first + 1
    alert = data.score >= threshold
    alerts = np.bincount(day[alert] - first, minlength=span)
    confirmed = np.bincount(day[alert & data.y] - first, minlength=span)
    return np.arange(first, first + span), alerts, confirmed


def plot_alerts_per_day(path: Path, runs: Runs, threshold: float) -> Path:
    """Alerts per day (bars) and the share that are frauds (line), one panel per run."""
    n = len(runs)
    fig, axes = _new_figure(10.0, 3.2 * n + 0.6, rows=n, sharex=True)
    for i, (name, (data, _)) in enumerate(runs.items()):
        ax = axes[i, 0]
        days, alerts, confirmed = daily_alerts(data, threshold)
        dates = [_date_of(d) for d in days.tolist()]
        ax.bar(dates, alerts, width=0.8, color=_colour(i), alpha=0.7, label=f"{name}: alerts/day")
        ax.set_ylabel("alerts per day")
        share_ax = ax.twinx()
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(alerts > 0, confirmed / np.maximum(alerts, 1), np.nan)
        share_ax.plot(dates, share, color="black", marker=".", markersize=3, linewidth=1,
                      label="share that are frauds")
        share_ax.set_ylim(0, 1.02)
        share_ax.set_ylabel("share confirmed")
        total, hits = int(alerts.sum()), int(confirmed.sum())
        ax.set_title(f"{name}: {total:,} alerts at score >= {threshold:g}, "
                     f"{hits / total if total else float('nan'):.0%} confirmed")
        handles = ax.get_legend_handles_labels()
        more = share_ax.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small")
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


# -- Markdown ------------------------------------------------------------------------------
def metrics_table(runs: Runs, k: int) -> list[str]:
    """The runs and the handbook baselines side by side, as Markdown table lines."""
    cp_key = f"card_precision_at_{k}"
    lines = [
        f"| run | AUC ROC | average precision | card precision@{k} | test transactions | frauds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (_, m) in runs.items():
        lines.append(f"| **{name}** | {_fmt(m.get('auc_roc'))} | {_fmt(m.get('average_precision'))} | "
                     f"{_fmt(m.get(cp_key))} | {_fmt(m.get('transactions'))} | {_fmt(m.get('frauds'))} |")
    note = "" if k == 100 else " (@100)"
    for name, (auc, ap, cp) in HANDBOOK_BASELINES.items():
        lines.append(f"| *handbook: {name}* | {auc:.3f} | {ap:.3f} | {cp:.3f}{note} | | |")
    return lines


def per_day_table(runs: Runs, test_start: date, k: int) -> list[str]:
    """Card precision@k per test day, one column per run."""
    key = f"card_precision_at_{k}_per_day"
    columns = {name: m.get(key) or [] for name, (_, m) in runs.items()}
    n_days = max((len(v) for v in columns.values()), default=0)
    if n_days == 0:
        return []
    lines = ["| day | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for d in range(n_days):
        cells = [_fmt(v[d]) if d < len(v) else "" for v in columns.values()]
        lines.append(f"| {test_start + timedelta(days=d)} | " + " | ".join(cells) + " |")
    return lines


def _scored_period(runs: Runs) -> tuple[date, date, int]:
    data = next(iter(runs.values()))[0]
    return _date_of(int(data.day.min())), _date_of(int(data.day.max())), int(data.day.size)


def _markdown(runs: Runs, test_start: date, test_days: int, delay_days: int, known_lookback_days: int, k: int,
              threshold: float, notes: Sequence[str]) -> str:
    first, last, n_rows = _scored_period(runs)
    main = next(iter(runs))
    lines = [
        "# Fraud detection evaluation",
        "",
        f"Main run: **{main}**" + (f"; compared with {', '.join(f'**{n}**' for n in list(runs)[1:])}."
                                   if len(runs) > 1 else "."),
        "",
        f"* scored period: {first} to {last} ({n_rows:,} transactions in the main run)",
        f"* test window: {test_start} to {test_start + timedelta(days=test_days - 1)} ({test_days} days)",
        f"* protocol (handbook): cards with a fraud in the {known_lookback_days} days before the "
        f"{delay_days}-day label gap, or a fraud at least {delay_days + 1} days before a test day, are known "
        "compromised and left out of that day",
        f"* card precision@{k}: share of truly compromised cards among the {k} highest-scored cards of each "
        "test day, averaged over the days (a card detected once is left out of later days)",
        f"* alert threshold for the alert plots: score >= {threshold:g}",
        "",
        "## Metrics",
        "",
        *metrics_table(runs, k),
        "",
        "The handbook rows are batch models trained offline on the published simulator configuration "
        "(test week 2018-08-08 to 2018-08-14); they are a reference point, not the same data unless the "
        "run used the published configuration.",
        "",
    ]
    per_day = per_day_table(runs, test_start, k)
    if per_day:
        lines += [f"### Card precision@{k} by test day", "", *per_day, ""]
    lines += ["## Plots", ""]
    for file_name, (title, caption) in PLOTS.items():
        lines += [f"### {title}", "", f"![{title}]({file_name})", "", caption, ""]
    if notes:
        lines += ["## Notes", "", *(f"* {n}" for n in notes), ""]
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------
def write_report(report_dir: str | Path, runs: Runs, test_start: date | str, test_days: int = 7,
                 delay_days: int = 7, known_lookback_days: int = 7, k: int = 100, *,
                 threshold: float = 0.5) -> Path:
    """Write ``report.md`` and its PNG plots into ``report_dir``; return the path of ``report.md``.

    Parameters
    ----------
    report_dir
        Output directory (created if missing); existing plots are overwritten.
    runs
        ``name -> (EvaluationData, metrics)``; the first entry is the main run. ``metrics`` is
        what :func:`learners.evaluation.evaluate` returned for that run.
    test_start, test_days, delay_days, known_lookback_days, k
        The evaluation protocol, as given to :func:`learners.evaluation.evaluate`.
    threshold
        Alert threshold for the alert and score-distribution plots.

    Returns
    -------
    pathlib.Path
        The Markdown report, which embeds the plots by relative path.
    """
    if not runs:
        raise ValueError("write_report needs at least one run")
    start = date.fromisoformat(test_start) if isinstance(test_start, str) else test_start
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = {name: evaluation_mask(data, start, test_days, delay_days, known_lookback_days)
             for name, (data, _) in runs.items()}
    notes = _notes(runs, masks)
    plot_precision_recall(out / "precision_recall.png", runs, masks)
    plot_roc(out / "roc.png", runs, masks)
    plot_learning_curve(out / "learning_curve.png", runs, start, test_days)
    plot_score_distribution(out / "score_distribution.png", runs, masks, threshold)
    plot_alerts_per_day(out / "alerts_per_day.png", runs, threshold)
    report = out / "report.md"
    report.write_text(_markdown(runs, start, test_days, delay_days, known_lookback_days, k, threshold, notes),
                      encoding="utf-8")
    log.info("evaluation report written to %s", report)
    return report


def _notes(runs: Runs, masks: Mapping[str, np.ndarray]) -> list[str]:
    notes = []
    for name, (data, _) in runs.items():
        n = int(masks[name].sum())
        frauds = int(data.y[masks[name]].sum())
        if n == 0:
            notes.append(f"{name}: no transaction in the test window; it is missing from the test-window plots.")
        elif frauds == 0:
            notes.append(f"{name}: no fraud in the test window; it is missing from the PR and ROC curves.")
    return notes



# -- analysts' view: alert precision per day (issue 22) --------------------------------------
def alert_precision_by_day(alerts: Sequence[tuple[str, str, float]], frauds: Container[str]
                           ) -> list[tuple[str, int, int]]:
    """``(date, alerted cards, of them alerted on a fraud)`` per event-time day, from alerts
    ``(tx_id, account_id, ts)``: the share of the analysts' cards that were worth their time.

    >>> alert_precision_by_day([("t-1", "c-1", 0.0), ("t-2", "c-1", 60.0), ("t-3", "c-2", 90.0)], {"t-2"})
    [('1970-01-01', 2, 1)]
    """
    cards: dict[int, dict[str, bool]] = {}
    for tx_id, account_id, ts in alerts:
        day = cards.setdefault(int(ts // 86_400), {})
        day[account_id] = day.get(account_id, False) or tx_id in frauds
    return [(_date_of(d).isoformat(), len(c), sum(c.values())) for d, c in sorted(cards.items())]


def plot_alert_precision(path: Path, series: Mapping[str, Sequence[tuple[str, int, int]]]) -> Path:
    """Alert precision per day (share of alerted cards that are fraud), one line per run."""
    fig, axes = _new_figure(10.0, 4.0)
    ax = axes[0, 0]
    for i, (name, rows) in enumerate(series.items()):
        dates = [date.fromisoformat(d) for d, _, _ in rows]
        share = [hits / n if n else float("nan") for _, n, hits in rows]
        total, hits = sum(n for _, n, _ in rows), sum(h for _, _, h in rows)
        ax.plot(dates, share, color=_colour(i), marker=".", markersize=3, linewidth=1,
                label=f"{name}: {hits / total if total else float('nan'):.1%} of {total:,} alerted cards")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of alerted cards that are fraud")
    ax.set_title("Alert precision per day")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)
