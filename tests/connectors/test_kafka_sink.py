"""The Kafka sink's at-least-once guarantee against the real broker (tansu), paused with SIGSTOP.

``CheckedKafkaSink`` produces in the background and confirms deliveries when the epoch
closes (its partition's ``snapshot()``, decisions 0033): the epoch must not close before the
broker has every output, and a delivery that fails must fail the flow, not lose an alert.
kafka-python reads the topics (an independent client)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from connectors.events import Transaction
from connectors.kafka import CheckedKafkaSink, options_for
from connectors.simulator import SimulatorConfig, simulate
from tests.kafka_helpers import FlowCluster, approx_count, by_tx, init_recovery, make_topics, produce_stream, read_topic

pytestmark = pytest.mark.broker


def _pause(broker) -> None:
    """SIGSTOP the broker and wait until it is stopped (the signal takes effect asynchronously:
    a broker still running for a moment answered a flush in 0.3 ms)."""
    broker.pause()
    threads = list(Path(f"/proc/{broker.proc.pid}/task").glob("*/stat"))
    deadline = time.monotonic() + 5
    while any(t.read_text().rsplit(")", 1)[1].split()[0] != "T" for t in threads):
        assert time.monotonic() < deadline, "the broker did not stop"
        time.sleep(0.01)


def _sink(bootstrap: str, topic: str, **options: str) -> CheckedKafkaSink:
    return CheckedKafkaSink([bootstrap], topic, add_config=options, key=lambda doc: doc["account_id"])


def _docs(n: int) -> list[tuple[str, dict]]:
    return [("", {"tx_id": f"t-{i}", "account_id": f"c-{i % 7}"}) for i in range(n)]


def test_the_epoch_closes_only_once_the_broker_has_every_output(broker):
    topic = make_topics(broker.bootstrap, 1)["alerts"]
    sink = _sink(broker.bootstrap, topic)
    part = sink.build_part("write_alerts", "00000", None)
    _pause(broker)
    closed = threading.Event()
    try:
        started = time.monotonic()
        part.write_batch([doc for _, doc in _docs(50)])
        assert time.monotonic() - started < 0.5, "write_batch waited for the broker"
        closer = threading.Thread(target=lambda: (part.snapshot(), closed.set()), daemon=True)
        closer.start()
        assert not closed.wait(2.0), "the epoch closed while the broker had none of its outputs"
    finally:
        broker.resume()
    assert closed.wait(30), "the epoch did not close once the broker was back"
    got = read_topic(broker.bootstrap, topic, expect=50)
    assert sorted(d["tx_id"] for d in got) == sorted(f"t-{i}" for i in range(50))
    part.close()


def test_a_failed_delivery_fails_the_epoch_naming_the_topic(broker):
    topic = make_topics(broker.bootstrap, 1)["alerts"]
    sink = _sink(broker.bootstrap, topic, **{"message.timeout.ms": "1500"})
    part = sink.build_part("write_alerts", "00000", None)
    part.write_batch([{"tx_id": "t-warm", "account_id": "c-1"}])
    part.snapshot()  # connected, delivered
    _pause(broker)
    try:
        part.write_batch([doc for _, doc in _docs(20)])
        with pytest.raises(RuntimeError, match=f"20 messages to Kafka topic '{topic}' were not delivered"):
            part.snapshot()
    finally:
        broker.resume()


def test_every_worker_writes_through_its_own_partition():
    """Each worker thread lists a slot of its own; part_fn names it; every slot below
    max(workers, SLOTS) is listed by exactly one worker of the cluster (rescaled resumes)."""
    processes, per_process = 2, 3
    listed: dict[int, list[str]] = {}
    chosen: dict[tuple[int, int], int] = {}
    for process in range(processes):
        sink = CheckedKafkaSink(["127.0.0.1:1"], "alerts", process=process, workers_per_process=per_process,
                                processes=processes)

        alive = threading.Barrier(per_process)  # worker threads live as long as the dataflow

        def worker(t: int) -> None:
            parts = sink.list_parts()
            alive.wait()
            listed[process * per_process + t] = parts
            chosen[(process, t)] = sink.part_fn("any key")
            assert f"{chosen[(process, t)]:05d}" in parts

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(per_process)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(chosen.values()) == list(range(processes * per_process))
    every = sorted(p for parts in listed.values() for p in parts)
    assert every == [f"{s:05d}" for s in range(CheckedKafkaSink.SLOTS)]


def test_options_reach_only_the_clients_that_accept_them():
    opts = {"security.protocol": "SASL_SSL", "sasl.password": "x", "fetch.wait.max.ms": "5", "linger.ms": "20",
            "group.id": "g", "acks": "all"}
    assert options_for("consumer", opts) == {"security.protocol": "SASL_SSL", "sasl.password": "x",
                                             "fetch.wait.max.ms": "5", "group.id": "g"}
    assert options_for("producer", opts) == {"security.protocol": "SASL_SSL", "sasl.password": "x",
                                             "linger.ms": "20", "acks": "all"}
    assert options_for("admin", opts) == {"security.protocol": "SASL_SSL", "sasl.password": "x"}


STREAM = SimulatorConfig(customers=1_000, terminals=2_000, days=30, seed=5)


def test_an_outage_longer_than_the_delivery_timeout_stops_the_flow_and_recovery_loses_nothing(broker, tmp_path):
    """With a finite message.timeout.ms, outputs that cannot be delivered fail the flow (exit
    code not 0, the topic named in its log) instead of being dropped; restarted from its
    recovery store it scores every transaction. No CONFWARN at start-up."""
    truth: dict = {}
    events = list(simulate(STREAM, truth=truth))
    stream = produce_stream(broker.bootstrap, events, truth, partitions=1, malformed=False)
    recovery = init_recovery(tmp_path / "recovery", 1)
    env = stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS="2000",
                     FRAUDFLOW_KAFKA_FETCH_WAIT_MS="10")
    first = FlowCluster(env, recovery_dir=recovery, log_dir=tmp_path).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and approx_count(broker.bootstrap, stream.topics["scores"]) < 1_000:
        time.sleep(0.05)
    _pause(broker)
    try:
        codes = first.wait(timeout=60)
    finally:
        broker.resume()
    assert codes != [0], "the flow finished although the broker was paused"
    assert f"Kafka topic '{stream.topics['scores']}' were not delivered" in first.logs() or \
        f"Kafka topic '{stream.topics['alerts']}' were not delivered" in first.logs(), first.logs()
    second = FlowCluster(env, recovery_dir=recovery, log_dir=tmp_path).start()
    assert second.wait(timeout=300) == [0], second.logs()
    per_tx = by_tx(read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids)))
    assert sorted(per_tx) == sorted(e.tx_id for e in events if isinstance(e, Transaction))
    assert "CONFWARN" not in first.logs() + second.logs()


def test_settings_reach_the_clients_they_are_for():
    from connectors.kafka import kafka_sinks, kafka_source
    from dataflows.settings import Settings

    settings = Settings.from_env({"FRAUDFLOW_SOURCE": "kafka", "FRAUDFLOW_EMIT_SCORES": "1",
                                  "FRAUDFLOW_KAFKA_FETCH_WAIT_MS": "15", "FRAUDFLOW_KAFKA_LINGER_MS": "2",
                                  "FRAUDFLOW_KAFKA_SCORES_LINGER_MS": "30",
                                  "FRAUDFLOW_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
                                  "FRAUDFLOW_KAFKA_OPT_ACKS": "all"})
    source = kafka_source(settings.kafka)

    def options(config: dict) -> dict:  # every client also logs through Python logging (decision 0031)
        assert config["logger"].name == "connectors.kafka.librdkafka"
        return {k: v for k, v in config.items() if k != "logger"}

    assert options(source.consumer_options) == {"fetch.wait.max.ms": "15", "security.protocol": "SASL_SSL"}
    assert options(source._add_config) == {"security.protocol": "SASL_SSL"}  # bytewax's admin client
    alerts, dlq, scores = kafka_sinks(settings.kafka, settings.outputs.emit_scores, process=1, processes=2, workers=4)
    for sink, linger in ((alerts, "2.0"), (dlq, "2.0"), (scores, "30.0")):
        assert sink.config["linger.ms"] == linger and sink.config["acks"] == "all"
        assert sink.config["security.protocol"] == "SASL_SSL" and "fetch.wait.max.ms" not in sink.config
        assert (sink.first_slot, sink.workers) == (2, 4)
    explicit = Settings.from_env({"FRAUDFLOW_KAFKA_OPT_FETCH_WAIT_MAX_MS": "7", "FRAUDFLOW_KAFKA_OPT_LINGER_MS": "9"})
    assert kafka_source(explicit.kafka).consumer_options["fetch.wait.max.ms"] == "7"
    assert kafka_sinks(explicit.kafka)[0].config["linger.ms"] == "9"
