"""The model shard: score first; learn labels in event-time steps (no look-ahead, canonical order)."""

from __future__ import annotations

import pickle
import random

from connectors.events import Transaction
from learners.features import FEATURE_NAMES
from learners.messages import FeaturedTransaction, LabelledExample, UnsampledCount
from learners.pending import PendingBucket, pack
from learners.scoring import ModelConfig, ModelShard
from learners.versions import HOOK_ONLY, MODEL_ONLY, VersionedLearner

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


def label(shard: ModelShard, i: int, label_ts: float, is_fraud, amount: float = 10.0) -> None:
    """The labelled example the await_labels stage would send for transaction ``t-i``."""
    shard.on_example(f"t-{i}", label_ts, is_fraud, pack(features(amount)))


def make_shard(**kw) -> ModelShard:
    kw.setdefault("allowed_lateness_s", L)
    kw.setdefault("negative_sampling", 1.0)
    return ModelShard(ModelConfig(warmup_frauds=0, **kw))


def test_label_is_used_two_to_three_steps_after_it_is_known():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(500.0))
    label(shard, 1, D0 + 7 * DAY, True, 500.0)
    assert shard.counts["labels_learned"] == 0 and len(shard.learner.held) == 1
    before = shard.on_transaction(tx(2, D0 + 7 * DAY + 3 * L - 1), features(500.0)).score
    assert shard.counts["labels_learned"] == 0  # scored by the version built to D0 + 7d: label not before it
    after = shard.on_transaction(tx(3, D0 + 7 * DAY + 3 * L), features(500.0)).score
    assert shard.counts["labels_learned"] == 1 and shard.counts["frauds_learned"] == 1
    assert after > before  # learned the fraud, then scored


def test_scores_do_not_depend_on_arrival_order_within_the_lateness():
    rng = random.Random(3)
    txs = [tx(i, D0 + i * 600, 10.0 + rng.random() * (300 if i % 11 == 0 else 20)) for i in range(600)]
    items = [FeaturedTransaction(t, features(t.amount), 0) for t in txs]
    items += [LabelledExample(t.tx_id, t.event_ts + 2 * DAY, t.amount > 200, pack(features(t.amount))) for t in txs]
    ordered = sorted(items, key=lambda m: (m.tx.event_ts, 1) if type(m) is FeaturedTransaction else (m.label_ts, 0))

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
    labels_first = ([m for m in ordered if type(m) is LabelledExample]
                    + [m for m in ordered if type(m) is FeaturedTransaction])
    assert run(labels_first) == reference


def test_watermark_is_the_slowest_source_partition():
    shard = make_shard()
    shard.on_transaction(tx(1, D0), features(10.0), part=0)
    shard.on_transaction(tx(2, D0), features(10.0), part=1)
    label(shard, 1, D0 + 4 * L, False)
    shard.on_transaction(tx(3, D0 + 12 * L), features(10.0), part=0)  # partition 0 runs ahead
    assert shard.counts["labels_learned"] == 0  # partition 1 is still at D0
    shard.on_transaction(tx(4, D0 + 7 * L), features(10.0), part=1)
    assert shard.counts["labels_learned"] == 1
    assert shard.counts["late_transactions"] == 0


def test_a_partition_quiet_on_the_wall_clock_does_not_stop_learning(monkeypatch):
    wall = [1000.0]
    monkeypatch.setattr("learners.scoring.time.monotonic", lambda: wall[0])
    shard = make_shard()
    shard.on_batch([FeaturedTransaction(tx(1, D0), features(10.0), 0),
                    FeaturedTransaction(tx(2, D0), features(10.0), 1)])
    label(shard, 1, D0 + 4 * L, False)  # partition 1 then goes quiet
    wall[0] += 5  # a full-speed replay: days of event time ahead within seconds
    shard.on_batch([FeaturedTransaction(tx(3, D0 + 200 * L), features(10.0), 0)])
    assert shard.counts["labels_learned"] == 0  # partition 1 is still waited for
    wall[0] += VersionedLearner.IDLE_PARTITION_WALL_S  # silent for longer than that: idle
    shard.on_batch([FeaturedTransaction(tx(4, D0 + 201 * L), features(10.0), 0)])
    assert shard.counts["labels_learned"] == 1
    # restored from a snapshot, every partition counts as heard at the restart: waited for again
    restored = ModelShard(shard.config, shard.snapshot())
    assert restored.learner.watermark == D0 < shard.learner.watermark


