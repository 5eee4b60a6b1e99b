"""Kafka end to end: throughput (1 and 2 processes, with and without recovery) against the bare
Python loop, and produce-to-score / produce-to-alert latency at a fixed offered rate.

    python -m benchmarks.kafka [--customers 2000 --days 45] [--skip-latency]

Everything runs against a local tansu broker started here; the flow runs as
``python -m bytewax.run`` processes. Rates are measured from the output messages' own
timestamps (first to last score), so interpreter start-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from benchmarks.common import ROOT, in_subprocess, load, save, workload


def _producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 2_000_000})


def _topics(bootstrap: str, partitions: int) -> dict[str, str]:
    from kafka.admin import KafkaAdminClient, NewTopic

    suffix = uuid.uuid4().hex[:6]
    names = {n: f"bench-{n}-{suffix}" for n in ("transactions", "labels", "alerts", "dlq", "scores")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, partitions, 1) for t in names.values()])
    admin.close()
    return names


def _encode(event) -> tuple[str, bytes]:
    from connectors.events import Transaction, encode, label_to_json, transaction_to_json

    if isinstance(event, Transaction):
        return "transactions", encode(transaction_to_json(event))
    return "labels", encode(label_to_json(event))


def produce_all(bootstrap: str, topics: dict[str, str], events: list) -> None:
    producer = _producer(bootstrap)
    for event in events:
        kind, value = _encode(event)
        while True:
            try:
                producer.produce(topics[kind], value=value, key=event.account_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()


def _env(bootstrap: str, topics: dict[str, str], **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env.update({
        "PYTHONPATH": str(ROOT), "FRAUDFLOW_SOURCE": "kafka", "FRAUDFLOW_KAFKA_BROKERS": bootstrap,
        "FRAUDFLOW_EMIT_SCORES": "1", "FRAUDFLOW_PROGRESS": "0",
        **{f"FRAUDFLOW_KAFKA_TOPIC_{k.upper()}": v for k, v in topics.items()},
    })
    env.update(more)
    return env


def run_flow(env: dict[str, str], processes: int = 1, recovery: bool = False) -> list[subprocess.Popen]:
    from connectors.broker import free_port

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    rdir = None
    if recovery:
        rdir = tempfile.mkdtemp(prefix="fraudflow-bench-recovery-")
        subprocess.run([sys.executable, "-m", "bytewax.recovery", rdir, str(processes)], check=True)
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"]
        if processes > 1:
            cmd += ["-i", str(i), "-a", addresses]
        if rdir:
            cmd += ["-r", rdir, "-s", "10", "-b", "0"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 1800) -> None:
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"flow exited with {p.returncode}: {err.decode(errors='replace')[-2000:]}")


def _timestamps(bootstrap: str, topic: str, expect: int, quiet_s: float = 5.0) -> list[tuple[int, bytes]]:
    """(CreateTime ms, value) of every message in ``topic``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    parts = list(meta.topics[topic].partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ignored", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, last_new = [], time.monotonic()
    while len(out) < expect and time.monotonic() - last_new < quiet_s:
        msgs = consumer.consume(10_000, 0.5)
        for m in msgs:
            if m.error() is None:
                out.append((m.timestamp()[1], m.value()))
        if msgs:
            last_new = time.monotonic()
    consumer.close()
    return out


def throughput(bootstrap: str, events: list, processes: int, recovery: bool = False) -> dict:
    n_tx = sum(1 for e in events if type(e).__name__ == "Transaction")
    topics = _topics(bootstrap, 4)
    produce_all(bootstrap, topics, events)
    started = time.monotonic()
    procs = run_flow(_env(bootstrap, topics, FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_MODEL_SHARDS=str(processes)),
                     processes, recovery)
    _wait(procs)
    wall = time.monotonic() - started
    scores = _timestamps(bootstrap, topics["scores"], n_tx)
    stamps = sorted(ts for ts, _ in scores)
    span = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else wall
    return {"processes": processes, "recovery": recovery, "events": len(events), "transactions": n_tx,
            "scored": len(scores), "seconds_scoring": round(span, 2), "seconds_wall": round(wall, 2),
            "events_per_s": round(len(events) / span)}


def latency(bootstrap: str, events: list, rate: float, warmup_s: float = 5.0) -> dict:
    """Produce at ``rate`` events/s to a following flow; latency = output CreateTime - input CreateTime."""
    topics = _topics(bootstrap, 4)
    procs = run_flow(_env(bootstrap, topics, FRAUDFLOW_MODEL_SHARDS="1"), 1)
    time.sleep(4)  # let the flow start and subscribe
    producer = _producer(bootstrap)
    started = time.monotonic()
    for i, event in enumerate(events):
        kind, value = _encode(event)
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topics[kind], value=value, key=event.account_id.encode())
        producer.poll(0)
    producer.flush()
    offered = len(events) / (time.monotonic() - started)
    n_tx = sum(1 for e in events if type(e).__name__ == "Transaction")
    time.sleep(3)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    tx_ts = {json.loads(v)["tx_id"]: ts for ts, v in _timestamps(bootstrap, topics["transactions"], n_tx)}
    horizon = min(tx_ts.values()) + warmup_s * 1000 if tx_ts else 0

    def lat(topic: str, expect: int) -> list[float]:
        out = []
        for ts, value in _timestamps(bootstrap, topic, expect, quiet_s=3):
            sent_at = tx_ts.get(json.loads(value)["tx_id"])
            if sent_at is not None and sent_at >= horizon:
                out.append(ts - sent_at)
        return sorted(out)

    def pct(xs: list[float], q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else float("nan")

    scores, alerts = lat(topics["scores"], n_tx), lat(topics["alerts"], 1)
    return {"offered_events_per_s": round(offered), "target_events_per_s": round(rate),
            "score_latency_ms": {"n": len(scores), "p50": pct(scores, 0.5), "p99": pct(scores, 0.99),
                                 "p99.9": pct(scores, 0.999), "max": scores[-1] if scores else None},
            "alert_latency_ms": {"n": len(alerts), "p50": pct(alerts, 0.5), "p99": pct(alerts, 0.99),
                                 "p99.9": pct(alerts, 0.999), "max": alerts[-1] if alerts else None}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--terminals", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    from connectors.broker import LocalBroker

    path = workload(args.customers, args.terminals, args.days)
    events = load(path)
    loop = in_subprocess("benchmarks.throughput", "bare_loop", str(path))
    result: dict = {"workload": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                                 "events": len(events)}, "bare_loop": loop}
    with LocalBroker() as broker:
        one = throughput(broker.bootstrap, events, 1)
        two = throughput(broker.bootstrap, events, 2)
        rec = throughput(broker.bootstrap, events, 1, recovery=True)
        result.update({
            "kafka_1_process": one, "kafka_2_processes": two, "kafka_1_process_recovery": rec,
            "ratio_1_process_to_loop": round(one["events_per_s"] / loop["events_per_s"], 3),
            "ratio_2_to_1_processes": round(two["events_per_s"] / one["events_per_s"], 3),
            "recovery_throughput_cost": round(1 - rec["events_per_s"] / one["events_per_s"], 3),
            "targets": {"ratio_1_process_to_loop": ">= 0.6", "ratio_2_to_1_processes": ">= 1.6",
                        "p99_alert_latency_ms": "<= 100 at half the maximum rate", "recovery_throughput_cost": "<= 0.2"},
        })
        print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k.endswith("cost")}), flush=True)
        if not args.skip_latency:
            rate = one["events_per_s"] / 2
            sample = events[: int(min(len(events), rate * 40))]  # 40 seconds at half the maximum rate
            result["latency_at_half_max"] = latency(broker.bootstrap, sample, rate)
    out = save("kafka", result)
    print(json.dumps({k: result[k] for k in result if k not in ("bare_loop",)}, indent=2, default=str))
    print(f"results: {out}")
    return result


if __name__ == "__main__":
    main()
