"""Kafka wiring: the transactions and labels topics in, alerts / dead letters / scores out.

The data path uses bytewax's Kafka connector (confluent-kafka underneath):

* :class:`EventsKafkaSource` is bytewax's ``KafkaSource`` over both input topics. Each
  topic-partition is an input partition with its offset as resume state; partitions are
  assigned without consumer groups. Messages are decoded in the source (a bad one becomes a
  dead letter with its topic, partition and offset) and cut into batches of bounded event
  time, like the other sources. Broker-level errors (an unreachable broker) are logged and
  retried by librdkafka; they never move the resume offset.
* :func:`check_cluster` runs before the flow is built: it waits a bounded time
  (``FRAUDFLOW_KAFKA_STARTUP_TIMEOUT_S``) for a broker to answer and for every topic the flow
  uses to exist, and otherwise raises :class:`KafkaStartupError` with one line naming the
  setting. It lists all topics, never one by name: a metadata request for a named topic makes
  brokers with auto-creation (Kafka's default, and the test broker) create it, with the
  broker's partition count instead of the co-partitioned one ``fraudflow topics create`` makes.
* Every client logs through Python logging (``connectors.kafka.librdkafka``), where a line
  librdkafka repeats (``Connect to … failed`` ~19 times a second while a broker is down) is
  shown once a minute with a count of the ones held back.
* :class:`CheckedKafkaSink` is bytewax's ``KafkaSink`` with a producer that waits for every
  delivery report: a failed delivery fails the batch (and the flow, which then resumes from
  recovery) instead of losing an alert. With the default ``message.timeout.ms=0`` a broker
  outage stalls the flow instead of dropping messages.

Every librdkafka option in ``settings.kafka_options`` (``security.protocol``, ``sasl.*``,
``ssl.*``, …) is passed to every client unchanged; they are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from connectors.events import DeadLetter, Origin, encode, parse_record
from connectors.sources import (BOARD, DEFAULT_MAX_LEAD_S, MAX_BATCH_SPAN_S, EventTimePacer, LeadGuard, batch_span_for,
                                beat)

__all__ = ["CheckedKafkaSink", "EventsKafkaSource", "KafkaStartupError", "check_cluster", "client_log", "kafka_problem",
           "kafka_sinks", "kafka_source"]

log = logging.getLogger(__name__)

FETCH_WAIT_MAX_MS = "500"  # librdkafka's default, stated (FRAUDFLOW_KAFKA_OPT_FETCH_WAIT_MAX_MS overrides)


class _EventsPartition(StatefulSourcePartition[tuple[int, Any], Optional[int]]):
    """One topic-partition: decoded events in event-time-bounded batches."""

    def __init__(self, inner: StatefulSourcePartition, topic: str, partition: int, kind: str,
                 start_offset: int, max_span_s: float, pacer: EventTimePacer,
                 max_lead_s: float = DEFAULT_MAX_LEAD_S) -> None:
        self._inner = inner
        self._pacer = pacer
        self._key = (topic, partition)
        pacer.register(self._key)
        self._paced_until = 0.0
        self._topic = topic
        self._partition = partition
        self._kind = kind
        self._next_offset = start_offset  # resume here: the first message not yet emitted
        self._max_span_s = max_span_s
        self._carry: list[tuple[int, Any]] = []  # (offset, event) decoded but not yet emitted
        self._exhausted = False
        self._last_warning = 0.0
        self._guard = LeadGuard(max_lead_s)  # a lone event far ahead in event time waits for the next

    def _decode(self, messages: list) -> None:
        for msg in messages:
            if isinstance(msg, KafkaError):
                inner_msg = msg.msg
                offset = inner_msg.offset
                if offset is not None and offset >= 0 and inner_msg.partition is not None and inner_msg.partition >= 0:
                    raw = inner_msg.value or b""
                    dead = DeadLetter(raw, f"kafka error: {msg.err}", Origin(self._topic, offset, self._partition),
                                      step="read_events")
                    self._carry.append((offset, dead))
                else:
                    now = time.monotonic()
                    if now - self._last_warning > 10:
                        self._last_warning = now
                        log.warning("kafka %s[%d]: %s (librdkafka retries)", self._topic, self._partition, msg.err)
                continue
            origin = Origin(msg.topic or self._topic, msg.offset, msg.partition)
            if msg.value is None:
                event: Any = DeadLetter(b"", "empty message (no value)", origin, step="read_events",
                                        category="empty_message")
            else:
                event = parse_record(msg.value, origin, self._kind)
            ts = None if type(event) is DeadLetter else event.event_ts
            for offset, ready, _ in self._guard.push((msg.offset, event, msg.value), ts, self._suspect_dead):
                self._carry.append((offset, ready))

    def _suspect_dead(self, item: tuple, reason: str) -> tuple:
        offset, event, raw = item
        return (offset, DeadLetter(raw or b"", f"invalid {self._kind}: {reason}", event.origin, step="read_events",
                                   category="bad_timestamp"), raw)

    def next_batch(self) -> list[tuple[int, Any]]:
        beat()
        if not self._carry:
            if self._exhausted:
                self._pacer.unregister(self._key)
                raise StopIteration
            try:
                self._decode(self._inner.next_batch())
            except StopIteration:
                self._exhausted = True
                self._carry.extend((offset, dead) for offset, dead, _ in self._guard.flush(self._suspect_dead))
                if not self._carry:
                    self._pacer.unregister(self._key)
                    raise
        carry, part, span = self._carry, self._partition, self._max_span_s
        head = next((getattr(e, "event_ts", None) for _, e in carry if getattr(e, "event_ts", None) is not None),
                    None)
        limit = self._pacer.limit(self._key, head)
        # ... and at most two learning steps (8 batch spans) ahead of partitions other processes read
        limit = min(limit, BOARD.floor(self._pacer.local_partitions()) + 8 * span)
        first_ts: Optional[float] = None
        n = 0
        for _, event in carry:
            ts = getattr(event, "event_ts", None)
            if ts is not None:
                if ts > limit:
                    break  # ahead of the other partitions: wait for them
                if first_ts is None:
                    first_ts = ts
                elif ts - first_ts > span:
                    break
            n += 1
        self._paced_until = time.monotonic() + 0.002 if n == 0 and carry else 0.0
        batch = [(part, event) for _, event in carry[:n]]
        if n:
            self._next_offset = carry[n - 1][0] + 1
        del carry[:n]
        return batch

    def next_awake(self):
        if self._paced_until:
            return datetime.fromtimestamp(time.time() + 0.002, timezone.utc)
        return None

    def snapshot(self) -> Optional[int]:
        held = self._guard.suspect
        if held is not None:  # a suspect is read again after a resume
            return min(held[0][0], self._carry[0][0]) if self._carry else held[0][0]
        if self._carry:
            return self._carry[0][0]
        return self._next_offset

    def close(self) -> None:
        self._pacer.unregister(self._key)
        self._inner.close()


class EventsKafkaSource(KafkaSource):
    """Both input topics through bytewax's KafkaSource, decoded into contract events."""

    def __init__(self, brokers: list[str], transactions_topic: str, labels_topic: str, *, tail: bool = True,
                 add_config: Optional[dict[str, str]] = None, batch_size: int = 2000,
                 max_batch_span_s: float = MAX_BATCH_SPAN_S, process: int = 0, processes: int = 1,
                 max_lead_s: float = DEFAULT_MAX_LEAD_S) -> None:
        self.max_lead_s = max_lead_s
        self.process = process
        self.processes = max(1, processes)
        # How long the broker may hold a fetch that finds no data. Kafka answers as soon as data
        # arrives, so this costs latency only on an idle partition; every consumer (one per
        # partition) asks again after each answer, so short waits multiply broker requests.
        # Measured on the test broker (decision 0012): 10 ms overloaded it at 2,500 events/s
        # (p99 12.9 s), librdkafka's 500 ms held p99 at 381 ms at 5,190 events/s. Overridable.
        config = {"fetch.wait.max.ms": FETCH_WAIT_MAX_MS, **dict(add_config or {})}
        super().__init__(brokers, [transactions_topic, labels_topic], tail=tail, starting_offset=OFFSET_BEGINNING,
                         add_config=config, batch_size=batch_size, raise_on_errors=False)
        self.kinds = {transactions_topic: "transaction", labels_topic: "label"}
        self.max_batch_span_s = max_batch_span_s
        self.pacer = EventTimePacer(max_batch_span_s)

    def list_parts(self) -> list[str]:
        """This process's share of the topic-partitions: partition ``p`` of *both* topics goes
        to process ``p % processes``.

        The topics are co-partitioned (same partition count, keyed by ``account_id``), so an
        account's transactions and labels are read by one process, which paces them together;
        read by two processes they could drift apart by days of event time in a backfill.
        """
        processes, me = self.processes, self.process
        return [p for p in super().list_parts() if int(p.split("-", 1)[0]) % processes == me % processes]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _EventsPartition:
        idx, topic = for_part.split("-", 1)
        inner = super().build_part(step_id, for_part, resume_state)
        start = resume_state if resume_state is not None else OFFSET_BEGINNING
        return _EventsPartition(inner, topic, int(idx), self.kinds[topic], start, self.max_batch_span_s, self.pacer,
                                self.max_lead_s)