def test_stragglers_within_a_step_use_the_previous_version_beyond_it_are_late():
    shard = make_shard()
    shard.on_transaction(tx(0, D0), features(300.0))
    label(shard, 0, D0 + 10 * L, True, 300.0)
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
    label(shard, 1, D0 + L, False)  # older than the built version
    assert shard.counts["late_labels"] == 1 and shard.counts["labels_learned"] == 1


def test_negative_sampling_is_deterministic():
    a, b = make_shard(negative_sampling=0.3), make_shard(negative_sampling=0.3)
    for shard in (a, b):
        for i in range(300):
            shard.on_transaction(tx(i, D0 + i * 60), features(10.0 + i % 5))
            label(shard, i, D0 + i * 60, i % 50 == 0, 10.0 + i % 5)
        shard.on_transaction(tx(999, D0 + 10 * DAY), features(10.0))
    assert a.counts == b.counts
    assert 0.2 < (a.counts["labels_learned"] - a.counts["frauds_learned"]) / 294 < 0.4


def test_only_sampled_examples_are_held_until_their_step():
    shard = make_shard(negative_sampling=0.1)
    shard.on_transaction(tx(0, D0), features(10.0))
    for i in range(1, 1001):
        label(shard, i, D0 + 7 * DAY, i % 100 == 0)  # 10 frauds, 990 legitimate
    held_legit = sum(1 for _, _, y, _ in shard.learner.held if not y)
    assert shard.counts["labels_received"] == 1000
    assert sum(1 for _, _, y, _ in shard.learner.held if y) == 10  # every fraud
    assert 60 < held_legit < 140  # about a tenth of the legitimate: the rest never wait in the state
    shard.on_transaction(tx(2, D0 + 7 * DAY + 3 * L), features(10.0))
    assert shard.counts["labels_learned"] == 10 + held_legit and not shard.learner.held


def test_snapshot_restores_the_same_model():
    shard = make_shard()
    for i in range(300):
        amount = 10.0 + (i % 40) * (5 if i % 9 == 0 else 1)
        shard.on_transaction(tx(i, D0 + i * 600), features(amount))
        label(shard, i, D0 + i * 600, i % 9 == 0, amount)
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
        label(shard, i, D0 + i, True, 300.0)
    assert shard.on_transaction(tx(9, D0 + 3 * L), features(10.0)).model == "binned_logreg"


def test_reasons_only_for_alert_candidates():
    scored = make_shard(threshold=0.0).on_transaction(tx(1, D0), features(10.0))
    assert scored.candidate and scored.reasons is not None
    quiet = make_shard(threshold=1.01).on_transaction(tx(1, D0), features(10.0))
    assert not quiet.candidate and quiet.reasons is None


def test_inferred_negatives_are_learned_and_counted():
    shard = make_shard(label_mode="frauds")
    shard.on_transaction(tx(1, D0), features(10.0))
    label(shard, 1, D0 + 8 * DAY, None)  # from the account stage: no fraud label in time
    shard.on_transaction(tx(2, D0 + 8 * DAY + 3 * L), features(10.0))
    assert shard.counts["implicit_negatives"] == 1 and shard.counts["labels_learned"] == 1
    assert shard.counts["frauds_learned"] == 0


def test_online_quality_is_test_then_train_on_learned_examples():
    shard = make_shard()
    for i in range(400):
        fraud = i % 10 == 0
        amount = 300.0 if fraud else 10.0 + i % 7
        shard.on_transaction(tx(i, D0 + i * 60), features(amount))
        label(shard, i, D0 + i * 60, fraud, amount)
    shard.on_transaction(tx(999, D0 + 3 * DAY), features(10.0))
    quality = shard.online_quality()
    assert quality["window_frauds"] > 10 and quality["window_examples"] > 100
    assert quality["auc_roc"] > 0.9 and quality["average_precision"] > 0.5


def test_pending_bucket_joins_labels_in_either_order():
    bucket = PendingBucket()
    assert bucket.add("t-1", features(10.0)) == []
    assert bucket.label("t-1", D0 + DAY, False) == [LabelledExample("t-1", D0 + DAY, False, pack(features(10.0)))]
    assert bucket.label("t-2", D0 + DAY, True) == []  # its features have not arrived yet
    assert not bucket.empty
    [example] = bucket.add("t-2", features(50.0))
    assert (example.tx_id, example.is_fraud) == ("t-2", True) and bucket.empty
    restored = PendingBucket(bucket.snapshot())
    assert restored.empty


