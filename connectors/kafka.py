"""Kafka wiring: the transactions, labels (and feedback) topics in, alerts / dead letters / scores out.

The data path uses bytewax's Kafka connector (confluent-kafka underneath):

* :class:`EventsKafkaSource` is bytewax's ``KafkaSource`` over both input topics. Each
  topic-partition is an input partition with its offset as resume state; partitions are
  assigned without consumer groups. Messages are decoded in the source (a bad one becomes a
  dead letter with its topic, partition and offset) and cut into batches of bounded event
  time, like the other sources. Broker-level errors (an unreachable broker) are logged and
  retried by librdkafka; they never move the resume offset.
* :class:`RulesKafkaSource` reads the rules topic (compacted, keyed by rule id) from its
  start and follows it, one :class:`RuleMessage` per record (validated by the flow, decision
  0055); its offset is its resume state like the events'.
* :func:`check_cluster` runs before the flow is built: it waits a bounded time
  (``FRAUDFLOW_KAFKA_STARTUP_TIMEOUT_S``) for a broker to answer and for every topic the flow
  uses to exist, and otherwise raises :class:`KafkaStartupError` with one line naming the
  setting. It lists all topics, never one by name: a metadata request for a named topic makes
  brokers with auto-creation (Kafka's default, and the test broker) create it, with the
  broker's partition count instead of the co-partitioned one ``fraudflow topics create`` makes.
* Every client logs through Python logging (``connectors.kafka.librdkafka``), where a line
  librdkafka repeats (``Connect to … failed`` ~19 times a second while a broker is down) is
  shown once a minute with a count of the ones held back.
* :class:`CheckedKafkaSink` writes contract records at least once: it produces
  asynchronously (librdkafka batches for ``linger.ms``) and confirms every delivery before
  the epoch can close — in its partitions' ``snapshot()``, which bytewax calls when the
  epoch ends and before that epoch's recovery snapshot is committed (decisions 0033). A
  failed delivery fails the flow, which then resumes from recovery, instead of losing an
  alert; with the default ``message.timeout.ms=0`` a broker outage stalls the flow instead.

Every librdkafka option in ``settings.kafka.options`` (``security.protocol``, ``sasl.*``,
``ssl.*``, …) is passed to every client that accepts it: consumer-only options (``fetch.*``,
``group.*``, …) only to consumers, producer-only ones (``linger.ms``, ``acks``, …) only to
producers, the rest (security, timeouts) to all. They are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSource, _KafkaSourcePartition
from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Producer
from confluent_kafka.admin import AdminClient
import msgspec

from connectors.events import DeadLetter, Origin, encode, parse_record
from connectors.sources import (BOARD, DEFAULT_MAX_LEAD_S, MAX_BATCH_SPAN_S, EventTimePacer, LeadGuard,
                                SpanBound, beat)

__all__ = ["CheckedKafkaSink", "EventsKafkaSource", "KafkaStartupError", "RuleMessage", "RulesKafkaSource",
           "check_cluster", "client_log", "kafka_problem", "kafka_sinks", "kafka_source", "options_for", "rules_source"]

log = logging.getLogger(__name__)

# librdkafka 2.x options one kind of client only accepts (CONFIGURATION.md, "C/P" column);
# given to the other kind they print a CONFWARN at every start and are ignored. The admin
# client is a producer handle. Options in neither set (security, timeouts, client.id) go to all.
CONSUMER_ONLY = frozenset({
    "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
    "heartbeat.interval.ms", "group.protocol.type", "group.protocol", "group.remote.assignor",
    "coordinator.query.interval.ms", "max.poll.interval.ms", "enable.auto.commit", "auto.commit.enable",
    "auto.commit.interval.ms", "enable.auto.offset.store", "queued.min.messages", "queued.max.messages.kbytes",
    "fetch.wait.max.ms", "fetch.queue.backoff.ms", "fetch.message.max.bytes", "max.partition.fetch.bytes",
    "fetch.max.bytes", "fetch.min.bytes", "fetch.error.backoff.ms", "offset.store.method", "offset.store.path",
    "offset.store.sync.interval.ms", "isolation.level", "enable.partition.eof", "check.crcs", "auto.offset.reset",
    "consume.callback.max.messages",
})
PRODUCER_ONLY = frozenset({
    "transactional.id", "transaction.timeout.ms", "enable.idempotence", "enable.gapless.guarantee",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "queue.buffering.max.ms", "linger.ms",
    "message.send.max.retries", "retries", "queue.buffering.backpressure.threshold", "compression.codec",
    "compression.type", "compression.level", "batch.num.messages", "batch.size", "delivery.report.only.error",
    "sticky.partitioning.linger.ms", "request.required.acks", "acks", "request.timeout.ms", "message.timeout.ms",
    "delivery.timeout.ms", "queuing.strategy", "produce.offset.report", "partitioner",
})


def options_for(kind: str, options: Mapping[str, str]) -> dict[str, str]:
    """The options a client of ``kind`` (``consumer``, ``producer`` or ``admin``) accepts.

    >>> opts = {"security.protocol": "SASL_SSL", "fetch.wait.max.ms": "10", "linger.ms": "20"}
    >>> options_for("consumer", opts)
    {'security.protocol': 'SASL_SSL', 'fetch.wait.max.ms': '10'}
    >>> options_for("producer", opts)
    {'security.protocol': 'SASL_SSL', 'linger.ms': '20'}
    >>> options_for("admin", opts)
    {'security.protocol': 'SASL_SSL'}
    """
    if kind not in ("consumer", "producer", "admin"):
        raise ValueError(f"client kind must be consumer, producer or admin, got {kind!r}")
    foreign = {"consumer": PRODUCER_ONLY, "producer": CONSUMER_ONLY, "admin": CONSUMER_ONLY | PRODUCER_ONLY}[kind]
    return {k: v for k, v in options.items() if k not in foreign}


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
        admits = SpanBound(span).admits  # the batch's event-time bound, as EventTimeBatcher's
        n = 0
        for _, event in carry:
            ts = getattr(event, "event_ts", None)
            if ts is not None:
                if ts > limit:
                    break  # ahead of the other partitions: wait for them
                if not admits(ts):
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


class _NoWaitConsumer:
    """A consumer whose ``consume`` never waits for data.

    bytewax's partition polls with ``consume(batch, 0.001)``: every partition with nothing
    buffered blocks the worker thread for 1 ms, one partition after the other, while the
    records other partitions just received and every later step wait (py-spy of a live flow,
    8 partitions at 600 events/s: 36 % of the worker's time in that call; decisions 0035).
    Without the wait an empty partition is polled again after bytewax's 1 ms cooldown, and the
    worker is free in between."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def consume(self, num_messages: int, timeout: float) -> list:
        return self._consumer.consume(num_messages, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _AssignedKafkaSource(KafkaSource):
    """bytewax's KafkaSource over ``topics`` from their start, with partition ``p`` of every
    topic read by process ``p % processes`` and the consumer options (fetch wait) added where
    bytewax would not pass them."""

    def __init__(self, brokers: list[str], topics: list[str], *, tail: bool, add_config: Optional[dict[str, str]],
                 batch_size: int, process: int, processes: int, fetch_wait_ms: Optional[int]) -> None:
        self.process = process
        self.processes = max(1, processes)
        # How long the broker may hold a fetch that finds no data. A Kafka broker answers as
        # soon as data arrives; the test broker (tansu) looks again at half the remaining wait,
        # so under steady traffic data waits about half of it there (decisions 0034). The
        # default is FRAUDFLOW_KAFKA_FETCH_WAIT_MS; None leaves librdkafka's (500 ms).
        options = dict(add_config or {})
        if fetch_wait_ms is not None:
            options.setdefault("fetch.wait.max.ms", str(fetch_wait_ms))
        # bytewax hands ``add_config`` to the admin client that lists partitions (a producer
        # handle) as well as to the consumers: consumer-only options are added in build_part.
        self.consumer_options = options_for("consumer", options)
        super().__init__(brokers, topics, tail=tail, starting_offset=OFFSET_BEGINNING,
                         add_config=options_for("admin", options), batch_size=batch_size, raise_on_errors=False)

    def list_parts(self) -> list[str]:
        """This process's share of the topic-partitions: partition ``p`` of *every* topic goes
        to process ``p % processes``.

        The event topics are co-partitioned (same partition count, keyed by ``account_id``), so
        an account's transactions, labels and verdicts are read by one process, which paces them
        together; read by two processes they could drift apart by days of event time in a backfill.
        """
        processes, me = self.processes, self.process
        return [p for p in super().list_parts() if int(p.split("-", 1)[0]) % processes == me % processes]

    def _consumer_partition(self, step_id: str, topic: str, partition: int,
                            resume_state: Optional[int]) -> _KafkaSourcePartition:
        """bytewax's own partition (KafkaSource.build_part, 0.21.1) with the consumer options."""
        config = {"group.id": "BYTEWAX_IGNORED", "enable.auto.commit": "false",
                  "bootstrap.servers": ",".join(self._brokers), "enable.partition.eof": str(not self._tail),
                  "statistics.interval.ms": 1000, **self.consumer_options}
        part = _KafkaSourcePartition(step_id, config, topic, partition, self._starting_offset, resume_state,
                                     self._batch_size, self._raise_on_errors)
        part._consumer = _NoWaitConsumer(part._consumer)
        return part


class EventsKafkaSource(_AssignedKafkaSource):
    """The input topics through bytewax's KafkaSource, decoded into contract events;
    ``feedback_topic`` (analysts' verdicts) is read too when given."""

    def __init__(self, brokers: list[str], transactions_topic: str, labels_topic: str, *, tail: bool = True,
                 add_config: Optional[dict[str, str]] = None, batch_size: int = 2000,
                 max_batch_span_s: float = MAX_BATCH_SPAN_S, process: int = 0, processes: int = 1,
                 fetch_wait_ms: Optional[int] = None, max_lead_s: float = DEFAULT_MAX_LEAD_S,
                 feedback_topic: str = "") -> None:
        self.max_lead_s = max_lead_s
        topics = [transactions_topic, labels_topic] + ([feedback_topic] if feedback_topic else [])
        super().__init__(brokers, topics, tail=tail, add_config=add_config, batch_size=batch_size, process=process,
                         processes=processes, fetch_wait_ms=fetch_wait_ms)
        self.kinds = {transactions_topic: "transaction", labels_topic: "label"}
        if feedback_topic:
            self.kinds[feedback_topic] = "verdict"
        self.max_batch_span_s = max_batch_span_s
        self.pacer = EventTimePacer(max_batch_span_s)

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _EventsPartition:
        idx, topic = for_part.split("-", 1)
        inner = self._consumer_partition(step_id, topic, int(idx), resume_state)
        start = resume_state if resume_state is not None else OFFSET_BEGINNING
        return _EventsPartition(inner, topic, int(idx), self.kinds[topic], start, self.max_batch_span_s, self.pacer,
                                self.max_lead_s)


class RuleMessage(msgspec.Struct, frozen=True, gc=False):
    """One record of the rules topic as read: its key (the rule id), its value (the rule's
    JSON; None: a tombstone, delete the rule) and where it was read."""

    key: Optional[bytes]
    value: Optional[bytes]
    origin: Origin


class _RulesPartition(StatefulSourcePartition[RuleMessage, Optional[int]]):
    def __init__(self, inner: _KafkaSourcePartition, topic: str, partition: int) -> None:
        self._inner = inner
        self._topic = topic
        self._partition = partition
        self._last_warning = 0.0

    def next_batch(self) -> list[RuleMessage]:
        out: list[RuleMessage] = []
        for msg in self._inner.next_batch():
            if isinstance(msg, KafkaError):
                now = time.monotonic()
                if now - self._last_warning > 10:
                    self._last_warning = now
                    log.warning("kafka %s[%d]: %s (librdkafka retries)", self._topic, self._partition, msg.err)
                continue
            out.append(RuleMessage(msg.key, msg.value, Origin(msg.topic or self._topic, msg.offset, msg.partition)))
        return out

    def next_awake(self):
        return self._inner.next_awake()

    def snapshot(self) -> Optional[int]:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class RulesKafkaSource(_AssignedKafkaSource):
    """The rules topic from its start (with recovery: from where it was), followed unless
    ``tail`` is false; its partitions are read by process ``p % processes`` (the rules go to
    every model shard from there)."""

    def __init__(self, brokers: list[str], topic: str, *, tail: bool = True,
                 add_config: Optional[dict[str, str]] = None, process: int = 0, processes: int = 1,
                 fetch_wait_ms: Optional[int] = None) -> None:
        super().__init__(brokers, [topic], tail=tail, add_config=add_config, batch_size=500, process=process,
                         processes=processes, fetch_wait_ms=fetch_wait_ms)

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _RulesPartition:
        idx, topic = for_part.split("-", 1)
        return _RulesPartition(self._consumer_partition(step_id, topic, int(idx), resume_state), topic, int(idx))


class _CheckedPartition(StatefulSinkPartition[Any, None]):
    """One worker's producer for one topic. ``write_batch`` hands the items to librdkafka and
    returns; ``snapshot()`` — called by bytewax when the epoch closes, before that epoch's
    recovery snapshot can be committed — returns only once every delivery is confirmed, and
    raises if any failed. With ``confirm_every_batch`` each batch is confirmed at once."""

    def __init__(self, producer: Producer, topic: str, to_message: Callable[[Any], tuple[Optional[bytes], bytes]],
                 confirm_every_batch: bool = False) -> None:
        self._producer = producer
        self._topic = topic
        self._to_message = to_message
        self._confirm_every_batch = confirm_every_batch
        self._failed: list[str] = []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(str(err))

    def write_batch(self, items: list[Any]) -> None:
        producer, topic, delivered = self._producer, self._topic, self._delivered
        for item in items:
            key, value = self._to_message(item)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # local queue full (e.g. broker down): wait for room
                    producer.poll(0.1)
        producer.poll(0)  # serve delivery reports of earlier batches
        if self._confirm_every_batch:
            self._confirm()
        elif self._failed:
            self._raise_failed()

    def _confirm(self) -> None:
        self._producer.flush()
        if self._failed:
            self._raise_failed()

    def _raise_failed(self) -> None:
        failed, self._failed = self._failed, []
        raise RuntimeError(f"{len(failed)} messages to Kafka topic {self._topic!r} were not delivered "
                           f"(first: {failed[0]}); the flow stops so that recovery writes them again")

    def snapshot(self) -> None:
        self._confirm()
        return None

    def close(self) -> None:
        self._confirm()


class CheckedKafkaSink(FixedPartitionedSink[Any, None]):
    """Contract records (or ``KafkaSinkMessage``) to one topic, at least once.

    A partitioned sink only for its epoch-close hook: bytewax 0.21 calls a partition's
    ``snapshot()`` when the epoch ends and commits the epoch only after it returned, while a
    ``DynamicSink`` gets no such call and is not tracked by recovery at all (its
    ``recovery.rs``: outputs' progress "will be captured in the snapshot stream"). Every
    worker writes its own items: each lists one partition of its own and ``part_fn`` names
    it, so nothing crosses workers. Items arrive as ``(key, item)`` pairs (the key is unused).

    To resume after a rescale, every slot below ``max(workers, SLOTS)`` is listed by some
    worker, so the partitions of an earlier layout always have a home.
    """

    SLOTS = 256

    def __init__(self, brokers: list[str], topic: str, add_config: Optional[dict[str, str]] = None,
                 key: Callable[[Any], Optional[str]] = lambda item: None, *, linger_ms: Optional[float] = None,
                 confirm_every_batch: bool = False, process: int = 0, workers_per_process: int = 1,
                 processes: int = 1) -> None:
        options = {"message.timeout.ms": "0", **({} if linger_ms is None else {"linger.ms": str(linger_ms)}),
                   **dict(add_config or {})}
        self.config = {"bootstrap.servers": ",".join(brokers), **options_for("producer", options)}
        self.topic = topic
        self.key = key
        self.confirm_every_batch = confirm_every_batch
        self.first_slot = process * workers_per_process
        self.workers_per_process = max(1, workers_per_process)
        self.workers = self.workers_per_process * max(1, processes)
        self._slot_of_thread: dict[int, int] = {}
        self._lock = threading.Lock()

    def _to_message(self, item: Any) -> tuple[Optional[bytes], bytes]:
        if isinstance(item, KafkaSinkMessage):
            return item.key, item.value
        key = self.key(item)
        return (key.encode() if key is not None else None), encode(item)

    def list_parts(self) -> list[str]:
        # Called once by every worker, on its own thread, while the dataflow is built.
        with self._lock:
            slot = self._slot_of_thread.get(threading.get_ident())
            if slot is None:
                slot = self.first_slot + len(self._slot_of_thread) % self.workers_per_process
                self._slot_of_thread[threading.get_ident()] = slot
        return [f"{s:05d}" for s in range(slot, max(self.workers, self.SLOTS), self.workers)]

    def part_fn(self, item_key: str) -> int:
        # The index of this worker's own slot among all slots (sorted names: the slot number).
        slot = self._slot_of_thread.get(threading.get_ident())
        return slot if slot is not None else super().part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _CheckedPartition:
        return _CheckedPartition(Producer(self.config), self.topic, self._to_message, self.confirm_every_batch)


def kafka_source(kafka: Any, process: int = 0, processes: int = 1, max_batch_span_s: float = MAX_BATCH_SPAN_S,
                 max_lead_s: float = DEFAULT_MAX_LEAD_S) -> EventsKafkaSource:
    """The transactions and labels topics of the settings' Kafka section ``kafka``
    (:class:`dataflows.settings.KafkaSettings`) as the input of one process of ``processes``."""
    return EventsKafkaSource(
        kafka.broker_list(), kafka.topic_transactions, kafka.topic_labels,
        tail=not kafka.stop_at_end, add_config=_client_options(kafka),
        batch_size=kafka.batch_size, process=process, processes=processes,
        max_batch_span_s=max_batch_span_s, fetch_wait_ms=kafka.fetch_wait_ms, max_lead_s=max_lead_s,
        feedback_topic=kafka.topic_feedback,  # it exists: the start-up check waits for it (decision 0055)
    )


def rules_source(kafka: Any, process: int = 0, processes: int = 1) -> Optional[RulesKafkaSource]:
    """The rules topic's source (None without ``topic_rules``); it stops at the topic's end
    with ``stop_at_end``, like the events."""
    if not kafka.topic_rules:
        return None
    return RulesKafkaSource(kafka.broker_list(), kafka.topic_rules, tail=not kafka.stop_at_end,
                            add_config=_client_options(kafka), process=process, processes=processes,
                            fetch_wait_ms=kafka.fetch_wait_ms)


def kafka_sinks(kafka: Any, emit_scores: bool = False, process: int = 0, processes: int = 1, workers: int = 1,
                ) -> tuple[CheckedKafkaSink, CheckedKafkaSink, Optional[CheckedKafkaSink]]:
    """The alerts, dead-letter and (with ``emit_scores``) scores sinks of one process of
    ``processes`` (``workers`` in all), on the topics of the settings' Kafka section ``kafka``."""
    common = dict(brokers=kafka.broker_list(), add_config=_client_options(kafka),
                  confirm_every_batch=kafka.confirm == "batch",
                  process=process, workers_per_process=max(1, workers // max(1, processes)), processes=processes)
    linger = kafka.linger_ms
    alerts = CheckedKafkaSink(topic=kafka.topic_alerts, key=lambda a: a.account_id, linger_ms=linger, **common)
    dlq = CheckedKafkaSink(topic=kafka.topic_dlq, linger_ms=linger, **common)
    scores = (CheckedKafkaSink(topic=kafka.topic_scores, key=lambda s: s.account_id,
                               linger_ms=kafka.scores_linger_ms, **common)
              if emit_scores else None)
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


def _client_options(kafka: Any) -> dict[str, Any]:
    """Options for every client: the pass-through librdkafka options and the logger."""
    return {**kafka.options, "logger": _CLIENT_LOG}


class KafkaStartupError(RuntimeError):
    """The brokers did not answer, or the flow's topics do not exist; the message is one line."""


def _flow_topics(kafka: Any, emit_scores: bool) -> dict[str, str]:
    """The topics the flow reads and writes, each with the variable that names it."""
    # the feedback and rules topics are required unless set empty (decision 0055)
    names = (["transactions", "labels", "alerts", "dlq"] + (["scores"] if emit_scores else [])
             + [n for n in ("feedback", "rules") if getattr(kafka, f"topic_{n}")])
    return {getattr(kafka, f"topic_{n}"): f"FRAUDFLOW_KAFKA_TOPIC_{n.upper()}" for n in names}


def check_cluster(kafka: Any, emit_scores: bool = False, retry_every_s: float = 1.0,
                  report_every_s: float = 10.0) -> None:
    """Return once a broker answers and every topic of the flow exists (the topics of the
    settings' Kafka section ``kafka``, the scores topic with ``emit_scores``); raise
    :class:`KafkaStartupError` if that has not happened within ``kafka.startup_timeout_s``.

    While topics are missing (created by another job that has not run yet, say), a line naming
    them is logged every ``report_every_s``. Topics are never created here.
    """
    brokers, timeout = kafka.brokers, kafka.startup_timeout_s
    wanted = _flow_topics(kafka, emit_scores)
    admin = AdminClient({"bootstrap.servers": ",".join(kafka.broker_list()),
                         **options_for("admin", _client_options(kafka))})
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
