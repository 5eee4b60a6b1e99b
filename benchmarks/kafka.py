"""Kafka end to end: throughput (1 and 2 processes, with and without recovery) against the bare
Python loop, and live produce-to-score / produce-to-alert latency at half the 1-process maximum.

    python -m benchmarks.kafka [--customers 30000 --days 9] [--repeat 3] [--skip-latency]
    python -m benchmarks.kafka --latency [--minutes 5] [--rate R] [--processes 1,2] [--snapshot-interval 10]

The three throughput rows (1 process, 2 processes, 1 process with recovery) run ``--repeat``
rounds, each round in a rotated order so that no row always runs first or last, and each run on
fresh topics that are deleted afterwards (tansu keeps topics in memory; a broker holding
earlier runs' topics answered more slowly). Ratios are taken between the rows' medians, and
every run is kept in the JSON: one run per row could not tell a 10 % cost from the machine's
drift between runs (recovery cost 9.6 / 19.2 / 31.3 % in three single runs).

Before the rows, two bare loops run at once, each over half of the accounts: what the two cores
give perfectly parallel work with nothing shared, the ceiling of the 2-process ratio here.

The latency part (also alone, ``--latency``: one 1-process throughput run finds the maximum
unless ``--rate`` is given) offers a live stream — transactions stamped as they are sent, each
label 5 s later, by a producer that batches (linger 20 ms) — for a 20 s warm-up plus
``--minutes`` of steady load, to the flow with 1 and with 2 processes (recovery on, ``-s``
``--snapshot-interval``, a model trained on the stream's history), then to a broker-only relay
with the flow's client settings: the floor the broker and the clients set. Produce → alert is
when each alert became readable to a downstream consumer (:func:`tail`) minus the transaction's
CreateTime; produce → score uses each score's CreateTime (the scores topic is not followed live:
its reader would add to the broker's load). Both per minute, so drift shows; the broker's CPU
per 30 s shows its cost growing with the batches a partition holds (decisions 0034).
``FRAUDFLOW_BENCH_RAW_LATENCY=FILE`` writes every score's latency there.

Everything runs against a local tansu broker started here; the flow runs as
``python -m bytewax.run`` processes. Throughput is measured from the output messages' own
timestamps (first to last score), so interpreter start-up is not counted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from benchmarks.common import DEFAULT_MODEL, ROOT, in_subprocess, load, save, summarise, workload


GENERATOR_LINGER_MS = 20  # the load generators batch as a real producer does (decisions 0034)


def _producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": GENERATOR_LINGER_MS,
                     "queue.buffering.max.messages": 2_000_000})


FLOW_TOPICS = ("transactions", "labels", "alerts", "dlq", "scores", "feedback", "rules")


def _topics(bootstrap: str, partitions: int) -> dict[str, str]:
    """Fresh topics for every one the flow requires, as ``fraudflow topics create`` makes them
    (the rules topic: one partition, compacted); the feedback and rules topics stay empty."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from dataflows.cli.kafka import RULES_TOPIC_CONFIG

    suffix = uuid.uuid4().hex[:6]
    names = {n: f"bench-{n}-{suffix}" for n in FLOW_TOPICS}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, 1, 1, topic_configs=RULES_TOPIC_CONFIG) if n == "rules" else NewTopic(t, partitions, 1)
                         for n, t in names.items()])
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


