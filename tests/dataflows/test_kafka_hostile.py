"""Hostile messages through the running Kafka flow (real broker, `python -m bytewax.run`):
each becomes a dead letter naming its topic, partition and offset, and the flow goes on."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from connectors.events import Transaction, format_ts, label_to_json, transaction_to_json
from tests.kafka_helpers import FlowCluster, make_topics, read_topic

pytestmark = pytest.mark.broker

HOUR = 3600.0


def _tx(tx_id: str, ts: str, amount=10.0, **more) -> bytes:
    return json.dumps({"tx_id": tx_id, "account_id": "c-hostile", "ts": ts, "amount": amount, "currency": "EUR",
                       "terminal_id": "m-1", **more}).encode()


def test_poison_messages_are_dead_letters_and_the_flow_goes_on(broker, small_stream, tmp_path):
    events, _ = small_stream
    events = events[:12_000]  # a few days of transactions and the first labels
    txs = [e for e in events if isinstance(e, Transaction)]
    start = txs[0].event_ts
    topics = make_topics(broker.bootstrap, 2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, acks="all",
                             max_request_size=4 * 1024 * 1024)
    hostile = {
        "huge_amount": (_tx("t-huge", format_ts(start + HOUR), 1e300), "invalid_transaction"),
        "float32_overflow": (_tx("t-f32", format_ts(start + HOUR), 1e39), "invalid_transaction"),
        "one_megabyte": (_tx("t-big", format_ts(start + HOUR), note="x" * 999_900), "too_large"),
        "year_2099": (_tx("t-2099", "2099-01-01T00:00:00Z"), "bad_timestamp"),
        "not_json": (b"\xff\xfe binary", "invalid_json"),
    }
    ghost_ts = start + 2 * HOUR  # a label for an account and transaction the flow never sees
    ghost = json.dumps({"tx_id": "t-ghost", "account_id": "c-ghost", "ts": format_ts(ghost_ts),
                        "is_fraud": True}).encode()
    sent = {}
    for i, event in enumerate(events):
        if isinstance(event, Transaction):
            producer.send(topics["transactions"], json.dumps(transaction_to_json(event)).encode(),
                          key=event.account_id.encode())
        else:
            producer.send(topics["labels"], json.dumps(label_to_json(event)).encode(), key=event.account_id.encode())
        if i == 200:
            for name, (raw, _) in hostile.items():
                sent[name] = producer.send(topics["transactions"], raw, key=b"c-hostile").get(timeout=30)
            sent["ghost"] = producer.send(topics["labels"], ghost, key=b"c-ghost").get(timeout=30)
    producer.flush()
    producer.close()

    env = {"FRAUDFLOW_SOURCE": "kafka", "FRAUDFLOW_KAFKA_BROKERS": broker.bootstrap,
           **{f"FRAUDFLOW_KAFKA_TOPIC_{k.upper()}": v for k, v in topics.items()},
           "FRAUDFLOW_EMIT_SCORES": "1", "FRAUDFLOW_SNAPSHOT_DIR": "off"}
    # Following the topics (not stopping at their end): the ghost label must leave while the
    # flow runs, one learning step of event time after its ts, not at the end of the input.
    cluster = FlowCluster(env, log_dir=tmp_path).start()
    try:
        dead = read_topic(broker.bootstrap, topics["dlq"], expect=len(hostile) + 1, quiet_s=60, timeout_s=240)
        assert cluster.procs[0].poll() is None, cluster.logs()  # still running
        scores = read_topic(broker.bootstrap, topics["scores"], expect=len(txs), quiet_s=20, timeout_s=240)
        assert cluster.procs[0].poll() is None, cluster.logs()
    finally:
        cluster.kill()
    assert {s["tx_id"] for s in scores} == {t.tx_id for t in txs}
    by_offset = {(d["origin"]["topic"], d["origin"]["partition"], d["origin"]["offset"]): d for d in dead}
    assert len(dead) == len(hostile) + 1, [d["reason"] for d in dead]
    for name, (raw, category) in hostile.items():
        meta = sent[name]
        d = by_offset[(topics["transactions"], meta.partition, meta.offset)]
        assert d["category"] == category, (name, d["reason"])
        assert len(json.dumps(d)) < 12_000
    big = by_offset[(topics["transactions"], sent["one_megabyte"].partition, sent["one_megabyte"].offset)]
    assert big["truncated"] and big["size"] > 999_900
    g = by_offset[(topics["labels"], sent["ghost"].partition, sent["ghost"].offset)]
    assert g["category"] == "unknown_transaction" and "one learning step" in g["reason"]
    assert "panicked" not in cluster.logs() and "Traceback" not in cluster.logs()