class _CheckedPartition(StatelessSinkPartition[Any]):
    def __init__(self, producer: Producer, topic: str, to_message: Callable[[Any], tuple[Optional[bytes], bytes]]):
        self._producer = producer
        self._topic = topic
        self._to_message = to_message
        self._failed: list[str] = []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(str(err))

    def write_batch(self, items: list[Any]) -> None:
        producer, topic = self._producer, self._topic
        for item in items:
            key, value = self._to_message(item)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                    break
                except BufferError:  # local queue full (e.g. broker down): wait for room
                    producer.poll(0.1)
            producer.poll(0)
        producer.flush()
        if self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(f"{len(failed)} messages to {topic!r} were not delivered: {failed[0]}")

    def close(self) -> None:
        self._producer.flush()


class CheckedKafkaSink(KafkaSink):
    """bytewax's KafkaSink, with delivery reports checked; items are contract records."""

    def __init__(self, brokers: list[str], topic: str, add_config: Optional[dict[str, str]] = None,
                 key: Callable[[Any], Optional[str]] = lambda item: None) -> None:
        config = {"message.timeout.ms": "0", "linger.ms": "5"}
        config.update(add_config or {})
        super().__init__(brokers, topic, config)
        self.key = key

    def _to_message(self, item: Any) -> tuple[Optional[bytes], bytes]:
        if isinstance(item, KafkaSinkMessage):
            return item.key, item.value
        key = self.key(item)
        return (key.encode() if key is not None else None), encode(item)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckedPartition:
        config = {"bootstrap.servers": ",".join(self._brokers)}
        config.update(self._add_config)
        return _CheckedPartition(Producer(config), self._topic, self._to_message)


