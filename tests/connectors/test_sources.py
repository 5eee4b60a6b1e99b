"""Source batches span at most ``max_batch_span_s`` of event time, from their earliest event to
their latest, whatever order the events come in (decision 0003: the keyed steps reorder each
batch, and the flow absorbs that disorder only within a learning step).

A batch used to be bounded from its first event forward only: an event ahead of the ones
after it (a clock ahead in a file or a Kafka partition, verdicts listed before the
transactions they answer) opened a batch reaching back hours or days over up to 1,000 events
in order, which the keyed steps then reordered by account and terminal."""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSourceMessage

from connectors.events import Transaction, encode, format_ts, transaction_to_json
from connectors.files import FileEventsSource
from connectors.kafka import _EventsPartition
from connectors.sources import EventTimePacer

SPAN = 900.0
T0 = 1522540800.0  # 2018-04-01T00:00:00Z
# a transaction 6 hours ahead (under the lead guard's day: not a suspect), then an hour in order
TIMES = [T0, T0 + 6 * 3600] + [T0 + 60 * i for i in range(1, 61)]


def _tx(i: int, ts: float) -> Transaction:
    return Transaction(f"t-{i}", f"c-{i % 7}", ts, 10.0, f"m-{i % 3}")


def _spans(batches: list) -> list[float]:
    return [max(ts) - min(ts) for ts in ([e.event_ts for _, e in batch] for batch in batches)]


def _drain(part) -> list:
    batches = []
    while True:
        try:
            batch = part.next_batch()
        except StopIteration:
            return batches
        if batch:
            batches.append(batch)


def test_a_file_line_ahead_of_the_next_ones_ends_its_batch(tmp_path):
    tx_path, label_path = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    tx_path.write_bytes(b"".join(encode(transaction_to_json(_tx(i, ts))) + b"\n" for i, ts in enumerate(TIMES)))
    label_path.write_bytes(b"")
    part = FileEventsSource(str(tx_path), str(label_path), max_batch_span_s=SPAN).build_part("read", "files", None)
    batches = _drain(part)
    assert sum(map(len, batches)) == len(TIMES)
    assert max(_spans(batches)) <= SPAN, [format_ts(e.event_ts) for _, e in batches[1]]


class _Messages:
    """A topic-partition's messages, all in one fetch (what bytewax's Kafka partition returns)."""

    def __init__(self, messages: list) -> None:
        self.messages = messages

    def next_batch(self) -> list:
        if not self.messages:
            raise StopIteration
        messages, self.messages = self.messages, []
        return messages

    def close(self) -> None:
        pass


def test_a_kafka_record_ahead_of_the_next_ones_ends_its_batch():
    messages = [KafkaSourceMessage(None, encode(transaction_to_json(_tx(i, ts))), "transactions", offset=i,
                                   partition=0) for i, ts in enumerate(TIMES)]
    part = _EventsPartition(_Messages(messages), "transactions", 0, "transaction", 0, SPAN, EventTimePacer())
    batches = _drain(part)
    assert sum(map(len, batches)) == len(TIMES)
    assert max(_spans(batches)) <= SPAN
