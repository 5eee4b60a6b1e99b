"""The model section of the flow's configuration, defined once.

:class:`ModelConfig` holds how a model shard scores and learns; its defaults are the defaults of
the matching ``FRAUDFLOW_*`` settings (``dataflows.settings`` takes them from here), and
``MODEL_KIND_NAMES`` the models ``FRAUDFLOW_MODEL_KIND`` accepts (``learners.models`` builds
them). No heavy imports: the settings read this without loading River.

>>> ModelConfig().kind in MODEL_KIND_NAMES
True
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_KIND_NAMES", "ModelConfig"]

MODEL_KIND_NAMES = ("binned_logreg", "logreg", "hoeffding_tree", "arf", "amf")


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
    # analysts' verdicts this soon after the shard's first transaction are learned when the label
    # feed would have taught them (decision 0062): until then the feed's examples have no
    # terminal history (twice the default risk delay of 7 days)
    verdict_warmup_days: float = 14.0
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
