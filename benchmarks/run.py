"""``make bench``: every performance benchmark, one after the other, then a one-screen summary.

1. ``benchmarks.throughput`` — the dataflow (1 worker) against the bare Python loop on the same
   events, and the cost of model snapshot exports at the default interval.
2. ``benchmarks.kafka`` — Kafka in and out through a local broker: 1 and 2 processes, with and
   without recovery, and live produce-to-alert latency at half the measured maximum rate (1 and
   2 processes, recovery on, 5 minutes each, and the broker-only relay; alone:
   `python -m benchmarks.kafka --latency`).

Each writes its JSON to ``benchmarks/results/``. Detection quality is not here: it is
``make evaluate-reference`` (the published configuration on 3 seeds, about 20 minutes).

    python -m benchmarks.run [--quick]
"""

from __future__ import annotations

import argparse
import logging

from benchmarks import kafka, throughput

log = logging.getLogger("fraudflow.bench")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, one repetition (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    log.info("1/2 throughput: dataflow vs bare loop, export cost")
    t = throughput.main(["--repeat", "1", "--days", "20"] if args.quick else [])
    log.info("2/2 Kafka end to end: 1 and 2 processes, recovery, latency")
    quick = ["--customers", "5000", "--terminals", "10000", "--days", "5", "--repeat", "1", "--minutes", "1"]
    k = kafka.main(quick if args.quick else [])
    lat = k.get("latency_at_half_max", {})
    one, two, relay = (lat.get(name, {}) for name in ("flow_1_process", "flow_2_processes", "broker_only_relay"))

    def q(row: dict, what: str, p: str):
        return row.get(what, {}).get(p)

    rows = [
        ("dataflow / bare loop (1 worker)", t["ratio_dataflow_to_loop"], ">= 0.6"),
        ("dataflow events/s (1 worker)", t["dataflow_1_worker"]["events_per_s_median"], ">= 10,000"),
        ("export throughput cost", t["export_throughput_cost"], "< 0.05"),
        ("Kafka 1 process / bare loop", k["ratio_1_process_to_loop"], ">= 0.75"),
        ("Kafka 2 processes / 1 process", k["ratio_2_to_1_processes"], ">= 1.6"),
        ("recovery throughput cost", k["recovery_throughput_cost"], "<= 0.2"),
        ("alert latency p99, 1 process (ms)", q(one, "alert_latency_ms", "p99"), "<= 50"),
        ("alert latency p99.9, 1 process (ms)", q(one, "alert_latency_ms", "p99.9"), "<= 100"),
        ("score latency p99 / p99.9, 1 process (ms)",
         f"{q(one, 'score_latency_ms', 'p99')} / {q(one, 'score_latency_ms', 'p99.9')}", ""),
        ("p99 drift, first to last minute", one.get("p99_drift_first_to_last_minute"), "<= 0.2"),
        ("alert latency p99, 2 processes (ms)", q(two, "alert_latency_ms", "p99"), "<= 75"),
        ("  broker-only relay p99 / p99.9 (ms)",
         f"{q(relay, 'score_latency_ms', 'p99')} / {q(relay, 'score_latency_ms', 'p99.9')}", ""),
        ("  broker CPU per 30 s, 1 process (cores)", one.get("cpu", {}).get("broker_core_share_per_30s"), ""),
    ]
    print("\nbenchmark summary (benchmarks/results/*.json has every number)")
    for name, value, target in rows:
        print(f"  {name:<42} {value!s:>12}   target {target}" if target else f"  {name:<42} {value!s:>12}")


if __name__ == "__main__":
    main()
