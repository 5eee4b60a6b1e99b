"""Rules changed while a 2-process cluster runs against the real broker (decision 0055): a rule
published mid-stream fires on later transactions only, on the accounts of both processes; a
bad update is dead-lettered and the version in force keeps working; a deleted rule stops
firing; and a recovering cluster killed with SIGKILL keeps its rules without a new publish.

The stream is produced in phases; each phase is waited for (every transaction of it scored)
before a rule changes, and each rule change is waited for on every process through its
``fraudflow_rules_active`` gauge (bounded waits, no blind sleeps)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from typing import Callable

import pytest
from kafka import KafkaProducer

from connectors.broker import free_port
from connectors.events import Transaction, label_to_json, transaction_to_json
from connectors.simulator import SimulatorConfig, simulate
from learners.stages import shard_for
from tests.kafka_helpers import FlowCluster, KafkaStream, init_recovery, make_topics, read_topic

pytestmark = pytest.mark.broker

STREAM = SimulatorConfig(customers=300, terminals=600, days=24, seed=13)
BIG = {"id": "big", "version": 1, "action": "alert", "when": "amount > 150", "owner": "tests"}
RULE_TX = re.compile(r"^fraudflow_rules_active\{shard=\"[^\"]*\"\} ([0-9.]+)$", re.M)


@pytest.fixture(scope="module")
def phases():
    events = list(simulate(STREAM))
    n = len(events)
    cuts = [0, int(n * 0.4), int(n * 0.55), int(n * 0.7), int(n * 0.85), n]
    return [events[a:b] for a, b in zip(cuts, cuts[1:])]


def _txs(events) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


class Live:
    """A running cluster on fresh topics: produce phases, publish rules, observe."""

    def __init__(self, bootstrap: str, tmp_path, processes: int = 2, recovery=None) -> None:
        self.bootstrap = bootstrap
        self.topics = make_topics(bootstrap, partitions=2)
        self.stream = KafkaStream(bootstrap, self.topics, [], {}, 0, 2)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
        self.tmp_path = tmp_path
        self.processes = processes
        self.recovery = recovery
        self.produced: list[str] = []
        self.cluster = None
        self.ports: list[int] = []

    def start(self) -> "Live":
        self.ports = [free_port() for _ in range(self.processes)]
        env = self.stream.env(FRAUDFLOW_MODEL_SHARDS="2", FRAUDFLOW_COOLDOWN_HOURS="0", FRAUDFLOW_SNAPSHOT_DIR="off")
        self.cluster = FlowCluster(env, processes=self.processes, recovery_dir=self.recovery, log_dir=self.tmp_path,
                                   process_env=[{"FRAUDFLOW_METRICS_PORT": str(p)} for p in self.ports]).start()
        return self

    def produce(self, events) -> None:
        for e in events:
            if isinstance(e, Transaction):
                doc, topic = transaction_to_json(e), self.topics["transactions"]
                self.produced.append(e.tx_id)
            else:
                doc, topic = label_to_json(e), self.topics["labels"]
            self.producer.send(topic, value=json.dumps(doc).encode(), key=e.account_id.encode())
        self.producer.flush()

    def publish(self, rule_id: str, spec) -> None:
        value = None if spec is None else (spec if isinstance(spec, bytes) else json.dumps(spec).encode())
        self.producer.send(self.topics["rules"], key=rule_id.encode(), value=value)
        self.producer.flush()

    def wait_scored(self, timeout_s: float = 300.0) -> list[dict]:
        """Every produced transaction scored (at least once); the score records."""
        want = set(self.produced)
        deadline = time.monotonic() + timeout_s
        while True:
            scores = read_topic(self.bootstrap, self.topics["scores"], quiet_s=1.0, timeout_s=30)
            if want <= {s["tx_id"] for s in scores}:
                return scores
            self._alive()
            assert time.monotonic() < deadline, (f"{len(want - {s['tx_id'] for s in scores})} transactions not "
                                                 f"scored in {timeout_s:.0f} s\n{self.cluster.logs()}")
            time.sleep(0.5)

    def rules_active(self) -> list[list[float]]:
        """Per process, the rules in force in each rule book (empty: not scraped yet)."""
        out = []
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    out.append([float(v) for v in RULE_TX.findall(resp.read().decode())])
            except OSError:
                out.append([])
        return out

    def wait_rules(self, active: int, timeout_s: float = 60.0) -> None:
        """Every process's rule book holds ``active`` enabled rules (one book per process here)."""
        self.wait(lambda: all(books == [active] for books in self.rules_active()), timeout_s,
                  lambda: f"rule books {self.rules_active()}, wanted {active} in each")

    def wait(self, check: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            self._alive()
            assert time.monotonic() < deadline, f"{what()}\n{self.cluster.logs()}"
            time.sleep(0.3)

    def _alive(self) -> None:
        assert all(p.poll() is None for p in self.cluster.procs), f"a process died\n{self.cluster.logs()}"

    def alerts(self) -> list[dict]:
        return read_topic(self.bootstrap, self.topics["alerts"], quiet_s=1.5, timeout_s=60)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.kill()
        self.producer.close()


def _ruled(alerts: list[dict], rule_id: str = "big", version: int = 1) -> set[str]:
    return {a["tx_id"] for a in alerts if [f"rule:{rule_id}", version] in a["reasons"]}


def test_rules_change_while_a_two_process_cluster_runs(broker, phases, tmp_path):
    live = Live(broker.bootstrap, tmp_path)
    try:
        a, b, c, d, e = phases
        live.produce(a)
        live.start()
        live.wait_rules(0)
        live.wait_scored()
        assert not _ruled(live.alerts())

        live.publish("big", BIG)  # mid-stream: on from the moment it is read
        live.wait_rules(1)
        live.produce(b)
        live.wait_scored()

        bad = {**BIG, "version": 2, "when": "amout > 5"}  # a typo: refused, version 1 stays
        live.publish("big", bad)
        live.wait(lambda: any(x["category"] == "bad_rule" for x in read_topic(
            broker.bootstrap, live.topics["dlq"], quiet_s=0.5, timeout_s=10)), 60, lambda: "no bad_rule dead letter")
        live.produce(c)
        live.wait_scored()

        live.publish("big", None)  # a tombstone: deleted
        live.wait_rules(0)
        live.produce(d)
        live.wait_scored()

        alerts = live.alerts()
    finally:
        live.close()
    ruled = _ruled(alerts)
    expected = {t.tx_id for t in _txs(b + c) if t.amount > 150}
    assert expected and ruled == expected  # not one before the publish, nor after the delete
    accounts = {a["account_id"] for a in alerts if a["tx_id"] in ruled}
    assert {shard_for(acct, 2) for acct in accounts} == {0, 1}  # both shards, one per process
    dead = [x for x in read_topic(broker.bootstrap, live.topics["dlq"], quiet_s=1.0) if x["category"] == "bad_rule"]
    assert len(dead) == 1 and "rule 'big'" in dead[0]["reason"] and "unknown field 'amout'" in dead[0]["reason"]
    assert dead[0]["origin"] == {"topic": live.topics["rules"], "partition": 0, "offset": 1}
    assert json.loads(dead[0]["raw"]) == bad
    logs = live.cluster.logs()
    assert "bad rule at" in logs


def test_a_killed_recovering_cluster_keeps_its_rules(broker, phases, tmp_path):
    recovery = init_recovery(tmp_path / "recovery", 2)
    live = Live(broker.bootstrap, tmp_path, recovery=recovery)
    try:
        a, b, c, d, e = phases
        live.produce(a)
        live.start()
        live.wait_scored()
        live.publish("big", BIG)
        live.wait_rules(1)
        live.produce(b)
        live.wait_scored()
        time.sleep(2.5)  # two more epochs (-s 1): the rule books are in a committed snapshot
        before = time.time()
        proc = live.cluster.procs[1]
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 one process; the other stops on the lost peer
        live.cluster.procs[0].wait(timeout=120)
        live.cluster.kill()

        live.start()  # same recovery stores, fresh metrics ports
        live.wait_rules(1)  # restored from the snapshot: the topic is not read again
        live.produce(c)
        live.wait_scored()
        alerts = live.alerts()
    finally:
        live.close()
    ruled = _ruled(alerts)
    after = {t.tx_id for t in _txs(c) if t.amount > 150}
    assert after and after <= ruled
    assert not ruled & {t.tx_id for t in _txs(a)}
    assert {shard_for(x["account_id"], 2) for x in alerts if x["tx_id"] in after} == {0, 1}
    restarted = [f for f in tmp_path.glob("flow-*.log") if int(f.stem.rsplit("-", 1)[1]) >= before * 1000]
    restart_logs = "\n".join(f.read_text(errors="replace") for f in restarted)
    assert len(restarted) == 2 and "rule 'big' read at" not in restart_logs  # not re-read from the topic
