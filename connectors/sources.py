"""Source building blocks: event-time-bounded batches, a list of events as a source, and the
simulated analysts' loop (:class:`AnalystLoop`) both the list and the files sources can close."""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import Any, Container, Hashable, Iterator, Optional, Sequence

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.events import Label, Transaction

__all__ = ["MAX_BATCH_SPAN_S", "batch_span_for", "AnalystGate", "AnalystLoop", "EventListSource", "EventTimeBatcher",
           "EventTimePacer", "LeadGuard",
           "beat", "last_poll"]

log = logging.getLogger(__name__)

_LAST_POLL = [0.0]


def beat() -> None:
    """Sources call this on every poll, data or not: the liveness probe's heartbeat."""
    _LAST_POLL[0] = time.monotonic()


def last_poll() -> float:
    """``time.monotonic()`` of the latest poll of any source in this process (0: none yet)."""
    return _LAST_POLL[0]

# Event time one source batch may span (and how far one partition may lead another). Keyed
# steps reorder what they process together, so this bounds the disorder the model shards see;
# the flow sets it to a quarter of ``allowed_lateness_s`` (900 s for the default hour).
MAX_BATCH_SPAN_S = 900.0
# How far one event may run ahead of its partition's event time before it is a suspect
# (:class:`LeadGuard`; FRAUDFLOW_MAX_EVENT_LEAD_HOURS).
DEFAULT_MAX_LEAD_S = 86_400.0


def batch_span_for(allowed_lateness_s: float) -> float:
    """The batch span (and pacing lead) that keeps source disorder well inside one learning step."""
    return allowed_lateness_s / 4


class SpanBound:
    """One batch's event-time bound, in whatever order its events come: an event is admitted
    while the batch, with it, spans at most ``span_s`` from its earliest event to its latest.
    Measured both ways, an event ahead of the ones after it ends its batch: the batch does not
    reach back over the events behind it (decision 0003, amendment).

    >>> bound = SpanBound(900.0)
    >>> [bound.admits(t) for t in (86_400, 0, 85_600, 86_500, 84_000)]
    [True, False, True, True, False]
    """

    __slots__ = ("span_s", "lo", "hi")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.lo = math.inf  # the earliest event time admitted
        self.hi = -math.inf  # and the latest

    def admits(self, ts: float) -> bool:
        lo, hi = self.lo, self.hi
        if lo == math.inf:
            self.lo = self.hi = ts
            return True
        if ts - lo > self.span_s or hi - ts > self.span_s:
            return False
        if ts < lo:
            self.lo = ts
        elif ts > hi:
            self.hi = ts
        return True


class EventTimeBatcher:
    """Cuts a stream into batches of at most ``size`` events spanning at most ``max_span_s``
    of event time, from the batch's earliest event to its latest, in whatever order they come.

    Keyed steps regroup each batch by key, which reorders it; bounding the event time a
    batch covers bounds that disorder, which the flow absorbs (``allowed_lateness_s``). The
    bound is a :class:`SpanBound`: an event ahead of the ones after it (a clock ahead, verdicts
    listed before the transactions they answer) ends its batch, which the keyed steps would
    otherwise reorder by key over hours or days.

    >>> from types import SimpleNamespace as At
    >>> batcher, events = EventTimeBatcher(10, 900.0), iter([At(event_ts=t) for t in (86_400, 0, 60, 600, 1_000)])
    >>> [[e.event_ts for _, e in batcher.take(0, events)] for _ in range(3)]
    [[86400], [0, 60, 600], [1000]]
    """

    def __init__(self, size: int, max_span_s: float) -> None:
        self.size = size
        self.max_span_s = max_span_s
        self._carry: Optional[object] = None

    def take(self, part: int, events: Iterator) -> list:
        """The next batch; ``events`` may offer ``peek()`` so nothing is taken but not emitted."""
        beat()
        batch = []
        bound = SpanBound(self.max_span_s)
        peek = getattr(events, "peek", None)
        while len(batch) < self.size:
            if peek is not None:
                event = peek()
            else:
                event = self._carry if self._carry is not None else next(events, None)
                self._carry = None
            if event is None:
                break
            ts = getattr(event, "event_ts", None)
            if ts is not None and ts != float("-inf") and not bound.admits(ts):
                if peek is None:
                    self._carry = event
                break
            if peek is not None:
                next(events)
            batch.append((part, event))
        if not batch:
            raise StopIteration
        return batch