def test_every_legitimate_example_at_a_terminal_with_known_frauds_is_learned():
    shard = make_shard(negative_sampling=0.1)
    shard.on_transaction(tx(0, D0), features(10.0))
    at_fraud_terminal = list(features(10.0))
    at_fraud_terminal[FEATURE_NAMES.index("term_log_known_frauds_30d")] = 0.69
    for i in range(1, 201):
        vector = at_fraud_terminal if i % 2 else features(10.0)
        shard.on_example(f"t-{i}", D0 + 7 * DAY, False, pack(tuple(vector)))
    held = len(shard.learner.held)
    assert 100 + 2 < held < 100 + 20  # all 100 there, about a tenth of the 100 elsewhere


def test_scores_at_a_terminal_with_known_frauds_are_unsampled_at_their_own_rate():
    from learners.scoring import _unsample

    shard = make_shard(negative_sampling=0.1)
    for i in range(60):
        shard.on_transaction(tx(i, D0 + i * 60), features(10.0 + i))
        label(shard, i, D0 + i * 60, i % 3 == 0, 10.0 + i)
    plain = features(30.0)
    marked = list(plain)
    marked[FEATURE_NAMES.index("term_log_known_frauds_30d")] = 0.69
    later = D0 + 3 * DAY
    s_plain = shard.on_transaction(tx(100, later), plain).score
    s_marked = shard.on_transaction(tx(101, later), tuple(marked)).score
    version = shard._live()
    from learners.features import FEATURE_NAMES as names
    raw = version.model.predict_proba_one(dict(zip(names, marked))).get(True, 0.0)
    assert s_marked == _unsample(raw, 1.0)  # every negative there was learned: no correction
    raw_plain = version.model.predict_proba_one(dict(zip(names, plain))).get(True, 0.0)
    assert s_plain == _unsample(raw_plain, 0.1)


def test_unsampled_examples_are_counted_at_their_shard_and_never_held():
    """``await_labels`` drops examples outside the negative sample and sends their count
    (decision 0022); the shard counts them as received, as if each had come."""
    shard = ModelShard(ModelConfig())
    assert shard.on_batch([UnsampledCount(3, 1), UnsampledCount(2, 0)]) == []
    assert shard.counts["labels_received"] == 5 and shard.counts["implicit_negatives"] == 1
    assert shard.learner.held == [] and shard.counts["labels_learned"] == 0


def test_a_verdict_in_the_warm_up_is_learned_when_the_feed_would_teach_it():
    """Decision 0062: a verdict dated within ``verdict_warmup_days`` of the shard's first
    transaction is held until its ``feed_ts``; after the warm-up, at its own ts; an ordinary
    label (feed_ts 0) is never moved."""
    shard = make_shard(verdict_warmup_days=10.0)
    shard.on_transaction(tx(1, D0), features(500.0))
    shard.on_example("t-1", D0 + 4 * 3600, True, pack(features(500.0)), feed_ts=D0 + 7 * DAY)
    assert [h[0] for h in shard.learner.held] == [D0 + 7 * DAY] and shard.counts["verdicts_deferred"] == 1
    shard.on_example("t-2", D0 + 3600, True, pack(features(500.0)))
    assert sorted(h[0] for h in shard.learner.held) == [D0 + 3600, D0 + 7 * DAY]
    shard.on_transaction(tx(3, D0 + 12 * DAY), features(20.0))  # past the warm-up
    shard.on_example("t-3", D0 + 12 * DAY + 3600, False, pack(features(20.0)), feed_ts=D0 + 19 * DAY)
    assert shard.counts["verdicts_deferred"] == 1
    assert D0 + 12 * DAY + 3600 in [h[0] for h in shard.learner.held]


def test_a_verdict_that_overtook_its_transaction_keeps_its_feed_time():
    bucket = PendingBucket()
    assert bucket.label("t-1", D0 + 3600, True, feed_ts=D0 + 7 * DAY) == []
    bucket = PendingBucket(bucket.snapshot())  # and through a snapshot
    [example] = bucket.add("t-1", features(500.0))
    assert (example.label_ts, example.feed_ts, example.is_fraud) == (D0 + 3600, D0 + 7 * DAY, True)
    assert bucket.empty


