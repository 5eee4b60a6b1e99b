"""The handbook baseline reproduction and the ceiling oracle (benchmarks.baseline)."""

from __future__ import annotations

import numpy as np

from benchmarks.baseline import fit_logistic, handbook_features, one_seed


def test_logistic_fit_is_the_regularised_optimum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    y = (X @ np.array([2.0, -1.0, 0.0]) + 0.5 + rng.logistic(size=2000) > 0).astype(float)
    w = fit_logistic(X, y, C=1.0)
    Xb = np.column_stack([np.ones(len(X)), X])
    p = 1 / (1 + np.exp(-(Xb @ w)))
    grad = Xb.T @ (p - y) + np.r_[0.0, w[1:]]  # zero at the optimum of log-loss + ||w||^2 / 2
    assert np.max(np.abs(grad)) < 1e-6
    assert w[1] > 1.5 and w[2] < -0.7 and abs(w[3]) < 0.2


def test_customer_and_terminal_windows_by_hand():
    DAY = 86_400.0
    cust = np.array([0, 0, 0, 1])
    term = np.array([5, 5, 5, 5])
    ts = np.array([0.0, 0.5 * DAY, 8.2 * DAY, 8.3 * DAY])
    amount = np.array([10.0, 30.0, 50.0, 7.0])
    fraud = np.array([True, False, False, False])
    f = handbook_features(cust, term, ts, amount, fraud, np.array([1, 2, 3]))
    # columns: amount, weekend, night, (n, avg) x 1/7/30 d for the customer, (n, risk) x 1/7/30 d for the terminal
    assert f[0, 3] == 2 and f[0, 4] == 20.0  # customer, 1 day: both transactions, itself included
    assert f[1, 3] == 1 and f[1, 7] == 3 and f[1, 8] == 30.0  # 30 days: all three
    # terminal risk ends 7 days back: at 8.3 d the 1-day window is (0.3 d, 1.3 d]: one legitimate
    assert f[2, 9] == 1 and f[2, 10] == 0.0
    assert f[2, 11] == 2 and f[2, 12] == 0.5  # 7 days (-5.7 d, 1.3 d]: one fraud of two


def test_the_ceiling_is_above_the_batch_baseline_on_a_small_stream():
    r = one_seed(3, customers=300, terminals=600, days=140)
    c = r["ceiling"]
    assert r["frauds"] > 20 and c["frauds_no_model_can_see"] > 0
    assert c["auc_roc"] > r["auc_roc"] and c["average_precision"] > r["average_precision"]
    assert c["auc_roc"] < 1.0  # the frauds nobody can see keep it below perfect
