"""The supervised model as a sequence of versions in event-time steps (rules: :mod:`learners.scoring`).

A :class:`VersionedLearner` holds the live model and the version it is (``built_to``), the
last ``KEPT_VERSIONS`` older versions for stragglers, the labelled examples held until their
step, and the per-partition clocks behind the watermark. It says which version a time wants
and when a version may be built; :class:`learners.scoring.ModelShard` builds it, because a
build also teaches the cold start and moves the threshold.
"""

from __future__ import annotations

import heapq
import math
import pickle
import time
from typing import Any, Iterator, Optional

from learners.features import step_boundary
from learners.models import LearningHooks, learning_hooks

__all__ = ["HOOK_ONLY", "MODEL_ONLY", "Version", "VersionedLearner"]

# A held example learned by one of the two only (decision 0064): a verdict is learned by the
# model at its ts, and by the model's labels hook when the label feed would have brought it.
MODEL_ONLY, HOOK_ONLY = 1, 2


class Version:
    """What scoring needs from one model version (the live one, or a kept copy)."""

    __slots__ = ("built_to", "model", "detector", "anomaly_threshold", "supervised")

    def __init__(self, built_to: float, model: Any, detector: Any, anomaly_threshold: float, supervised: bool):
        self.built_to = built_to
        self.model = model
        self.detector = detector
        self.anomaly_threshold = anomaly_threshold
        self.supervised = supervised


class VersionedLearner:
    """Model versions, held examples and the watermark of one shard.

    ``step`` is the allowed lateness (0: no steps, every event time is its own version); the
    other arguments are a :meth:`snapshot`'s fields.
    """

    KEPT_VERSIONS = 4
    IDLE_PARTITION_WALL_S = 30.0

    def __init__(self, step: float, model: Any, built_to: float = -math.inf,
                 previous: Optional[list[tuple[float, bytes]]] = None,
                 held: Optional[list[tuple]] = None,
                 clocks: Optional[dict[int, float]] = None) -> None:
        self.step = step
        self.model = model
        self.built_to = built_to  # labels before this are in self.model
        self.previous = [] if previous is None else previous  # older versions (newest last), for stragglers
        # examples to learn: a heap of (time, tx_id, is_fraud, packed[, only]); ``only`` MODEL_ONLY
        # or HOOK_ONLY: one of the two learns the example at this time (decision 0064)
        self.held = [] if held is None else held
        self.clocks = {} if clocks is None else clocks  # source partition -> latest transaction time
        self.now = time.monotonic()  # wall clock of the current batch (set by the shard)
        self._heard: dict[int, float] = {}  # source partition -> wall clock it last sent a transaction
        self._cache: dict[float, Version] = {}  # kept versions, unpickled

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.model, "built_to": self.built_to, "previous": self.previous, "held": self.held,
                "clocks": self.clocks}

    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._model = model
        self.hooks: Optional[LearningHooks] = learning_hooks(model)

    # -- event time ----------------------------------------------------------------------
    def heard(self, part: int, event_ts: float) -> None:
        """A transaction at ``event_ts`` from source partition ``part``."""
        self._heard[part] = self.now
        if event_ts > self.clocks.get(part, -math.inf):
            self.clocks[part] = event_ts

    @property
    def watermark(self) -> float:
        clocks = self.clocks
        if len(clocks) <= 1:
            return next(iter(clocks.values()), -math.inf)
        newest = max(clocks.values())
        quiet_since = self.now - self.IDLE_PARTITION_WALL_S
        heard = self._heard  # restored partitions count as heard now
        return min(c for p, c in clocks.items() if c == newest or heard.setdefault(p, self.now) > quiet_since)

    def boundary(self, event_ts: float) -> float:
        """The version a transaction at ``event_ts`` is scored by."""
        return step_boundary(event_ts, self.step)

    def final_boundary(self) -> float:
        """The newest version all labels have arrived for (watermark minus lateness)."""
        step = self.step
        wm = self.watermark
        return (math.floor(wm / step) - 1) * step if step > 0 else wm

    # -- examples and versions -------------------------------------------------------------
    def hold(self, label_ts: float, tx_id: str, is_fraud: bool, packed: bytes, only: int = 0) -> None:
        """An example to learn at ``label_ts``: by the model and its labels hook, or ``only`` one
        of them (:data:`MODEL_ONLY`, :data:`HOOK_ONLY`)."""
        heapq.heappush(self.held, (label_ts, tx_id, is_fraud, packed, only) if only else
                       (label_ts, tx_id, is_fraud, packed))

    def due(self, boundary: float) -> Iterator[tuple[Optional[bool], bytes, bool, bool]]:
        """The held examples before ``boundary``, in (time, tx_id) order, taken out:
        ``(is_fraud, packed, hook, model)``, whether the labels hook and the model learn it."""
        held = self.held
        while held and held[0][0] < boundary:
            entry = heapq.heappop(held)
            only = entry[4] if len(entry) > 4 else 0
            yield entry[2], entry[3], only != MODEL_ONLY, only != HOOK_ONLY

    def learn(self, x: dict, is_fraud: bool, hook: bool = True) -> None:
        """One labelled example: the model, then (``hook``) its first step's label hook."""
        self.model.learn_one(x, is_fraud)
        if hook:
            self.learn_label(x, is_fraud)

    def learn_label(self, x: dict, is_fraud: bool) -> None:
        """The first step's label hook only, while it wants labels."""
        hooks = self.hooks
        if hooks is not None and hooks.wants_labels:
            hooks.learn_label(x, is_fraud)

    def keep(self, detector: Any, anomaly_threshold: float, supervised: bool) -> None:
        """Keep the live version (before a build): its model with what cold start scored by."""
        self.previous.append((self.built_to, pickle.dumps((self.model, detector, anomaly_threshold, supervised),
                                                          protocol=pickle.HIGHEST_PROTOCOL)))
        del self.previous[: -self.KEPT_VERSIONS]

    def kept(self, wanted: float) -> tuple[Optional[Version], bool]:
        """For a straggler: the newest kept version built no later than ``wanted``, and False;
        or, older than every kept version (late), the oldest one (None if none) and True."""
        for built_to, blob in reversed(self.previous):
            if built_to <= wanted:
                return self._unpickled(built_to, blob), False
        return (self._unpickled(*self.previous[0]) if self.previous else None), True

    def _unpickled(self, built_to: float, blob: bytes) -> Version:
        cache = self._cache
        version = cache.get(built_to)
        if version is None:
            version = Version(built_to, *pickle.loads(blob))
            # Keep every kept version unpickled (versions only get newer: evict the oldest).
            # Stragglers of different partitions can want different versions; a one-entry
            # cache unpickled again at each switch (decision 0013).
            if len(cache) >= self.KEPT_VERSIONS:
                del cache[min(cache)]
            cache[built_to] = version
        return version
