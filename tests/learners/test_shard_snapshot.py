"""The model shard's snapshot: an explicit, versioned dict of its parts; the layout written
before the split (the shard's pickled ``__dict__``, recovery stores of earlier versions) is
still read, and the restored shard scores bit for bit as the shard that wrote it went on to.

``data/shard-snapshot-v1.pickle.xz`` was written by the code before the split (commit 44998a5,
``learners/scoring.py`` with ``_TRANSIENT``): for each case the shard was driven through
:func:`tests.learners.shard_stream.drive` up to ``start``, its ``snapshot()`` kept, then driven
on to ``stop``, keeping every (score, threshold, model, reasons), its counts and its online
quality. One case is taken during the cold start, one once supervised.
"""

from __future__ import annotations

import lzma
import pickle
from pathlib import Path

import pytest

from learners.features import FEATURE_NAMES
from learners.pending import pack
from learners.scoring import SNAPSHOT_VERSION, ModelShard
from tests.learners.shard_stream import CONFIG, LATER_FEATURES, drive

FIXTURE = Path(__file__).parent / "data" / "shard-snapshot-v1.pickle.xz"


def _with_later_features(case: dict) -> dict:
    """The fixture's feature vectors have the features of the version that wrote it; the flow
    refuses a recovery store of another feature set (``recovery_store.feature_layout_error``).
    What is tested here is the snapshot's layout, so its held vectors and feature means get the
    features added since at their "none" value, as the stream gives them."""
    import struct

    old = [name for name in FEATURE_NAMES if name not in LATER_FEATURES]
    unpack_old = struct.Struct(f"<{len(old)}f").unpack

    def repacked(packed: bytes) -> bytes:
        values = dict(zip(old, unpack_old(packed)))
        return pack(tuple(values[name] if name in values else LATER_FEATURES[name] for name in FEATURE_NAMES))

    state = pickle.loads(case["state"])
    state["held"] = [(*h[:3], repacked(h[3]), *h[4:]) for h in state["held"]]
    state["unlearned"] = [(u[0], u[1], repacked(u[2]), *u[3:]) for u in state["unlearned"]]
    means = dict(zip(old, state["means"]))
    state["means"] = [means[name] if name in means else LATER_FEATURES[name] for name in FEATURE_NAMES]
    return {**case, "state": pickle.dumps(state)}


CASES = [_with_later_features(c) for c in pickle.loads(lzma.decompress(FIXTURE.read_bytes()))]


@pytest.mark.parametrize("case", CASES, ids=[f"from-{c['start']}" for c in CASES])
def test_the_layout_before_the_split_restores_to_the_same_scores(case):
    assert "version" not in pickle.loads(case["state"])  # the old layout indeed
    shard = ModelShard(CONFIG, case["state"])
    assert drive(shard, case["start"], case["stop"]) == case["scores"]
    assert shard.counts == case["counts"]
    assert shard.online_quality() == case["quality"]


def test_a_cold_start_case_and_a_supervised_case_are_covered():
    supervised = [ModelShard(CONFIG, case["state"]).supervised for case in CASES]
    assert supervised == [False, True]


def test_the_snapshot_is_a_versioned_dict_of_parts_and_round_trips():
    shard = ModelShard(CONFIG)
    drive(shard, 0, 1200)  # into the supervised model, with a cold start behind it
    state = pickle.loads(shard.snapshot())
    assert state["version"] == SNAPSHOT_VERSION == 2
    assert set(state) == {"version", "shard", "learner", "cold_start", "threshold", "quality"}
    assert state["learner"]["held"] and state["learner"]["previous"] and state["threshold"]["day_scores"]
    restored = ModelShard(CONFIG, shard.snapshot())
    assert drive(restored, 1200, 1400) == drive(shard, 1200, 1400)
    assert restored.counts == shard.counts and restored.online_quality() == shard.online_quality()


def test_a_snapshot_from_a_newer_version_is_refused_with_its_version():
    blob = pickle.dumps({"version": 99})
    with pytest.raises(ValueError, match="model shard snapshot version 99 is not supported"):
        ModelShard(CONFIG, blob)


def test_learning_hooks_are_found_when_the_model_is_built_restored_or_replaced():
    from learners.models import build_classifier

    shard = ModelShard(CONFIG)
    assert shard.learner.hooks is shard.model.steps["StepFeatures"]
    for state in (shard.snapshot(), CASES[0]["state"]):
        restored = ModelShard(CONFIG, state)
        assert restored.learner.hooks is restored.model.steps["StepFeatures"]
    shard.warm_start(build_classifier("logreg"), {"name": "x"})
    assert shard.learner.hooks is None  # its first step is a StandardScaler: no hooks
