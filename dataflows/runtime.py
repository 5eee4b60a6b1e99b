"""Interpreter settings for a process that runs the flow (decision 0023).

CPython's cyclic garbage collector runs a young collection every 700 net container
allocations and, every so often, a full one that walks every live object. A flow process
holds hundreds of thousands of long-lived objects (account windows, terminal counts, feature vectors
awaiting labels, kept model versions) and allocates in bursts (a batch of 1,000 decoded
transactions, a model version unpickled for stragglers: ~7,700 tree nodes), so the full
collections ran often and each cost ~250 ms: 15 s of a 2-process worker's ~140 CPU-s on the
Kafka benchmark's stream (12 s of it in 49 full collections), 8 s of one process's ~200. Nearly
nothing we allocate is cyclic garbage (events and features are tuples and msgspec structs;
models live on), so the collector is made to run ~70× less often; reference counting still
frees everything else at once.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc"]

# A young collection per 50,000 net container allocations (CPython's default: 700), an older
# one per 20 of them, a full one per 10 of those (and CPython's own rule: only when the
# objects promoted since the last one are a quarter of those it would walk).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Set this process's collector thresholds to :data:`GC_THRESHOLDS`."""
    gc.set_threshold(*GC_THRESHOLDS)
