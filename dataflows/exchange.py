"""Keyed exchanges that cross processes in batches (decision 0022).

Bytewax 0.21 sends each item bound for a keyed step in another process on its own, pickled
by itself and unpickled there. Measured on the 2-core machine: ~10 µs per item crossing for
the smallest item, ~34 µs for a transaction with its features (~7.5 µs each when 500 of them
cross as one list) — more than most of our steps cost, so two processes did barely more than
one (1.10× in a warm Kafka replay, with twice the CPU).

:func:`keyed` is the exchange in front of a keyed step. With several workers it groups each
upstream batch by the worker bytewax will route each key to (:func:`dataflows.cluster.worker_of`,
cached), sends one list per destination worker through a stateless ``*_ferry`` step keyed by
slot names pinned to the workers, and re-keys the items on arrival: the keyed step's own
exchange is then local (no pickling), and what crosses processes is one list per batch and
destination, pickled by us. Keys, state and results are the same as with a plain ``map`` —
if the router ever guessed a worker wrong, the keyed step's own exchange would still deliver
the item, one hop later — and with one worker it *is* a plain ``map``.
"""

from __future__ import annotations

import pickle
from functools import lru_cache
from typing import Any, Callable, Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from dataflows.cluster import process_count, process_id, shard_keys, worker_of

__all__ = ["Router", "keyed"]


class Router:
    """``key -> worker`` as bytewax routes it, cached (SipHash in Python costs ~15 µs a key).

    The cache is emptied when it reaches ``limit`` keys, so memory stays bounded however many
    accounts and terminals pass; the keys in use are learned again at that cost.
    """

    def __init__(self, workers: int, limit: int = 1_000_000) -> None:
        self.workers = workers
        self.limit = limit
        self.cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        worker = self.cache.get(key)
        if worker is None:
            if len(self.cache) >= self.limit:
                self.cache.clear()
            worker = self.cache[key] = worker_of(key, self.workers)
        return worker


class _Ferry(StatefulBatchLogic):
    """Hands on the (key, value) pairs that arrived for this worker; keeps nothing."""

    def __init__(self, _state: Any) -> None:
        pass

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        for pairs in values:
            out.extend(pickle.loads(pairs) if type(pairs) is bytes else pairs)
        return out, True  # discarded: no state, nothing to snapshot

    def snapshot(self) -> None:
        return None


@lru_cache(maxsize=None)
def _router(workers: int) -> Router:
    """One router per worker count for all of a process's exchanges: a card's key is learned
    once, not once per step it is keyed by."""
    return Router(workers)


def _second(pair: tuple) -> Any:
    return pair[1]


def keyed(step_id: str, up: Stream, key_fn: Callable[[Any], Any], workers: int, many: bool = False) -> Stream:
    """``up`` keyed by ``key_fn`` (an item -> a ``(key, value)`` pair, or with ``many`` an
    iterable of pairs), delivered to the worker that owns each key."""
    if workers <= 1:
        return op.flat_map(step_id, up, key_fn) if many else op.map(step_id, up, key_fn)
    slots = shard_keys(workers)  # slot i is routed to worker i
    route = _router(workers)
    # Workers of one process are numbered together; lists for them are handed over as they
    # are, lists for another process's workers are pickled here, once (bytewax's own pickling
    # of a list cost ~1.2x that: measured 9 vs 7.4 µs per transaction crossing).
    per_process = max(1, workers // process_count())
    first = process_id() * per_process
    here = range(first, first + per_process)

    def group(items: list) -> list[tuple[str, list]]:
        by_worker: dict[int, list] = {}
        pairs: Iterable = (p for item in items for p in key_fn(item)) if many else map(key_fn, items)
        for pair in pairs:
            w = route(pair[0])
            batch = by_worker.get(w)
            if batch is None:
                by_worker[w] = [pair]
            else:
                batch.append(pair)
        return [(slots[w], batch if w in here else pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
                for w, batch in by_worker.items()]

    batches = op.flat_map_batch(f"{step_id}_batches", up, group)
    arrived = op.stateful_batch(f"{step_id}_ferry", batches, _Ferry)
    return op.map(f"{step_id}_arrived", arrived, _second)
