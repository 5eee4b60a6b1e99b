"""Score, then learn: one model shard with delayed-label handling and no look-ahead.

A :class:`ModelShard` owns one River classifier and the cold-start anomaly detector, in parts
with their own state: :mod:`learners.versions` (model versions, held examples, watermark),
:mod:`learners.coldstart`, :mod:`learners.threshold` and :mod:`learners.quality`. It scores
every transaction the moment it arrives; the feature vector waits for its label in
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

The last ``VersionedLearner.KEPT_VERSIONS`` versions are kept for stragglers. A transaction older than all of
them, or a label older than the built version, is *late*: it is still scored (by the oldest
kept version) or learned, and counted, so the metric shows when the allowed lateness is too
small. Independent input partitions read at different speeds can make a few transactions see
an older version than a replay would (never a newer one). With frauds-only label feeds the
account stage infers the legitimate examples (no fraud label ``label_timeout`` after the
transaction); they are learned like any other example, in the same canonical order.
"""

from __future__ import annotations

import logging
import math
import pickle
import struct
import time
import zlib
from typing import Any, Callable, Optional


from learners.coldstart import ColdStart
from learners.config import ModelConfig
from learners.features import DAY, FEATURE_NAMES
from learners.messages import NO_LAST_HOUR, FeaturedTransaction, LabelledExample, Scored, UnsampledCount
from learners.models import ANOMALY_FEATURES, build_anomaly_detector, build_classifier, reasons_for
from learners.pending import pack, unpack
from learners.quality import OnlineQuality
from learners.threshold import AlertThreshold
from learners.versions import HOOK_ONLY, MODEL_ONLY, Version, VersionedLearner

__all__ = ["ModelConfig", "ModelShard", "Scored"]

log = logging.getLogger(__name__)

# Legitimate examples at a terminal with confirmed frauds are all learned, whatever the
# negative sampling: that is where the model must tell a compromise that goes on from one
# that is over, and a 10 % sample left it a handful of examples (decision 0014).
_FRAUD_TERMINAL_INDEX = FEATURE_NAMES.index("term_log_known_frauds_30d")
_FRAUD_TERMINAL = struct.Struct(f"<{4 * _FRAUD_TERMINAL_INDEX}xf")  # that one float of a packed vector


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


SNAPSHOT_VERSION = 2  # 1: the shard's whole ``__dict__`` (before the split into parts)
_OWN = ("name", "warm", "warm_from", "next_export_ts", "counts", "first_ts", "last_ts", "means")


