"""Online quality of a shard's model: test-then-train on the examples it learns."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Optional

from learners.evaluation import average_precision, roc_auc

__all__ = ["OnlineQuality"]


class OnlineQuality:
    """The last ``window`` learned examples as (score before learning, is_fraud, sampling
    rate); ``recent`` is a :meth:`snapshot`'s field."""

    def __init__(self, window: int, negative_sampling: float, recent: Optional[Iterable[tuple]] = None) -> None:
        self.negative_sampling = negative_sampling
        self.recent: deque = deque(() if recent is None else recent, maxlen=window)

    def snapshot(self) -> dict[str, Any]:
        return {"recent": self.recent}

    def record(self, score: float, is_fraud: bool, rate: float) -> None:
        self.recent.append((score, is_fraud, rate))

    def summary(self) -> dict[str, Any]:
        """Test-then-train quality: each example the model learned was first scored by the
        model about to learn it. Over the last ``quality_window`` examples; legitimate ones
        weigh ``1 / sampling rate`` in AP (they were sampled), AUC needs no weight."""
        # (score, is_fraud, sampling rate); examples recorded before the rate was kept: the setting
        rate = self.negative_sampling
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
