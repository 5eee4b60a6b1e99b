"""``make bench``: every performance benchmark, one after the other, then a one-screen summary.

1. ``benchmarks.throughput`` — the dataflow (1 worker) against the bare Python loop on the same
   events, and the cost of model snapshot exports at the default interval.
2. ``benchmarks.kafka`` — Kafka in and out through a local broker: 1 and 2 processes, with and
   without recovery, and produce-to-alert latency at half the measured maximum rate.

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
    quick = ["--customers", "5000", "--terminals", "10000", "--days", "5", "--repeat", "1"]
    k = kafka.main(quick if args.quick else [])
    lat = k.get("latency_at_half_max", {})
    rows = [
        ("dataflow / bare loop (1 worker)", t["ratio_dataflow_to_loop"], ">= 0.6"),
        ("dataflow events/s (1 worker)", t["dataflow_1_worker"]["events_per_s_median"], ">= 10,000"),
        ("export throughput cost", t["export_throughput_cost"], "< 0.05"),
        ("Kafka 1 process / bare loop", k["ratio_1_process_to_loop"], ">= 0.6"),
        ("Kafka 2 processes / 1 process", k["ratio_2_to_1_processes"], ">= 1.6"),
        ("recovery throughput cost", k["recovery_throughput_cost"], "<= 0.2"),
        ("alert latency p99 at half max (ms)", lat.get("alert_latency_ms", {}).get("p99"), "<= 100"),
        ("score latency p99 at half max (ms)", lat.get("score_latency_ms", {}).get("p99"), ""),
        ("  same load, broker-only relay p99 (ms)",
         k.get("latency_broker_only_relay", {}).get("score_latency_ms", {}).get("p99"), ""),
    ]
    print("\nbenchmark summary (benchmarks/results/*.json has every number)")
    for name, value, target in rows:
        print(f"  {name:<38} {value!s:>10}   target {target}" if target else f"  {name:<38} {value!s:>10}")


if __name__ == "__main__":
    main()
