"""Helpers for tests against the real broker: topics, producing a stream, running the flow
as `python -m bytewax.run` subprocesses, and reading output topics with kafka-python."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from connectors.broker import free_port
from connectors.events import Transaction, label_to_json, transaction_to_json

ROOT = Path(__file__).resolve().parents[1]

MALFORMED = [
    (b'{"tx_id": "t-bad-1", "account_id": "c-1", "ts": "2018-04-02T00:00:00Z", "amount": "lots", '
     b'"currency": "EUR", "terminal_id": "m-1"}', "transactions"),
    (b"\xff\xfenot even text", "transactions"),
    (b'{"tx_id": "t-000000001", "account_id": "c-1", "ts": "2018-04-08"}', "labels"),
]


@dataclass
class KafkaStream:
    """A simulated stream produced to fresh topics, with its expectations."""

    bootstrap: str
    topics: dict[str, str]
    tx_ids: list[str]
    truth: dict
    malformed: int
    partitions: int
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **more: str) -> dict[str, str]:
        env = {
            "FRAUDFLOW_SOURCE": "kafka",
            "FRAUDFLOW_KAFKA_BROKERS": self.bootstrap,
            "FRAUDFLOW_KAFKA_TOPIC_TRANSACTIONS": self.topics["transactions"],
            "FRAUDFLOW_KAFKA_TOPIC_LABELS": self.topics["labels"],
            "FRAUDFLOW_KAFKA_TOPIC_ALERTS": self.topics["alerts"],
            "FRAUDFLOW_KAFKA_TOPIC_DLQ": self.topics["dlq"],
            "FRAUDFLOW_KAFKA_TOPIC_SCORES": self.topics["scores"],
            "FRAUDFLOW_KAFKA_TOPIC_RULES": self.topics["rules"],
            # the stream's own feedback topic (make_topics), never the shared default "feedback"
            "FRAUDFLOW_KAFKA_TOPIC_FEEDBACK": self.topics.get("feedback", ""),
            "FRAUDFLOW_EMIT_SCORES": "1",
            "FRAUDFLOW_PROGRESS": "1",
        }
        env.update(self.extra_env)
        env.update(more)
        return env


def make_topics(bootstrap: str, partitions: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{suffix}" for name in ("transactions", "labels", "feedback", "alerts", "dlq", "scores")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, partitions, 1) for t in topics.values()]
                        # the analysts' rules: one partition, compacted (as `fraudflow topics create` makes it)
                        + [NewTopic(f"rules-{suffix}", 1, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    topics["rules"] = f"rules-{suffix}"
    return topics


def produce_stream(bootstrap: str, events: list, truth: dict, partitions: int = 2,
                   malformed: bool = True) -> KafkaStream:
    """Produce events in event-time order, keyed by account; mix in malformed messages."""
    topics = make_topics(bootstrap, partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks="all")
    bad = list(MALFORMED) if malformed else []
    every = max(1, len(events) // (len(bad) + 1))
    tx_ids = []
    for i, event in enumerate(events):
        if isinstance(event, Transaction):
            doc, topic = transaction_to_json(event), topics["transactions"]
            tx_ids.append(event.tx_id)
        else:
            doc, topic = label_to_json(event), topics["labels"]
        producer.send(topic, value=json.dumps(doc).encode(), key=event.account_id.encode())
        if bad and i and i % every == 0:
            raw, kind = bad.pop()
            producer.send(topics[kind], value=raw, key=b"c-1")
    producer.flush()
    producer.close()
    return KafkaStream(bootstrap, topics, tx_ids, truth, len(MALFORMED) if malformed else 0, partitions)


def approx_count(bootstrap: str, topic: str) -> int:
    """Messages in ``topic`` by end offsets: cheap, and an under-count on tansu (fine for progress)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return sum(consumer.end_offsets(parts).values()) if parts else 0
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, expect: Optional[int] = None, quiet_s: float = 3.0,
               timeout_s: float = 120.0, skip_unparsed: bool = False) -> list[dict]:
    """Every message of ``topic`` as JSON (``_at``: its partition and offset): until ``expect``
    are read, or nothing new for ``quiet_s``; ``skip_unparsed``: leave out what is not JSON."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500)
    parts = None
    deadline = time.monotonic() + timeout_s
    while not parts and time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
    assigned = [TopicPartition(topic, p) for p in sorted(parts or [])]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    out: list[dict] = []
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        got = False
        for msg in consumer:
            try:
                doc = json.loads(msg.value)
            except ValueError:
                if skip_unparsed:
                    continue
                raise
            doc["_at"] = (msg.partition, msg.offset)
            out.append(doc)
            got = True
        if got:
            last_new = time.monotonic()
        if expect is not None and len(out) >= expect:
            break
        if time.monotonic() - last_new > quiet_s:
            break
    consumer.close()
    return out


class FlowCluster:
    """`python -m bytewax.run dataflows.fraud:flow` as N processes (1 worker each by default)."""

    def __init__(self, env: dict[str, str], processes: int = 1, workers: int = 1,
                 recovery_dir: Optional[Path] = None, snapshot_s: int = 1, log_dir: Optional[Path] = None,
                 process_env: Optional[list[dict[str, str]]] = None) -> None:
        self.env = env
        self.process_env = process_env or [{} for _ in range(processes)]  # more variables for each process
        self.processes = processes
        self.workers = workers
        self.recovery_dir = recovery_dir
        self.snapshot_s = snapshot_s
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))

    def start(self) -> "FlowCluster":
        full = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
        full.update(self.env)
        full["PYTHONPATH"] = str(ROOT)
        for i in range(self.processes):
            cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-w", str(self.workers)]
            if self.processes > 1:
                cmd += ["-i", str(i), "-a", self.addresses]
            if self.recovery_dir is not None:
                cmd += ["-r", str(self.recovery_dir), "-s", str(self.snapshot_s), "-b", "0"]
            out = open(self.log_dir / f"flow-{i}-{int(time.time() * 1000)}.log", "ab") if self.log_dir else subprocess.DEVNULL
            self.procs.append(subprocess.Popen(cmd, env={**full, **self.process_env[i]}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        return self

    def wait(self, timeout: float = 300) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                codes.append(p.wait(timeout=remaining))
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return codes

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (or, ``paused=False``, SIGCONT) every process: nothing is written or committed meanwhile."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def logs(self) -> str:
        if not self.log_dir:
            return ""
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in sorted(self.log_dir.glob("flow-*.log")))


def tx_offsets(bootstrap: str, topic: str) -> dict[str, int]:
    """Offset of every transaction in partition 0 of ``topic`` (records that are not JSON skipped)."""
    return {doc["tx_id"]: doc["_at"][1] for doc in read_topic(bootstrap, topic, quiet_s=1.0, skip_unparsed=True)
            if "tx_id" in doc and doc["_at"][0] == 0}


def init_recovery(path: Path, partitions: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)], check=True, cwd=ROOT)
    return path


def by_tx(scores: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in scores:
        out.setdefault(s["tx_id"], []).append(s["score"])
    return out
