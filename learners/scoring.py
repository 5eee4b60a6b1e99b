"""Score, then learn: one model shard with delayed-label handling and no look-ahead.

A :class:`ModelShard` owns one River classifier and the cold-start anomaly detector. It
scores every transaction the moment it arrives and keeps its feature vector until its label
comes. Learning happens in *steps* of event time, in a canonical order, so scores do not
depend on how the streams were batched, interleaved or split across workers:

* the model is a sequence of versions; version ``B`` has learned exactly the labels whose
  ``event_ts`` is before ``B`` (``B`` a multiple of the step ``L = allowed_lateness_s``),
  in ``(event_ts, tx_id)`` order;
* a transaction at time ``t`` is scored by version ``(floor(t / L) - 2) * L``: every label
  it sees became known at least ``L`` (at most ``3 L``) before it (**no look-ahead**), and
  that version is final as soon as the transaction arrives, provided the streams (and the
  input partitions) are out of order by at most ``L`` (the *allowed lateness*);
* the watermark is the minimum, over the transaction source partitions seen, of each one's
  latest transaction time; a version is built only once the watermark has passed it by ``L``.
  A partition more than ``IDLE_PARTITION_S`` (a day) of event time behind the newest is
  left out, so one quiet Kafka partition cannot stop the model learning.

The last ``KEPT_VERSIONS`` versions are kept for stragglers. A transaction older than all of
them, or a label older than the built version, is *late*: it is still scored (by the oldest
kept version) or learned, and counted, so the metric shows when the allowed lateness is too
small. Independent input partitions read at different speeds can make a few transactions see
an older version than a replay would (never a newer one). With frauds-only label feeds a transaction with no label
``label_timeout`` after it is learned as legitimate, in the same canonical order.
"""

from __future__ import annotations

import heapq
import logging
import math
import pickle
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import msgspec
from river import stats

from learners.features import FEATURE_NAMES
from learners.models import ANOMALY_FEATURES, build_anomaly_detector, build_classifier, reasons_for

__all__ = ["ModelConfig", "ModelShard", "Scored"]

log = logging.getLogger(__name__)

DAY = 86_400.0
_PACK = struct.Struct(f"<{len(FEATURE_NAMES)}f")
_ANOMALY_INDEX = [FEATURE_NAMES.index(name) for name in ANOMALY_FEATURES]


@dataclass(frozen=True)
class ModelConfig:
    """How a shard scores and learns; part of the flow settings."""

    kind: str = "logreg"
    seed: int = 0
    label_mode: str = "all"  # "all": every transaction gets a label; "frauds": frauds only
    label_timeout_days: float = 8.0  # frauds mode: no fraud label by then => legitimate
    allowed_lateness_s: float = 3600.0  # event-time disorder absorbed; the learning step
    negative_sampling: float = 0.1  # share of legitimate labels learned (balances the classes)
    warmup_frauds: int = 25  # frauds learned before the supervised score takes over
    threshold: float = 0.5
    coldstart_alert_rate: float = 0.005  # cold start: alert on this share, the most anomalous
    reasons: int = 5

    @property
    def model_name(self) -> str:
        return self.kind


class Scored(msgspec.Struct, frozen=True, gc=False):
    """A transaction with its score; ``reasons`` only for alert candidates."""

    tx: Any  # connectors.events.Transaction
    score: float
    threshold: float
    model: str
    reasons: Optional[list] = None


def _keep_negative(tx_id: str, rate: float) -> bool:
    """Deterministic negative subsampling (replays learn the same examples)."""
    return rate >= 1.0 or (zlib.crc32(tx_id.encode()) & 0xFFFF) < rate * 65536


class _Version:
    """What scoring needs from one model version (the live one, or a kept copy)."""

    __slots__ = ("built_to", "model", "detector", "anomaly_threshold", "supervised")

    def __init__(self, built_to: float, model: Any, detector: Any, anomaly_threshold: float, supervised: bool):
        self.built_to = built_to
        self.model = model
        self.detector = detector
        self.anomaly_threshold = anomaly_threshold
        self.supervised = supervised