class LeadGuard:
    """One input partition's defence against a lone event far ahead in event time (decision 0024).

    A record stamped years ahead (a bad clock, a typo) would move the partition's event time,
    and with it the watermark every model shard learns by, and stall the pacing of the other
    partitions behind it. An event more than ``max_lead_s`` ahead of the partition's event time
    (the newest accepted, plus the wall time since it last advanced: a live partition that was
    quiet for a day may jump a day) is held as a *suspect* until the partition's next event:
    if that one is far ahead too, the partition really jumped (a gap in a backfill) and both go
    on; if not, the suspect was alone and becomes a dead letter. The first event of a partition
    sets its event time.

    >>> guard = LeadGuard(max_lead_s=86_400.0)
    >>> reject = lambda item, reason: ("dead", item)
    >>> [guard.push(x, x, reject) for x in (1.0e9, 1.0e9 + 60, 4.0e9)]
    [[1000000000.0], [1000000060.0], []]
    >>> guard.push(1.0e9 + 120, 1.0e9 + 120, reject)  # the suspect was alone
    [('dead', 4000000000.0), 1000000120.0]
    >>> guard.push(2.0e9, 2.0e9, reject), guard.push(2.0e9 + 5, 2.0e9 + 5, reject)  # a real jump
    ([], [2000000000.0, 2000000005.0])
    """

    __slots__ = ("max_lead_s", "frontier", "advanced_at", "suspect", "_wall")

    def __init__(self, max_lead_s: float, frontier: float = -math.inf, wall=time.monotonic) -> None:
        self.max_lead_s = max_lead_s
        self.frontier = frontier
        self._wall = wall
        self.advanced_at = wall()
        self.suspect: Optional[tuple[Any, float]] = None

    def _accept(self, ts: float) -> None:
        if ts > self.frontier:
            self.frontier = ts
            self.advanced_at = self._wall()

    def push(self, item: Any, ts: Optional[float], reject) -> list:
        """Items that may go on now, in order; ``reject(item, reason)`` makes a dead letter of
        a lone suspect. Items without an event time (dead letters) pass at once."""
        if ts is None:
            return [item]
        out: list = []
        if self.suspect is not None:
            held, held_ts = self.suspect
            self.suspect = None
            if ts > self.frontier + self.max_lead_s:  # far ahead too: the partition jumped
                self._accept(held_ts)
                out.append(held)
            else:
                out.append(reject(item=held, reason=self._reason(held_ts)))
        if self.frontier == -math.inf or ts <= self.frontier + self.max_lead_s + (self._wall() - self.advanced_at):
            self._accept(ts)
            out.append(item)
        else:
            self.suspect = (item, ts)
        return out

    def _reason(self, ts: float) -> str:
        from connectors.events import format_ts

        return (f"ts {format_ts(ts)} is {(ts - self.frontier) / 86_400:,.1f} days ahead of its partition's event "
                f"time ({format_ts(self.frontier)}) and the next event did not follow it: taken for a bad clock")

    def flush(self, reject) -> list:
        """End of the input: a suspect still held was never confirmed."""
        if self.suspect is None:
            return []
        held, held_ts = self.suspect
        self.suspect = None
        return [reject(item=held, reason=self._reason(held_ts))]


class EventTimePacer:
    """Keeps the partitions of one source, in one process, within ``max_lead_s`` of each other
    in event time.

    Partitions read independently (Kafka topic-partitions, simulator slices) drift apart: a
    partition whose fetch is slow for a second falls hours of event time behind when a backlog
    is replayed at full speed. The model would then wait for it (its watermark is the slowest
    partition) and labels from a fast labels partition would reach features early or late.
    A partition may emit an event only if it is at most ``max_lead_s`` ahead of every other
    *active* partition: one with data pending, or that saw data in the last ``idle_after_s``
    seconds of wall time (an idle, caught-up partition never holds the others back). For
    ``startup_grace_s`` after it registers, a partition that has not seen data yet counts as
    active, so a fresh start (or a resume) begins aligned.
    """

    def __init__(self, max_lead_s: float = MAX_BATCH_SPAN_S, idle_after_s: float = 1.0,
                 startup_grace_s: float = 2.0) -> None:
        self.max_lead_s = max_lead_s
        self.idle_after_s = idle_after_s
        self.startup_grace_s = startup_grace_s
        self._lock = threading.Lock()
        self._head: dict[Hashable, float] = {}  # next event time (or last emitted) per partition
        self._active_until: dict[Hashable, float] = {}

    def register(self, part: Hashable) -> None:
        with self._lock:
            self._head[part] = -math.inf
            self._active_until[part] = time.monotonic() + self.startup_grace_s

    def unregister(self, part: Hashable) -> None:
        with self._lock:
            self._head.pop(part, None)
            self._active_until.pop(part, None)

    def local_partitions(self) -> set[int]:
        """Partition numbers this process reads (keys are ``(topic, partition)``)."""
        with self._lock:
            return {p[1] for p in self._head if isinstance(p, tuple)}

    def limit(self, part: Hashable, head_ts: Optional[float]) -> float:
        """Record this partition's next event time; return how far it may emit."""
        now = time.monotonic()
        with self._lock:
            if head_ts is not None:
                self._head[part] = head_ts
                self._active_until[part] = now + self.idle_after_s
            others = [h for p, h in self._head.items() if p != part and self._active_until[p] > now]
        return min(others) + self.max_lead_s if others else math.inf