def _brokers(settings: Any) -> list[str]:
    return [b.strip() for b in settings.kafka_brokers.split(",") if b.strip()]


def kafka_source(settings: Any, process: int = 0, processes: int = 1) -> EventsKafkaSource:
    return EventsKafkaSource(
        _brokers(settings), settings.kafka_topic_transactions, settings.kafka_topic_labels,
        tail=not settings.kafka_stop_at_end, add_config=_client_options(settings),
        batch_size=settings.kafka_batch_size, process=process, processes=processes,
        max_batch_span_s=batch_span_for(settings.allowed_lateness_s), max_lead_s=settings.max_event_lead_hours * 3600,
    )


def kafka_sinks(settings: Any) -> tuple[CheckedKafkaSink, CheckedKafkaSink, Optional[CheckedKafkaSink]]:
    brokers, opts = _brokers(settings), _client_options(settings)
    alerts = CheckedKafkaSink(brokers, settings.kafka_topic_alerts, opts, key=lambda a: a.account_id)
    dlq = CheckedKafkaSink(brokers, settings.kafka_topic_dlq, opts)
    scores = (CheckedKafkaSink(brokers, settings.kafka_topic_scores, opts, key=lambda s: s.account_id)
              if settings.emit_scores else None)
    return alerts, dlq, scores


