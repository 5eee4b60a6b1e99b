"""Source building blocks: event-time-bounded batches, and a list of events as a source."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["EventListSource", "EventTimeBatcher"]


class EventTimeBatcher:
    """Cuts an event-time-ordered stream into batches of at most ``size`` events spanning at
    most ``max_span_s`` of event time.

    Keyed steps regroup each batch by key, which reorders it; bounding the event time a
    batch covers bounds that disorder, which the flow absorbs (``allowed_lateness_s``).
    """

    def __init__(self, size: int, max_span_s: float) -> None:
        self.size = size
        self.max_span_s = max_span_s
        self._carry: Optional[object] = None

    def take(self, part: int, events: Iterator) -> list:
        """The next batch; ``events`` may offer ``peek()`` so nothing is taken but not emitted."""
        batch = []
        first_ts: Optional[float] = None
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
            if ts is not None and ts != float("-inf"):
                if first_ts is None:
                    first_ts = ts
                elif ts - first_ts > self.max_span_s and batch:
                    if peek is None:
                        self._carry = event
                    break
            if peek is not None:
                next(events)
            batch.append((part, event))
        if not batch:
            raise StopIteration
        return batch



class _ListPartition(StatefulSourcePartition[tuple[int, Any], int]):
    def __init__(self, events: Sequence[Any], start: int, batcher: EventTimeBatcher) -> None:
        self._events = events
        self._next = start
        self._batcher = batcher

    def next_batch(self) -> list[tuple[int, Any]]:
        batch = self._batcher.take(0, _Cursor(self))
        return batch

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


class EventListSource(FixedPartitionedSource[tuple[int, Any], int]):
    """Events from a list, in the given order, one partition (tests, embedding)."""

    def __init__(self, events: Sequence[Any], batch_size: int = 1000, max_batch_span_s: float = 3600.0) -> None:
        self.events = events
        self.batch_size = batch_size
        self.max_batch_span_s = max_batch_span_s

    def list_parts(self) -> list[str]:
        return ["events"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _ListPartition:
        return _ListPartition(self.events, resume_state or 0, EventTimeBatcher(self.batch_size, self.max_batch_span_s))
