"""Score, then learn: one model shard with delayed-label handling and no look-ahead.

A :class:`ModelShard` owns one River classifier (and the cold-start anomaly detector). It
scores every transaction as it arrives and keeps the transaction's feature vector until
its label is *released*: a label is learned only once the shard's event-time watermark
has reached the label's ``event_ts``, so a label can never influence the score of a
transaction that happened before it became known, whatever order the streams arrive in.

The watermark is the minimum, over the transaction source partitions seen, of the latest
transaction time from each, minus an allowed lateness. With frauds-only label feeds, a
transaction with no label ``label_timeout`` after it is learned as legitimate.
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

from learners.features import FEATURE_NAMES
from river import stats

from learners.models import ANOMALY_FEATURES, build_anomaly_detector, build_classifier, reasons_for

__all__ = ["ModelConfig", "ModelShard", "Scored"]

log = logging.getLogger(__name__)

DAY = 86_400.0
_PACK = struct.Struct(f"<{len(FEATURE_NAMES)}f")


@dataclass(frozen=True)
class ModelConfig:
    """How a shard scores and learns; part of the flow settings."""

    kind: str = "logreg"
    seed: int = 0
    label_mode: str = "all"  # "all": every transaction gets a label; "frauds": frauds only
    label_timeout_days: float = 8.0  # frauds mode: no fraud label by then => legitimate
    allowed_lateness_s: float = 0.0
    negative_sampling: float = 1.0  # share of legitimate labels learned
    warmup_frauds: int = 25  # frauds learned before the supervised score takes over
    threshold: float = 0.5
    coldstart_alert_rate: float = 0.005  # cold start: alert on this share, the most anomalous
    reasons: int = 5

    @property
    def model_name(self) -> str:
        return self.kind


class Scored(msgspec.Struct, frozen=True, gc=False):
    """A transaction with its score; ``reasons`` only for scores at or above threshold."""

    tx: Any  # connectors.events.Transaction
    score: float
    threshold: float
    model: str
    reasons: Optional[list] = None


def _keep_negative(tx_id: str, rate: float) -> bool:
    """Deterministic negative subsampling (replays learn the same examples)."""
    return rate >= 1.0 or (zlib.crc32(tx_id.encode()) & 0xFFFF) < rate * 65536


class ModelShard:
    """One model partition: scores transactions, holds labels until released, learns."""

    def __init__(self, config: ModelConfig, state: Optional[bytes] = None) -> None:
        self.config = config
        if state is not None:
            self.__dict__.update(pickle.loads(state))
            self.config = config
            return
        self.model = build_classifier(config.kind, config.seed)
        self.detector = build_anomaly_detector(config.seed)
        self.anomaly_quantile = stats.Quantile(1.0 - config.coldstart_alert_rate)
        self.pending: dict[str, tuple[float, bytes]] = {}  # tx_id -> (event_ts, packed features)
        self.held: list[tuple[float, str, bool]] = []  # heap of unreleased labels
        self.orphans: dict[str, tuple[float, bool]] = {}  # released labels whose features are in flight
        self.clocks: dict[int, float] = {}  # source partition -> latest transaction time
        self.watermark = -math.inf
        self.released_to = -math.inf  # labels up to here have been learned
        self.counts = {
            "scored": 0,
            "labels_learned": 0,
            "frauds_learned": 0,
            "implicit_negatives": 0,
            "late_transactions": 0,
            "labels_unmatched": 0,
        }
        self.first_ts = math.inf
        self.last_ts = -math.inf
        self.means = [0.0] * len(FEATURE_NAMES)  # running feature means (occlusion reasons)

    # -- state -------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        state = {k: v for k, v in self.__dict__.items() if k != "config"}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @property
    def supervised(self) -> bool:
        return self.counts["frauds_learned"] >= self.config.warmup_frauds

    # -- event time --------------------------------------------------------------------
    def _advance(self, part: int, event_ts: float) -> None:
        clocks = self.clocks
        if event_ts > clocks.get(part, -math.inf):
            clocks[part] = event_ts
            wm = min(clocks.values()) - self.config.allowed_lateness_s
            if wm > self.watermark:
                self.watermark = wm
                self._release()

    def _release(self) -> None:
        held, wm = self.held, self.watermark
        while held and held[0][0] <= wm:
            label_ts, tx_id, is_fraud = heapq.heappop(held)
            self._learn_label(tx_id, is_fraud, label_ts)
        if self.config.label_mode == "frauds":
            self._expire_negatives(wm - self.config.label_timeout_days * DAY)
        self.released_to = max(self.released_to, wm)

    def _expire_negatives(self, before: float) -> None:
        pending = self.pending
        while pending:
            tx_id = next(iter(pending))
            event_ts, packed = pending[tx_id]
            if event_ts >= before:
                break
            del pending[tx_id]
            self.counts["implicit_negatives"] += 1
            if _keep_negative(tx_id, self.config.negative_sampling):
                self._learn(packed, False)

    # -- learning ----------------------------------------------------------------------
    def _learn(self, packed: bytes, is_fraud: bool) -> None:
        values = _PACK.unpack(packed)
        self.model.learn_one(dict(zip(FEATURE_NAMES, values)), is_fraud)
        self.means = [m + 0.001 * (v - m) for m, v in zip(self.means, values)]
        self.counts["labels_learned"] += 1
        if is_fraud:
            self.counts["frauds_learned"] += 1

    def _learn_label(self, tx_id: str, is_fraud: bool, label_ts: float) -> None:
        entry = self.pending.pop(tx_id, None)
        if entry is None:
            # The label overtook its transaction's features on the way here.
            self.orphans[tx_id] = (label_ts, is_fraud)
            return
        if is_fraud or _keep_negative(tx_id, self.config.negative_sampling):
            self._learn(entry[1], is_fraud)

    def on_label(self, tx_id: str, label_ts: float, is_fraud: bool) -> None:
        """A label joined to its transaction upstream; learned once released."""
        if label_ts <= self.watermark:
            self._learn_label(tx_id, is_fraud, label_ts)
        else:
            heapq.heappush(self.held, (label_ts, tx_id, is_fraud))

    # -- scoring -----------------------------------------------------------------------
    COLDSTART_MIN_SEEN = 1000  # no cold-start alerts before the detector has seen this many

    def _coldstart(self, x: dict[str, float], features: tuple[float, ...]):
        """Anomaly score before enough labels: half-space trees, alerting on the top
        ``coldstart_alert_rate`` share of scores (a running quantile), learning only from
        transactions that are not flagged."""
        ax = {k: x[k] for k in ANOMALY_FEATURES}
        score = self.detector.score_one(ax)
        quantile = self.anomaly_quantile
        threshold = quantile.get() or 1.0
        candidate = self.counts["scored"] >= self.COLDSTART_MIN_SEEN and score >= threshold
        quantile.update(score)
        if not candidate:
            self.detector.learn_one(ax)
        self.means = [m + 0.01 * (v - m) for m, v in zip(self.means, features)]
        return score, threshold, candidate, ax

    def on_transaction(self, tx: Any, features: tuple[float, ...], part: int = 0) -> Scored:
        """Release due labels, score ``tx``, keep its features for the label to come."""
        event_ts = tx.event_ts
        if event_ts < self.released_to:
            # Labels newer than this transaction were already learned (a straggler).
            self.counts["late_transactions"] += 1
        self._advance(part, event_ts)
        x = dict(zip(FEATURE_NAMES, features))
        cfg = self.config
        if self.supervised:
            score = self.model.predict_proba_one(x).get(True, 0.0)
            threshold, name, model = cfg.threshold, cfg.model_name, self.model
            scorer = lambda z: model.predict_proba_one(z).get(True, 0.0)  # noqa: E731
            candidate = score >= threshold
        else:
            score, threshold, candidate, x = self._coldstart(x, features)
            name, model, scorer = "coldstart-hst", self.detector, self.detector.score_one
        reasons = None
        if candidate:
            means = dict(zip(FEATURE_NAMES, self.means))
            reasons = reasons_for(model, x, scorer, top=cfg.reasons, means=means)
        packed = _PACK.pack(*features)
        orphan = self.orphans.pop(tx.tx_id, None)
        if orphan is not None:
            if orphan[1] or _keep_negative(tx.tx_id, cfg.negative_sampling):
                self._learn(packed, orphan[1])
        else:
            self.pending[tx.tx_id] = (event_ts, packed)
        self.counts["scored"] += 1
        self.first_ts = min(self.first_ts, event_ts)
        self.last_ts = max(self.last_ts, event_ts)
        return Scored(tx, score, threshold, name, reasons)

