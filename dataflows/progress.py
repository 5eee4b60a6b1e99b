"""Progress lines while the flow runs and a summary at the end (per process)."""

from __future__ import annotations

import bisect
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterable, Optional

from connectors.events import format_ts
from connectors.sources import last_poll

# Scores histogram buckets (upper bounds), shared with the Prometheus exposition.
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0)

__all__ = ["RunStats", "watch_idle"]

log = logging.getLogger("fraudflow.progress")


class RunStats:
    """Counters updated by the flow's steps; shared by the worker threads of one process."""

    REPORT_EVERY_S = 5.0

    def __init__(self, progress: bool = True, shared_examples: bool = False) -> None:
        self.progress = progress
        # every shard learns every example (FRAUDFLOW_SHARD_EXAMPLES=all): what was learned is
        # one shard's count, not the sum over shards (each example is learned once per shard)
        self.shared_examples = shared_examples
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
        self.snapshot_exports = 0
        self.forgotten = 0
        self.pending = 0  # feature vectors awaiting their label (await_labels, this process)
        self._dead_by_reason: dict[str, int] = {}
        # analysts' feedback at the account stage: verdicts, labels_duplicate, labels_overturning_verdict
        self._feedback: dict[str, int] = {"verdicts": 0, "labels_duplicate": 0, "labels_overturning_verdict": 0}
        self._score_buckets = [0] * len(SCORE_BUCKETS)
        self._score_sum = 0.0
        self._alerted: set[str] = set()
        self._rule_books: dict[int, tuple[Any, int]] = {}  # id(stage) -> (stage, rules in force)
        self._rule_matches: dict[tuple[str, str], int] = {}  # (rule id or tag, action) -> transactions
        self._rule_alerts: dict[str, int] = {}  # rule id -> alerts emitted carrying it
        self.rule_allowed = 0  # alert candidates suppressed by allow rules
        self.rule_alerts = 0  # alerts carrying at least one alert rule
        self._lock = threading.Lock()
        self._next_report = self.started + self.REPORT_EVERY_S
        self.failure: Optional[str] = None  # why the run stopped, if it failed

    # -- updates from the steps ---------------------------------------------------------
    def scored(self, scored: list, shard: Any) -> None:
        if not scored:
            return
        buckets, bounds = self._score_buckets, SCORE_BUCKETS
        total = 0.0
        newest = scored[0].tx.event_ts
        for s in scored:
            score = s.score
            total += score
            i = bisect.bisect_left(bounds, score)
            if i < len(buckets):
                buckets[i] += 1
            if s.tx.event_ts > newest:
                newest = s.tx.event_ts
        with self._lock:
            self.transactions += len(scored)
            self._score_sum += total
            if self.event_ts is None or newest > self.event_ts:
                self.event_ts = newest
            self.shards[id(shard)] = shard
        if self.progress and time.monotonic() >= self._next_report:
            self.report()

    def alerted(self, alerts: Iterable[Any], suppressed: int) -> None:
        with self._lock:
            rule_alerts = self._rule_alerts
            for alert in alerts:
                self.alerts += 1
                self._alerted.add(alert.tx_id)
                ruled = False
                for name, _ in alert.reasons:
                    if name.startswith("rule:"):
                        rule_alerts[name[5:]] = rule_alerts.get(name[5:], 0) + 1
                        ruled = True
                self.rule_alerts += ruled
            self.suppressed += suppressed

    def rule_book(self, stage: Any, active: int) -> None:
        """A model shard's rule book (``apply_rules``) holds ``active`` enabled rules."""
        with self._lock:
            self._rule_books[id(stage)] = (stage, active)

    def rule_matches(self, matches: dict, allowed: int) -> None:
        """Transactions each rule matched, by ``(rule id or tag, action)``; ``allowed``: alert
        candidates the allow rules suppressed."""
        with self._lock:
            counts = self._rule_matches
            for key, n in matches.items():
                counts[key] = counts.get(key, 0) + n
            self.rule_allowed += allowed

    def confirm(self, tx_id: str) -> None:
        """A fraud label joined: was the transaction alerted?"""
        with self._lock:
            if tx_id in self._alerted:
                self.alerts_confirmed += 1

    def feedback(self, kind: str) -> None:
        """An analyst's verdict joined, or a later label for an answered transaction (decision 0050)."""
        with self._lock:
            self._feedback[kind] = self._feedback.get(kind, 0) + 1

    def dead(self, category: str = "other") -> None:
        """A dead letter of ``category`` (:attr:`connectors.events.DeadLetter.category`)."""
        with self._lock:
            self.dead_letters += 1
            self._dead_by_reason[category] = self._dead_by_reason.get(category, 0) + 1

    def awaiting(self, delta: int) -> None:
        """Feature vectors kept (+) or joined / dropped (-) by the await_labels stage."""
        if delta:
            with self._lock:
                self.pending += delta

    def unmatched(self, n: int) -> None:
        """Transactions (or labels) forgotten unjoined when an idle pending bucket was dropped."""
        if n:
            with self._lock:
                self.forgotten += n

    def exported(self) -> None:
        with self._lock:
            self.snapshot_exports += 1

    # -- read at scrape time ------------------------------------------------------------
    def dead_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dead_by_reason)

    def score_histogram(self) -> tuple[list[int], float, int]:
        with self._lock:
            return list(self._score_buckets), self._score_sum, self.transactions

    def rule_books(self) -> list[tuple[str, int]]:
        """(shard name, enabled rules) of every rule book of this process."""
        with self._lock:
            books = list(self._rule_books.values())
        return [(getattr(stage, "name", None) or f"book-{i}", active) for i, (stage, active) in enumerate(books)]

    def rule_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """(matches by (rule, action), alerts by rule)."""
        with self._lock:
            return dict(self._rule_matches), dict(self._rule_alerts)

    def request_exports(self) -> None:
        """Ask every shard of this process to export a snapshot at its next batch."""
        with self._lock:
            for shard in self.shards.values():
                shard.export_requested = True

    def shard_items(self) -> list[tuple[str, Any]]:
        with self._lock:
            shards = list(self.shards.values())
        return [(getattr(s, "name", None) or f"shard-{i}", s) for i, s in enumerate(shards)]

    # -- reporting ----------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        shards = list(self.shards.values())

        def learned_count(name: str) -> int:
            values = [s.counts[name] for s in shards]
            return max(values, default=0) if self.shared_examples else sum(values)

        learned, frauds = learned_count("labels_learned"), learned_count("frauds_learned")
        received = sum(s.counts["labels_received"] for s in shards)  # copies are not counted
        elapsed = time.monotonic() - self.started
        return {
            "transactions_scored": self.transactions,
            "labels_received": received,
            "labels_learned": learned,
            "frauds_learned": frauds,
            "implicit_negatives": sum(s.counts["implicit_negatives"] for s in shards),
            "late_transactions": sum(s.counts["late_transactions"] for s in shards),
            "late_labels": learned_count("late_labels"),
            "pending_transactions": self.pending,
            "forgotten_unjoined": self.forgotten,
            "snapshot_exports": self.snapshot_exports,
            "event_ts": self.event_ts,
            "alerts": self.alerts,
            "alerts_suppressed_by_cooldown": self.suppressed,
            "alerts_confirmed_fraud": self.alerts_confirmed,
            "dead_letters": self.dead_letters,
            "feedback": {**self._feedback, "verdicts_deferred": sum(s.counts.get("verdicts_deferred", 0) for s in shards)},
            "rules_active": max((n for _, n in self._rule_books.values()), default=0),
            "rule_alerts": self.rule_alerts,
            "rule_allowed": self.rule_allowed,
            "bad_rules": self._dead_by_reason.get("bad_rule", 0),
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

    def failed(self, reason: str) -> None:
        """The run stopped on an error: the summary says so."""
        self.failure = reason

    def summary(self) -> str:
        c = self.counts()
        share = f" ({c['alerts_confirmed_fraud'] / c['alerts']:.0%})" if c["alerts"] else ""
        head = "fraudflow summary" + ("" if len(self.shards) <= 1 else f" (this process: {len(self.shards)} shards)")
        if self.failure == "interrupted":
            head = "fraudflow summary: interrupted; counts up to the interruption"
        elif self.failure is not None:
            reason = self.failure if len(self.failure) <= 100 else self.failure[:99] + "…"
            head = f"fraudflow summary: the run FAILED ({reason}); counts up to the failure"
        up_to = f"   up to {c['event_time']}" if c["event_time"] is not None else ""
        model = (f"  model                 {c['supervised_shards']} of {c['model_shards']} shards supervised"
                 " (the others still on the cold-start anomaly score)" if c["model_shards"]
                 else "  model                 no model shard scored in this process")
        lines = [
            head,
            f"  transactions scored   {c['transactions_scored']:>12,}{up_to}",
            f"  labels received       {c['labels_received']:>12,}   (learned from {c['labels_learned']:,}: "
            f"{c['frauds_learned']:,} frauds, a sample of the legitimate; {c['implicit_negatives']:,} inferred)",
            f"  alerts                {c['alerts']:>12,}   ({c['alerts_suppressed_by_cooldown']:,} more folded"
            " into open alerts by the cool-down)",
            f"  alerts confirmed      {c['alerts_confirmed_fraud']:>12,}{share} by fraud labels released so far",
            f"  dead letters          {c['dead_letters']:>12,}",
            model,
        ]
        fb = c["feedback"]
        if fb["verdicts"] or fb["labels_duplicate"]:
            lines.append(f"  analysts' verdicts    {fb['verdicts']:>12,}   ({fb['labels_duplicate']:,} later labels for "
                         f"answered transactions not learned again, {fb['labels_overturning_verdict']:,} chargebacks "
                         f"overturning a legitimate verdict learned; {fb['verdicts_deferred']:,} verdict examples learned "
                         "at the label feed's time, in the first FRAUDFLOW_VERDICT_WARMUP_DAYS)")
        if c["rules_active"] or c["rule_alerts"] or c["rule_allowed"] or c["bad_rules"]:
            lines.append(f"  rules                 {c['rules_active']:>12,} in force   ({c['rule_alerts']:,} alerts from "
                         f"alert rules, {c['rule_allowed']:,} alerts suppressed by allow rules, {c['bad_rules']:,} "
                         "bad rules dead-lettered)")
        if c["late_transactions"] or c["late_labels"]:
            lines.append(f"  late events           {c['late_transactions']:>12,} transactions, {c['late_labels']:,} labels"
                         " behind the learning step (raise FRAUDFLOW_ALLOWED_LATENESS_S if this grows)")
        if c["forgotten_unjoined"]:
            lines.append(f"  never labelled        {c['forgotten_unjoined']:>12,} transactions or labels left unjoined"
                         " after two days without news (see FRAUDFLOW_LABEL_TIMEOUT_DAYS)")
        lines += [
            f"  elapsed               {c['elapsed_s']:>12,} s   ({c['transactions_per_s']:,} transactions/s)",
        ]
        return "\n".join(lines)

    def print_summary(self, outputs: Any = None) -> None:
        """Print the summary, with where alerts and dead letters went when ``outputs`` (the
        settings' output section: files, not topics) is given."""
        text = self.summary()
        if outputs is not None:
            text += f"\n  alerts written to     {outputs.alerts}\n  dead letters in       {outputs.dlq}"
        print(text, file=sys.stderr, flush=True)


def watch_idle(stats: RunStats, every_s: float = 30.0, blocked_hint: str = "",
               hint: Callable[[float], Optional[str]] = lambda within_s: None) -> threading.Thread:
    """Log a line every ``every_s`` while no transaction is scored, so a quiet flow is never a
    silent one: either it is caught up and polling its input (INFO), or it is blocked (WARNING:
    the input has not been polled for ``every_s``, e.g. a sink waiting for a broker that does not
    answer; ``blocked_hint`` says what to suspect). ``hint(within_s)`` may add the latest complaint
    of a client library."""
    tick = min(1.0, every_s / 4)

    def run() -> None:
        scored, since = stats.transactions, time.monotonic()
        next_line = since + every_s
        while True:
            time.sleep(tick)
            now = time.monotonic()
            if stats.transactions != scored:
                scored, since = stats.transactions, now
                next_line = now + every_s
                continue
            if now < next_line:
                continue
            next_line = now + every_s
            extra = hint(every_s)
            extra = f"; {extra}" if extra else ""
            polled = last_poll()
            if polled and now - polled < every_s:
                log.info("caught up: no new transaction for %.0f s, waiting for input (%s scored so far)%s",
                         now - since, f"{scored:,}", extra)
            else:
                quiet = f"for {now - polled:.0f} s" if polled else "yet"
                log.warning("no transaction scored for %.0f s and the input not polled %s: the flow is blocked%s%s",
                            now - since, quiet, f", {blocked_hint}" if blocked_hint else "", extra)

    thread = threading.Thread(target=run, name="fraudflow-idle-watch", daemon=True)
    thread.start()
    return thread