class _RepeatFilter(logging.Filter):
    """Lets a librdkafka line through once per ``interval_s``; the same line (digits aside)
    repeated meanwhile is counted and the count shown with its next appearance.

    >>> f = _RepeatFilter(60.0)
    >>> def rec(msg): return logging.LogRecord("k", logging.ERROR, "", 0, msg, None, None)
    >>> [f.filter(rec(f"Connect to 127.0.0.1:9 failed (after {i}ms)")) for i in range(3)]
    [True, False, False]
    >>> f.filter(rec("Connect to 127.0.0.1:9 failed (after 0ms, 1 identical error(s) suppressed)"))
    False
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._seen: dict[str, list] = {}  # shape of the line -> [time shown, held back since]
        self.last_problem: Optional[tuple[float, str]] = None

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        now = time.monotonic()
        if record.levelno >= logging.WARNING:
            self.last_problem = (now, text)
        # librdkafka's own "(…, N identical error(s) suppressed)" suffix does not make a new line
        shape = re.sub(r"\d+", "#", re.sub(r", \d+ identical error\(s\) suppressed", "", text))
        with self._lock:
            seen = self._seen.get(shape)
            if seen is not None and now - seen[0] < self.interval_s:
                seen[1] += 1
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[shape] = [now, 0]
        if seen is not None and seen[1]:
            record.msg, record.args = f"{text} ({seen[1]} more like it in the last {now - seen[0]:.0f} s)", None
        return True


_CLIENT_LOG = logging.getLogger(__name__ + ".librdkafka")
_REPEATS = _RepeatFilter()
_CLIENT_LOG.addFilter(_REPEATS)


def client_log() -> logging.Logger:
    """The logger every Kafka client of the flow logs to (repeated lines held back)."""
    return _CLIENT_LOG


def kafka_problem(within_s: float) -> Optional[str]:
    """librdkafka's latest warning or error, if it came within ``within_s`` seconds."""
    last = _REPEATS.last_problem
    if last is not None and time.monotonic() - last[0] <= within_s:
        return last[1]
    return None


def _client_options(settings: Any) -> dict[str, Any]:
    """Options for every client: the pass-through librdkafka options and the logger."""
    return {**settings.kafka_options, "logger": _CLIENT_LOG}


class KafkaStartupError(RuntimeError):
    """The brokers did not answer, or the flow's topics do not exist; the message is one line."""


def _flow_topics(settings: Any) -> dict[str, str]:
    """The topics the flow reads and writes, each with the variable that names it."""
    names = ["transactions", "labels", "alerts", "dlq"] + (["scores"] if settings.emit_scores else [])
    return {getattr(settings, f"kafka_topic_{n}"): f"FRAUDFLOW_KAFKA_TOPIC_{n.upper()}" for n in names}


def check_cluster(settings: Any, retry_every_s: float = 1.0, report_every_s: float = 10.0) -> None:
    """Return once a broker answers and every topic of the flow exists; raise
    :class:`KafkaStartupError` if that has not happened within ``kafka_startup_timeout_s``.

    While topics are missing (created by another job that has not run yet, say), a line naming
    them is logged every ``report_every_s``. Topics are never created here.
    """
    brokers, timeout = settings.kafka_brokers, settings.kafka_startup_timeout_s
    wanted = _flow_topics(settings)
    admin = AdminClient({"bootstrap.servers": ",".join(_brokers(settings)), **_client_options(settings)})
    deadline = time.monotonic() + timeout
    next_report = 0.0
    while True:
        left = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.1, left))
        except KafkaException as exc:
            if time.monotonic() + retry_every_s >= deadline:
                admin.poll(0)  # librdkafka's own account (``Connection refused``, …), logged once
                reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
                raise KafkaStartupError(
                    f"no Kafka broker answered at {brokers} (FRAUDFLOW_KAFKA_BROKERS) within {timeout:g} s "
                    f"(FRAUDFLOW_KAFKA_STARTUP_TIMEOUT_S): {reason}") from None
            time.sleep(retry_every_s)
            continue
        missing = [t for t in wanted if not (t in metadata.topics and metadata.topics[t].partitions)]
        if not missing:
            return
        named = ", ".join(f"{t} ({wanted[t]})" for t in missing)
        if time.monotonic() + retry_every_s >= deadline:
            raise KafkaStartupError(
                f"topics missing on {brokers} after waiting {timeout:g} s (FRAUDFLOW_KAFKA_STARTUP_TIMEOUT_S): "
                f"{named}; create them with `fraudflow topics create`")
        if time.monotonic() >= next_report:
            log.warning("waiting for topics to be created on %s: %s (giving up in %.0f s)", brokers, named,
                        deadline - time.monotonic())
            next_report = time.monotonic() + report_every_s
        time.sleep(retry_every_s)
