"""Detection metrics with the handbook's protocol (Le Borgne et al., ch. 3.4–4.2).

* AUC ROC and average precision over the test transactions;
* card precision@k: for each test day, the share of truly compromised cards among the k
  cards with the highest score that day, averaged over days; a card detected on one test
  day is left out of the following days;
* cards already *known* compromised are left out of a test day: those with a fraud in the
  ``known_lookback_days`` before the test period's label gap, and from then on every card
  with a fraud at least ``delay_days + 1`` days before the test day (its label is known).

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.8333
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "EvaluationData",
    "average_precision",
    "card_precision_at_k",
    "evaluate",
    "roc_auc",
    "evaluation_mask",
]

log = logging.getLogger(__name__)
DAY = 86_400


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count one half)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = (ends - counts + 1 + ends) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _pr_points(y: np.ndarray, s: np.ndarray, negative_weight: float | np.ndarray = 1.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(float)
    if np.ndim(negative_weight):
        fps = np.cumsum(np.where(y, 0.0, np.asarray(negative_weight, dtype=float)[order]))[last_of_tie]
    else:
        fps = (last_of_tie + 1 - tps) * negative_weight
    return tps / (tps + fps), tps / max(tps[-1], 1.0), s[last_of_tie]


def average_precision(y_true: Sequence[int], scores: Sequence[float],
                      negative_weight: float | Sequence[float] = 1.0) -> float:
    """Average precision: sum over thresholds of (recall step) x precision.

    ``negative_weight`` counts each negative that many times (negatives that were sampled):
    one weight for all, or one per example (positives' entries are ignored).

    >>> average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], negative_weight=3.0)  # 1/2 * 1 + 1/2 * 2/5
    0.7
    >>> average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], negative_weight=[1, 3, 1, 1])
    0.7
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = _pr_points(y, s, negative_weight)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(y_true: Sequence[int], scores: Sequence[float]):
    """(precision, recall, thresholds), highest threshold first."""
    return _pr_points(np.asarray(y_true, dtype=bool), np.asarray(scores, dtype=float))


def roc_curve(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) from the highest threshold down."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / max(fps[-1], 1)], np.r_[0.0, tps / max(tps[-1], 1)]


def card_precision_at_k(
    days: Sequence[int], cards: Sequence[str], y_true: Sequence[int], scores: Sequence[float], k: int = 100,
    remove_detected: bool = True,
) -> tuple[float, list[float]]:
    """Mean over days of the share of compromised cards among each day's top-k cards.

    >>> card_precision_at_k([0, 0, 0, 1, 1], ["a", "a", "b", "a", "c"], [0, 1, 0, 1, 0],
    ...                     [0.2, 0.9, 0.5, 0.9, 0.1], k=1)
    (0.5, [1.0, 0.0])
    """
    days_a = np.asarray(days)
    cards_a = np.asarray(cards)
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    detected: set = set()
    per_day: list[float] = []
    for day in np.unique(days_a):
        sel = days_a == day
        best: dict = {}
        for card, yy, ss in zip(cards_a[sel].tolist(), y[sel].tolist(), s[sel].tolist()):
            if card in detected:
                continue
            prev = best.get(card)
            best[card] = (max(prev[0], ss), prev[1] or yy) if prev else (ss, yy)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        hits = [card for card, (_, yy) in ranked if yy]
        per_day.append(len(hits) / k)
        if remove_detected:
            detected.update(hits)
    return (float(np.mean(per_day)) if per_day else float("nan")), per_day


@dataclass
class EvaluationData:
    """Scores joined with transactions and labels, one row per scored transaction."""

    tx_ids: np.ndarray
    cards: np.ndarray
    ts: np.ndarray  # event time, POSIX seconds
    y: np.ndarray  # bool, from the labels (absent label = legitimate)
    score: np.ndarray
    model: Optional[np.ndarray] = None

    @property
    def day(self) -> np.ndarray:
        return (self.ts // DAY).astype(np.int64)


def _day_index(d: date | str) -> int:
    if isinstance(d, str):
        d = date.fromisoformat(d)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() // DAY)


def evaluation_mask(data: EvaluationData, test_start: date | str, test_days: int = 7, delay_days: int = 7,
              known_lookback_days: int = 7) -> np.ndarray:
    """Rows in the test window, minus cards already known compromised on their day."""
    start = _day_index(test_start)
    day = data.day
    in_test = (day >= start) & (day < start + test_days)
    fraud_day: dict[str, list[int]] = {}
    lo = start - delay_days - known_lookback_days
    for card, d in zip(data.cards[data.y & (day >= lo)].tolist(), day[data.y & (day >= lo)].tolist()):
        fraud_day.setdefault(card, []).append(d)
    first_fraud = {card: min(ds) for card, ds in fraud_day.items()}
    keep = in_test.copy()
    for i in np.nonzero(in_test)[0].tolist():
        first = first_fraud.get(data.cards[i])
        if first is not None and first <= day[i] - delay_days - 1:
            keep[i] = False
    return keep


def evaluate(data: EvaluationData, test_start: date | str, test_days: int = 7, delay_days: int = 7,
             known_lookback_days: int = 7, k: int = 100) -> dict:
    """The three handbook metrics over the test window, as a JSON-ready dict."""
    mask = evaluation_mask(data, test_start, test_days, delay_days, known_lookback_days)
    y, s = data.y[mask], data.score[mask]
    cp, per_day = card_precision_at_k(data.day[mask], data.cards[mask], y, s, k=k)
    start = date.fromisoformat(test_start) if isinstance(test_start, str) else test_start
    return {
        "test_start": start.isoformat(),
        "test_days": test_days,
        "transactions": int(mask.sum()),
        "frauds": int(y.sum()),
        "auc_roc": round(roc_auc(y, s), 4),
        "average_precision": round(average_precision(y, s), 4),
        f"card_precision_at_{k}": round(cp, 4),
        f"card_precision_at_{k}_per_day": [round(v, 4) for v in per_day],
    }


def from_records(scores: Iterable[tuple[str, float]], transactions: Iterable[tuple[str, str, float]],
                 frauds: set[str]) -> EvaluationData:
    """Join (tx_id, score) with (tx_id, account_id, ts) and the set of fraudulent tx_ids."""
    score_of = dict(scores)
    ids, cards, ts, sc = [], [], [], []
    for tx_id, account_id, event_ts in transactions:
        s = score_of.get(tx_id)
        if s is None:
            continue
        ids.append(tx_id)
        cards.append(account_id)
        ts.append(event_ts)
        sc.append(s)
    y = np.fromiter((t in frauds for t in ids), dtype=bool, count=len(ids))
    return EvaluationData(np.asarray(ids), np.asarray(cards), np.asarray(ts, dtype=float), y, np.asarray(sc))
