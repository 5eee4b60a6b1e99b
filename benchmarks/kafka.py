"""Kafka end to end: throughput (1 and 2 processes, with and without recovery) against the bare
Python loop, and produce-to-score / produce-to-alert latency at a fixed offered rate.

    python -m benchmarks.kafka [--customers 2000 --days 45] [--repeat 3] [--skip-latency]

The three throughput rows (1 process, 2 processes, 1 process with recovery) run ``--repeat``
rounds, each round in a rotated order so that no row always runs first or last, and each run on
fresh topics that are deleted afterwards (tansu keeps topics in memory; a broker holding
earlier runs' topics answered more slowly). Ratios are taken between the rows' medians, and
every run is kept in the JSON: one run per row could not tell a 10 % cost from the machine's
drift between runs (recovery cost 9.6 / 19.2 / 31.3 % in three single runs).

Before the rows, two bare loops run at once, each over half of the accounts: what the two cores
give perfectly parallel work with nothing shared, the ceiling of the 2-process ratio here.

Everything runs against a local tansu broker started here; the flow runs as
``python -m bytewax.run`` processes. Rates are measured from the output messages' own
timestamps (first to last score), so interpreter start-up is not counted. The latency run is
repeated with a bare confluent-kafka relay in place of the flow (one consumer, every
transaction answered at once): the latency the broker and clients alone give on this machine.
``--latency-only RATE [--warm-start SNAPSHOT]`` runs just those two; with
``FRAUDFLOW_BENCH_RAW_LATENCY=FILE`` the flow's (ms since start, latency ms) pairs are written there.
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
from pathlib import Path
from typing import Optional

from benchmarks.common import DEFAULT_MODEL, ROOT, in_subprocess, load, save, summarise, workload


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


def _drop_topics(bootstrap: str, topics: dict[str, str]) -> bool:
    """Delete a run's topics so the next run meets the broker as this one did; False if the
    broker refused (the run's numbers stand either way)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(list(topics.values()), timeout_ms=30_000)
        return True
    except Exception as exc:  # noqa: BLE001 - a benchmark housekeeping step, reported in the JSON
        print(f"could not delete topics {sorted(topics.values())}: {exc}", file=sys.stderr)
        return False
    finally:
        admin.close()


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


def relay(bootstrap: str, transactions: str, labels: str, scores: str) -> None:
    """The latency baseline: one confluent-kafka consumer over both input topics (the flow's
    fetch settings) that answers every transaction with a record on the scores topic at once.
    What the broker and the clients cost on this machine, with no dataflow in between."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from connectors.kafka import FETCH_WAIT_MAX_MS

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-relay", "enable.auto.commit": False,
                         "fetch.wait.max.ms": FETCH_WAIT_MAX_MS})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in (transactions, labels)
                     for p in meta.topics[t].partitions])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    while True:
        for msg in consumer.consume(2000, 0.05):
            if msg.error() is None and msg.topic() == transactions:
                tx_id = json.loads(msg.value())["tx_id"]
                producer.produce(scores, value=json.dumps({"tx_id": tx_id}).encode(), key=msg.key())
        producer.poll(0)


def _cpu_s(pid: Optional[int]) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(bootstrap: str, events: list, processes: int, recovery: bool = False,
               broker_pid: Optional[int] = None) -> dict:
    import resource

    n_tx = sum(1 for e in events if type(e).__name__ == "Transaction")
    topics = _topics(bootstrap, 4)
    produce_all(bootstrap, topics, events)
    started = time.monotonic()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    broker_cpu = _cpu_s(broker_pid)
    procs = run_flow(_env(bootstrap, topics, FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_MODEL_SHARDS=str(processes)),
                     processes, recovery)
    _wait(procs)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Where the two cores went: the flow processes (all of them) and the broker, over the run.
    cpu = {"flow_cpu_s": round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 1),
           "broker_cpu_s": round(_cpu_s(broker_pid) - broker_cpu, 1), "wall_s": round(wall, 1)}
    scores = _timestamps(bootstrap, topics["scores"], n_tx)
    stamps = sorted(ts for ts, _ in scores)
    span = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else wall
    dropped = _drop_topics(bootstrap, topics)
    return {"processes": processes, "recovery": recovery, "events": len(events), "transactions": n_tx,
            "scored": len(scores), "seconds_scoring": round(span, 2), "seconds_wall": round(wall, 2),
            "events_per_s": round(len(events) / span), "cpu": cpu, "topics_deleted_after": dropped}


# The throughput rows: (name, processes, recovery).
ROWS = (("kafka_1_process", 1, False), ("kafka_2_processes", 2, False), ("kafka_1_process_recovery", 1, True))


def throughput_rounds(bootstrap: str, events: list, repeat: int, broker_pid: Optional[int] = None) -> dict:
    """Every row ``repeat`` times, round r in the order ROWS rotated by r; per row the run with
    the median events/s plus all runs' figures."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in ROWS}
    for r in range(repeat):
        for name, processes, recovery in ROWS[r % len(ROWS):] + ROWS[:r % len(ROWS)]:
            run = throughput(bootstrap, events, processes, recovery, broker_pid)
            run["round"] = r
            runs[name].append(run)
            print(f"round {r + 1}/{repeat} {name}: {run['events_per_s']:,} events/s, "
                  f"{run['cpu']['flow_cpu_s']} flow CPU-s", file=sys.stderr, flush=True)
    return {name: {**summarise(rs, "events_per_s"), "runs": rs} for name, rs in runs.items()}


def parallel_ceiling(path: Path, loop: dict) -> dict:
    """Two bare loops at once, each over half of the accounts with its own model: what the two
    cores give perfectly parallel Python work with nothing shared (the 2-process target's
    ceiling on this machine). Their events per second together over the bare loop's."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(lambda i: in_subprocess("benchmarks.throughput", "bare_loop_part", str(path),
                                                       DEFAULT_MODEL, str(i), "2"), range(2)))
    together = sum(h["events"] for h in halves) / max(h["seconds"] for h in halves)
    return {"halves": halves, "events_per_s": round(together),
            "ratio_to_one_loop": round(together / loop["events_per_s"], 3)}


BENCH_KEY = "benchmark-signing-key-0123456789"


def latency(bootstrap: str, events: list, rate: float, seconds: float = 45.0, warmup_s: float = 10.0,
            label_delay_s: float = 5.0, warm_start: str = "", epoch_s: int = 10, raw_out: str = "",
            baseline: bool = False) -> dict:
    """A live stream: transactions stamped with the wall clock as they are sent, at ``rate``
    events/s (transactions and labels), each label ``label_delay_s`` after its transaction.
    Latency = output CreateTime - input CreateTime, after ``warmup_s``."""
    import heapq

    from connectors.events import Label, Transaction, encode, format_ts, label_to_json, transaction_to_json

    fraud = {e.tx_id: e.is_fraud for e in events if isinstance(e, Label)}
    txs = [e for e in events if isinstance(e, Transaction)]
    topics = _topics(bootstrap, 4)
    # Short epochs: bytewax snapshots every key touched in an epoch when the epoch closes, a
    # pause proportional to the epoch's traffic; a 1 s epoch keeps each pause short.
    env = _env(bootstrap, topics, FRAUDFLOW_MODEL_SHARDS="1", BYTEWAX_SNAPSHOT_INTERVAL=str(epoch_s))
    if warm_start:  # a model trained on the recorded history: alerts from the first transaction
        env.update(FRAUDFLOW_WARM_START=warm_start, FRAUDFLOW_SNAPSHOT_KEY=BENCH_KEY)
    if baseline:
        procs = [subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.kafka import relay; relay(*sys.argv[1:])",
                                   bootstrap, topics["transactions"], topics["labels"], topics["scores"]], cwd=ROOT)]
    else:
        procs = run_flow(env, 1)
    time.sleep(5)  # let the flow start and assign its partitions
    producer = _producer(bootstrap)
    # Transactions at half the rate, each label ``label_delay_s`` after its transaction: once the
    # first labels are due the stream is a steady mix of both at ``rate`` events/s. (Sending due
    # labels first and transactions in between alternated 5 s bursts of each, so transactions
    # came at the full rate half of the time.)
    tx_interval = 2.0 / rate
    labels: list[tuple[float, str, str]] = []  # (due monotonic time, tx_id, account_id)
    started = time.monotonic()
    sent = i = 0
    steady_from: Optional[tuple[float, int]] = None  # (time, events sent) when the first label went out
    while i < len(txs):
        next_tx = started + i * tx_interval
        if next_tx - started >= seconds:
            break
        due = min(next_tx, labels[0][0]) if labels else next_tx
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        if labels and labels[0][0] <= next_tx:
            _, tx_id, account = heapq.heappop(labels)
            if steady_from is None:
                steady_from = (time.monotonic(), sent)
            doc = label_to_json(Label(tx_id, account, now, fraud.get(tx_id, False)))
            producer.produce(topics["labels"], value=encode(doc), key=account.encode())
        else:
            tx = txs[i]
            i += 1
            doc = transaction_to_json(tx)
            doc["ts"] = format_ts(now)
            producer.produce(topics["transactions"], value=encode(doc), key=tx.account_id.encode())
            heapq.heappush(labels, (time.monotonic() + label_delay_s, tx.tx_id, tx.account_id))
        sent += 1
        producer.poll(0)
    producer.flush()
    t0, n0 = steady_from or (started, 0)
    offered = (sent - n0) / (time.monotonic() - t0)
    time.sleep(3)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    tx_ts = {json.loads(v)["tx_id"]: ts for ts, v in _timestamps(bootstrap, topics["transactions"], i)}
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

    series: dict[int, list[float]] = {}
    first_sent = min(tx_ts.values()) if tx_ts else 0
    raw: list[tuple[int, int]] = []
    for ts, value in _timestamps(bootstrap, topics["scores"], i, quiet_s=3):
        sent_at = tx_ts.get(json.loads(value)["tx_id"])
        if sent_at is not None:
            series.setdefault(int((sent_at - first_sent) // 5000) * 5, []).append(ts - sent_at)
            raw.append((sent_at - first_sent, ts - sent_at))
    by_5s = {k: round(sorted(v)[len(v) // 2]) for k, v in sorted(series.items())}
    if raw_out:  # (ms since the first transaction, score latency ms) for a closer look
        Path(raw_out).write_text(json.dumps(raw))
    scores, alerts = lat(topics["scores"], i), lat(topics["alerts"], 1)
    return {"offered_events_per_s": round(offered), "target_events_per_s": round(rate), "seconds": seconds,
            "epoch_s": epoch_s, "median_score_latency_ms_by_5s_of_sending": by_5s,
            "transactions_sent": i, "label_delay_s": label_delay_s,
            "score_latency_ms": {"n": len(scores), "p50": pct(scores, 0.5), "p99": pct(scores, 0.99),
                                 "p99.9": pct(scores, 0.999), "max": scores[-1] if scores else None},
            "alert_latency_ms": {"n": len(alerts), "p50": pct(alerts, 0.5), "p99": pct(alerts, 0.99),
                                 "p99.9": pct(alerts, 0.999), "max": alerts[-1] if alerts else None}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Dense event time, as a bank's stream is: 30,000 cards make ~60,000 transactions a day, so
    # a source batch (a quarter of the allowed lateness, 15 min) holds hundreds of events.
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--terminals", type=int, default=60_000)
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the throughput rows (medians reported)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", type=float, metavar="RATE",
                        help="only the latency run, at RATE events/s (half of a measured maximum)")
    parser.add_argument("--warm-start", metavar="SNAPSHOT",
                        help="with --latency-only: start from this exported model instead of training one")
    args = parser.parse_args(argv)
    from connectors.broker import LocalBroker

    path = workload(args.customers, args.terminals, args.days)
    events = load(path)
    result: dict = {"workload": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                                 "events": len(events)}}
    with LocalBroker() as broker:
        if args.latency_only:
            snapshot = args.warm_start
            if not snapshot:
                trained = in_subprocess("benchmarks.throughput", "dataflow", str(path), DEFAULT_MODEL, "1", "1")
                snapshot = sorted(Path(trained["export_dir"]).glob("*shutdown.json"))[0]
                print(f"trained model: {snapshot}", file=sys.stderr)
            lat = {"flow": latency(broker.bootstrap, events, args.latency_only, warm_start=str(snapshot),
                                   raw_out=os.environ.get("FRAUDFLOW_BENCH_RAW_LATENCY", "")),
                   "broker_only_relay": latency(broker.bootstrap, events, args.latency_only, baseline=True)}
            print(json.dumps(lat, indent=2))
            return lat
        loop = in_subprocess("benchmarks.throughput", "bare_loop", str(path), DEFAULT_MODEL)
        result["bare_loop"] = loop
        result["parallel_ceiling"] = parallel_ceiling(path, loop)
        rows = throughput_rounds(broker.bootstrap, events, args.repeat, broker_pid=broker.proc.pid)
        one, two, rec = (rows[name]["events_per_s_median"] for name, _, _ in ROWS)
        result.update({
            **rows, "repeat": args.repeat,
            "ratio_1_process_to_loop": round(one / loop["events_per_s"], 3),
            "ratio_2_to_1_processes": round(two / one, 3),
            "ratio_2_to_1_processes_over_parallel_ceiling": round(two / one / result["parallel_ceiling"]["ratio_to_one_loop"], 3),
            "recovery_throughput_cost": round(1 - rec / one, 3),
            # the same ratios within each round (rows of one round ran back to back)
            "per_round": [{"ratio_2_to_1_processes": round(t["events_per_s"] / o["events_per_s"], 3),
                           "recovery_throughput_cost": round(1 - r["events_per_s"] / o["events_per_s"], 3)}
                          for o, t, r in zip(*(rows[name]["runs"] for name, _, _ in ROWS))],
            "targets": {"ratio_1_process_to_loop": ">= 0.6", "ratio_2_to_1_processes": ">= 1.6",
                        "p99_alert_latency_ms": "<= 100 at half the maximum rate", "recovery_throughput_cost": "<= 0.2"},
        })
        print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k.endswith("cost")}), flush=True)
        if not args.skip_latency:
            trained = in_subprocess("benchmarks.throughput", "dataflow", str(path), DEFAULT_MODEL, "1", "1")
            snapshot = sorted(Path(trained["export_dir"]).glob("*shutdown.json"))[0]
            result["latency_at_half_max"] = latency(broker.bootstrap, events, one / 2,
                                                    warm_start=str(snapshot))
            # The same load through the broker with no dataflow: the floor this machine sets.
            result["latency_broker_only_relay"] = latency(broker.bootstrap, events, one / 2,
                                                          baseline=True)
    out = save("kafka", result)
    print(json.dumps({k: result[k] for k in result if k not in ("bare_loop",)}, indent=2, default=str))
    print(f"results: {out}")
    return result


if __name__ == "__main__":
    main()
