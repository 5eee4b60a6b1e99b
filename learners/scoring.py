"""Score, then learn: one model shard with delayed-label handling and no look-ahead.

A :class:`ModelShard` owns one River classifier and the cold-start anomaly detector. It
scores every transaction the moment it arrives; the feature vector waits for its label in
the ``await_labels`` stage (:mod:`learners.pending`), which sends the labelled example here.
Learning happens in *steps* of event time, in a canonical order, so scores do not depend on
how the streams were batched, interleaved or split across workers:

* the model is a sequence of versions; version ``B`` has learned exactly the labels whose
  ``event_ts`` is before ``B`` (``B`` a multiple of the step ``L = allowed_lateness_s``),
  in ``(event_ts, tx_id)`` order;
* a transaction at time ``t`` is scored by version ``(floor(t / L) - 2) * L``: every label
  it sees became known at least ``L`` (at most ``3 L``) before it (**no look-ahead**), and
  that version is final as soon as the transaction arrives, provided the streams (and the
  input partitions) are out of order by at most ``L`` (the *allowed lateness*);
* the watermark is the minimum, over the transaction source partitions seen, of each one's
  latest transaction time; a version is built only once the watermark has passed it by ``L``.
  A partition that has sent this shard nothing for ``IDLE_PARTITION_WALL_S`` (wall clock)
  is left out, so one quiet Kafka partition cannot stop the model learning. Idleness is
  judged on the wall clock, not on event time: in a full-speed replay one process can run
  days of event time ahead of another within a second or two, and leaving the slower
  partition out would make its transactions late (measured: 55 % of them with a 1-day
  event-time rule, 1,000 cards, 2 processes).

The last ``KEPT_VERSIONS`` versions are kept for stragglers. A transaction older than all of
them, or a label older than the built version, is *late*: it is still scored (by the oldest
kept version) or learned, and counted, so the metric shows when the allowed lateness is too
small. Independent input partitions read at different speeds can make a few transactions see
an older version than a replay would (never a newer one). With frauds-only label feeds the
account stage infers the legitimate examples (no fraud label ``label_timeout`` after the
transaction); they are learned like any other example, in the same canonical order.
"""

from __future__ import annotations

import heapq
import logging
import math
import pickle
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from river import stats

from learners.features import FEATURE_NAMES
from learners.messages import FeaturedTransaction, LabelledExample, Scored, UnsampledCount
from learners.models import ANOMALY_FEATURES, build_anomaly_detector, build_classifier, reasons_for

__all__ = ["ModelConfig", "ModelShard", "Scored"]

log = logging.getLogger(__name__)

DAY = 86_400.0
_PACK = struct.Struct(f"<{len(FEATURE_NAMES)}f")
_ANOMALY_INDEX = [FEATURE_NAMES.index(name) for name in ANOMALY_FEATURES]
# Legitimate examples at a terminal with confirmed frauds are all learned, whatever the
# negative sampling: that is where the model must tell a compromise that goes on from one
# that is over, and a 10 % sample left it a handful of examples (decision 0014).
_FRAUD_TERMINAL_INDEX = FEATURE_NAMES.index("term_log_known_frauds_30d")
_FRAUD_TERMINAL = struct.Struct(f"<{4 * _FRAUD_TERMINAL_INDEX}xf")  # that one float of a packed vector


@dataclass(frozen=True)
class ModelConfig:
    """How a shard scores and learns; part of the flow settings."""

    kind: str = "binned_logreg"
    seed: int = 0
    label_mode: str = "all"  # "all": every transaction gets a label; "frauds": frauds only
    label_timeout_days: float = 8.0  # frauds mode: no fraud label by then => legitimate (account stage)
    allowed_lateness_s: float = 3600.0  # event-time disorder absorbed; the learning step
    negative_sampling: float = 0.1  # share of legitimate labels learned (balances the classes)
    warmup_frauds: int = 25  # frauds learned before the supervised score takes over
    threshold: float = 0.5
    coldstart_alert_rate: float = 0.005  # cold start: alert on this share, the most anomalous
    reasons: int = 5
    export_interval_s: float = 0.0  # event time between model snapshot exports (0: none)
    quality_window: int = 10_000  # learned examples behind the online quality figures
    alert_budget_per_day: float = 0.0  # >0: alert on about this many transactions a day (all shards)
    alert_rate: float = 0.0  # >0: alert on about this share of transactions
    shards: int = 1  # how many shards share the budget

    @property
    def adaptive_threshold(self) -> bool:
        return self.alert_budget_per_day > 0 or self.alert_rate > 0

    @property
    def model_name(self) -> str:
        return self.kind


