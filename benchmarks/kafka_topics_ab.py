"""Does reading the (empty) feedback and rules topics cost the 2-process Kafka flow anything?

The 2-process row of ``benchmarks.kafka`` fell below its target after the flow began to require
those topics; this pairs 2-process runs with them and with them switched off
(``FRAUDFLOW_KAFKA_TOPIC_FEEDBACK=""``, ``FRAUDFLOW_KAFKA_TOPIC_RULES=""``), back to back on one
broker, on ``benchmarks.kafka``'s workload. Results: ``benchmarks/results/kafka-topics-ab.json``.

    python -m benchmarks.kafka_topics_ab [--rounds 2]
"""

from __future__ import annotations

import argparse
import json

from benchmarks import kafka as K
from benchmarks.common import save


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    from connectors.broker import LocalBroker

    events = K.load(K.workload(30000, 60000, 9))
    env = K._env
    off = {"FRAUDFLOW_KAFKA_TOPIC_FEEDBACK": "", "FRAUDFLOW_KAFKA_TOPIC_RULES": ""}
    runs: dict[str, list[dict]] = {"with": [], "without": []}
    with LocalBroker() as broker:
        try:
            for _ in range(args.rounds):
                for variant in ("with", "without"):
                    K._env = env if variant == "with" else (lambda b, t, **more: {**env(b, t, **more), **off})
                    row = K.throughput(broker.bootstrap, events, 2, broker_pid=broker.proc.pid)
                    runs[variant].append(row)
                    print(variant, row["events_per_s"], flush=True)
        finally:
            K._env = env
    result = {"processes": 2, "events": len(events),
              "events_per_s": {v: [r["events_per_s"] for r in rows] for v, rows in runs.items()}, "runs": runs}
    print(json.dumps(result["events_per_s"]))
    save("kafka-topics-ab", result)
    return result


if __name__ == "__main__":
    main()