class ModelShard:
    """One model partition: scores transactions, learns released labels in event-time steps.

    It composes the parts and drives them: a :class:`~learners.versions.VersionedLearner` (the
    model's versions, held examples, watermark), the :class:`~learners.coldstart.ColdStart`,
    the :class:`~learners.threshold.AlertThreshold` and the :class:`~learners.quality.OnlineQuality`;
    it keeps the counts, the running feature means behind reasons and the export schedule.
    ``state`` is a :meth:`snapshot`; ``exporter`` is called with ``(shard, reason)`` to write
    a model export.
    """

    def __init__(self, config: ModelConfig, state: Optional[bytes] = None,
                 exporter: Optional[Callable[["ModelShard", str], None]] = None) -> None:
        self.config = config
        self.exporter = exporter
        self.export_requested = False  # set from the HTTP thread: export at the next batch
        if state is not None:
            parts = _read_snapshot(state)
            self.learner = VersionedLearner(config.allowed_lateness_s, **parts["learner"])
            self.cold_start = ColdStart(config.coldstart_alert_rate, **parts["cold_start"])
            self.alert_threshold = AlertThreshold(config, **parts["threshold"])
            self.quality = OnlineQuality(config.quality_window, config.negative_sampling, **parts["quality"])
            own = parts["shard"]
            self.name: Optional[str] = own["name"]
            self.warm: bool = own["warm"]
            self.warm_from: Optional[str] = own["warm_from"]
            self.next_export_ts: float = own["next_export_ts"]
            self.counts: dict[str, int] = own["counts"]
            self.first_ts: float = own["first_ts"]
            self.last_ts: float = own["last_ts"]
            self.means: list[float] = own["means"]
            return
        self.learner = VersionedLearner(config.allowed_lateness_s, build_classifier(config.kind, config.seed))
        self.cold_start = ColdStart(config.coldstart_alert_rate, build_anomaly_detector(config.seed))
        self.alert_threshold = AlertThreshold(config)
        self.quality = OnlineQuality(config.quality_window, config.negative_sampling)
        self.name = None
        self.warm = False
        self.warm_from = None
        self.next_export_ts = -math.inf
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
        """The state as a versioned dict of each part's fields, pickled (:data:`SNAPSHOT_VERSION`)."""
        state = {
            "version": SNAPSHOT_VERSION,
            "shard": {name: getattr(self, name) for name in _OWN},
            "learner": self.learner.snapshot(),
            "cold_start": self.cold_start.snapshot(),
            "threshold": self.alert_threshold.snapshot(),
            "quality": self.quality.snapshot(),
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def online_quality(self) -> dict[str, Any]:
        return self.quality.summary()

    def export(self, reason: str) -> None:
        """Write a model snapshot through the exporter, if the flow configured one."""
        self.export_requested = False
        if self.exporter is not None:
            self.exporter(self, reason)

    @property
    def model(self) -> Any:
        """The live model (exports)."""
        return self.learner.model

    @property
    def built_to(self) -> float:
        """The live model has learned the labels before this event time."""
        return self.learner.built_to

    @property
    def clocks(self) -> dict[int, float]:
        """Source partition -> latest transaction time seen here."""
        return self.learner.clocks

    @property
    def threshold(self) -> float:
        """The supervised alert threshold now."""
        return self.alert_threshold.value

    @property
    def supervised(self) -> bool:
        return self.warm or self.counts["frauds_learned"] >= self.config.warmup_frauds

    def warm_start(self, model: Any, document: dict) -> None:
        """Start from a verified export's model: supervised from the first transaction."""
        self.learner.model = model
        self.warm = True
        self.warm_from = document.get("name")

    def _live(self) -> Version:
        learner, cold = self.learner, self.cold_start
        return Version(learner.built_to, learner.model, cold.detector, cold.threshold, self.supervised)

    # -- learning in event-time steps ----------------------------------------------------
    def _build(self, boundary: float) -> None:
        """Learn everything known before ``boundary``, in (event_ts, tx_id) order."""
        learner, cold = self.learner, self.cold_start
        supervised = self.supervised
        learner.keep(None if supervised else cold.detector, cold.threshold, supervised)
        if cold.unlearned:
            self._learn_unlabelled(boundary)
        for is_fraud, packed, hook, model in learner.due(boundary):
            if model:
                self._learn_example(is_fraud, packed, hook)
            else:
                learner.learn_label(dict(zip(FEATURE_NAMES, unpack(packed))), bool(is_fraud))
        learner.built_to = boundary
        self.alert_threshold.adapt(boundary)
        cfg = self.config
        if cfg.export_interval_s > 0 and boundary >= self.next_export_ts:
            if self.next_export_ts > -math.inf:
                self.export("interval")
            self.next_export_ts = (math.floor(boundary / cfg.export_interval_s) + 1) * cfg.export_interval_s

    def _learn_unlabelled(self, boundary: float) -> None:
        """Transactions before ``boundary``, in event-time order: the cold-start detector learns
        them, and so does the model's unsupervised step (bin edges) until it is complete."""
        due = self.cold_start.due(boundary)
        if not due:
            return
        vectors = [unpack(packed) for _, _, packed, _ in due]
        hooks = self.learner.hooks
        if hooks is not None and hooks.wants_unlabelled:
            for values in vectors:
                hooks.observe(dict(zip(FEATURE_NAMES, values)))
        if not self.supervised:
            self.cold_start.learn(vectors)
            means = self.means
            for values in vectors:
                means = [m + 0.01 * (v - m) for m, v in zip(means, values)]
            self.means = means
            self.counts["detector_learned"] += len(due)

    def _learn_example(self, is_fraud: Optional[bool], packed: bytes, hook: bool = True) -> None:
        """Learn one labelled example (already sampled by :meth:`on_example`); ``hook``: the
        model's labels hook too (else it gets the example later, decision 0064)."""
        is_fraud = bool(is_fraud)  # held examples in snapshots from before sampling moved may be None
        values = unpack(packed)
        x = dict(zip(FEATURE_NAMES, values))
        learner = self.learner
        if self.supervised:  # test, then train
            rate = _sampling_rate(values[_FRAUD_TERMINAL_INDEX], self.config.negative_sampling)
            self.quality.record(_unsample(learner.model.predict_proba_one(x).get(True, 0.0), rate), is_fraud, rate)
        learner.learn(x, is_fraud, hook)
        self.means = [m + 0.001 * (v - m) for m, v in zip(self.means, values)]
        self.counts["labels_learned"] += 1
        if is_fraud:
            self.counts["frauds_learned"] += 1

    def on_example(self, tx_id: str, label_ts: float, is_fraud: Optional[bool], packed: bytes,
                   copy: bool = False, feed_ts: float = 0.0) -> None:
        """A labelled example (features joined to the label upstream); learned at the step after
        it. ``copy``: another shard's example, sent here too (``shard_examples="all"``) because
        it is in the sample; it is learned but counted as received by that shard only.

        ``feed_ts``: an analyst's verdict's, when the label feed would have taught it. A verdict
        dated within ``verdict_warmup_days`` of the shard's first transaction is learned then,
        not at ``label_ts`` (decision 0062): while the feature windows fill, the examples from
        the feed are a label delay old and carry smaller windowed counts than today's (at first
        no terminal history at all), so the verdicts alone would teach that today's counts mean
        fraud."""
        if feed_ts > label_ts and label_ts < self.first_ts + self.config.verdict_warmup_days * DAY:
            label_ts = feed_ts
            if not copy:
                self.counts["verdicts_deferred"] = self.counts.get("verdicts_deferred", 0) + 1
        if not copy:
            self.counts["labels_received"] += 1
            if is_fraud is None:  # inferred legitimate (frauds-only feeds)
                self.counts["implicit_negatives"] += 1
            if not in_sample(tx_id, is_fraud, packed, self.config.negative_sampling):
                return  # a legitimate example outside the sample: never held (the snapshot stays small)
        is_fraud = bool(is_fraud)
        learner = self.learner
        # A verdict learned before the feed would have brought it reaches the model's labels
        # hook (the supervised cuts, placed once from the first labelled examples) only then:
        # verdicts are the model's own alerts, and a cut placed among them lands where alerted
        # frauds meet the few legitimate examples learned so far (decision 0064).
        hook = not (feed_ts > label_ts and learner.hooks is not None and learner.hooks.wants_labels)
        if not hook:
            learner.hold(feed_ts, tx_id, is_fraud, packed, HOOK_ONLY)
        if label_ts < learner.built_to:
            self.counts["late_labels"] += 1
            self._learn_example(is_fraud, packed, hook)
        else:
            learner.hold(label_ts, tx_id, is_fraud, packed, 0 if hook else MODEL_ONLY)

    def on_unsampled(self, received: int, implicit: int) -> None:
        """``received`` labels of this shard found outside the negative sample upstream (the
        ``await_labels`` stage drops them there, so they never cross processes), ``implicit``
        of them inferred legitimate: counted like :meth:`on_example` counts them, never held."""
        self.counts["labels_received"] += received
        self.counts["implicit_negatives"] += implicit

    # -- scoring -----------------------------------------------------------------------
    def _version_for(self, event_ts: float) -> Version:
        learner = self.learner
        wanted = learner.boundary(event_ts)
        if wanted > learner.built_to:
            final = learner.final_boundary()
            if final > learner.built_to:
                self._build(min(wanted, final))
            if wanted > learner.built_to:
                return self._live()  # newer labels are not final yet: an older version, no look-ahead
        if wanted >= learner.built_to:
            return self._live()
        version, late = learner.kept(wanted)  # a straggler
        if late:
            self.counts["late_transactions"] += 1  # older than every kept version: the oldest we have
        return self._live() if version is None else version

    def on_transaction(self, tx: Any, features: tuple[float, ...], part: int = 0,
                       last_hour: tuple = NO_LAST_HOUR) -> Scored:
        """Score ``tx`` with the version its event time allows; keep its features for its label.
        ``last_hour``: the card's last hour (the rules' velocity fields), passed on, not scored."""
        event_ts = tx.event_ts
        learner = self.learner
        learner.heard(part, event_ts)
        version = self._version_for(event_ts)
        cfg = self.config
        x = dict(zip(FEATURE_NAMES, features))
        if version.supervised:
            model, rate = version.model, _sampling_rate(features[_FRAUD_TERMINAL_INDEX], cfg.negative_sampling)
            score = _unsample(model.predict_proba_one(x).get(True, 0.0), rate)
            alert_threshold = self.alert_threshold
            threshold, name = alert_threshold.value, cfg.model_name
            candidate = score >= threshold
            if alert_threshold.adaptive:
                alert_threshold.observe(event_ts, score)
            if candidate:  # the reasons score variations of x the same way

                def scorer(z: dict, model=model, rate=rate) -> float:
                    return _unsample(model.predict_proba_one(z).get(True, 0.0), rate)
        else:
            model = version.detector
            x = {name: x[name] for name in ANOMALY_FEATURES}
            score = model.score_one(x)
            threshold, name, scorer = version.anomaly_threshold, "coldstart-hst", model.score_one
            candidate = (score >= threshold and self.counts["detector_learned"] >= ColdStart.MIN_SEEN
                         and event_ts >= self.first_ts + ColdStart.MIN_HISTORY_S)
        reasons = None
        if candidate:
            means = dict(zip(FEATURE_NAMES, self.means))
            reasons = reasons_for(model, x, scorer, top=cfg.reasons, means=means)
        hooks = learner.hooks
        cold = self.cold_start
        if not self.supervised or (hooks is not None and hooks.wants_unlabelled):
            cold.hold(event_ts, tx.tx_id, pack(features), score)
        elif cold.unlearned:
            cold.drop()
        self.counts["scored"] += 1
        if event_ts < self.first_ts:
            self.first_ts = event_ts
        if event_ts > self.last_ts:
            self.last_ts = event_ts
        return Scored(tx, score, threshold, name, reasons, candidate, features, (), last_hour)

    def on_batch(self, messages: list, on_error: Optional[Callable[[Any, Exception], Any]] = None) -> list:
        """Score the :class:`~learners.messages.FeaturedTransaction` and learn the
        :class:`~learners.messages.LabelledExample` and :class:`~learners.messages.UnsampledCount`
        messages of a batch: a :class:`~learners.messages.Scored` for each transaction.

        Messages are taken in event-time order (labels first on ties), which undoes most of
        the reordering that keyed exchanges introduce before they reach the shard. A message
        that raises is passed to ``on_error(message, exc)``, whose result takes its place in the
        output (without it, the exception propagates).
        """
        if len(messages) > 1:
            messages.sort(key=_event_order)
        self.learner.now = time.monotonic()
        if self.export_requested:
            self.export("on_demand")
        out: list = []
        on_transaction, on_example = self.on_transaction, self.on_example
        for m in messages:
            try:
                kind = type(m)
                if kind is FeaturedTransaction:
                    out.append(on_transaction(m.tx, m.features, m.part, m.last_hour))
                elif kind is LabelledExample:
                    on_example(m.tx_id, m.label_ts, m.is_fraud, m.packed, m.copy, m.feed_ts)
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


def _read_snapshot(blob: bytes) -> dict[str, Any]:
    """A :meth:`ModelShard.snapshot`'s parts; the first layout (the shard's ``__dict__``,
    pickled, no version: recovery stores written before the split) is read too."""
    state = pickle.loads(blob)
    version = state.get("version", 1)
    if version == SNAPSHOT_VERSION:
        return state
    if version != 1:
        raise ValueError(f"model shard snapshot version {version!r} is not supported (this fraudflow reads 1 and "
                         f"{SNAPSHOT_VERSION}); was the recovery store written by a newer fraudflow?")
    return {
        "shard": {name: state[name] for name in _OWN},
        "learner": {"model": state["model"], "built_to": state["built_to"], "previous": state["previous"],
                    "held": state["held"], "clocks": state["clocks"]},
        "cold_start": {"detector": state["detector"], "quantile": state["anomaly_quantile"],
                       "unlearned": state["unlearned"]},
        "threshold": {"value": state["threshold"], "day_scores": state["day_scores"]},
        "quality": {"recent": state["recent"]},
    }
