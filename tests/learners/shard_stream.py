"""A deterministic stream for the model shard's snapshot-compatibility test
(:mod:`tests.learners.test_shard_snapshot`): cold start, then supervised, adaptive threshold,
negative sampling, two source partitions, labels a day late."""

from __future__ import annotations

import random
from typing import Iterator

from connectors.events import Transaction
from learners.features import FEATURE_NAMES
from learners.pending import pack
from learners.scoring import ModelConfig

D0 = 1522540800.0
CONFIG = ModelConfig(warmup_frauds=10, allowed_lateness_s=3600.0, negative_sampling=0.3, alert_rate=0.01,
                     quality_window=500)
SPLIT = 2400  # the snapshot is taken after this many transactions
TOTAL = 2700
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
# features added after the fixture of test_shard_snapshot was written: at their "none" value, and
# drawn no random number, so the stream is the one the fixture's shard saw (a model knows nothing
# of a feature it never saw: a constant standardises to 0, and its pickled StepFeatures has no
# indicator for it)
LATER_FEATURES = {"acct_days_since_known_fraud": -1.0}


def _features(rng: random.Random, fraud: bool) -> tuple[float, ...]:
    f = [LATER_FEATURES[name] if name in LATER_FEATURES else rng.random() for name in FEATURE_NAMES]
    amount = rng.uniform(200, 900) if fraud else rng.uniform(1, 120)
    f[_INDEX["amount"]] = amount
    f[_INDEX["log_amount"]] = amount / 100
    f[_INDEX["acct_amount_robust_z"]] = amount / 50 - 1
    f[_INDEX["term_log_known_frauds_30d"]] = 0.69 if rng.random() < 0.05 else 0.0
    return tuple(f)


def events(start: int, stop: int) -> Iterator[tuple]:
    """("tx", tx, features, part) and ("example", tx_id, label_ts, is_fraud, packed) in arrival
    order; each transaction's example arrives a day later (with the transaction 720 later)."""
    for i in range(start, stop):
        rng = random.Random(i)
        fraud = i % 13 == 0
        ts = D0 + i * 120.0
        f = _features(rng, fraud)
        yield ("tx", Transaction(f"t-{i}", f"c-{i % 17}", ts, f[_INDEX["amount"]], f"m-{i % 5}"), f, i % 2)
        j = i - 720
        if j >= 0:
            rng = random.Random(j)
            yfraud = j % 13 == 0
            yield ("example", f"t-{j}", D0 + j * 120.0 + 86_400.0, yfraud, pack(_features(rng, yfraud)))


def drive(shard, start: int, stop: int) -> list[tuple]:
    """Feed ``events(start, stop)`` one by one; (score, threshold, model, reasons) per transaction."""
    out = []
    for item in events(start, stop):
        if item[0] == "tx":
            s = shard.on_transaction(item[1], item[2], item[3])
            out.append((s.score, s.threshold, s.model, s.reasons))
        else:
            shard.on_example(item[1], item[2], item[3], item[4])
    return out
