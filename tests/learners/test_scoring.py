"""The model shard: score first; learn labels in event-time steps (no look-ahead, canonical order)."""

from __future__ import annotations

import pickle
import random

import pytest

from connectors.events import Transaction
from learners.features import FEATURE_NAMES
from learners.scoring import ModelConfig, ModelShard

D0 = 1522540800.0  # a multiple of the one-hour step used here
DAY = 86_400.0
L = 3600.0


def features(amount: float) -> tuple[float, ...]:
    f = [0.0] * len(FEATURE_NAMES)
    f[FEATURE_NAMES.index("amount")] = amount
    f[FEATURE_NAMES.index("log_amount")] = amount / 100
    return tuple(f)


def tx(i: int, ts: float, amount: float = 10.0) -> Transaction:
    return Transaction(f"t-{i}", f"c-{i % 7}", ts, amount, "m-1")


def make_shard(**kw) -> ModelShard:
    kw.setdefault("allowed_lateness_s", L)
    kw.setdefault("negative_sampling", 1.0)
    return ModelShard(ModelConfig(warmup_frauds=0, **kw))


def test_label_is_used_two_to_three_steps_after_it_is_known():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(500.0))
    shard.on_label("t-1", D0 + 7 * DAY, True)
    assert shard.counts["labels_learned"] == 0 and len(shard.held) == 1
    before = shard.on_transaction(tx(2, D0 + 7 * DAY + 3 * L - 1), features(500.0)).score
    assert shard.counts["labels_learned"] == 0  # scored by the version built to D0 + 7d: label not before it
    after = shard.on_transaction(tx(3, D0 + 7 * DAY + 3 * L), features(500.0)).score
    assert shard.counts["labels_learned"] == 1 and shard.counts["frauds_learned"] == 1
    assert after > before  # learned the fraud, then scored


def test_scores_do_not_depend_on_arrival_order_within_the_lateness():
    rng = random.Random(3)
    txs = [tx(i, D0 + i * 600, 10.0 + rng.random() * (300 if i % 11 == 0 else 20)) for i in range(600)]
    items = [("tx", t, features(t.amount), 0) for t in txs]
    items += [("label", t.account_id, t.tx_id, t.event_ts + 2 * DAY, t.amount > 200) for t in txs]
    ordered = sorted(items, key=lambda it: (it[1].event_ts, 1) if it[0] == "tx" else (it[3], 0))

    def run(stream) -> dict:
        shard = make_shard()
        out = {}
        for i in range(0, len(stream), 40):
            for s in shard.on_batch(list(stream[i:i + 40])):
                out[s.tx.tx_id] = s.score
        assert shard.counts["late_transactions"] == shard.counts["late_labels"] == 0
        return out

    reference = run(ordered)
    shuffled = []
    for i in range(0, len(ordered), 5):  # local disorder: within 5 events (< one step)
        chunk = ordered[i:i + 5]
        rng.shuffle(chunk)
        shuffled += chunk
    assert run(shuffled) == reference
    labels_first = [it for it in ordered if it[0] == "label"] + [it for it in ordered if it[0] == "tx"]
    assert run(labels_first) == reference


def test_watermark_is_the_slowest_source_partition():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(10.0), part=0)
    shard.on_transaction(tx(2, D0), features(10.0), part=1)
    shard.on_label("t-1", D0 + 4 * L, False)
    shard.on_transaction(tx(3, D0 + 12 * L), features(10.0), part=0)  # partition 0 runs ahead
    assert shard.counts["labels_learned"] == 0  # partition 1 is still at D0
    shard.on_transaction(tx(4, D0 + 7 * L), features(10.0), part=1)
    assert shard.counts["labels_learned"] == 1
    assert shard.counts["late_transactions"] == 0


def test_a_partition_quiet_for_a_day_of_event_time_does_not_stop_learning():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(10.0), part=0)
    shard.on_transaction(tx(2, D0), features(10.0), part=1)  # partition 1 then goes quiet
    shard.on_label("t-1", D0 + 4 * L, False)
    shard.on_transaction(tx(3, D0 + 20 * L), features(10.0), part=0)
    assert shard.counts["labels_learned"] == 0  # 20 h behind: still waited for
    shard.on_transaction(tx(4, D0 + 25 * L), features(10.0), part=0)
    assert shard.counts["labels_learned"] == 1  # more than a day behind: idle


