"""The alert threshold of a supervised shard: fixed (``threshold``), or adaptive from the
scores of the last day (``alert_budget_per_day`` or ``alert_rate``), moved at each build."""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

__all__ = ["AlertThreshold"]

DAY = 86_400.0


class AlertThreshold:
    """``config`` is a :class:`learners.scoring.ModelConfig`; the other arguments are a
    :meth:`snapshot`'s fields."""

    def __init__(self, config: Any, value: Optional[float] = None, day_scores: Optional[deque] = None) -> None:
        self.config = config
        self.adaptive: bool = config.adaptive_threshold
        self.value: float = config.threshold if value is None else value
        self.day_scores: deque = deque() if day_scores is None else day_scores  # (event_ts, score) of the last day

    def snapshot(self) -> dict[str, Any]:
        return {"value": self.value, "day_scores": self.day_scores}

    def observe(self, event_ts: float, score: float) -> None:
        """A supervised score: the adaptive threshold's basis."""
        if self.adaptive:
            self.day_scores.append((event_ts, score))

    def adapt(self, boundary: float) -> None:
        """Budget mode: the score the k-th riskiest transaction of the last day reached, where
        k is this shard's share of the daily budget (or of the alert rate)."""
        if not self.adaptive:
            return
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
        self.value = sorted(recent, reverse=True)[min(k, len(recent)) - 1] if k <= len(recent) else 0.0
