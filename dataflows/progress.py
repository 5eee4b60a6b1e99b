"""Progress lines while the flow runs and a summary at the end (per process)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Iterable, Optional

from connectors.events import format_ts

__all__ = ["RunStats"]

log = logging.getLogger("fraudflow.progress")


class RunStats:
    """Counters updated by the flow's steps; shared by the worker threads of one process."""

    REPORT_EVERY_S = 5.0

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress
        self.started = time.monotonic()
        self.transactions = 0
        self.alerts = 0
        self.suppressed = 0
        self.dead_letters = 0
        self.labels_joined = 0
        self.alert_labels = 0
        self.alerts_confirmed = 0
        self.event_ts: Optional[float] = None
        self.shards: dict[int, Any] = {}
        self._alerted: set[str] = set()
        self._lock = threading.Lock()
        self._next_report = self.started + self.REPORT_EVERY_S

    # -- updates from the steps ---------------------------------------------------------
    def scored(self, scored: list, shard: Any) -> None:
        if not scored:
            return
        with self._lock:
            self.transactions += len(scored)
            last = scored[-1].tx.event_ts
            if self.event_ts is None or last > self.event_ts:
                self.event_ts = last
            self.shards[id(shard)] = shard
        if self.progress and time.monotonic() >= self._next_report:
            self.report()

    def alerted(self, alerts: Iterable[Any], suppressed: int) -> None:
        with self._lock:
            for alert in alerts:
                self.alerts += 1
                self._alerted.add(alert.tx_id)
            self.suppressed += suppressed

    def confirm(self, tx_id: str) -> None:
        """A fraud label joined: was the transaction alerted?"""
        with self._lock:
            if tx_id in self._alerted:
                self.alerts_confirmed += 1

    def dead(self) -> None:
        with self._lock:
            self.dead_letters += 1

    # -- reporting ----------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        shards = list(self.shards.values())
        learned = sum(s.counts["labels_learned"] for s in shards)
        received = sum(s.counts["labels_received"] for s in shards)
        frauds = sum(s.counts["frauds_learned"] for s in shards)
        elapsed = time.monotonic() - self.started
        return {
            "transactions_scored": self.transactions,
            "labels_received": received,
            "labels_learned": learned,
            "frauds_learned": frauds,
            "implicit_negatives": sum(s.counts["implicit_negatives"] for s in shards),
            "late_transactions": sum(s.counts["late_transactions"] for s in shards),
            "alerts": self.alerts,
            "alerts_suppressed_by_cooldown": self.suppressed,
            "alerts_confirmed_fraud": self.alerts_confirmed,
            "dead_letters": self.dead_letters,
            "supervised_shards": sum(1 for s in shards if s.supervised),
            "model_shards": len(shards),
            "event_time": format_ts(self.event_ts) if self.event_ts is not None else None,
            "elapsed_s": round(elapsed, 1),
            "transactions_per_s": round(self.transactions / elapsed) if elapsed > 0 else 0,
        }

    def report(self) -> None:
        self._next_report = time.monotonic() + self.REPORT_EVERY_S
        c = self.counts()
        log.info(
            "progress: %s transactions scored (%s/s), event time %s, %s labels, %s alerts, %s dead letters",
            f"{c['transactions_scored']:,}", f"{c['transactions_per_s']:,}", c["event_time"],
            f"{c['labels_received']:,}", f"{c['alerts']:,}", f"{c['dead_letters']:,}",
        )

    def summary(self) -> str:
        c = self.counts()
        share = f" ({c['alerts_confirmed_fraud'] / c['alerts']:.0%})" if c["alerts"] else ""
        lines = [
            "fraudflow summary" + ("" if len(self.shards) <= 1 else f" (this process: {len(self.shards)} shards)"),
            f"  transactions scored   {c['transactions_scored']:>12,}   up to {c['event_time']}",
            f"  labels received       {c['labels_received']:>12,}   (learned from {c['labels_learned']:,}: "
            f"{c['frauds_learned']:,} frauds, a sample of the legitimate; {c['implicit_negatives']:,} inferred)",
            f"  alerts                {c['alerts']:>12,}   ({c['alerts_suppressed_by_cooldown']:,} more folded"
            " into open alerts by the cool-down)",
            f"  alerts confirmed      {c['alerts_confirmed_fraud']:>12,}{share} by fraud labels released so far",
            f"  dead letters          {c['dead_letters']:>12,}",
            f"  model                 {c['supervised_shards']} of {c['model_shards']} shards supervised"
            " (the others still on the cold-start anomaly score)",
            f"  elapsed               {c['elapsed_s']:>12,} s   ({c['transactions_per_s']:,} transactions/s)",
        ]
        return "\n".join(lines)

    def print_summary(self, settings: Any = None) -> None:
        text = self.summary()
        if settings is not None and getattr(settings, "source", "kafka") != "kafka":
            text += f"\n  alerts written to     {settings.alerts}\n  dead letters in       {settings.dlq}"
        print(text, file=sys.stderr, flush=True)
