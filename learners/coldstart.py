"""Cold start: an anomaly detector scores transactions until the supervised model has learned
enough frauds (``warmup_frauds``); it alerts on the most anomalous ``coldstart_alert_rate``.

The transactions not learned yet wait here, in the *unlearned backlog*, until the model
shard's next build: the detector learns them then, in event-time order (and so does the
model's first step while it wants unlabelled transactions, :class:`learners.models.LearningHooks`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from river import stats

from learners.features import FEATURE_NAMES
from learners.models import ANOMALY_FEATURES

__all__ = ["ColdStart"]

_ANOMALY_INDEX = [FEATURE_NAMES.index(name) for name in ANOMALY_FEATURES]


class ColdStart:
    """The cold-start detector, the quantile its alert threshold is, and the unlearned backlog;
    the other arguments than ``alert_rate`` are a :meth:`snapshot`'s fields."""

    MIN_SEEN = 1000  # no cold-start alerts before the detector has learned this many
    # ... nor in the shard's first day of event time: every card is new then, and the anomaly
    # features (daily counts and amounts among them) rise through the day, so what looks
    # anomalous is how far into its first day a card is (decision 0065)
    MIN_HISTORY_S = 86_400.0

    def __init__(self, alert_rate: float, detector: Any, quantile: Optional[stats.Quantile] = None,
                 unlearned: Optional[list[tuple[float, str, bytes, float]]] = None) -> None:
        self.detector = detector
        self.quantile = stats.Quantile(1.0 - alert_rate) if quantile is None else quantile
        self.unlearned = [] if unlearned is None else unlearned  # (event_ts, tx_id, packed, score)

    def snapshot(self) -> dict[str, Any]:
        return {"detector": self.detector, "quantile": self.quantile, "unlearned": self.unlearned}

    @property
    def threshold(self) -> float:
        """The anomaly score of the ``alert_rate`` most anomalous transactions learned."""
        return self.quantile.get() or 1.0

    def hold(self, event_ts: float, tx_id: str, packed: bytes, score: float) -> None:
        self.unlearned.append((event_ts, tx_id, packed, score))

    def drop(self) -> None:
        """Nothing wants unlabelled transactions any more."""
        if self.unlearned:
            self.unlearned = []

    def due(self, boundary: float) -> list[tuple[float, str, bytes, float]]:
        """The backlog before ``boundary``, in event-time order, taken out."""
        due = sorted(u for u in self.unlearned if u[0] < boundary)
        if due:
            self.unlearned = [u for u in self.unlearned if u[0] >= boundary]
        return due

    def learn(self, vectors: Sequence[Sequence[float]]) -> None:
        """Feature vectors in event-time order; the threshold stays the one they were scored with."""
        detector, quantile, threshold = self.detector, self.quantile, self.threshold
        for values in vectors:
            ax = {name: values[i] for name, i in zip(ANOMALY_FEATURES, _ANOMALY_INDEX)}
            score = detector.score_one(ax)
            quantile.update(score)
            if score < threshold:  # do not learn what looks like an attack
                detector.learn_one(ax)
