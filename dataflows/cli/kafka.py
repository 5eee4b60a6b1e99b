"""Kafka housekeeping commands, on the flow's own client (confluent-kafka / librdkafka).

    fraudflow topics create [--partitions 4] [--replication 1]
    fraudflow produce PREFIX [--rate N] [-q]
    fraudflow tail alerts|dlq|scores [--from-beginning] [-n N] [--idle-timeout S] [--json]

Brokers and client options are the flow's: ``FRAUDFLOW_KAFKA_BROKERS`` (or ``--brokers``) and
every ``FRAUDFLOW_KAFKA_OPT_*`` librdkafka option, passed to the client unchanged, so the
commands reach a secured cluster exactly as the flow does (librdkafka itself rejects an
unknown option). Each command first asks the brokers for the topic list and gives up after
``--connect-timeout`` seconds with one line naming ``FRAUDFLOW_KAFKA_BROKERS`` (exit 2).
librdkafka's own log lines go to the ``fraudflow.kafka.client`` logger at DEBUG (``-v``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TextIO

from dataflows.cli.common import positive_int
from dataflows.errors import FraudflowError

log = logging.getLogger("fraudflow.kafka")

CONNECT_TIMEOUT_S = 10.0
LINGER_MS = 20  # producer batching: up to 20 ms of messages per request, as a production loader would


class ClientLog:
    """librdkafka's log and error callbacks: lines to DEBUG, the last error kept for the user's message."""

    def __init__(self) -> None:
        self._log = logging.getLogger("fraudflow.kafka.client")
        self.last_error: Optional[str] = None

    def log(self, level: int, fmt: str, *args: Any) -> None:  # called by confluent-kafka as logger.log(...)
        message = fmt % args if args else fmt
        if level >= logging.ERROR:
            self.last_error = str(args[-1]) if args else message
        self._log.debug(message)

    def error(self, err: Any) -> None:  # error_cb
        self.last_error = err.str() if hasattr(err, "str") else str(err)
        self._log.debug("client error: %s", self.last_error)


def _user_error(message: str) -> Exception:
    return FraudflowError(message)


def _settings():
    """The flow's Kafka section (``FRAUDFLOW_KAFKA_*``), as the flow itself reads it."""
    from dataflows.settings import Settings, SettingsError

    try:
        return Settings.from_env().kafka
    except SettingsError as exc:
        raise _user_error(f"bad setting: {exc}") from None


def client_config(kafka: Any, brokers: Optional[str], client_log: ClientLog) -> dict[str, Any]:
    """The flow's librdkafka configuration (same brokers, same security options of the settings'
    Kafka section ``kafka``), plus our log hooks."""
    servers = ",".join(b.strip() for b in (brokers or kafka.brokers).split(",") if b.strip())
    if not servers:
        raise _user_error("no brokers: set FRAUDFLOW_KAFKA_BROKERS (e.g. 127.0.0.1:9092) or pass --brokers")
    return {"bootstrap.servers": servers, **kafka.options,
            "logger": client_log, "error_cb": client_log.error}


def _new_client(factory: Any, config: dict[str, Any]) -> Any:
    from confluent_kafka import KafkaException

    try:
        return factory(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise _user_error(f"bad Kafka client option (FRAUDFLOW_KAFKA_OPT_*): {exc}") from None


def existing_topics(client: Any, config: dict[str, Any], timeout_s: float) -> dict[str, int]:
    """{topic: partition count} from the brokers; a user error naming the setting if none answers in time."""
    from confluent_kafka import KafkaException

    client_log: ClientLog = config["logger"]
    try:
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        if hasattr(client, "poll"):
            client.poll(0)  # serve the queued log and error callbacks: the cause of the failure
        cause = client_log.last_error or exc.args[0].str()
        raise _user_error(
            f"no Kafka broker answered at {config['bootstrap.servers']} within {timeout_s:g} s ({cause}); "
            "check FRAUDFLOW_KAFKA_BROKERS (or --brokers), or start a local one with `make broker`") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if not name.startswith("__")}


