"""The entrypoint run as a StatefulSet runs it: pods fraudflow-0..N-1 as local processes, each
with its own "volume", forming one Bytewax cluster against the real test broker.

The "headless Service" names are mapped to 127.0.0.1 with distinct ports through
CLUSTER_PEERS_OVERRIDE (the only test-specific input); everything else (process ids, address
list, recovery partitions, the bytewax command) comes from the entrypoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from connectors.broker import free_port
from connectors.events import Transaction, label_to_json, transaction_to_json
from connectors.simulator import SimulatorConfig, simulate
from deploy.entrypoint import MARKER
from tests.kafka_helpers import KafkaStream, by_tx, produce_stream, read_topic

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
STREAM = SimulatorConfig(customers=800, terminals=1_600, days=12, seed=5)  # dense, short: a quick replay
PARTITIONS = 3  # recovery partitions: the replica count of the first deployment


class Pods:
    """``replicas`` pods of the StatefulSet ``fraudflow``, pod i with the volume ``volumes/pod-i``."""

    def __init__(self, env: dict[str, str], replicas: int, volumes: Path, log_dir: Path) -> None:
        override = ",".join(f"fraudflow-{i}=127.0.0.1:{free_port()}" for i in range(replicas))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_", "CLUSTER_"))},
            **env,
            "PYTHONPATH": str(ROOT),
            "POD_NAMESPACE": "fraudflow", "CLUSTER_SERVICE": "fraudflow-peers", "CLUSTER_PORT": "2101",
            "CLUSTER_REPLICAS": str(replicas), "CLUSTER_WORKERS": "1", "CLUSTER_PEERS_OVERRIDE": override,
            "CLUSTER_RECOVERY_PARTITIONS": str(PARTITIONS), "CLUSTER_BACKUP_S": "0",
            # Longer than a run: the resume relies on the snapshot bytewax takes at the end of
            # bounded input (and interval snapshots of 3 processes on 2 cores cost seconds).
            "CLUSTER_SNAPSHOT_S": "60",
        }
        self.replicas, self.volumes, self.log_dir = replicas, volumes, log_dir
        self.procs: list[subprocess.Popen] = []

    def volume(self, i: int) -> Path:
        return self.volumes / f"pod-{i}"

    def log(self, i: int) -> Path:
        return self.log_dir / f"fraudflow-{i}-of-{self.replicas}.log"

    def start(self) -> "Pods":
        for i in range(self.replicas):
            self.volume(i).mkdir(parents=True, exist_ok=True)  # the PVC, empty on first use
            env = {**self.env, "POD_NAME": f"fraudflow-{i}", "CLUSTER_RECOVERY_DIR": str(self.volume(i))}
            with open(self.log(i), "wb") as out:
                self.procs.append(subprocess.Popen([sys.executable, str(ROOT / "deploy" / "entrypoint.py")],
                                                   env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        return self

    def wait(self, timeout: float = 300) -> list[int]:
        try:
            return [p.wait(timeout=timeout) for p in self.procs]
        finally:
            for p in self.procs:  # never leave a pod behind, whatever failed
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def logs(self) -> str:
        return "\n".join(self.log(i).read_text(errors="replace")[-2500:] for i in range(self.replicas))

    def entrypoint_lines(self, i: int) -> str:
        return "\n".join(l for l in self.log(i).read_text().splitlines() if l.startswith("fraudflow-entrypoint:"))


def produce_more(stream: KafkaStream, events: list) -> list[str]:
    """Append events to the stream's topics, as produce_stream does; returns their tx ids."""
    producer = KafkaProducer(bootstrap_servers=stream.bootstrap, linger_ms=20, acks="all")
    tx_ids = []
    for event in events:
        if isinstance(event, Transaction):
            doc, topic = transaction_to_json(event), stream.topics["transactions"]
            tx_ids.append(event.tx_id)
        else:
            doc, topic = label_to_json(event), stream.topics["labels"]
        producer.send(topic, value=json.dumps(doc).encode(), key=event.account_id.encode())
    producer.flush()
    producer.close()
    return tx_ids


def test_statefulset_pods_form_one_cluster_resume_and_scale_out(broker, tmp_path: Path) -> None:
    truth: dict = {}
    events = list(simulate(STREAM, truth=truth))
    cut = len(events) * 2 // 3
    stream = produce_stream(broker.bootstrap, events[:cut], truth, partitions=3)
    env = stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_MODEL_SHARDS="3")
    volumes = tmp_path / "volumes"

    # 1. Three pods, first start: each creates its own recovery partition and together they
    #    form one cluster that reads the 3-partition topics: every transaction scored once
    #    (three independent processes would score each one three times).
    pods = Pods(env, 3, volumes, tmp_path).start()
    assert pods.wait() == [0, 0, 0], pods.logs()
    first = read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids))
    per_tx = by_tx(first)
    assert sorted(per_tx) == sorted(stream.tx_ids), "a transaction was not scored"
    assert all(len(s) == 1 for s in per_tx.values()), "a transaction was scored twice"
    for i in range(3):
        assert f"pod fraudflow-{i} is process {i} of 3" in pods.entrypoint_lines(i)
        assert f"created recovery partition {i} of 3" in pods.entrypoint_lines(i)
        # bytewax ran with only this pod's partition in its directory
        assert sorted(p.name for p in pods.volume(i).glob("part-*.sqlite3")) == [f"part-{i}.sqlite3"]

    # 2. More input, and the StatefulSet scaled out to 4: pods 0-2 resume from their
    #    partitions, the new pod 3 starts with an empty volume and creates none. The cluster
    #    continues where it stopped: the new transactions are scored, none of the old again.
    more = produce_more(stream, events[cut:])
    pods = Pods(env, 4, volumes, tmp_path).start()
    assert pods.wait() == [0, 0, 0, 0], pods.logs()
    scores = read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids) + len(more))
    per_tx = by_tx(scores)
    assert sorted(per_tx) == sorted(stream.tx_ids + more), "a transaction was not scored"
    assert all(len(s) == 1 for s in per_tx.values()), "the resumed cluster scored a transaction again"
    for i in range(3):
        assert "resuming: 1 recovery partition file(s) here" in pods.entrypoint_lines(i)
    assert "joined after the 3 original pods" in pods.entrypoint_lines(3)
    assert list(pods.volume(3).iterdir()) == [], "a pod added by scaling out must hold no partition"
    assert all((pods.volume(i) / MARKER).exists() for i in range(3))
