"""The simulator reproduces the handbook's published figures and its three fraud scenarios."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from connectors.events import Label, Transaction
from connectors.simulator import SimulatorConfig, simulate

DAY = 86_400


@pytest.fixture(scope="module")
def reference_90_days():
    """The published configuration (5,000 customers, 10,000 terminals), first 90 days."""
    cfg = SimulatorConfig(days=90, seed=3)
    truth: dict = {}
    txs = [e for e in simulate(cfg, truth=truth) if isinstance(e, Transaction)]
    return cfg, txs, truth


def test_transactions_per_day_match_published(reference_90_days):
    cfg, txs, _ = reference_90_days
    per_day = len(txs) / cfg.days
    # Published: 1,754,155 transactions over 183 days = 9,585 a day.
    assert per_day == pytest.approx(9_585, rel=0.05)


def test_frauds_per_day_match_published_once_scenarios_are_running(reference_90_days):
    cfg, txs, truth = reference_90_days
    start = cfg.start_ts
    steady = [t for t in txs if t.event_ts >= start + 30 * DAY]  # compromises last up to 28 days
    frauds_per_day = sum(truth[t.tx_id].is_fraud for t in steady) / (cfg.days - 30)
    assert frauds_per_day == pytest.approx(85, rel=0.10)  # published: about 85 a day
    share = sum(truth[t.tx_id].is_fraud for t in steady) / len(steady)
    assert share == pytest.approx(85 / 9_585, rel=0.10)


def test_first_month_has_fewer_frauds(reference_90_days):
    cfg, txs, truth = reference_90_days
    by_month = Counter(int((t.event_ts - cfg.start_ts) // (30 * DAY)) for t in txs if truth[t.tx_id].is_fraud)
    assert by_month[0] < 0.8 * by_month[1]


def test_scenario_1_every_large_amount_is_fraud(reference_90_days):
    _, txs, truth = reference_90_days
    large = [t for t in txs if t.amount > 220]
    assert large and all(truth[t.tx_id].is_fraud for t in large)
    assert any(truth[t.tx_id].scenario == 1 for t in large)


def test_scenario_2_compromised_terminals_are_all_fraud_for_28_days(reference_90_days):
    cfg, txs, truth = reference_90_days
    by_terminal = defaultdict(list)
    for t in txs:
        by_terminal[t.terminal_id].append(t)
    compromised = {t.terminal_id for t in txs if truth[t.tx_id].scenario == 2}
    assert len(compromised) >= 2 * 60  # about 2 new terminals a day
    spans = []
    for terminal in compromised:
        ts = [t.event_ts for t in by_terminal[terminal] if truth[t.tx_id].scenario == 2]
        lo, hi = min(ts), max(ts)
        spans.append((hi - lo) / DAY)
        if hi - lo >= 28 * DAY:
            continue  # drawn twice: two separate compromises
        # Between its first and last compromised transaction, every transaction is fraud.
        assert all(truth[t.tx_id].is_fraud for t in by_terminal[terminal] if lo <= t.event_ts <= hi)
    # A compromise lasts 28 days (a terminal drawn twice can last longer: rare).
    assert np.mean(np.array(spans) < 28) > 0.95
    assert max(spans) > 20


def test_scenario_3_a_third_of_compromised_cards_spend_five_times(reference_90_days):
    cfg, txs, truth = reference_90_days
    s3 = [t for t in txs if truth[t.tx_id].scenario == 3]
    cards = {t.account_id for t in s3}
    assert len(cards) >= 3 * 60
    card_txs = [t for t in txs if t.account_id in cards]
    mean_fraud = np.mean([t.amount for t in card_txs if truth[t.tx_id].scenario == 3])
    mean_legit = np.mean([t.amount for t in card_txs if not truth[t.tx_id].is_fraud])
    assert mean_fraud / mean_legit == pytest.approx(5, rel=0.25)
    # During each card's 14-day window roughly a third of its transactions are frauds.
    share = []
    for card in list(cards)[:150]:
        mine = [t for t in card_txs if t.account_id == card]
        fraud_days = [t.event_ts for t in mine if truth[t.tx_id].scenario == 3]
        lo, hi = min(fraud_days), min(fraud_days) + 13 * DAY
        window = [t for t in mine if lo <= t.event_ts <= hi]
        share.append(sum(truth[t.tx_id].scenario == 3 for t in window) / len(window))
    assert np.mean(share) == pytest.approx(1 / 3, abs=0.12)


def test_every_transaction_has_its_label_after_the_delay(small_stream, small_config):
    events, truth = small_stream
    txs = {e.tx_id: e for e in events if isinstance(e, Transaction)}
    labels = [e for e in events if isinstance(e, Label)]
    assert len(labels) == len(txs)
    delay = small_config.label_delay_days * DAY
    for label in labels:
        tx = txs[label.tx_id]
        assert label.event_ts == tx.event_ts + delay
        assert label.is_fraud == truth[tx.tx_id].is_fraud
        assert label.account_id == tx.account_id


def test_event_time_order_with_labels_first_on_ties(small_stream):
    events, _ = small_stream
    for a, b in zip(events, events[1:]):
        assert a.event_ts <= b.event_ts
        if a.event_ts == b.event_ts:
            assert not (isinstance(a, Transaction) and isinstance(b, Label))


def test_frauds_only_feed():
    cfg = SimulatorConfig(customers=300, terminals=600, days=30, seed=1, labels="frauds")
    truth: dict = {}
    events = list(simulate(cfg, truth=truth))
    labels = [e for e in events if isinstance(e, Label)]
    assert labels and all(label.is_fraud for label in labels)
    assert len(labels) == sum(t.is_fraud for t in truth.values())


def test_seeded_runs_are_identical_and_seeds_differ():
    cfg = SimulatorConfig(customers=200, terminals=400, days=10, seed=5)
    assert list(simulate(cfg)) == list(simulate(cfg))
    assert list(simulate(cfg)) != list(simulate(cfg.with_(seed=6)))


def test_partitions_split_accounts_and_keep_the_stream():
    cfg = SimulatorConfig(customers=200, terminals=400, days=10, seed=5)
    from connectors.simulator import Simulation

    whole = list(simulate(cfg))
    parts = [list(Simulation(cfg, p, 3).events()) for p in range(3)]
    assert sorted(map(repr, whole)) == sorted(repr(e) for part in parts for e in part)
    for p, part in enumerate(parts):
        assert {e.account_id for e in part} <= {f"c-{c}" for c in range(200) if c % 3 == p}


@pytest.mark.parametrize("field, value", [("customers", 0), ("days", 0), ("radius", 0.0), ("labels", "some")])
def test_bad_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**{field: value})
