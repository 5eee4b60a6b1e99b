"""The alert decision: threshold (set on the shard), per-card cool-down, and the alert record.

A fraud analyst works one card at a time: once a card has an open alert, further risky
transactions on it within ``cooldown_s`` (event time) are folded into that alert rather
than queued again.

>>> from connectors.events import Transaction
>>> from learners.messages import Scored
>>> policy = AlertPolicy(PolicyConfig(cooldown_s=3600))
>>> tx = Transaction("t-1", "c-1", 1522541276.0, 500.0, "m-9")
>>> policy.decide(Scored(tx, 0.97, 0.5, "logreg", [("acct_amount_robust_z", 2.1)], True)).alert_id
'a-...'
>>> later = Transaction("t-2", "c-1", 1522541276.0 + 600, 480.0, "m-9")
>>> policy.decide(Scored(later, 0.95, 0.5, "logreg", [], True)) is None  # within the cool-down
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from connectors.events import Alert, alert_id_for, format_ts
from learners.messages import Scored

__all__ = ["AlertPolicy", "PolicyConfig", "alert_of"]


@dataclass(frozen=True)
class PolicyConfig:
    cooldown_s: float = 0.0


def alert_of(scored: Scored) -> Alert:
    tx = scored.tx
    return Alert(
        alert_id=alert_id_for(tx.tx_id, scored.model),
        tx_id=tx.tx_id,
        account_id=tx.account_id,
        terminal_id=tx.terminal_id,
        ts=format_ts(tx.event_ts),
        amount=tx.amount,
        score=round(scored.score, 4),
        threshold=scored.threshold,
        model=scored.model,
        reasons=[(name, value) for name, value in (scored.reasons or [])],
        currency=tx.currency,
        extra=tx.extra,
        tags=scored.tags,
    )


class AlertPolicy:
    """Per-account: turns alert candidates into alerts, at most one per cool-down."""

    __slots__ = ("config", "last_alert_ts")

    def __init__(self, config: PolicyConfig, state: Optional[tuple] = None) -> None:
        self.config = config
        self.last_alert_ts = state[0] if state else None

    def decide(self, scored: Scored) -> Optional[Alert]:
        ts = scored.tx.event_ts
        last = self.last_alert_ts
        if last is not None and abs(ts - last) < self.config.cooldown_s:
            return None
        self.last_alert_ts = ts if last is None else max(ts, last)
        return alert_of(scored)

    def snapshot(self) -> tuple:
        return (self.last_alert_ts,)
