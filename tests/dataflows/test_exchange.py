"""The batched keyed exchange (decision 0022) on the Bytewax runtime."""

from __future__ import annotations

import pickle

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from dataflows.cluster import worker_of
from dataflows.exchange import Router, _Ferry, keyed


def test_router_agrees_with_bytewax_routing_and_stays_bounded():
    route = Router(3, limit=50)
    keys = [f"c-{i}" for i in range(120)]
    assert [route(k) for k in keys] == [worker_of(k, 3) for k in keys]
    assert len(route.cache) <= 50  # emptied when full, then learned again
    assert route(keys[0]) == worker_of(keys[0], 3)


def test_ferry_unpacks_lists_and_pickled_lists_and_keeps_nothing():
    pairs = [("a", 1), ("b", (2, "x"))]
    out, discard = _Ferry(None).on_batch([pairs, pickle.dumps([("c", 3.5)])])
    assert out == pairs + [("c", 3.5)]
    assert discard is True


def _sums(workers: int, exchange_workers: int, many: bool = False) -> list:
    items = list(range(1000))
    out: list = []
    flow = Dataflow("exchange_test")
    inp = op.input("inp", flow, TestingSource(items, batch_size=64))
    if many:
        pairs = keyed("key", inp, lambda i: [(f"k{i % 37}", i), (f"k{(i + 1) % 37}", -1)], exchange_workers, many=True)
    else:
        pairs = keyed("key", inp, lambda i: (f"k{i % 37}", i), exchange_workers)
    op.output("out", op.reduce_final("sum", pairs, lambda a, b: a + b), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return sorted(out)


def test_keyed_delivers_what_a_plain_map_delivers():
    expected = sorted((f"k{k}", sum(i for i in range(1000) if i % 37 == k)) for k in range(37))
    assert _sums(2, 1) == expected  # one worker's wiring: the plain map
    assert _sums(2, 2) == expected  # batches through the ferry, two workers
    assert _sums(3, 3) == expected
    many = sorted((f"k{k}", sum(i for i in range(1000) if i % 37 == k) - sum(1 for i in range(1000) if (i + 1) % 37 == k))
                  for k in range(37))
    assert _sums(2, 2, many=True) == many