class ClockBoard:
    """Event-time progress of every transaction partition, as this process's model shards see it.

    Processes read their Kafka partitions independently, and at full speed (a backfill, a
    catch-up after an outage) one can run days of event time ahead of another within seconds:
    the shards then wait for the slower partition (their watermark), and the faster one's
    transactions are scored by ever older model versions. Every shard receives transactions
    of every partition (accounts are spread over partitions), so what the shards in *this*
    process have seen of the partitions *other* processes read is a cross-process clock, with
    no side channel. The Kafka source paces against it: a partition may not run more than two
    learning steps ahead of a partition another process reads. A partition not heard of for ``idle_after_s``
    (wall clock) no longer holds anyone back (a quiet partition, or the end of a backfill).
    """

    def __init__(self, idle_after_s: float = 0.5) -> None:
        self.idle_after_s = idle_after_s
        self._lock = threading.Lock()
        self._clock: dict[int, float] = {}
        self._heard: dict[int, float] = {}

    def publish(self, clocks: dict[int, float]) -> None:
        """A shard's per-partition clocks after a batch (the partitions it just heard from)."""
        now = time.monotonic()
        with self._lock:
            for part, ts in clocks.items():
                if ts > self._clock.get(part, -math.inf):
                    self._clock[part] = ts
                    self._heard[part] = now

    def floor(self, exclude: Container[int]) -> float:
        """The slowest active partition other than ``exclude`` (inf: none known)."""
        quiet_since = time.monotonic() - self.idle_after_s
        with self._lock:
            active = [ts for p, ts in self._clock.items() if p not in exclude and self._heard[p] > quiet_since]
        return min(active) if active else math.inf

    def event_time(self) -> float:
        """How far the transactions have come: the slowest active partition, or, when all are
        quiet, the newest clock heard (-inf: nothing yet)."""
        quiet_since = time.monotonic() - self.idle_after_s
        with self._lock:
            clocks = self._clock
            active = [ts for p, ts in clocks.items() if self._heard[p] > quiet_since]
            if active:
                return min(active)
            return max(clocks.values(), default=-math.inf)

    def clear(self) -> None:
        with self._lock:
            self._clock.clear()
            self._heard.clear()


BOARD = ClockBoard()


class AnalystLoop:
    """A source's events with an analyst desk's verdicts injected at their ``ts``, gated so
    that no event at or after ``T`` is emitted before every alert before ``T - delay`` is on
    the desk (a verdict due before ``T`` would otherwise be missing when ``T`` is scored).

    Rounds: when the next event would reach ``limit``, the loop waits until every transaction
    it emitted has left the flow's alert step (the desk counts them, ``AnalystDesk.drained``);
    then every alert before the next transaction's time ``known`` is on the desk, which
    decides them, and ``limit`` becomes ``known + delay``. The delay is positive, so each round
    emits at least the next transaction: no deadlock, also across idle gaps in event time (the
    next round starts from the next transaction, wherever it is). If the flow stops counting
    (a step failed on a transaction, which then never reaches the alert step) the loop goes on
    after ``STALL_S`` of wall clock with a warning. One process only: the desk is an object in
    this process, fed by this process's alert policy. The desk is handed each transaction and
    label as it is emitted (for the case reviews, decision 0066), and a verdict is popped only
    when no event before it is left.

    ``merged``: the source's events in event-time order, offering ``peek()``, ``next()`` and
    ``next_transaction_ts()`` (the recorded files, :class:`connectors.files.FileEventsSource`,
    or a list, :class:`EventListSource`).
    """

    STALL_S = 10.0

    def __init__(self, merged: Any, desk: Any) -> None:
        self.merged = merged
        self.desk = desk
        self.limit = -math.inf
        self.emitted = 0  # transactions emitted
        self._waiting_since = 0.0
        self._seen_processed = -1

    def __iter__(self) -> Iterator[Any]:
        return self

    def _head(self) -> tuple[bool, Any]:
        """(from the desk, event) of the next event in order, or (False, None) at the end."""
        event = self.merged.peek()
        verdict = self.desk.peek_due()
        if verdict is None:
            return False, event
        if event is None:
            return True, verdict
        ts = getattr(event, "event_ts", None)
        if ts is None or ts < verdict.event_ts:  # dead letters first; verdicts win ties
            return False, event
        return True, verdict

    def peek(self) -> Any:
        _, event = self._head()
        if event is None:
            return None
        ts = getattr(event, "event_ts", None)
        return event if ts is None or ts < self.limit else None

    def __next__(self) -> Any:
        from_desk, event = self._head()
        if event is None:
            raise StopIteration
        if from_desk:
            self.desk.pop_due()
        else:
            next(self.merged)
            if type(event) is Transaction:
                self.emitted += 1
                self.desk.on_transaction(event)
            elif type(event) is Label:
                self.desk.on_label(event)
        return event

    @property
    def finished(self) -> bool:
        return self.limit == math.inf and self._head()[1] is None

    def advance(self) -> bool:
        """May the source emit now? Starts a new round when the flow has drained."""
        if self.peek() is not None or self.finished:
            return True
        desk = self.desk
        if not desk.drained(self.emitted):
            now = time.monotonic()
            if desk.processed != self._seen_processed:
                self._seen_processed, self._waiting_since = desk.processed, now
            elif now - self._waiting_since > self.STALL_S:
                log.warning("analyst loop: %d of %d transactions emitted never reached the alert step (a step failed "
                            "on them?); going on without them", self.emitted - desk.processed, self.emitted)
                desk.processed = self.emitted
            return False
        known = self.merged.next_transaction_ts()
        desk.decide(known)
        self.limit = known + desk.delay_s
        return True


