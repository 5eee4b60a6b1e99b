"""Kafka housekeeping commands (kafka-python, independent of the flow's confluent-kafka path).

    fraudflow topics create [--partitions 4] [--replication 1]
    fraudflow produce PREFIX [--rate 2000]
    fraudflow tail alerts [--from-beginning] [--max N] [--idle-timeout S]

Brokers and client options come from the same settings as the flow
(``FRAUDFLOW_KAFKA_BROKERS``, ``FRAUDFLOW_KAFKA_OPT_*``), or ``--brokers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Iterator, Optional

log = logging.getLogger("fraudflow.kafka")

_KAFKA_PYTHON_OPTS = {
    # librdkafka option -> kafka-python argument
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
}


def client_config(settings: Any, brokers: Optional[str] = None) -> dict[str, Any]:
    """kafka-python keyword arguments from the flow's settings (same brokers, same security)."""
    config: dict[str, Any] = {"bootstrap_servers": [b.strip() for b in (brokers or settings.kafka_brokers).split(",")
                                                    if b.strip()]}
    for key, value in settings.kafka_options.items():
        if key in _KAFKA_PYTHON_OPTS:
            config[_KAFKA_PYTHON_OPTS[key]] = value
    return config


def _settings(args: argparse.Namespace):
    from dataflows.errors import FraudflowError as UserError
    from dataflows.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise UserError(f"bad setting: {exc}") from None


def _connect(factory, config: dict[str, Any]):
    from kafka.errors import NoBrokersAvailable

    from dataflows.errors import FraudflowError as UserError

    try:
        return factory(**config)
    except NoBrokersAvailable:
        raise UserError(f"no Kafka broker reachable at {','.join(config['bootstrap_servers'])} "
                        "(start one with `make broker`, or set FRAUDFLOW_KAFKA_BROKERS)") from None


def topics_for(settings: Any) -> list[str]:
    return [settings.kafka_topic_transactions, settings.kafka_topic_labels, settings.kafka_topic_alerts,
            settings.kafka_topic_dlq, settings.kafka_topic_scores]


