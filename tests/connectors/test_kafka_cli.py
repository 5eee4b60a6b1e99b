"""`fraudflow topics create`, `produce` and `tail` as a user runs them: subprocesses of the
installed console script against the real broker. What they write is read back with
kafka-python, a client independent of the commands' confluent-kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.kafka_helpers import FlowCluster, read_topic

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
FRAUDFLOW = Path(sys.executable).with_name("fraudflow")
UNREACHABLE = "127.0.0.1:9"  # the discard port: nothing listens, connections are refused


def fresh_topics() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {name: f"{name}-{suffix}" for name in ("transactions", "labels", "alerts", "dlq", "scores", "rules",
                                                  "feedback")}


def cli_env(bootstrap: str, topics: dict[str, str], **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env["FRAUDFLOW_KAFKA_BROKERS"] = bootstrap
    env.update({f"FRAUDFLOW_KAFKA_TOPIC_{name.upper()}": topic for name, topic in topics.items()})
    env.update(more)
    return env


def fraudflow(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(FRAUDFLOW), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """A small simulation written by `fraudflow simulate`: 6,707 transactions and their labels, long
    enough (25 days, labels 7 days late) for the flow to raise alerts."""
    prefix = tmp_path_factory.mktemp("sim") / "sim"
    done = subprocess.run([str(FRAUDFLOW), "simulate", "--out", str(prefix), "--days", "25", "--customers", "150",
                           "--terminals", "300", "--seed", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return prefix


def lines(path: Path) -> list[bytes]:
    return [line.rstrip(b"\r\n") for line in path.read_bytes().splitlines() if line.strip()]


def test_the_console_script_is_the_installed_one() -> None:
    assert FRAUDFLOW.is_file(), f"{FRAUDFLOW}: install the project (make install)"


def test_topics_create_makes_every_topic_and_a_second_run_says_exists(broker) -> None:
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    first = fraudflow("topics", "create", "--partitions", "3", env=env)
    assert first.returncode == 0, first.stderr
    assert dict(line.split(None, 1) for line in first.stdout.splitlines()) == {t: "created" for t in topics.values()}

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        partitions = {t: consumer.partitions_for_topic(t) for t in topics.values()}
    finally:
        consumer.close()
    # the rules topic has one partition (a handful of rules, every update in one order; decision 0055)
    assert partitions == {t: {0} if name == "rules" else {0, 1, 2} for name, t in topics.items()}

    second = fraudflow("topics", "create", "--partitions", "3", env=env)
    assert second.returncode == 0, second.stderr
    assert dict(line.split(None, 1) for line in second.stdout.splitlines()) == {
        t: "exists (1 partitions)" if name == "rules" else "exists (3 partitions)" for name, t in topics.items()}


def test_produce_lands_every_line_keyed_by_account_with_a_progress_bar(broker, sim: Path) -> None:
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "2", env=env).returncode == 0
    tx_lines, label_lines = lines(Path(f"{sim}.transactions.jsonl")), lines(Path(f"{sim}.labels.jsonl"))
    total = len(tx_lines) + len(label_lines)

    done = fraudflow("produce", str(sim), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "produced": {"transaction": len(tx_lines), "label": len(label_lines)},
        "topics": {"transaction": topics["transactions"], "label": topics["labels"]}}
    bar = done.stderr.strip().splitlines()
    assert bar and bar[-1].startswith("[" + "#" * 30 + "]"), done.stderr
    assert f"{total:,}/{total:,}  100%" in bar[-1] and "msg/s" in bar[-1]

    for kind, expected in (("transactions", tx_lines), ("labels", label_lines)):
        got = read_topic(broker.bootstrap, topics[kind], expect=len(expected))
        assert len(got) == len(expected), kind  # read_topic stops at `expect`: none missing
        want = Counter(json.dumps(json.loads(line), sort_keys=True) for line in expected)
        assert Counter(json.dumps({k: v for k, v in g.items() if k != "_at"}, sort_keys=True) for g in got) == want
    more = read_topic(broker.bootstrap, topics["transactions"], quiet_s=2)
    assert len(more) == len(tx_lines), "nothing produced twice"


def test_produce_keys_by_account_and_keeps_each_accounts_order(broker, sim: Path) -> None:
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "3", env=env).returncode == 0
    done = fraudflow("produce", str(sim), "-q", env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # -q: no progress bar

    tx_lines = lines(Path(f"{sim}.transactions.jsonl"))
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    parts = [TopicPartition(topics["transactions"], p) for p in range(3)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    per_account: dict[str, list[str]] = {}
    partition_of: dict[str, set[int]] = {}
    for msg in consumer:
        doc = json.loads(msg.value)
        assert msg.key.decode() == doc["account_id"]
        per_account.setdefault(doc["account_id"], []).append(doc["tx_id"])
        partition_of.setdefault(doc["account_id"], set()).add(msg.partition)
    consumer.close()
    assert sum(map(len, per_account.values())) == len(tx_lines)
    assert all(len(p) == 1 for p in partition_of.values()), "an account's messages were split across partitions"
    expected: dict[str, list[str]] = {}
    for line in tx_lines:
        doc = json.loads(line)
        expected.setdefault(doc["account_id"], []).append(doc["tx_id"])
    assert per_account == expected, "each account's transactions arrive in file (event-time) order"


def test_produce_paced_by_rate_takes_its_time(broker, sim: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    for kind in ("transactions", "labels"):
        Path(f"{small}.{kind}.jsonl").write_bytes(b"\n".join(lines(Path(f"{sim}.{kind}.jsonl"))[:100]) + b"\n")
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", env=env).returncode == 0
    started = time.monotonic()
    done = fraudflow("produce", str(small), "--rate", "100", "-q", env=env)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["produced"] == {"transaction": 100, "label": 100}
    assert elapsed >= 1.5, f"200 messages at 100/s took {elapsed:.2f} s"


def test_produce_refuses_topics_that_do_not_exist(broker, sim: Path) -> None:
    done = fraudflow("produce", str(sim), env=cli_env(broker.bootstrap, fresh_topics()))
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "fraudflow topics create" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _write(bootstrap: str, topic: str, docs: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for doc in docs:
        producer.send(topic, json.dumps(doc).encode(), key=doc["account_id"].encode())
    producer.flush()
    producer.close()


def _alert(i: int) -> dict:
    return {"alert_id": f"a-{i}", "tx_id": f"t-{i}", "account_id": f"c-{i}", "terminal_id": f"m-{i}",
            "ts": "2018-04-02T10:00:00Z", "amount": 10.0 + i, "score": 0.9, "threshold": 0.5, "model": "lr",
            "reasons": [["amount", 2.5]], "currency": "EUR"}


def test_tail_from_beginning_prints_the_first_n_and_stops(broker) -> None:
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "1", env=env).returncode == 0
    _write(broker.bootstrap, topics["alerts"], [_alert(i) for i in range(7)])

    done = fraudflow("tail", "alerts", "--from-beginning", "-n", "5", env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.splitlines()
    assert len(shown) == 5
    for i, line in enumerate(shown):  # one partition: the order written
        assert f"c-{i} " in line and f"{10.0 + i:.2f} EUR" in line and "score 0.90 (lr)" in line, line

    as_json = fraudflow("tail", "alerts", "--from-beginning", "--json", "--idle-timeout", "2", env=env, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [_alert(i) for i in range(7)]
    assert "caught up with" in as_json.stderr


def test_tail_without_from_beginning_shows_only_new_messages(broker) -> None:
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "2", env=env).returncode == 0
    _write(broker.bootstrap, topics["dlq"], [{"account_id": "old", "reason": "before the tail"}])
    proc = subprocess.Popen([str(FRAUDFLOW), "tail", "dlq", "--idle-timeout", "4"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for new messages" in proc.stderr.readline()  # assigned at the end of each partition
        threading.Timer(0.5, _write, (broker.bootstrap, topics["dlq"],
                                      [{"account_id": f"new-{i}", "reason": "r"} for i in range(3)])).start()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert sorted(json.loads(line)["account_id"] for line in out.splitlines()) == ["new-0", "new-1", "new-2"]


@pytest.mark.parametrize("args", [["topics", "create"], ["produce", "SIM"], ["tail", "alerts", "-n", "1"]])
def test_an_unreachable_broker_is_one_line_naming_the_setting(args: list[str], sim: Path) -> None:
    env = cli_env(UNREACHABLE, fresh_topics())
    args = [str(sim) if a == "SIM" else a for a in args]
    started = time.monotonic()
    done = fraudflow(*args, "--connect-timeout", "3", env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert elapsed < 15, f"gave up after {elapsed:.1f} s"
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "FRAUDFLOW_KAFKA_BROKERS" in err[0] and UNREACHABLE in err[0] and "Connection refused" in err[0]
    assert done.stdout == ""


def test_an_unknown_client_option_is_one_line_naming_it(broker) -> None:
    env = cli_env(broker.bootstrap, fresh_topics(), FRAUDFLOW_KAFKA_OPT_NO_SUCH_OPTION="1")
    done = fraudflow("topics", "create", env=env, timeout=60)
    assert done.returncode == 2
    assert "FRAUDFLOW_KAFKA_OPT_" in done.stderr and "no.such.option" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_walkthrough_produce_then_flow_then_tail_shows_the_flows_alerts(broker, sim: Path, tmp_path: Path) -> None:
    """README's Kafka walk-through: topics create, produce, the flow to the end, tail --from-beginning."""
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "2", env=env).returncode == 0
    assert fraudflow("produce", str(sim), "-q", env=env).returncode == 0

    flow_env = {k: v for k, v in env.items() if k.startswith("FRAUDFLOW_")}
    flow_env.update(FRAUDFLOW_SOURCE="kafka", FRAUDFLOW_KAFKA_STOP_AT_END="1")
    cluster = FlowCluster(flow_env, log_dir=tmp_path).start()
    assert cluster.wait(timeout=300) == [0], cluster.logs()
    alerts = read_topic(broker.bootstrap, topics["alerts"])
    assert alerts, "the flow raised no alert on this stream"

    done = fraudflow("tail", "alerts", "--from-beginning", "--json", "--idle-timeout", "3", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    tailed = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(a["alert_id"] for a in tailed) == sorted(a["alert_id"] for a in alerts)

    first = fraudflow("tail", "alerts", "--from-beginning", "-n", "5", env=env, timeout=60)
    assert first.returncode == 0 and len(first.stdout.splitlines()) == min(5, len(alerts)), first.stderr
    ids = {a["tx_id"]: a for a in alerts}
    for line in first.stdout.splitlines():
        assert any(a["account_id"] in line and f"score {a['score']:.2f}" in line for a in ids.values()), line