class AnalystGate:
    """A source partition's side of :class:`AnalystLoop`: batches while the loop lets it, and
    a wake-up a millisecond later while it waits for the flow to drain."""

    def __init__(self, loop: AnalystLoop) -> None:
        self.loop = loop
        self._gated = False

    def next_batch(self, batcher: EventTimeBatcher) -> list[tuple[int, Any]]:
        loop = self.loop
        self._gated = not loop.advance()
        if self._gated:
            return []
        try:
            return batcher.take(0, loop)
        except StopIteration:
            if loop.finished:
                raise
            self._gated = True
            return []

    def next_awake(self) -> Optional[datetime]:
        if self._gated:  # waiting for the flow to drain: look again in a millisecond
            return datetime.fromtimestamp(time.time() + 0.001, timezone.utc)
        return None


class _ListPartition(StatefulSourcePartition[tuple[int, Any], int]):
    def __init__(self, events: Sequence[Any], start: int, batcher: EventTimeBatcher, desk: Any = None) -> None:
        self._events = events
        self._next = start
        self._batcher = batcher
        self._loop = AnalystGate(AnalystLoop(_Cursor(self), desk)) if desk is not None else None

    def next_batch(self) -> list[tuple[int, Any]]:
        if self._loop is not None:
            return self._loop.next_batch(self._batcher)
        return self._batcher.take(0, _Cursor(self))

    def next_awake(self) -> Optional[datetime]:
        return None if self._loop is None else self._loop.next_awake()

    def snapshot(self) -> int:
        return self._next


class _Cursor:
    """A peekable view of a list partition's remaining events."""

    def __init__(self, part: _ListPartition) -> None:
        self._part = part

    def peek(self) -> Optional[Any]:
        p = self._part
        return p._events[p._next] if p._next < len(p._events) else None

    def __next__(self) -> Any:
        p = self._part
        p._next += 1
        return p._events[p._next - 1]

    def __iter__(self) -> Iterator[Any]:
        return self

    def next_transaction_ts(self) -> float:
        """Event time of the next transaction not yet returned (inf: none left)."""
        p = self._part
        for i in range(p._next, len(p._events)):
            if type(p._events[i]) is Transaction:
                return p._events[i].event_ts
        return math.inf


class EventListSource(FixedPartitionedSource[tuple[int, Any], int]):
    """Events from a list, in the given order, one partition (tests, embedding); with
    ``desk``, simulated analysts in the loop as ``fraudflow replay --analysts`` has them
    (:class:`AnalystLoop`: the list must be in event-time order, one process)."""

    def __init__(self, events: Sequence[Any], batch_size: int = 1000, max_batch_span_s: float = MAX_BATCH_SPAN_S,
                 desk: Any = None) -> None:
        self.events = events
        self.batch_size = batch_size
        self.max_batch_span_s = max_batch_span_s
        self.desk = desk

    def list_parts(self) -> list[str]:
        return ["events"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _ListPartition:
        return _ListPartition(self.events, resume_state or 0, EventTimeBatcher(self.batch_size, self.max_batch_span_s),
                              self.desk)