def send_all(config: dict[str, Any], topic: str, variable: str, messages: Iterable[tuple[bytes, Optional[bytes]]],
             timeout_s: float, flush_timeout_s: Optional[float] = None, **producer_config: Any) -> int:
    """Produce ``(key, value)`` messages (a None value: a tombstone) to ``topic``, which must
    exist (``variable`` names its setting), and wait for every delivery (at most
    ``flush_timeout_s``, None: as long as it takes); raises if any was not delivered. Returns
    how many were sent."""
    from confluent_kafka import Producer

    producer = _new_client(Producer, {**config, "acks": "all", **producer_config})
    if topic not in existing_topics(producer, config, timeout_s):
        raise _user_error(f"topic {topic!r} ({variable}) does not exist at {config['bootstrap.servers']} "
                          "(create it with `fraudflow topics create`)")
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    sent = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        sent += 1
    left = producer.flush() if flush_timeout_s is None else producer.flush(flush_timeout_s)
    if left or failed:
        raise _user_error(f"{len(failed) + left:,} of {sent:,} messages to {topic!r} were not delivered"
                          + (f" (first: {failed[0]})" if failed else f" within {flush_timeout_s:g} s"))
    return sent


def read_to_end(config: dict[str, Any], topic: str, variable: str, group: str, timeout_s: float,
                idle_s: Optional[float] = None) -> Iterator[Any]:
    """Every message of ``topic`` from its start to its end (partition EOF on every partition),
    with partitions assigned, not subscribed (tansu stalls on group joins; nothing is committed
    under ``group``). ``idle_s``: stop after this long without a message even if the broker never
    said end of partition. ``variable`` names the setting in the error for a missing topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = _new_client(Consumer, {**config, "group.id": group, "enable.auto.commit": False,
                                      "enable.partition.eof": True})
    try:
        have = existing_topics(consumer, config, timeout_s)
        if topic not in have:
            raise _user_error(f"topic {topic!r} ({variable}) does not exist at {config['bootstrap.servers']} "
                              "(create it with `fraudflow topics create`)")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(have[topic])])
        at_end: set[int] = set()
        quiet_since = time.monotonic()
        while len(at_end) < have[topic]:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_s is not None and time.monotonic() - quiet_since > idle_s:
                    return  # the broker did not say end of partition: what was read is all
                continue
            quiet_since = time.monotonic()
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise _user_error(f"reading {topic}: {msg.error().str()}")
            at_end.discard(msg.partition())
            yield msg
    finally:
        consumer.close()


def topics_for(kafka: Any) -> list[str]:
    names = [kafka.topic_transactions, kafka.topic_labels, kafka.topic_alerts, kafka.topic_dlq, kafka.topic_scores]
    return names + [name for name in (kafka.topic_feedback, kafka.topic_rules) if name]


# The rules topic (decision 0055): compacted (the latest version of each rule is kept, a
# tombstone deletes it), one partition (a handful of rules; every update in one order).
RULES_TOPIC_CONFIG = {"cleanup.policy": "compact"}


def special_topics(kafka: Any) -> dict[str, tuple[int, dict[str, str]]]:
    """Topics created with their own partition count and configuration: name -> (partitions, config)."""
    return {kafka.topic_rules: (1, RULES_TOPIC_CONFIG)} if kafka.topic_rules else {}


def create_topics(config: dict[str, Any], names: list[str], partitions: int, replication: int,
                  timeout_s: float = CONNECT_TIMEOUT_S,
                  special: Optional[dict[str, tuple[int, dict[str, str]]]] = None) -> dict[str, str]:
    """Create the topics that do not exist yet; returns name -> 'created' | 'exists (N partitions)'.
    ``special``: topics with their own (partitions, topic config)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = _new_client(AdminClient, config)
    have = existing_topics(admin, config, timeout_s)
    result = {name: f"exists ({have[name]} partitions)" for name in names if name in have}
    missing = [name for name in names if name not in have]
    if missing:
        special = special or {}
        futures = admin.create_topics([NewTopic(n, num_partitions=special.get(n, (partitions, {}))[0],
                                                replication_factor=replication, config=special.get(n, (0, {}))[1])
                                       for n in missing], request_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise _user_error(f"cannot create topic {name!r}: {exc.args[0].str()}") from None
                result[name] = "exists"
    return {name: result[name] for name in names}


def cmd_topics(args: argparse.Namespace) -> int:
    kafka = _settings()
    config = client_config(kafka, args.brokers, ClientLog())
    result = create_topics(config, topics_for(kafka), args.partitions, args.replication, args.connect_timeout,
                           special_topics(kafka))
    for name, status in result.items():
        print(f"{name:20s} {status}")
    return 0


# -- produce --------------------------------------------------------------------------------
def feedback_path(prefix: str) -> str:
    """PREFIX.feedback.jsonl if it exists (analysts' verdicts), else ""."""
    path = f"{prefix}.feedback.jsonl"
    return path if Path(path).is_file() else ""


def merged_lines(prefix: str) -> Iterator[tuple[str, bytes, Optional[str]]]:
    """(kind, raw line, account_id) from PREFIX.{transactions,labels[,feedback]}.jsonl in
    label-release order."""
    from connectors.events import DeadLetter, Transaction, Verdict
    from connectors.files import read_events

    tx_path, label_path, fb_path = f"{prefix}.transactions.jsonl", f"{prefix}.labels.jsonl", feedback_path(prefix)
    paths = {tx_path: "transaction", label_path: "label", fb_path: "verdict"}
    lines = {"transaction": _raw_lines(tx_path), "label": _raw_lines(label_path)}
    if fb_path:
        lines["verdict"] = _raw_lines(fb_path)
    for event in read_events(tx_path, label_path, feedback_path=fb_path):
        if isinstance(event, DeadLetter):
            kind = paths[event.origin.source]
            yield kind, next(lines[kind]), None
        else:
            kind = "transaction" if type(event) is Transaction else "verdict" if type(event) is Verdict else "label"
            yield kind, next(lines[kind]), event.account_id


def _raw_lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip(b"\r\n")


def count_lines(*paths: str) -> int:
    """Non-blank lines: the messages ``produce`` will send."""
    total = 0
    for path in paths:
        with open(path, "rb") as fh:
            total += sum(1 for line in fh if line.strip())
    return total


class ProgressBar:
    """``[####......]  12,000/40,000  30%  18,250 msg/s  ETA 0:02`` on a stream (stderr).

    On a terminal the line is redrawn in place ten times a second; otherwise (a log file, a
    pipe) one line is written every ``every_s`` seconds. ``finish`` writes the final line.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(200, out, width=10, now=lambda: 0.0)
    >>> print(bar.render(50, elapsed=2.0))
    [##........]  50/200  25%  25 msg/s  ETA 0:06
    """

    def __init__(self, total: int, stream: TextIO, width: int = 30, every_s: Optional[float] = None,
                 now=time.monotonic) -> None:
        self.total, self.stream, self.width, self.now = total, stream, width, now
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (0.1 if self.tty else 2.0)
        self.started = self._last = now()

    def render(self, done: int, elapsed: float) -> str:
        fraction = done / self.total if self.total else 1.0
        filled = min(self.width, int(fraction * self.width))
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_clock((self.total - done) / rate)}" if rate > 0 and done < self.total else (
            f"in {_clock(elapsed)}" if done >= self.total else "ETA -:--")
        return (f"[{'#' * filled}{'.' * (self.width - filled)}]  {done:,}/{self.total:,}  {fraction:.0%}  "
                f"{rate:,.0f} msg/s  {eta}")

    def update(self, done: int) -> None:
        now = self.now()
        if now - self._last >= self.every_s:
            self._last = now
            self._write(self.render(done, now - self.started), final=False)

    def finish(self, done: int) -> None:
        self._write(self.render(done, self.now() - self.started), final=True)

    def _write(self, line: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def produce_files(config: dict[str, Any], prefix: str, topics: dict[str, str], rate: float = 0.0,
                  progress: Optional[TextIO] = sys.stderr, timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, int]:
    """Produce a recorded stream to the input topics, keyed by account, in label-release order.

    Returns the acknowledged count per kind; a user error if a topic is missing or a message
    was not delivered.
    """
    from confluent_kafka import Producer

    producer = _new_client(Producer, {**config, "linger.ms": LINGER_MS, "acks": "all"})
    have = existing_topics(producer, config, timeout_s)
    for topic in topics.values():
        if topic not in have:
            raise _user_error(f"topic {topic!r} does not exist at {config['bootstrap.servers']}: "
                              "create the topics with `fraudflow topics create` first")
    fb_path = feedback_path(prefix)
    total = count_lines(f"{prefix}.transactions.jsonl", f"{prefix}.labels.jsonl", *([fb_path] if fb_path else []))
    bar = ProgressBar(total, progress) if progress is not None else None
    acked = {kind: 0 for kind in topics}
    failed: list[str] = []

    def delivered(kind: str):
        def report(err: Any, _msg: Any) -> None:
            if err is None:
                acked[kind] += 1
            else:
                failed.append(err.str())
        return report

    callbacks = {kind: delivered(kind) for kind in acked}
    started, sent = time.monotonic(), 0
    for kind, raw, account_id in merged_lines(prefix):
        while True:
            try:
                producer.produce(topics[kind], value=raw, key=account_id.encode() if account_id else None,
                                 on_delivery=callbacks[kind])
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
        if rate > 0:  # poll returns early when a delivery report is served: wait out the rest
            while (ahead := sent / rate - (time.monotonic() - started)) > 0:
                producer.poll(ahead)
        if bar is not None:
            bar.update(sum(acked.values()))
    while producer.flush(0.1 if bar is not None else 1.0):
        if bar is not None:
            bar.update(sum(acked.values()))
    if bar is not None:
        bar.finish(sum(acked.values()))
    if failed:
        raise _user_error(f"{len(failed):,} of {sent:,} messages were not delivered (first: {failed[0]})")
    return acked


def cmd_produce(args: argparse.Namespace) -> int:
    for suffix in ("transactions", "labels"):
        if not Path(f"{args.prefix}.{suffix}.jsonl").is_file():
            raise _user_error(f"no such file: {args.prefix}.{suffix}.jsonl (write it with `fraudflow simulate`)")
    kafka = _settings()
    topics = {"transaction": kafka.topic_transactions, "label": kafka.topic_labels}
    if feedback_path(args.prefix):
        if not kafka.topic_feedback:
            raise _user_error(f"{feedback_path(args.prefix)} is there but FRAUDFLOW_KAFKA_TOPIC_FEEDBACK is empty")
        topics["verdict"] = kafka.topic_feedback
    counts = produce_files(client_config(kafka, args.brokers, ClientLog()), args.prefix, topics, args.rate,
                           progress=None if args.quiet else sys.stderr, timeout_s=args.connect_timeout)
    print(json.dumps({"produced": counts, "topics": topics}))
    return 0


# -- tail -----------------------------------------------------------------------------------
def format_alert(doc: dict[str, Any]) -> str:
    reasons = ", ".join(f"{name} {value:+.2f}" for name, value in doc.get("reasons", [])[:3])
    return (f"{doc.get('ts', '?'):20s}  {doc.get('account_id', '?'):10s} {doc.get('terminal_id', '?'):8s} "
            f"{doc.get('amount', 0):>10.2f} {doc.get('currency', '')}  score {doc.get('score', 0):.2f} "
            f"({doc.get('model', '?')})  {reasons}")


def _show(value: Optional[bytes], readable_alert: bool) -> str:
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return (value or b"").decode("utf-8", "replace")
    if readable_alert and isinstance(doc, dict):
        try:
            return format_alert(doc)
        except (TypeError, ValueError):
            pass
    return json.dumps(doc)


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    kafka = _settings()
    topic = {"alerts": kafka.topic_alerts, "dlq": kafka.topic_dlq, "scores": kafka.topic_scores}[args.what]
    config = client_config(kafka, args.brokers, ClientLog())
    # Partitions are assigned, not subscribed: no consumer group (tansu stalls on group joins);
    # the group id is only a name librdkafka asks for, nothing is committed under it.
    consumer = _new_client(Consumer, {**config, "group.id": "fraudflow-tail", "enable.auto.commit": False,
                                      "enable.partition.eof": True})
    try:
        have = existing_topics(consumer, config, args.connect_timeout)
        if topic not in have:
            raise _user_error(f"topic {topic!r} does not exist at {config['bootstrap.servers']} "
                              "(create it with `fraudflow topics create`)")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in range(have[topic])])
        if not args.from_beginning:
            print(f"waiting for new messages on {topic} (--from-beginning shows the earlier ones)",
                  file=sys.stderr, flush=True)
        shown, quiet_since = 0, time.monotonic()
        at_end: set[int] = set()
        caught_up = not args.from_beginning  # from the end: said so above
        while args.max is None or shown < args.max:
            msg = consumer.poll(0.2)
            now = time.monotonic()
            if msg is None:
                if args.idle_timeout and now - quiet_since >= args.idle_timeout:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if len(at_end) == have[topic] and not caught_up:
                        caught_up = True
                        print(f"caught up with {topic}: {shown:,} shown, waiting for new messages",
                              file=sys.stderr, flush=True)
                    continue
                raise _user_error(f"reading {topic}: {msg.error().str()}")
            quiet_since = now
            at_end.discard(msg.partition())
            print(_show(msg.value(), args.what == "alerts" and not args.json), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brokers", help="bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.add_argument("--connect-timeout", type=_non_negative, default=CONNECT_TIMEOUT_S, metavar="S",
                   help="give up when no broker answers within S seconds (default %(default)g)")


def register(sub) -> None:
    p = sub.add_parser("topics", help="Kafka topics: create the ones the flow uses (idempotent)",
                       description="Create the transactions, labels, alerts, dlq, scores and feedback topics (names "
                                   "from FRAUDFLOW_KAFKA_TOPIC_*), and the rules topic (compacted, one partition); "
                                   "existing topics are left as they are.")
    p.add_argument("action", choices=["create"], help="what to do")
    p.add_argument("--partitions", type=positive_int, default=4, help="partitions per topic (default %(default)s)")
    p.add_argument("--replication", type=positive_int, default=1,
                   help="replication factor (default %(default)s)")
    _client_args(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("produce", help="load files written by `fraudflow simulate` into the input topics",
                       description="Produce PREFIX.transactions.jsonl and PREFIX.labels.jsonl (and PREFIX.feedback.jsonl, "
                                   "analysts' verdicts, when present) to the input topics in "
                                   "label-release (event-time) order, keyed by account_id, with a progress bar on "
                                   "stderr. The topics must exist (`fraudflow topics create`).")
    p.add_argument("prefix", help="the --out prefix given to `fraudflow simulate`")
    p.add_argument("--rate", type=_non_negative, default=0.0,
                   help="messages per second (default: as fast as possible)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _client_args(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("tail", help="print the alerts (or dlq, scores) topic in readable form",
                       description="Follow an output topic: by default only messages that arrive from now on; "
                                   "--from-beginning starts at the oldest. Runs until Ctrl-C, -n messages, or "
                                   "--idle-timeout quiet seconds.")
    p.add_argument("what", choices=["alerts", "dlq", "scores"], help="which output topic")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    p.add_argument("-n", "--max", type=positive_int, metavar="N",
                   help="stop after printing N messages (with --from-beginning: the first N)")
    p.add_argument("--idle-timeout", type=_non_negative, default=0.0, metavar="S",
                   help="stop after S seconds without a message (default 0: never)")
    p.add_argument("--json", action="store_true", help="print alerts as JSON")
    _client_args(p)
    p.set_defaults(func=cmd_tail)