def test_stragglers_within_a_step_use_the_previous_version_beyond_it_are_late():
    shard = make_shard()
    shard.on_transaction(tx(0, D0), features(300.0))
    shard.on_label("t-0", D0 + 10 * L, True)
    first = shard.on_transaction(tx(1, D0 + 11.5 * L), features(300.0)).score  # version D0+9L: no label yet
    shard.on_transaction(tx(2, D0 + 13.2 * L), features(300.0))  # version D0+11L: learns it
    assert shard.counts["frauds_learned"] == 1
    straggler = shard.on_transaction(tx(3, D0 + 11.5 * L), features(300.0)).score
    assert straggler == first and shard.counts["late_transactions"] == 0  # a kept version
    for i, step in enumerate(range(14, 22)):  # eight more steps: only the last four versions are kept
        shard.on_transaction(tx(10 + i, D0 + step * L + 1), features(300.0))
    shard.on_transaction(tx(5, D0 + 11.5 * L), features(300.0))
    assert shard.counts["late_transactions"] == 1


def test_late_label_is_learned_and_counted():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(10.0))
    shard.on_transaction(tx(2, D0 + 5 * L), features(10.0))
    shard.on_label("t-1", D0 + L, False)  # older than the built version
    assert shard.counts["late_labels"] == 1 and shard.counts["labels_learned"] == 1


def test_label_whose_transaction_never_came_is_counted():
    shard = make_shard()
    shard.on_label("t-404", D0, True)
    shard.on_transaction(tx(1, D0 + 3 * L), features(10.0))
    assert shard.counts["labels_unmatched"] == 1 and shard.counts["labels_learned"] == 0


def test_frauds_only_feed_learns_silence_as_legitimate():
    shard = make_shard(label_mode="frauds", label_timeout_days=8)
    shard.on_transaction(tx(1, D0), features(10.0))
    shard.on_transaction(tx(2, D0 + 60), features(400.0))
    shard.on_label("t-2", D0 + 7 * DAY, True)
    shard.on_transaction(tx(3, D0 + 7 * DAY + 3 * L), features(10.0))
    assert (shard.counts["frauds_learned"], shard.counts["implicit_negatives"]) == (1, 0)
    shard.on_transaction(tx(4, D0 + 8 * DAY + 3 * L), features(10.0))
    assert shard.counts["implicit_negatives"] == 1  # t-1: no fraud label within 8 days
    assert shard.counts["labels_learned"] == 2 and shard.counts["labels_unmatched"] == 0
    assert "t-2" not in shard.pending and "t-1" not in shard.pending


def test_negative_sampling_is_deterministic():
    a, b = make_shard(negative_sampling=0.3), make_shard(negative_sampling=0.3)
    for shard in (a, b):
        for i in range(300):
            shard.on_transaction(tx(i, D0 + i * 60), features(10.0 + i % 5))
            shard.on_label(f"t-{i}", D0 + i * 60, i % 50 == 0)
        shard.on_transaction(tx(999, D0 + 10 * DAY), features(10.0))
    assert a.counts == b.counts
    assert 0.2 < (a.counts["labels_learned"] - a.counts["frauds_learned"]) / 294 < 0.4


def test_snapshot_restores_the_same_model():
    shard = make_shard()
    for i in range(300):
        shard.on_transaction(tx(i, D0 + i * 600), features(10.0 + (i % 40) * (5 if i % 9 == 0 else 1)))
        shard.on_label(f"t-{i}", D0 + i * 600, i % 9 == 0)
    restored = ModelShard(shard.config, pickle.loads(pickle.dumps(shard.snapshot())))
    for i in range(300, 330):
        t, f = tx(i, D0 + i * 600), features(10.0 + i)
        assert restored.on_transaction(t, f).score == shard.on_transaction(t, f).score
    assert restored.counts == shard.counts


def test_cold_start_uses_the_anomaly_score_until_enough_frauds():
    shard = ModelShard(ModelConfig(warmup_frauds=2, allowed_lateness_s=L))
    first = shard.on_transaction(tx(0, D0), features(10.0))
    assert first.model == "coldstart-hst"
    for i in range(1, 4):
        shard.on_transaction(tx(i, D0 + i), features(300.0))
        shard.on_label(f"t-{i}", D0 + i, True)
    assert shard.on_transaction(tx(9, D0 + 3 * L), features(10.0)).model == "binned_logreg"


def test_reasons_only_for_alert_candidates():
    scored = make_shard(threshold=0.0).on_transaction(tx(1, D0), features(10.0))
    assert scored.reasons is not None
    quiet = make_shard(threshold=1.01).on_transaction(tx(1, D0), features(10.0))
    assert quiet.reasons is None


@pytest.mark.parametrize("mode", ["all", "frauds"])
def test_pending_features_are_released(mode):
    shard = make_shard(label_mode=mode, label_timeout_days=1)
    for i in range(50):
        shard.on_transaction(tx(i, D0 + i * 3600), features(10.0))
        if mode == "all":
            shard.on_label(f"t-{i}", D0 + i * 3600 + 1800, False)
    shard.on_transaction(tx(99, D0 + 5 * DAY), features(10.0))
    assert len(shard.pending) == 1  # only the last transaction waits for its label