def run_flow(env: dict[str, str], processes: int = 1, recovery: bool = False,
             snapshot_s: int = 10) -> list[subprocess.Popen]:
    from connectors.broker import free_port

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    rdir = None
    if recovery:
        rdir = tempfile.mkdtemp(prefix="fraudflow-bench-recovery-")
        atexit.register(shutil.rmtree, rdir, True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", rdir, str(processes)], check=True)
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"]
        if processes > 1:
            cmd += ["-i", str(i), "-a", addresses]
        if rdir:
            cmd += ["-r", rdir, "-s", str(snapshot_s), "-b", "0"]
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


def _settings(env: Optional[dict] = None):
    """The flow's Kafka section as a run's environment sets it (the relay and the tail use its
    Kafka client settings)."""
    from dataflows.settings import Settings

    return Settings.from_env(env).kafka


def relay(bootstrap: str, transactions: str, labels: str, scores: str) -> None:
    """The latency floor: the flow's consumers (one per input partition, the flow's fetch
    wait, polled as the flow polls them: without waiting, 1 ms apart when all are empty) and
    the flow's scores producer settings, answering every transaction at once with a record on
    the scores topic.
    What the broker and the clients cost on this machine, with no dataflow in between."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    kafka = _settings()
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumers = []
    for topic in (transactions, labels):
        for p in meta.topics[topic].partitions:
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-relay", "enable.auto.commit": False,
                                 "fetch.wait.max.ms": kafka.fetch_wait_ms})
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            consumers.append(consumer)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": kafka.scores_linger_ms})
    while True:
        got = 0
        for consumer in consumers:
            msgs = consumer.consume(kafka.batch_size, 0)
            got += len(msgs)
            for msg in msgs:
                if msg.error() is None and msg.topic() == transactions:
                    tx_id = json.loads(msg.value())["tx_id"]
                    producer.produce(scores, value=json.dumps({"tx_id": tx_id}).encode(), key=msg.key())
        producer.poll(0)
        if not got:
            time.sleep(0.001)  # bytewax's cooldown before it polls empty partitions again


def tail(bootstrap: str, out: str, *topics: str) -> None:
    """Follows ``topics`` as a downstream consumer would (the flow's fetch wait, a 1 ms poll)
    and, when terminated, writes ``[topic, CreateTime ms, received ms, value]`` per message to
    ``out``: when each output became readable, not only when the flow produced it."""
    import signal

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-tail", "enable.auto.commit": False,
                         "fetch.wait.max.ms": _settings().fetch_wait_ms})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta.topics[t].partitions])
    seen: list = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        msgs = consumer.consume(10_000, 0.001)
        now = time.time() * 1000
        seen.extend((m.topic(), m.timestamp()[1], now, m.value().decode()) for m in msgs if m.error() is None)
    consumer.close()
    Path(out).write_text(json.dumps(seen))


def _cpu_s(pid: Optional[int]) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuSampler:
    """A process's share of a core in every ``every_s`` seconds, from a background thread: the
    broker's cost per fetch grows with the batches a partition holds (decisions 0034)."""

    def __init__(self, pid: Optional[int], every_s: float) -> None:
        import threading

        self.pid, self.every_s, self.shares = pid, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if pid:
            self._thread.start()

    def _run(self) -> None:
        last = _cpu_s(self.pid)
        while not self._stop.wait(self.every_s):
            now = _cpu_s(self.pid)
            self.shares.append(round((now - last) / self.every_s, 3))
            last = now

    def stop(self) -> None:
        self._stop.set()


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


def _pct(xs: list[float], q: float) -> Optional[float]:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


def _quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99), "p99.9": _pct(xs, 0.999),
            "max": xs[-1] if xs else None}


def _send_live(bootstrap: str, topics: dict[str, str], events: list, rate: float, seconds: float,
               label_delay_s: float) -> tuple[int, float]:
    """Transactions at half of ``rate`` stamped with the wall clock as they are sent, each
    label ``label_delay_s`` after its transaction: after the first ``label_delay_s`` a steady
    mix of both at ``rate`` events/s, as live. Returns (transactions sent, offered events/s
    once labels flow)."""
    import heapq

    from connectors.events import Label, Transaction, encode, format_ts, label_to_json, transaction_to_json

    fraud = {e.tx_id: e.is_fraud for e in events if isinstance(e, Label)}
    txs = [e for e in events if isinstance(e, Transaction)]
    producer = _producer(bootstrap)
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
    return i, (sent - n0) / (time.monotonic() - t0)