def create_topics(config: dict[str, Any], names: list[str], partitions: int, replication: int) -> dict[str, str]:
    """Create the topics that do not exist yet; returns name -> 'created' | 'exists'."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _connect(KafkaAdminClient, config)
    try:
        existing = set(admin.list_topics())
        result = {}
        for name in names:
            if name in existing:
                result[name] = "exists"
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
                result[name] = "created"
            except TopicAlreadyExistsError:
                result[name] = "exists"
        return result
    finally:
        admin.close()


def cmd_topics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    result = create_topics(client_config(settings, args.brokers), topics_for(settings), args.partitions,
                           args.replication)
    for name, status in result.items():
        print(f"{name:20s} {status}")
    return 0


def merged_lines(prefix: str) -> Iterator[tuple[str, bytes, Optional[str]]]:
    """(kind, raw line, account_id) from PREFIX.{transactions,labels}.jsonl in label-release order."""
    from connectors.events import DeadLetter
    from connectors.files import read_events

    tx_path, label_path = f"{prefix}.transactions.jsonl", f"{prefix}.labels.jsonl"
    lines = {0: _raw_lines(tx_path), 1: _raw_lines(label_path)}
    for event in read_events(tx_path, label_path):
        if isinstance(event, DeadLetter):
            stream = 0 if event.origin.source == tx_path else 1
            yield ("transaction" if stream == 0 else "label"), next(lines[stream]), None
        else:
            stream = 1 if hasattr(event, "is_fraud") else 0
            yield ("transaction" if stream == 0 else "label"), next(lines[stream]), event.account_id


def _raw_lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip(b"\r\n")


def produce_files(config: dict[str, Any], prefix: str, topics: dict[str, str], rate: float = 0.0,
                  progress: bool = True) -> dict[str, int]:
    """Produce a recorded stream to the input topics, keyed by account, in event-time order."""
    from kafka import KafkaProducer

    producer = _connect(KafkaProducer, {**config, "linger_ms": 20, "batch_size": 256 * 1024, "acks": "all"})
    counts = {"transaction": 0, "label": 0}
    started = last_report = time.monotonic()
    total = 0
    try:
        for kind, raw, account_id in merged_lines(prefix):
            producer.send(topics[kind], value=raw, key=account_id.encode() if account_id else None)
            counts[kind] += 1
            total += 1
            if rate > 0:
                ahead = total / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            now = time.monotonic()
            if progress and now - last_report >= 2:
                last_report = now
                print(f"\rproduced {total:,} ({total / (now - started):,.0f}/s)", end="", file=sys.stderr, flush=True)
        producer.flush()
    finally:
        producer.close()
    if progress:
        elapsed = time.monotonic() - started
        print(f"\rproduced {total:,} in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f}/s)", file=sys.stderr)
    return counts


def cmd_produce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dataflows.errors import FraudflowError as UserError

    settings = _settings(args)
    for suffix in ("transactions", "labels"):
        if not Path(f"{args.prefix}.{suffix}.jsonl").is_file():
            raise UserError(f"no such file: {args.prefix}.{suffix}.jsonl (write it with `fraudflow simulate`)")
    topics = {"transaction": settings.kafka_topic_transactions, "label": settings.kafka_topic_labels}
    counts = produce_files(client_config(settings, args.brokers), args.prefix, topics, args.rate,
                           progress=not args.quiet)
    print(json.dumps({"produced": counts, "topics": topics}))
    return 0


def format_alert(doc: dict[str, Any]) -> str:
    reasons = ", ".join(f"{name} {value:+.2f}" for name, value in doc.get("reasons", [])[:3])
    return (f"{doc.get('ts', '?'):20s}  {doc.get('account_id', '?'):10s} {doc.get('terminal_id', '?'):8s} "
            f"{doc.get('amount', 0):>10.2f} {doc.get('currency', '')}  score {doc.get('score', 0):.2f} "
            f"({doc.get('model', '?')})  {reasons}")


def cmd_tail(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, TopicPartition

    from dataflows.errors import FraudflowError as UserError

    settings = _settings(args)
    topic = {"alerts": settings.kafka_topic_alerts, "dlq": settings.kafka_topic_dlq,
             "scores": settings.kafka_topic_scores}[args.what]
    consumer = _connect(KafkaConsumer, {**client_config(settings, args.brokers), "enable_auto_commit": False,
                                        "consumer_timeout_ms": 500})
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise UserError(f"topic {topic!r} does not exist (create it with `fraudflow topics create`)")
        # Manual assignment: no consumer group (some brokers stall on group joins).
        assigned = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(assigned)
        (consumer.seek_to_beginning if args.from_beginning else consumer.seek_to_end)(*assigned)
        shown, idle_since = 0, time.monotonic()
        while args.max is None or shown < args.max:
            got = False
            for msg in consumer:
                got = True
                try:
                    doc = json.loads(msg.value)
                    print(format_alert(doc) if args.what == "alerts" and not args.json else json.dumps(doc), flush=True)
                except ValueError:
                    print(msg.value, flush=True)
                shown += 1
                if args.max is not None and shown >= args.max:
                    break
            now = time.monotonic()
            if got:
                idle_since = now
            elif args.idle_timeout and now - idle_since > args.idle_timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def register(sub) -> None:
    p = sub.add_parser("topics", help="Kafka topics: create the ones the flow uses (idempotent)",
                       description="Create the transactions, labels, alerts, dlq and scores topics (names from "
                                   "FRAUDFLOW_KAFKA_TOPIC_*); existing topics are left as they are.")
    p.add_argument("action", choices=["create"], help="what to do")
    p.add_argument("--partitions", type=int, default=4, help="partitions per topic (default %(default)s)")
    p.add_argument("--replication", type=int, default=1, help="replication factor (default %(default)s)")
    p.add_argument("--brokers", help="bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("produce", help="load files written by `fraudflow simulate` into the input topics",
                       description="Produce PREFIX.transactions.jsonl and PREFIX.labels.jsonl to the input topics in "
                                   "label-release (event-time) order, keyed by account_id.")
    p.add_argument("prefix", help="the --out prefix given to `fraudflow simulate`")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default: as fast as possible)")
    p.add_argument("--brokers", help="bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("tail", help="follow the alerts (or dlq, scores) topic in readable form")
    p.add_argument("what", choices=["alerts", "dlq", "scores"], help="which output topic")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    p.add_argument("--max", type=int, help="stop after this many messages")
    p.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many quiet seconds (0: never)")
    p.add_argument("--json", action="store_true", help="print alerts as JSON")
    p.add_argument("--brokers", help="bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.set_defaults(func=cmd_tail)
