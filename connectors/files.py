"""JSONL files: reading recorded transactions and labels, writing alerts, scores, dead letters.

:func:`read_events` merges a transactions file and a labels file by event time (labels
first on ties), decoding each line with the event contract; a bad line becomes a dead
letter naming the file and line. :class:`FileEventsSource` is the same as a Bytewax
source that resumes from byte offsets after a crash.

:class:`JsonlSink` appends whole lines with one ``write`` per batch to a file opened with
``O_APPEND``, so several workers and processes can share one output file without
interleaving lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.events import DeadLetter, Label, Origin, Transaction, encode, parse_record
from connectors.sources import MAX_BATCH_SPAN_S, EventTimeBatcher

__all__ = ["FileEventsSource", "JsonlSink", "read_events", "write_jsonl"]

log = logging.getLogger(__name__)

_KIND = {0: "transaction", 1: "label"}


def _lines(path: str, start: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset after the line, line) from byte offset ``start``."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for line in fh:
            offset += len(line)
            yield offset, line


class _Reader:
    """One JSONL file as a stream of (event_ts, order, event) with its resume position."""

    def __init__(self, path: str, stream: int, offset: int = 0, lineno: int = 0) -> None:
        self.path = path
        self.stream = stream
        self.offset = offset
        self.lineno = lineno
        self._it = _lines(path, offset)

    def next(self) -> Optional[tuple[float, int, Any]]:
        for offset, line in self._it:
            self.lineno += 1
            self.offset = offset
            stripped = line.strip()
            if not stripped:
                continue
            event = parse_record(stripped, Origin(self.path, self.lineno), _KIND[self.stream])
            # Dead letters sort by the time of the last good record so they flow out promptly.
            ts = event.event_ts if not isinstance(event, DeadLetter) else float("-inf")
            return ts, self.stream, event
        return None


class _MergedFiles:
    def __init__(self, tx_path: str, label_path: str, state: Optional[tuple] = None) -> None:
        (tx_off, tx_line), (lb_off, lb_line) = state or ((0, 0), (0, 0))
        self.readers = [_Reader(tx_path, 0, tx_off, tx_line), _Reader(label_path, 1, lb_off, lb_line)]
        # Resume positions of records taken from a reader but not yet emitted.
        self.heads: list[Optional[tuple[float, int, Any]]] = [None, None]
        self._positions = [(r.offset, r.lineno) for r in self.readers]
        for i, reader in enumerate(self.readers):
            self.heads[i] = reader.next()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        heads = self.heads
        live = [k for k in range(2) if heads[k] is not None]
        if not live:
            raise StopIteration
        # Labels (stream 1) win ties with transactions: a label known at t may inform t.
        i = min(live, key=lambda k: (heads[k][0], -heads[k][1]))
        _, _, event = heads[i]
        reader = self.readers[i]
        self._positions[i] = (reader.offset, reader.lineno)
        heads[i] = reader.next()
        return event

    def peek(self) -> Any:
        """The record ``next()`` would return, or None at the end (nothing is consumed)."""
        heads = self.heads
        live = [k for k in range(2) if heads[k] is not None]
        if not live:
            return None
        i = min(live, key=lambda k: (heads[k][0], -heads[k][1]))
        return heads[i][2]

    def position(self) -> tuple:
        """Where to resume so the next record returned is the next one not yet emitted."""
        return tuple(self._positions)


def read_events(transactions_path: str, labels_path: str) -> Iterator[Transaction | Label | DeadLetter]:
    """Transactions and labels merged by event time (each file is read in order)."""
    return iter(_MergedFiles(transactions_path, labels_path))


class _FilePartition(StatefulSourcePartition[tuple[int, Any], tuple]):
    def __init__(self, tx_path: str, label_path: str, batch_size: int, max_span_s: float,
                 state: Optional[tuple]) -> None:
        self._merged = _MergedFiles(tx_path, label_path, state)
        self._batch = EventTimeBatcher(batch_size, max_span_s)

    def next_batch(self) -> list[tuple[int, Any]]:
        return self._batch.take(0, self._merged)

    def snapshot(self) -> tuple:
        return self._merged.position()


class FileEventsSource(FixedPartitionedSource[tuple[int, Any], tuple]):
    """Recorded transactions and labels as one event-time-ordered partition."""

    def __init__(self, transactions_path: str, labels_path: str, batch_size: int = 1000,
                 max_batch_span_s: float = MAX_BATCH_SPAN_S) -> None:
        self.transactions_path = transactions_path
        self.labels_path = labels_path
        self.batch_size = batch_size
        self.max_batch_span_s = max_batch_span_s

    def list_parts(self) -> list[str]:
        return ["files"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[tuple]) -> _FilePartition:
        return _FilePartition(self.transactions_path, self.labels_path, self.batch_size, self.max_batch_span_s,
                              resume_state)


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