def _keep_negative(tx_id: str, rate: float) -> bool:
    """Deterministic negative subsampling (replays learn the same examples)."""
    return rate >= 1.0 or (zlib.crc32(tx_id.encode()) & 0xFFFF) < rate * 65536


def in_sample(tx_id: str, is_fraud: Optional[bool], packed: bytes, negative_sampling: float) -> bool:
    """Is a labelled example learned: every fraud, and the legitimate ones in the sample of
    their stratum (:func:`_sampling_rate`)?"""
    if is_fraud:
        return True
    return _keep_negative(tx_id, _sampling_rate(_FRAUD_TERMINAL.unpack_from(packed)[0], negative_sampling))


def _sampling_rate(fraud_terminal: float, rate: float) -> float:
    """Share of legitimate examples learned in the stratum of a transaction whose terminal
    feature ``term_log_known_frauds_30d`` is ``fraud_terminal``: all of them at a terminal with
    confirmed frauds, ``rate`` elsewhere."""
    return 1.0 if fraud_terminal > 0.0 else rate


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
    IDLE_PARTITION_WALL_S = 30.0

    _TRANSIENT = ("config", "_versions_cache", "exporter", "export_requested", "_heard", "_now")

    def __init__(self, config: ModelConfig, state: Optional[bytes] = None,
                 exporter: Optional[Callable[["ModelShard", str], None]] = None) -> None:
        self.config = config
        self.exporter = exporter  # called with (shard, reason) to write a model snapshot
        self.export_requested = False
        self._now = time.monotonic()  # wall clock of the current batch
        self._heard: dict[int, float] = {}  # source partition -> wall clock it last sent a transaction
        if state is not None:
            self.__dict__.update(pickle.loads(state))
            return
        self.name: Optional[str] = None
        self.day_scores: deque = deque()  # (event_ts, score) of the last day: the alert budget's basis
        self.threshold = config.threshold
        self.warm = False
        self.warm_from: Optional[str] = None
        self.next_export_ts = -math.inf
        self.recent: deque = deque(maxlen=config.quality_window)  # test-then-train (score, is_fraud, rate)
        self.model = build_classifier(config.kind, config.seed)
        self.detector = build_anomaly_detector(config.seed)
        self.anomaly_quantile = stats.Quantile(1.0 - config.coldstart_alert_rate)
        self.built_to = -math.inf  # labels before this are in self.model
        self.previous: list[tuple[float, bytes]] = []  # older versions (newest last), for stragglers
        self.held: list[tuple[float, str, Optional[bool], bytes]] = []  # examples to learn (heap)
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
        state = {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def online_quality(self) -> dict[str, Any]:
        """Test-then-train quality: each example the model learned was first scored by the
        model about to learn it. Over the last ``quality_window`` examples; legitimate ones
        weigh ``1 / sampling rate`` in AP (they were sampled), AUC needs no weight."""
        from learners.evaluation import average_precision, roc_auc

        # (score, is_fraud, sampling rate); examples recorded before the rate was kept: the setting
        rate = self.config.negative_sampling
        recent = [r if len(r) == 3 else (*r, rate) for r in self.recent]
        frauds = sum(1 for _, y, _ in recent if y)
        out: dict[str, Any] = {"method": "test-then-train on learned examples", "window_examples": len(recent),
                               "window_frauds": frauds, "average_precision": None, "auc_roc": None}
        if frauds and frauds < len(recent):
            y = [yy for _, yy, _ in recent]
            s = [ss for ss, _, _ in recent]
            weights = [1.0 / r for _, _, r in recent]
            out["average_precision"] = round(average_precision(y, s, negative_weight=weights), 4)
            out["auc_roc"] = round(roc_auc(y, s), 4)
        return out

    def export(self, reason: str) -> None:
        """Write a model snapshot through the exporter, if the flow configured one."""
        self.export_requested = False
        if self.exporter is not None:
            self.exporter(self, reason)

    @property
    def supervised(self) -> bool:
        return self.warm or self.counts["frauds_learned"] >= self.config.warmup_frauds

    def warm_start(self, model: Any, document: dict) -> None:
        """Start from a verified export's model: supervised from the first transaction."""
        self.model = model
        self.warm = True
        self.warm_from = document.get("name")

    @property
    def watermark(self) -> float:
        clocks = self.clocks
        if len(clocks) <= 1:
            return next(iter(clocks.values()), -math.inf)
        newest = max(clocks.values())
        quiet_since = self._now - self.IDLE_PARTITION_WALL_S
        heard = self._heard  # restored partitions count as heard now
        return min(c for p, c in clocks.items() if c == newest or heard.setdefault(p, self._now) > quiet_since)

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
        if self.unlearned:
            self._learn_unlabelled(boundary)
        while held and held[0][0] < boundary:
            _, _, is_fraud, packed = heapq.heappop(held)
            self._learn_example(is_fraud, packed)
        self.built_to = boundary
        if cfg.adaptive_threshold:
            self._adapt_threshold(boundary)
        if cfg.export_interval_s > 0 and boundary >= self.next_export_ts:
            if self.next_export_ts > -math.inf:
                self.export("interval")
            self.next_export_ts = (math.floor(boundary / cfg.export_interval_s) + 1) * cfg.export_interval_s

    def _adapt_threshold(self, boundary: float) -> None:
        """Budget mode: the score the k-th riskiest transaction of the last day reached, where
        k is this shard's share of the daily budget (or of the alert rate)."""
        cfg, window = self.config, self.day_scores
        while window and window[0][0] < boundary - DAY:
            window.popleft()
        recent = [score for ts, score in window if ts < boundary]
        if not recent:
            return
        if cfg.alert_budget_per_day > 0:
            k = cfg.alert_budget_per_day / max(1, cfg.shards) * (min(DAY, boundary - window[0][0]) / DAY)
        else:
            k = cfg.alert_rate * len(recent)
        k = max(1, int(round(k)))
        self.threshold = sorted(recent, reverse=True)[min(k, len(recent)) - 1] if k <= len(recent) else 0.0

    def _first_step(self, wants: str) -> Any:
        """The model's first step if its ``wants`` property holds (``wants_unlabelled``: bin
        edges still learning from transactions; ``wants_labels``: cuts still learning from
        labelled examples), else None."""
        steps = getattr(self.model, "steps", None)
        first = next(iter(steps.values()), None) if steps else None
        return first if getattr(first, wants, False) else None

    def _learn_unlabelled(self, boundary: float) -> None:
        """Transactions before ``boundary``, in event-time order: the cold-start detector learns
        them, and so does the model's unsupervised step (bin edges) until it is complete."""
        due = sorted(u for u in self.unlearned if u[0] < boundary)
        if not due:
            return
        self.unlearned = [u for u in self.unlearned if u[0] >= boundary]
        detector, quantile, threshold = self.detector, self.anomaly_quantile, self.anomaly_quantile.get() or 1.0
        cold = not self.supervised
        observer = self._first_step("wants_unlabelled")
        for _, _, packed, _ in due:
            values = _PACK.unpack(packed)
            if observer is not None:
                observer.observe(dict(zip(FEATURE_NAMES, values)))
            if cold:
                ax = {name: values[i] for name, i in zip(ANOMALY_FEATURES, _ANOMALY_INDEX)}
                score = detector.score_one(ax)
                quantile.update(score)
                if score < threshold:  # do not learn what looks like an attack
                    detector.learn_one(ax)
                self.means = [m + 0.01 * (v - m) for m, v in zip(self.means, values)]
        if cold:
            self.counts["detector_learned"] += len(due)

    def _learn_example(self, is_fraud: Optional[bool], packed: bytes) -> None:
        """Learn one labelled example (already sampled by :meth:`on_example`)."""
        is_fraud = bool(is_fraud)  # held examples in snapshots from before sampling moved may be None
        values = _PACK.unpack(packed)
        x = dict(zip(FEATURE_NAMES, values))
        if self.supervised:  # test, then train
            rate = _sampling_rate(values[_FRAUD_TERMINAL_INDEX], self.config.negative_sampling)
            self.recent.append((_unsample(self.model.predict_proba_one(x).get(True, 0.0), rate), is_fraud, rate))
        self.model.learn_one(x, is_fraud)
        cuts = self._first_step("wants_labels")
        if cuts is not None:
            cuts.learn_label(x, is_fraud)
        self.means = [m + 0.001 * (v - m) for m, v in zip(self.means, values)]
        self.counts["labels_learned"] += 1
        if is_fraud:
            self.counts["frauds_learned"] += 1

    def on_example(self, tx_id: str, label_ts: float, is_fraud: Optional[bool], packed: bytes,
                   copy: bool = False) -> None:
        """A labelled example (features joined to the label upstream); learned at the step after
        it. ``copy``: another shard's example, sent here too (``shard_examples="all"``) because
        it is in the sample; it is learned but counted as received by that shard only."""
        if not copy:
            self.counts["labels_received"] += 1
            if is_fraud is None:  # inferred legitimate (frauds-only feeds)
                self.counts["implicit_negatives"] += 1
            if not in_sample(tx_id, is_fraud, packed, self.config.negative_sampling):
                return  # a legitimate example outside the sample: never held (the snapshot stays small)
        is_fraud = bool(is_fraud)
        if label_ts < self.built_to:
            self.counts["late_labels"] += 1
            self._learn_example(is_fraud, packed)
        else:
            heapq.heappush(self.held, (label_ts, tx_id, is_fraud, packed))

    def on_unsampled(self, received: int, implicit: int) -> None:
        """``received`` labels of this shard found outside the negative sample upstream (the
        ``await_labels`` stage drops them there, so they never cross processes), ``implicit``
        of them inferred legitimate: counted like :meth:`on_example` counts them, never held."""
        self.counts["labels_received"] += received
        self.counts["implicit_negatives"] += implicit

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
            # Keep every kept version unpickled (versions only get newer: evict the oldest).
            # Stragglers of different partitions can want different versions; a one-entry
            # cache unpickled again at each switch (decision 0013).
            if len(cache) >= self.KEPT_VERSIONS:
                del cache[min(cache)]
            cache[built_to] = version
        return version

    def on_transaction(self, tx: Any, features: tuple[float, ...], part: int = 0) -> Scored:
        """Score ``tx`` with the version its event time allows; keep its features for its label."""
        event_ts = tx.event_ts
        self._heard[part] = self._now
        if event_ts > self.clocks.get(part, -math.inf):
            self.clocks[part] = event_ts
        version = self._version_for(event_ts)
        cfg = self.config
        x = dict(zip(FEATURE_NAMES, features))
        if version.supervised:
            model, rate = version.model, _sampling_rate(features[_FRAUD_TERMINAL_INDEX], cfg.negative_sampling)

            def scorer(z: dict, model=model, rate=rate) -> float:
                return _unsample(model.predict_proba_one(z).get(True, 0.0), rate)

            score = scorer(x)
            threshold, name = self.threshold, cfg.model_name
            candidate = score >= threshold
            if cfg.adaptive_threshold:
                self.day_scores.append((event_ts, score))
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
        if not self.supervised or self._first_step("wants_unlabelled") is not None:
            self.unlearned.append((event_ts, tx.tx_id, _PACK.pack(*features), score))
        elif self.unlearned:
            self.unlearned = []
        self.counts["scored"] += 1
        self.first_ts = min(self.first_ts, event_ts)
        self.last_ts = max(self.last_ts, event_ts)
        return Scored(tx, score, threshold, name, reasons, candidate)

    def on_batch(self, messages: list, on_error: Optional[Callable[[Any, Exception], Any]] = None) -> list:
        """Score the :class:`~learners.messages.FeaturedTransaction` and learn the
        :class:`~learners.messages.LabelledExample` and :class:`~learners.messages.UnsampledCount`
        messages of a batch: a :class:`~learners.messages.Scored` for each transaction.

        Messages are taken in event-time order (labels first on ties), which undoes most of
        the reordering that keyed exchanges introduce before they reach the shard. A message
        that raises is passed to ``on_error(message, exc)``, whose result takes its place in the
        output (without it, the exception propagates).
        """
        messages.sort(key=_event_order)
        self._now = time.monotonic()
        if self.export_requested:
            self.export("on_demand")
        out: list = []
        for m in messages:
            try:
                kind = type(m)
                if kind is FeaturedTransaction:
                    out.append(self.on_transaction(m.tx, m.features, m.part))
                elif kind is LabelledExample:
                    self.on_example(m.tx_id, m.label_ts, m.is_fraud, m.packed, m.copy)
                elif kind is UnsampledCount:
                    self.on_unsampled(m.received, m.implicit)
                else:
                    raise TypeError(f"a model shard takes no {kind.__name__}")
            except Exception as exc:
                if on_error is None:
                    raise
                out.append(on_error(m, exc))
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


def _event_order(m: Any) -> tuple:
    kind = type(m)
    if kind is FeaturedTransaction:
        return (m.tx.event_ts, 1, m.tx.tx_id)
    if kind is LabelledExample:
        return (m.label_ts, 0, m.tx_id)
    return (-math.inf, 0, "")  # counts only: no time
