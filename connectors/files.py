"""JSONL files: reading recorded transactions and labels, writing alerts, scores, dead letters.

:func:`read_events` merges a transactions file, a labels file and optionally a file of
analysts' verdicts by event time (verdicts, then labels, first on ties), decoding each line
with the event contract; a bad line becomes a dead letter naming the file and line.
:class:`FileEventsSource` is the same as a Bytewax source that resumes from byte offsets after
a crash. Given an analyst desk (:class:`learners.analysts.AnalystDesk`) it also closes the
feedback loop in process (``fraudflow replay --analysts``, :class:`connectors.sources.AnalystLoop`).

:class:`JsonlSink` appends whole lines with one ``write`` per batch to a file opened with
``O_APPEND``, so several workers and processes can share one output file without
interleaving lines.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.events import DeadLetter, Label, Origin, Transaction, Verdict, encode, parse_record
from connectors.sources import DEFAULT_MAX_LEAD_S, MAX_BATCH_SPAN_S, AnalystGate, AnalystLoop, EventTimeBatcher, LeadGuard

__all__ = ["FileEventsSource", "JsonlSink", "read_events", "write_jsonl"]

log = logging.getLogger(__name__)

_KIND = {0: "transaction", 1: "label", 2: "verdict"}


def _lines(path: str, start: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset after the line, line) from byte offset ``start``."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for line in fh:
            offset += len(line)
            yield offset, line


class _Reader:
    """One JSONL file as a stream of (event_ts, stream, event, resume position) records.

    A :class:`~connectors.sources.LeadGuard` holds back a lone event far ahead in event time
    (a dead letter unless the next line confirms the jump). The resume position of a record is
    where reading must restart to read it again: (byte offset, line number, guard frontier).
    """

    def __init__(self, path: str, stream: int, offset: int = 0, lineno: int = 0, frontier: float = -math.inf,
                 max_lead_s: float = DEFAULT_MAX_LEAD_S) -> None:
        self.path = path
        self.stream = stream
        self.offset = offset
        self.lineno = lineno
        self._it = _lines(path, offset)
        self._guard = LeadGuard(max_lead_s, frontier)
        self._ready: deque = deque()
        self._done = False

    def _reject(self, item: tuple, reason: str) -> tuple:
        _, stream, event, pos, raw = item
        dead = DeadLetter(raw, f"invalid {_KIND[stream]}: {reason}", event.origin, step="read_events",
                          category="bad_timestamp")
        return (-math.inf, stream, dead, pos, raw)

    def position(self) -> tuple:
        """Where to resume to read the first record not yet returned."""
        if self._ready:
            return self._ready[0][3]
        held = self._guard.suspect
        if held is not None:
            return held[0][3]
        return (self.offset, self.lineno, self._guard.frontier)

    def next(self) -> Optional[tuple]:
        ready, guard = self._ready, self._guard
        while not ready:
            if self._done:
                return None
            line = next(self._it, None)
            if line is None:
                self._done = True
                ready.extend(guard.flush(self._reject))
                continue
            self.offset, raw = line
            self.lineno += 1
            stripped = raw.strip()
            if not stripped:
                continue
            record_pos = (self.offset - len(raw), self.lineno - 1, guard.frontier)
            event = parse_record(stripped, Origin(self.path, self.lineno), _KIND[self.stream])
            if isinstance(event, DeadLetter):  # dead letters sort first, so they flow out promptly
                ready.append((-math.inf, self.stream, event, record_pos, stripped))
            else:
                ready.extend(guard.push((event.event_ts, self.stream, event, record_pos, stripped), event.event_ts,
                                        self._reject))
        return ready.popleft()


class _MergedFiles:
    def __init__(self, tx_path: str, label_path: str, state: Optional[tuple] = None,
                 max_lead_s: float = DEFAULT_MAX_LEAD_S, feedback_path: str = "") -> None:
        paths = [tx_path, label_path] + ([feedback_path] if feedback_path else [])
        state = tuple(state or ())
        state += ((0, 0),) * (len(paths) - len(state))  # saved before the feedback file: read it from the start
        positions = [tuple(p) + (-math.inf,) * (3 - len(p)) for p in state]
        self.readers = [_Reader(path, k, *positions[k], max_lead_s=max_lead_s) for k, path in enumerate(paths)]
        self.heads: list[Optional[tuple]] = [reader.next() for reader in self.readers]

    def __iter__(self) -> Iterator[Any]:
        return self

    def _pick(self) -> Optional[int]:
        heads = self.heads
        live = [k for k in range(len(heads)) if heads[k] is not None]
        if not live:
            return None
        # Verdicts (stream 2) and labels (1) win ties with transactions: a label known at t may inform t.
        return min(live, key=lambda k: (heads[k][0], -heads[k][1]))

    def next_transaction_ts(self) -> float:
        """Event time of the next transaction not yet returned (inf: none left)."""
        head = self.heads[0]
        return math.inf if head is None else head[0]

    def __next__(self) -> Any:
        i = self._pick()
        if i is None:
            raise StopIteration
        event = self.heads[i][2]
        self.heads[i] = self.readers[i].next()
        return event

    def peek(self) -> Any:
        """The record ``next()`` would return, or None at the end (nothing is consumed)."""
        i = self._pick()
        return None if i is None else self.heads[i][2]

    def position(self) -> tuple:
        """Where to resume so the next record returned is the next one not yet emitted."""
        return tuple(head[3] if head is not None else reader.position()
                     for head, reader in zip(self.heads, self.readers))


def read_events(transactions_path: str, labels_path: str, max_lead_s: float = DEFAULT_MAX_LEAD_S,
                feedback_path: str = "") -> Iterator[Transaction | Label | Verdict | DeadLetter]:
    """Transactions, labels (and verdicts) merged by event time (each file is read in order)."""
    return iter(_MergedFiles(transactions_path, labels_path, max_lead_s=max_lead_s, feedback_path=feedback_path))


class _FilePartition(StatefulSourcePartition[tuple[int, Any], tuple]):
    def __init__(self, tx_path: str, label_path: str, batch_size: int, max_span_s: float,
                 state: Optional[tuple], max_lead_s: float = DEFAULT_MAX_LEAD_S, feedback_path: str = "",
                 desk: Any = None) -> None:
        self._merged = _MergedFiles(tx_path, label_path, state, max_lead_s, feedback_path)
        self._batch = EventTimeBatcher(batch_size, max_span_s)
        self._loop = AnalystGate(AnalystLoop(self._merged, desk)) if desk is not None else None

    def next_batch(self) -> list[tuple[int, Any]]:
        if self._loop is None:
            return self._batch.take(0, self._merged)
        return self._loop.next_batch(self._batch)

    def next_awake(self) -> Optional[datetime]:
        return None if self._loop is None else self._loop.next_awake()

    def snapshot(self) -> tuple:
        return self._merged.position()


class FileEventsSource(FixedPartitionedSource[tuple[int, Any], tuple]):
    """Recorded transactions, labels and (``feedback_path``) analysts' verdicts as one
    event-time-ordered partition; with ``desk``, the simulated analysts' verdicts too
    (:class:`connectors.sources.AnalystLoop`; the desk is not part of the recovery state)."""

    def __init__(self, transactions_path: str, labels_path: str, batch_size: int = 1000,
                 max_batch_span_s: float = MAX_BATCH_SPAN_S, max_lead_s: float = DEFAULT_MAX_LEAD_S,
                 feedback_path: str = "", desk: Any = None) -> None:
        self.transactions_path = transactions_path
        self.labels_path = labels_path
        self.feedback_path = feedback_path
        self.desk = desk
        self.batch_size = batch_size
        self.max_batch_span_s = max_batch_span_s
        self.max_lead_s = max_lead_s

    def list_parts(self) -> list[str]:
        return ["files"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[tuple]) -> _FilePartition:
        return _FilePartition(self.transactions_path, self.labels_path, self.batch_size, self.max_batch_span_s,
                              resume_state, self.max_lead_s, self.feedback_path, self.desk)


# -- sinks -------------------------------------------------------------------------------
_open_lock = threading.Lock()
_open_files: dict[str, tuple[int, threading.Lock]] = {}


def _shared_fd(path: str) -> tuple[int, threading.Lock]:
    with _open_lock:
        entry = _open_files.get(path)
        if entry is None:
            if path == "-":
                entry = (sys.stdout.fileno(), threading.Lock())
            else:
                parent = os.path.dirname(path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                entry = (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), threading.Lock())
            _open_files[path] = entry
        return entry


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, path: str, to_json: Callable[[Any], bytes]) -> None:
        self._fd, self._lock = _shared_fd(path)
        self._to_json = to_json

    def write_batch(self, items: list[Any]) -> None:
        if not items:
            return
        to_json = self._to_json
        data = b"\n".join(to_json(item) for item in items) + b"\n"
        with self._lock:
            _write_all(self._fd, data)


class JsonlSink(DynamicSink[Any]):
    """Append JSON lines to ``path`` (``-`` for stdout) from every worker."""

    def __init__(self, path: str, to_json: Callable[[Any], bytes] = encode) -> None:
        self.path = path
        self.to_json = to_json

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        return _JsonlPartition(self.path, self.to_json)


def truncate(path: str) -> None:
    """Empty an output file before a fresh (non-resumed) run."""
    if path and path != "-":
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        open(path, "wb").close()


def write_jsonl(path: str, docs: Iterator[dict[str, Any]]) -> int:
    """Write JSON documents one per line; returns how many."""
    import msgspec

    enc = msgspec.json.Encoder()
    n = 0
    with open(path, "wb") as fh:
        for doc in docs:
            fh.write(enc.encode(doc))
            fh.write(b"\n")
            n += 1
    return n


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