def latency(bootstrap: str, events: list, rate: float, minutes: float = 5.0, warmup_s: float = 20.0,
            label_delay_s: float = 5.0, warm_start: str = "", processes: int = 1, snapshot_s: int = 10,
            baseline: bool = False, broker_pid: Optional[int] = None, extra_env: Optional[dict] = None) -> dict:
    """A live stream at ``rate`` events/s for ``warmup_s`` + ``minutes`` of steady load into the
    flow (``processes`` processes, recovery on with a ``snapshot_s`` snapshot interval, as a
    deployment runs) or, with ``baseline``, into the broker-only relay.

    Produce → alert = when the alert became readable to a downstream consumer of the alerts
    topic (:func:`tail`) − the transaction's CreateTime ("emitted": the alert's own CreateTime,
    when the flow handed it to its producer). Produce → score = the score's CreateTime − the
    transaction's: the scores topic, one record per transaction, is not followed live, as a
    live reader of it would add its own fetches to the broker's load (decisions 0034). Per
    minute of sending after the warm-up, so drift is visible; the broker's and the flow's CPU."""
    topics = _topics(bootstrap, 4)
    env = _env(bootstrap, topics, FRAUDFLOW_MODEL_SHARDS=str(processes), **(extra_env or {}))
    if warm_start:  # a model trained on the recorded history: alerts from the first transaction
        env.update(FRAUDFLOW_WARM_START=warm_start, FRAUDFLOW_SNAPSHOT_KEY=BENCH_KEY)
    tail_out = tempfile.mktemp(prefix="fraudflow-bench-tail-", suffix=".json")
    tail_proc = subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.kafka import tail; tail(*sys.argv[1:])",
                                  bootstrap, tail_out, topics["alerts"]], cwd=ROOT, env=env)
    if baseline:
        procs = [subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.kafka import relay; relay(*sys.argv[1:])",
                                   bootstrap, topics["transactions"], topics["labels"], topics["scores"]], cwd=ROOT, env=env)]
    else:
        procs = run_flow(env, processes, recovery=True, snapshot_s=snapshot_s)
    time.sleep(5)  # let the flow start and assign its partitions
    broker_cpu, flow_cpu = _cpu_s(broker_pid), sum(_cpu_s(p.pid) for p in procs)
    load_before = os.getloadavg()
    wall = time.monotonic()
    sampler = _CpuSampler(broker_pid, 30.0)
    n_tx, offered = _send_live(bootstrap, topics, events, rate, warmup_s + 60 * minutes, label_delay_s)
    time.sleep(3)
    wall = time.monotonic() - wall
    sampler.stop()
    cpu = {"broker_core_share": round((_cpu_s(broker_pid) - broker_cpu) / wall, 3) if broker_pid else None,
           "flow_core_share": round((sum(_cpu_s(p.pid) for p in procs) - flow_cpu) / wall, 3),
           "broker_core_share_per_30s": sampler.shares,
           "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    errors = []
    for p in procs:
        if p.poll() is not None:
            errors.append(f"flow process exited early with {p.returncode}")
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    tail_proc.terminate()
    tail_proc.wait(timeout=60)
    seen = json.loads(Path(tail_out).read_text())
    os.unlink(tail_out)

    tx_ts = {json.loads(v)["tx_id"]: ts for ts, v in _timestamps(bootstrap, topics["transactions"], n_tx)}
    first = min(tx_ts.values()) if tx_ts else 0
    horizon = first + warmup_s * 1000
    scores: list[float] = []
    alerts: dict[str, list[float]] = {"readable": [], "emitted": []}
    per_minute: dict[int, list[float]] = {}
    alerts_per_minute: dict[int, list[float]] = {}
    raw: list[tuple] = []  # (ms since the first transaction, latency ms) per score
    for created, value in _timestamps(bootstrap, topics["scores"], n_tx, quiet_s=3):
        sent_at = tx_ts.get(json.loads(value)["tx_id"])
        if sent_at is not None and sent_at >= horizon:
            scores.append(created - sent_at)
            per_minute.setdefault(int((sent_at - horizon) // 60_000), []).append(created - sent_at)
            raw.append((sent_at - first, created - sent_at))
    for _topic, created, received, value in seen:
        sent_at = tx_ts.get(json.loads(value)["tx_id"])
        if sent_at is not None and sent_at >= horizon:
            alerts["readable"].append(received - sent_at)
            alerts["emitted"].append(created - sent_at)
            alerts_per_minute.setdefault(int((sent_at - horizon) // 60_000), []).append(received - sent_at)
    if os.environ.get("FRAUDFLOW_BENCH_RAW_LATENCY"):  # every score's latency, for a closer look
        Path(os.environ["FRAUDFLOW_BENCH_RAW_LATENCY"]).write_text(json.dumps(sorted(raw)))
    minutes_q = {m: _quantiles(v) for m, v in sorted(per_minute.items()) if m < minutes}
    first_m, last_m = (minutes_q[min(minutes_q)], minutes_q[max(minutes_q)]) if minutes_q else ({}, {})
    drift = (round(last_m["p99"] / first_m["p99"] - 1, 3) if len(minutes_q) > 1 and first_m.get("p99") else None)
    dropped = _drop_topics(bootstrap, topics)
    kafka = _settings(env)
    expected = sum(1 for t in tx_ts.values() if t >= horizon)
    return {"what": "broker-only relay" if baseline else f"flow, {processes} process(es), recovery -s {snapshot_s}",
            "processes": processes, "snapshot_interval_s": snapshot_s, "target_events_per_s": round(rate),
            "offered_events_per_s": round(offered), "minutes": minutes, "warmup_s": warmup_s,
            "transactions_sent": n_tx, "transactions_measured": expected, "label_delay_s": label_delay_s,
            "settings": {"fetch_wait_ms": kafka.fetch_wait_ms, "linger_ms": kafka.linger_ms,
                         "scores_linger_ms": kafka.scores_linger_ms,
                         "confirm": kafka.confirm, "generator_linger_ms": GENERATOR_LINGER_MS,
                         **(extra_env or {})},
            "score_latency_ms": _quantiles(scores),
            "alert_latency_ms": _quantiles(alerts["readable"]),
            "alert_emitted_latency_ms": _quantiles(alerts["emitted"]),
            "score_latency_ms_per_minute": minutes_q, "p99_drift_first_to_last_minute": drift,
            "alert_latency_ms_per_minute": {m: _quantiles(v) for m, v in sorted(alerts_per_minute.items())
                                            if m < minutes},
            "cpu": cpu, "errors": errors, "topics_deleted_after": dropped}


def latency_rows(bootstrap: str, events: list, rate: float, minutes: float, warm_start: str,
                 snapshot_s: int = 10, broker_pid: Optional[int] = None, processes: tuple[int, ...] = (1, 2),
                 extra_env: Optional[dict] = None) -> dict:
    """The latency part of ``make bench``: the flow with 1 and 2 processes and the
    broker-only relay, one after the other at the same offered load."""
    out: dict = {"rate_events_per_s": round(rate), "minutes": minutes}
    for n in processes:
        out[f"flow_{n}_process{'es' if n > 1 else ''}"] = row = latency(
            bootstrap, events, rate, minutes, warm_start=warm_start, processes=n, snapshot_s=snapshot_s,
            broker_pid=broker_pid, extra_env=extra_env)
        print(f"latency {row['what']}: score p50/p99/p99.9 {row['score_latency_ms']['p50']} / "
              f"{row['score_latency_ms']['p99']} / {row['score_latency_ms']['p99.9']} ms, alert p99 "
              f"{row['alert_latency_ms']['p99']} ms (n={row['alert_latency_ms']['n']}), broker "
              f"{row['cpu']['broker_core_share']}", file=sys.stderr, flush=True)
    out["broker_only_relay"] = row = latency(bootstrap, events, rate, minutes, baseline=True, broker_pid=broker_pid,
                                             extra_env=extra_env)
    print(f"latency relay: p50/p99/p99.9 {row['score_latency_ms']['p50']} / {row['score_latency_ms']['p99']} / "
          f"{row['score_latency_ms']['p99.9']} ms", file=sys.stderr, flush=True)
    one = out.get("flow_1_process", {})
    two = out.get("flow_2_processes", {})
    out["targets"] = {
        "1 process: p99 produce->alert <= 50 ms": one.get("alert_latency_ms", {}).get("p99"),
        "1 process: p99.9 produce->alert <= 100 ms": one.get("alert_latency_ms", {}).get("p99.9"),
        "1 process: p99 produce->score <= 50 ms": one.get("score_latency_ms", {}).get("p99"),
        "1 process: p99.9 produce->score <= 100 ms": one.get("score_latency_ms", {}).get("p99.9"),
        "1 process: p99 drift first->last minute <= 0.2": one.get("p99_drift_first_to_last_minute"),
        "2 processes: p99 produce->alert <= 75 ms": two.get("alert_latency_ms", {}).get("p99"),
        "2 processes: p99 produce->score <= 75 ms": two.get("score_latency_ms", {}).get("p99"),
    }
    return out


def broker_fetch_cost(stored: tuple[int, ...] = (500, 2_000, 5_000, 10_000, 20_000), seconds: float = 10.0) -> list:
    """The test broker's CPU per message a tailing consumer fetches, by how many batches the
    partition already holds: one partition filled with one-record batches up to each count,
    then a batch every 10 ms for ``seconds`` with a consumer (the flow's fetch wait) following it.
    tansu lists every stored batch object on each fetch that finds data (decisions 0034)."""
    import threading

    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    from connectors.broker import LocalBroker

    rows = []
    with LocalBroker() as broker:
        topic = _topics(broker.bootstrap, 1)["transactions"]
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        held = 0
        for target in stored:
            while held < target:  # a flush per record: one stored batch object each
                producer.produce(topic, b"x" * 200)
                producer.flush()
                held += 1
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-fetch-cost",
                                 "fetch.wait.max.ms": _settings().fetch_wait_ms})
            consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
            got, stop = [0], threading.Event()

            def follow() -> None:
                while not stop.is_set():
                    got[0] += len(consumer.consume(1000, 0.05))

            reader = threading.Thread(target=follow)
            reader.start()
            time.sleep(2)
            cpu0, wall0, got0 = _cpu_s(broker.proc.pid), time.monotonic(), got[0]
            while time.monotonic() - wall0 < seconds:
                producer.produce(topic, b"y" * 200)
                producer.flush()
                held += 1
                time.sleep(0.01)
            time.sleep(0.5)
            cpu, wall, fetched = _cpu_s(broker.proc.pid) - cpu0, time.monotonic() - wall0, got[0] - got0
            stop.set()
            reader.join()
            consumer.close()
            rows.append({"stored_batches": target, "broker_core_share": round(cpu / wall, 3),
                         "broker_cpu_us_per_message": round(cpu / max(1, fetched) * 1e6), "messages": fetched,
                         "load_average_1m": round(os.getloadavg()[0], 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _trained_model(path: Path) -> str:
    """A model trained on the workload's history (the latency runs start warm: alerts from the
    first transaction, as in production)."""
    trained = in_subprocess("benchmarks.throughput", "dataflow", str(path), DEFAULT_MODEL, "1", "1")
    snapshot = str(sorted(Path(trained["export_dir"]).glob("*shutdown.json"))[0])
    print(f"trained model: {snapshot}", file=sys.stderr, flush=True)
    return snapshot


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Dense event time, as a bank's stream is: 30,000 cards make ~60,000 transactions a day, so
    # a source batch (a quarter of the allowed lateness, 15 min) holds hundreds of events.
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--terminals", type=int, default=60_000)
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the throughput rows (medians reported)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency", action="store_true",
                        help="only the latency part: one 1-process throughput run for the maximum (unless --rate), "
                             "then the flow with 1 and 2 processes and the broker-only relay at half of it")
    parser.add_argument("--minutes", type=float, default=5.0, help="steady load per latency row (after a 20 s warm-up)")
    parser.add_argument("--rate", type=float, help="with --latency: offered events/s instead of half a measured maximum")
    parser.add_argument("--processes", default="1,2", help="with --latency: flow rows to run (comma-separated)")
    parser.add_argument("--snapshot-interval", type=int, default=10,
                        help="bytewax -s for the latency rows (the epoch length; recovery is on)")
    parser.add_argument("--warm-start", metavar="SNAPSHOT", help="start the latency rows from this exported model")
    parser.add_argument("--broker-fetch-cost", action="store_true",
                        help="only the test broker's CPU per fetched message by stored batches (a few minutes)")
    args = parser.parse_args(argv)
    if args.broker_fetch_cost:
        out = save("kafka-broker-fetch-cost", {"rows": broker_fetch_cost()})
        print(f"results: {out}")
        return {}
    from connectors.broker import LocalBroker

    path = workload(args.customers, args.terminals, args.days)
    events = load(path)
    result: dict = {"workload": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                                 "events": len(events)}}
    with LocalBroker() as broker:
        if args.latency:
            if args.rate:
                rate = args.rate
            else:
                one = throughput(broker.bootstrap, events, 1, broker_pid=broker.proc.pid)
                result["kafka_1_process_for_the_rate"] = one
                rate = one["events_per_s"] / 2
            snapshot = args.warm_start or _trained_model(path)
            processes = tuple(int(p) for p in args.processes.split(",") if p)
            result["latency_at_half_max"] = latency_rows(broker.bootstrap, events, rate, args.minutes, snapshot,
                                                         args.snapshot_interval, broker.proc.pid, processes)
            result["command"] = "python -m benchmarks.kafka " + " ".join(argv if argv is not None else sys.argv[1:])
            out = save("kafka-latency", result)
            print(json.dumps(result["latency_at_half_max"]["targets"], indent=2))
            print(f"results: {out}")
            return result
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
            "targets": {"ratio_1_process_to_loop": ">= 0.75", "ratio_2_to_1_processes": ">= 1.6",
                        "p99_alert_latency_ms": "<= 50 at half the maximum rate (p99.9 <= 100; 2 processes p99 <= 75)",
                        "recovery_throughput_cost": "<= 0.2"},
        })
        print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k.endswith("cost")}), flush=True)
        if not args.skip_latency:
            snapshot = args.warm_start or _trained_model(path)
            result["latency_at_half_max"] = latency_rows(broker.bootstrap, events, one / 2, args.minutes, snapshot,
                                                         args.snapshot_interval, broker.proc.pid)
    out = save("kafka", result)
    print(json.dumps({k: result[k] for k in result if k not in ("bare_loop",)}, indent=2, default=str))
    print(f"results: {out}")
    return result


if __name__ == "__main__":
    main()
