"""Metrics against hand-computed cases and the handbook's test protocol."""

from __future__ import annotations

import numpy as np
import pytest

from learners.evaluation import (
    EvaluationData, average_precision, card_precision_at_k, evaluate, roc_auc, evaluation_mask,
)

DAY = 86_400
D0 = 1533686400  # 2018-08-08T00:00:00Z


def test_auc_by_hand():
    # positives 0.35, 0.8 ; negatives 0.1, 0.4: pairs won 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_average_precision_by_hand():
    # ranking: 0.8 (P) 0.4 (N) 0.35 (P) 0.1 (N): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    assert average_precision([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    # ties are one threshold: {P, N} at 0.5 then P at 0.1 -> 1/2*1/2 + 1/2*2/3
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.1]) == pytest.approx(0.25 + 1 / 3)


def test_card_precision_by_hand_with_detected_cards_removed():
    days = [0, 0, 0, 0, 1, 1, 1]
    cards = ["a", "a", "b", "c", "a", "b", "c"]
    y = [0, 1, 0, 1, 1, 1, 0]
    s = [0.1, 0.9, 0.8, 0.2, 0.95, 0.9, 0.1]
    mean, per_day = card_precision_at_k(days, cards, y, s, k=2)
    # day 0: top-2 cards a (0.9, fraud) and b (0.8, legit) -> 1/2; a is now detected
    # day 1: a removed; top-2 b (fraud) and c (legit) -> 1/2
    assert per_day == [0.5, 0.5] and mean == 0.5
    _, kept = card_precision_at_k(days, cards, y, s, k=2, remove_detected=False)
    assert kept == [0.5, 1.0]  # day 1 keeps a: a and b, both frauds
    _, k1 = card_precision_at_k(days, cards, y, s, k=1)
    assert k1 == [1.0, 1.0]  # day 1 without a: b is top and fraud


def _data(rows):
    ids, cards, ts, y, s = zip(*rows)
    return EvaluationData(np.array(ids), np.array(cards), np.array(ts, dtype=float), np.array(y, dtype=bool),
                          np.array(s, dtype=float))


def test_known_compromised_cards_are_left_out_by_day():
    rows = [
        ("t1", "k", D0 - 10 * DAY, 1, 0.9),  # fraud 10 days before the test: card k is known
        ("t2", "k", D0 + 3600, 0, 0.5),
        ("t3", "n", D0 - 7 * DAY, 1, 0.9),  # fraud 7 days before day 0: label not yet known on day 0
        ("t4", "n", D0 + 3600, 1, 0.8),
        ("t5", "n", D0 + DAY + 3600, 1, 0.8),  # ... but known on day 1
        ("t6", "o", D0 - 30 * DAY, 1, 0.9),  # before the lookback: not counted as known
        ("t7", "o", D0 + 3600, 0, 0.1),
    ]
    data = _data(rows)
    mask = evaluation_mask(data, "2018-08-08", test_days=7, delay_days=7, known_lookback_days=7)
    assert [tx for tx, m in zip(data.tx_ids, mask) if m] == ["t4", "t7"]


def test_evaluate_returns_the_three_metrics():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2000):
        day = int(rng.integers(0, 7))
        fraud = rng.random() < 0.05
        rows.append((f"t{i}", f"c{i % 300}", D0 + day * DAY + 60, fraud, rng.random() + (0.7 if fraud else 0)))
    result = evaluate(_data(rows), "2018-08-08")
    assert set(result) >= {"auc_roc", "average_precision", "card_precision_at_100", "transactions", "frauds"}
    assert 0.5 < result["auc_roc"] <= 1 and 0 < result["average_precision"] <= 1
    assert len(result["card_precision_at_100_per_day"]) == 7