def _cuts_after(verdicts: str) -> tuple[dict, list[int]]:
    """20 days of transactions every 10 minutes, frauds exactly those above 220 (as the
    simulator's first scenario), labels from the feed 7 days later; with ``verdicts`` other
    than "none", the alerts (every fraud, a fifth of the legitimate amounts above 200) are
    answered 4 hours after the transaction instead: "feed_ts" as the flow sends them (the feed's time
    carried), "plain" as ordinary labels. Returns the amount cuts, and labels learned at day 8."""
    rng = random.Random(7)
    shard = make_shard(verdict_warmup_days=0.0)
    shard.learner.hooks.cut_frauds = 30
    events = []
    for i in range(20 * 144):
        ts = D0 + i * 600
        fraud = rng.random() < 0.06
        amount = round(rng.uniform(220.01, 400.0) if fraud else rng.uniform(10.0, 219.99), 2)
        events.append((ts, 1, i, amount, fraud))
        alerted = fraud or (amount > 200 and rng.random() < 0.2)
        answered = verdicts != "none" and alerted
        if answered:
            events.append((ts + 4 * 3600, 0, i, amount, fraud))
        else:
            events.append((ts + 7 * DAY, 0, i, amount, fraud))
    learned_day_8 = []
    for ts, kind, i, amount, fraud in sorted(events):
        if kind == 1:
            shard.on_transaction(tx(i, ts, amount), features(amount))
            if not learned_day_8 and ts >= D0 + 8 * DAY:
                learned_day_8.append(shard.counts["labels_learned"])
        else:
            feed_ts = ts - 4 * 3600 + 7 * DAY if verdicts == "feed_ts" and ts < D0 + i * 600 + 7 * DAY else 0.0
            shard.on_example(f"t-{i}", ts, fraud, pack(features(amount)), feed_ts=feed_ts)
    shard.on_transaction(tx(10**6, D0 + 40 * DAY), features(10.0))  # build everything
    return shard.learner.hooks.cuts, learned_day_8


def test_verdicts_reach_the_supervised_cuts_when_the_feed_would_have_brought_them():
    """Decision 0064: the supervised cuts are placed once, from the first labelled examples.
    Verdicts (alerts answered within hours) learned as they come fill that buffer with alerted
    frauds and few legitimate examples, and the amount cut lands below the fraud threshold;
    a verdict carrying its feed time reaches the cuts only then, so they are the feed's, while
    the model itself still learns the verdict at once."""
    feed, feed_learned = _cuts_after("none")
    carried, carried_learned = _cuts_after("feed_ts")
    plain, _ = _cuts_after("plain")
    assert feed["amount"] and 218.0 < feed["amount"][-1] < 220.01, feed  # just under the threshold
    assert carried == feed
    assert plain["amount"] != feed["amount"], plain  # what verdicts did to the cuts before
    assert carried_learned[0] > feed_learned[0]  # the model learned the verdicts early


def test_examples_waiting_for_the_labels_hook_survive_a_snapshot():
    shard = make_shard(verdict_warmup_days=0.0)
    shard.on_transaction(tx(1, D0), features(500.0))
    shard.on_example("t-1", D0 + 4 * 3600, True, pack(features(500.0)), feed_ts=D0 + 7 * DAY)
    held = sorted(shard.learner.held)
    assert [(h[0], h[4]) for h in held] == [(D0 + 4 * 3600, MODEL_ONLY), (D0 + 7 * DAY, HOOK_ONLY)]  # the model: now
    restored = ModelShard(shard.config, shard.snapshot())
    assert restored.learner.held == shard.learner.held
    older = pickle.loads(shard.snapshot())
    older["learner"]["held"] = [h[:4] for h in older["learner"]["held"]]  # entries written before decision 0064
    assert [d[2:] for d in ModelShard(shard.config, pickle.dumps(older)).learner.due(D0 + 8 * DAY)] == [(True, True)] * 2


def test_no_cold_start_alert_in_the_shards_first_day():
    """Decision 0065: the cold-start detector alerts neither before it has learned
    ``MIN_SEEN`` transactions nor in the first day of the shard's event time."""
    shard = ModelShard(ModelConfig(allowed_lateness_s=L, coldstart_alert_rate=0.05))
    rng = random.Random(5)
    first_day, later = [], []
    for i in range(2 * 2880):  # two days, a transaction every 30 s
        ts = D0 + i * 30
        amount = rng.uniform(5, 50) * (20 if i % 97 == 0 else 1)
        learned = shard.counts["detector_learned"]
        s = shard.on_transaction(tx(i, ts, amount), features(amount))
        (first_day if ts < D0 + DAY else later).append((learned, s))
    # day one, the detector past MIN_SEEN, a score above its threshold: still no alert
    blocked = [s for learned, s in first_day if learned >= 1000 and s.score >= s.threshold]
    assert blocked and not any(s.candidate for _, s in first_day)
    assert any(s.candidate for _, s in later)