class ModelShard:
    """One model partition: scores transactions, learns released labels in event-time steps."""

    COLDSTART_MIN_SEEN = 1000  # no cold-start alerts before the detector has learned this many
    KEPT_VERSIONS = 4
    IDLE_PARTITION_S = 86_400.0

    def __init__(self, config: ModelConfig, state: Optional[bytes] = None) -> None:
        self.config = config
        if state is not None:
            self.__dict__.update(pickle.loads(state))
            self.config = config
            return
        self.model = build_classifier(config.kind, config.seed)
        self.detector = build_anomaly_detector(config.seed)
        self.anomaly_quantile = stats.Quantile(1.0 - config.coldstart_alert_rate)
        self.built_to = -math.inf  # labels before this are in self.model
        self.previous: list[tuple[float, bytes]] = []  # older versions (newest last), for stragglers
        self.pending: dict[str, tuple[float, bytes]] = {}  # tx_id -> (event_ts, packed features)
        self.held: list[tuple[float, str, Optional[bool]]] = []  # labels to learn (heap); None: implicit
        self.unlearned: list[tuple[float, str, bytes]] = []  # cold start: detector's backlog
        self.clocks: dict[int, float] = {}  # source partition -> latest transaction time
        self.counts = {
            "scored": 0,
            "labels_received": 0,
            "labels_learned": 0,
            "frauds_learned": 0,
            "implicit_negatives": 0,
            "late_transactions": 0,
            "late_labels": 0,
            "labels_unmatched": 0,
            "detector_learned": 0,
        }
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.means = [0.0] * len(FEATURE_NAMES)  # running feature means (occlusion reasons)

    # -- state -------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        state = {k: v for k, v in self.__dict__.items() if k not in ("config", "_versions_cache")}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @property
    def supervised(self) -> bool:
        return self.counts["frauds_learned"] >= self.config.warmup_frauds

    @property
    def watermark(self) -> float:
        if not self.clocks:
            return -math.inf
        newest = max(self.clocks.values())
        return min(c for c in self.clocks.values() if c >= newest - self.IDLE_PARTITION_S)

    def _live(self) -> _Version:
        return _Version(self.built_to, self.model, self.detector, self.anomaly_quantile.get() or 1.0, self.supervised)

    # -- learning in event-time steps ----------------------------------------------------
    def _boundary(self, event_ts: float) -> float:
        step = self.config.allowed_lateness_s
        return (math.floor(event_ts / step) - 2) * step if step > 0 else event_ts

    def _final_boundary(self) -> float:
        """The newest version all labels have arrived for (watermark minus lateness)."""
        step = self.config.allowed_lateness_s
        wm = self.watermark
        return (math.floor(wm / step) - 1) * step if step > 0 else wm

    def _build(self, boundary: float) -> None:
        """Learn everything known before ``boundary``, in (event_ts, tx_id) order."""
        supervised = self.supervised
        self.previous.append((self.built_to, pickle.dumps(
            (self.model, None if supervised else self.detector, self.anomaly_quantile.get() or 1.0, supervised),
            protocol=pickle.HIGHEST_PROTOCOL)))
        del self.previous[: -self.KEPT_VERSIONS]
        cfg = self.config
        held = self.held
        if cfg.label_mode == "frauds":
            self._queue_implicit_negatives(boundary - cfg.label_timeout_days * DAY)
        if not self.supervised and self.unlearned:
            self._learn_detector(boundary)
        while held and held[0][0] < boundary:
            label_ts, tx_id, is_fraud = heapq.heappop(held)
            self._learn_label(tx_id, is_fraud)
        self.built_to = boundary

    def _queue_implicit_negatives(self, before: float) -> None:
        """Frauds-only feeds: a transaction with no fraud label by ``before + timeout`` is legitimate."""
        pending, timeout = self.pending, self.config.label_timeout_days * DAY
        tolerance = before + self.config.allowed_lateness_s  # arrival order is event order within this
        expired = []
        for tx_id, (event_ts, _) in pending.items():
            if event_ts >= tolerance:
                break
            if event_ts < before:
                expired.append((event_ts + timeout, tx_id))
        for label_ts, tx_id in expired:
            heapq.heappush(self.held, (label_ts, tx_id, None))

    def _learn_detector(self, boundary: float) -> None:
        """Cold start: the anomaly detector learns transactions before ``boundary`` in order."""
        due = sorted(u for u in self.unlearned if u[0] < boundary)
        if not due:
            return
        self.unlearned = [u for u in self.unlearned if u[0] >= boundary]
        detector, quantile, threshold = self.detector, self.anomaly_quantile, self.anomaly_quantile.get() or 1.0
        for _, _, packed in due:
            values = _PACK.unpack(packed)
            ax = {name: values[i] for name, i in zip(ANOMALY_FEATURES, _ANOMALY_INDEX)}
            score = detector.score_one(ax)
            quantile.update(score)
            if score < threshold:  # do not learn what looks like an attack
                detector.learn_one(ax)
            self.means = [m + 0.01 * (v - m) for m, v in zip(self.means, values)]
        self.counts["detector_learned"] += len(due)

    def _learn(self, packed: bytes, is_fraud: bool) -> None:
        values = _PACK.unpack(packed)
        self.model.learn_one(dict(zip(FEATURE_NAMES, values)), is_fraud)
        self.means = [m + 0.001 * (v - m) for m, v in zip(self.means, values)]
        self.counts["labels_learned"] += 1
        if is_fraud:
            self.counts["frauds_learned"] += 1

    def _learn_label(self, tx_id: str, is_fraud: Optional[bool]) -> None:
        entry = self.pending.pop(tx_id, None)
        if is_fraud is None:  # implicit negative: unless a fraud label came meanwhile
            if entry is None:
                return
            self.counts["implicit_negatives"] += 1
            is_fraud = False
        elif entry is None:
            self.counts["labels_unmatched"] += 1  # its transaction never reached this shard
            return
        if is_fraud or _keep_negative(tx_id, self.config.negative_sampling):
            self._learn(entry[1], is_fraud)

    def on_label(self, tx_id: str, label_ts: float, is_fraud: bool) -> None:
        """A label joined to its transaction upstream; learned at the next step after it."""
        self.counts["labels_received"] += 1
        if label_ts < self.built_to:
            self.counts["late_labels"] += 1
            self._learn_label(tx_id, is_fraud)
        else:
            heapq.heappush(self.held, (label_ts, tx_id, is_fraud))

    # -- scoring -----------------------------------------------------------------------
    def _version_for(self, event_ts: float) -> _Version:
        wanted = self._boundary(event_ts)
        if wanted > self.built_to:
            final = self._final_boundary()
            if final > self.built_to:
                self._build(min(wanted, final))
            if wanted > self.built_to:
                return self._live()  # newer labels are not final yet: an older version, no look-ahead
        if wanted >= self.built_to:
            return self._live()
        # A straggler: the newest kept version built no later than it wants.
        for built_to, blob in reversed(self.previous):
            if built_to <= wanted:
                return self._kept(built_to, blob)
        self.counts["late_transactions"] += 1  # older than every kept version: the oldest we have
        if self.previous:
            return self._kept(*self.previous[0])
        return self._live()

    def _kept(self, built_to: float, blob: bytes) -> _Version:
        cache = self.__dict__.setdefault("_versions_cache", {})
        version = cache.get(built_to)
        if version is None:
            model, detector, threshold, supervised = pickle.loads(blob)
            version = _Version(built_to, model, detector, threshold, supervised)
            cache.clear()  # stragglers cluster around one version at a time
            cache[built_to] = version
        return version

    def on_transaction(self, tx: Any, features: tuple[float, ...], part: int = 0) -> Scored:
        """Score ``tx`` with the version its event time allows; keep its features for its label."""
        event_ts = tx.event_ts
        if event_ts > self.clocks.get(part, -math.inf):
            self.clocks[part] = event_ts
        version = self._version_for(event_ts)
        cfg = self.config
        x = dict(zip(FEATURE_NAMES, features))
        if version.supervised:
            model, rate = version.model, cfg.negative_sampling

            def scorer(z: dict, model=model, rate=rate) -> float:
                return _unsample(model.predict_proba_one(z).get(True, 0.0), rate)

            score = scorer(x)
            threshold, name = cfg.threshold, cfg.model_name
            candidate = score >= threshold
        else:
            model = version.detector
            x = {name: x[name] for name in ANOMALY_FEATURES}
            score = model.score_one(x)
            threshold, name, scorer = version.anomaly_threshold, "coldstart-hst", model.score_one
            candidate = self.counts["detector_learned"] >= self.COLDSTART_MIN_SEEN and score >= threshold
        reasons = None
        if candidate:
            means = dict(zip(FEATURE_NAMES, self.means))
            reasons = reasons_for(model, x, scorer, top=cfg.reasons, means=means)
        packed = _PACK.pack(*features)
        self.pending[tx.tx_id] = (event_ts, packed)
        if not self.supervised:
            self.unlearned.append((event_ts, tx.tx_id, packed))
        elif self.unlearned:
            self.unlearned = []
        self.counts["scored"] += 1
        self.first_ts = min(self.first_ts, event_ts)
        self.last_ts = max(self.last_ts, event_ts)
        return Scored(tx, score, threshold, name, reasons)

    def on_batch(self, items: list) -> list[Scored]:
        """Process a batch of ("tx", tx, features, part) and ("label", ...) items.

        Items are taken in event-time order (labels first on ties), which undoes most of
        the reordering that keyed exchanges introduce before they reach the shard.
        """
        items.sort(key=_event_order)
        out = []
        for item in items:
            if item[0] == "tx":
                out.append(self.on_transaction(item[1], item[2], item[3]))
            else:
                self.on_label(item[2], item[3], item[4])
        return out


def _unsample(p: float, rate: float) -> float:
    """Undo negative subsampling: the model saw ``rate`` of the legitimate examples, so its
    odds are ``1 / rate`` too high. Monotone, so rankings are unchanged.

    >>> round(_unsample(0.5, 0.1), 4)
    0.0909
    """
    if rate >= 1.0 or p <= 0.0:
        return p
    if p >= 1.0:
        return 1.0
    odds = p / (1.0 - p) * rate
    return odds / (1.0 + odds)


def _event_order(item: tuple) -> tuple:
    if item[0] == "tx":
        return (item[1].event_ts, 1, item[1].tx_id)
    return (item[3], 0, item[2])
