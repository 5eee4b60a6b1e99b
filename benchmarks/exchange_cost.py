"""What it costs to send a batch of stage messages across processes: the keyed exchange
(:mod:`dataflows.exchange`) pickles one list of ``(key, message)`` pairs per batch and
destination worker. Typed messages (:mod:`learners.messages`) against the tagged tuples they
replaced (decision 0039).

    python -m benchmarks.exchange_cost [--items 10000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import pickle
import random
import time

from connectors.events import Origin, Transaction
from learners.features import FEATURE_NAMES
from learners.messages import FeaturedTransaction, LabelledExample
from learners.pending import pack


def batches(n: int) -> dict[str, list]:
    rnd = random.Random(1)
    txs = [Transaction(f"t-{i}", f"c-{i % 2000}", 1.5e9 + i, round(rnd.random() * 100, 2), f"m-{i % 4000}",
                       origin=Origin("transactions", i, 0)) for i in range(n)]
    features = [tuple(rnd.random() for _ in FEATURE_NAMES) for _ in range(n)]
    packed = [pack(f) for f in features]
    keys = [f"shard-{i % 50}" for i in range(n)]
    return {
        "transaction, tagged tuple": [(k, ("tx", t, f, 0)) for k, t, f in zip(keys, txs, features)],
        "transaction, FeaturedTransaction": [(k, FeaturedTransaction(t, f, 0)) for k, t, f in zip(keys, txs, features)],
        "example, tagged tuple": [(k, ("example", t.tx_id, t.event_ts, False, p)) for k, t, p in zip(keys, txs, packed)],
        "example, LabelledExample": [(k, LabelledExample(t.tx_id, t.event_ts, False, p))
                                     for k, t, p in zip(keys, txs, packed)],
    }


def measure(batch: list, repeat: int) -> dict:
    """Best of ``repeat``: pickling and unpickling the batch, per message, in CPU time (the
    machine is shared: time waiting for a core is not the cost)."""
    dumps = loads = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        blob = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        pickled = time.process_time()
        pickle.loads(blob)
        dumps, loads = min(dumps, pickled - started), min(loads, time.process_time() - pickled)
    n = len(batch)
    return {"dumps_us": round(dumps / n * 1e6, 2), "loads_us": round(loads / n * 1e6, 2),
            "total_us": round((dumps + loads) / n * 1e6, 2), "bytes": round(len(blob) / n, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    cases = batches(args.items)
    results: dict = {name: None for name in cases}
    for _ in range(args.repeat):  # interleaved, so that a busy moment hits every case alike
        for name, batch in cases.items():
            r = measure(batch, 1)
            best = results[name]
            results[name] = r if best is None or r["total_us"] < best["total_us"] else best
    for name, r in results.items():
        print(f"{name:34s} {r['total_us']:6.2f} µs/message (dumps {r['dumps_us']:.2f}, loads {r['loads_us']:.2f}),"
              f" {r['bytes']:.0f} B")
    return results


if __name__ == "__main__":
    main()
