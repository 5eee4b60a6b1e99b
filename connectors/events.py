"""The event contract: typed decoding of transactions and labels, encoding of outputs.

Every input record goes through :func:`parse_record`, which returns either a typed
event (:class:`Transaction`, :class:`Label`) or a :class:`DeadLetter` naming the reason.
It never raises, whatever the bytes.

>>> tx = parse_record(b'{"tx_id": "t-1", "account_id": "c-42", "ts": "2018-04-01T00:07:56Z",'
...                   b' "amount": 57.16, "currency": "EUR", "terminal_id": "m-3156"}', Origin("f", 1))
>>> tx.account_id, tx.amount, tx.event_ts
('c-42', 57.16, 1522541276.0)
>>> parse_record(b'{"tx_id": "t-1", "amount": 3}', Origin("f", 2)).reason
'invalid transaction: Object missing required field `account_id`'
>>> parse_record(b'\\xff\\xfe', Origin("f", 3)).reason
'invalid JSON: JSON is malformed: invalid character (byte 0)'

What the flow cannot hold is rejected too, with the reason (decision 0024): amounts above
``MAX_AMOUNT`` (features are float32), times outside ``[MIN_EVENT_TS, wall clock + MAX_FUTURE_S]``,
records larger than ``MAX_RECORD_BYTES``. A dead letter is bounded when written
(:meth:`DeadLetter.to_json`): at most ``DEAD_RAW_BYTES`` of the original bytes, with the
original size and SHA-256, so it always fits in a Kafka message.

>>> parse_record(b'{"tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T00:07:56Z", "amount": 1e300,'
...              b' "currency": "EUR", "terminal_id": "m-1"}', Origin("f", 4)).reason
'invalid transaction: amount 1e+300 is above the largest accepted amount (1e+09)'
>>> parse_record(b'{"tx_id": "t-1", "account_id": "c-1", "ts": "2099-01-01T00:00:00Z", "is_fraud": true}',
...              Origin("f", 5)).category
'bad_timestamp'
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, Union

import msgspec

__all__ = [
    "Alert",
    "DeadLetter",
    "Label",
    "Origin",
    "Score",
    "Transaction",
    "Verdict",
    "alert_id_for",
    "encode",
    "format_ts",
    "parse_record",
    "verdict_to_json",
]

_UTC = timezone.utc
_TzDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# The JSON number range msgspec accepts as float; inf/nan are rejected below.
_Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]

# What the flow can hold (decision 0024). Features are packed as float32 (max 3.4e38), and no
# card transaction is near a billion in any currency unit.
MAX_AMOUNT = 1e9
# Event times: nothing before 2000 (card data this flow scores is recent; 1970 is an unset
# clock), nothing more than a day ahead of the wall clock (a payment cannot happen tomorrow).
MIN_EVENT_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_FUTURE_S = 86_400.0
MAX_RECORD_BYTES = 64 * 1024  # a contract record is ~200 bytes; extra fields are carried through
DEAD_RAW_BYTES = 8 * 1024  # original bytes kept in a dead letter (plus size and SHA-256)
DEAD_REASON_CHARS = 2_000


class Origin(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a record came from: a Kafka topic/partition/offset, or a file and line."""

    source: str  # topic name or file path
    position: int  # line number (files, 1-based) or offset (Kafka)
    partition: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        if self.partition is None:
            return {"file": self.source, "line": self.position}
        return {"topic": self.source, "partition": self.partition, "offset": self.position}


class _WireTransaction(msgspec.Struct, frozen=True):
    tx_id: _NonEmpty
    account_id: _NonEmpty
    ts: _TzDatetime
    amount: float
    currency: _Currency
    terminal_id: _NonEmpty


class _WireLabel(msgspec.Struct, frozen=True):
    tx_id: _NonEmpty
    account_id: _NonEmpty
    ts: _TzDatetime
    is_fraud: bool
    terminal_id: Optional[_NonEmpty] = None


class _WireVerdict(msgspec.Struct, frozen=True):
    alert_id: _NonEmpty
    tx_id: _NonEmpty
    account_id: _NonEmpty
    ts: _TzDatetime
    verdict: Literal["fraud", "legitimate"]


_TX_FIELDS = frozenset(_WireTransaction.__struct_fields__)
_LABEL_FIELDS = frozenset(_WireLabel.__struct_fields__)


class Transaction(msgspec.Struct, frozen=True, gc=False):
    """A card transaction. ``event_ts`` is the event time in POSIX seconds (UTC)."""

    tx_id: str
    account_id: str
    event_ts: float
    amount: float
    terminal_id: str
    currency: str = "EUR"
    extra: Optional[dict] = None  # fields beyond the contract, carried through to outputs
    origin: Optional[Origin] = None  # where it was read (dead letters of later steps name it)


class Label(msgspec.Struct, frozen=True, gc=False):
    """A fraud label for an earlier transaction; ``event_ts`` is when it became known."""

    tx_id: str
    account_id: str
    event_ts: float
    is_fraud: bool
    terminal_id: Optional[str] = None
    origin: Optional[Origin] = None  # where it was read (a label for an unknown transaction names it)


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """An analyst's verdict on an alert (contract ``feedback``), learned as a label: ``event_ts``
    is when the analyst decided (the label's time, same no-look-ahead rule), ``is_fraud`` the
    verdict. It has a label's fields, so the account stage joins it like one."""

    alert_id: str
    tx_id: str
    account_id: str
    event_ts: float
    is_fraud: bool
    origin: Optional[Origin] = None


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """A rejected input: original bytes, the reason, and where it came from.

    ``category`` is a short, bounded name for metrics (``invalid_json``, ``bad_timestamp``,
    ``step_failure`` …); ``reason`` is the sentence for people.
    """

    raw: bytes
    reason: str
    origin: Origin
    step: str = "parse"
    category: str = "other"

    def to_json(self) -> dict[str, Any]:
        """The ``dlq`` record, bounded: at most ``DEAD_RAW_BYTES`` of the original bytes (cut
        whole UTF-8 characters; ``truncated`` and the original ``size`` and ``sha256`` say so)."""
        raw = self.raw
        doc: dict[str, Any] = {}
        if len(raw) > DEAD_RAW_BYTES:
            doc["truncated"] = True
            doc["size"] = len(raw)
            doc["sha256"] = hashlib.sha256(raw).hexdigest()
            raw = raw[:DEAD_RAW_BYTES]
        try:
            text, enc = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            if doc and exc.start >= len(raw) - 3:  # the cut fell inside a character
                text, enc = raw[: exc.start].decode("utf-8", "replace"), "utf-8"
            else:
                text, enc = base64.b64encode(raw).decode("ascii"), "base64"
        reason = self.reason if len(self.reason) <= DEAD_REASON_CHARS else self.reason[:DEAD_REASON_CHARS] + "…"
        return {
            "raw": text,
            "encoding": enc,
            "reason": reason,
            "category": self.category,
            "step": self.step,
            "origin": self.origin.as_dict(),
            **doc,
        }


class Alert(msgspec.Struct, frozen=True, omit_defaults=True):
    """A high-risk transaction for the fraud-operations queue (contract ``alerts``)."""

    alert_id: str
    tx_id: str
    account_id: str
    terminal_id: str
    ts: str
    amount: float
    score: float
    threshold: float
    model: str
    reasons: list[tuple[str, float]]
    currency: str
    extra: Optional[dict] = None
    tags: tuple = ()  # what tag rules wrote (learners.rules); written only when some did


class Score(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line per transaction for evaluation and backtests (contract ``scores``)."""

    tx_id: str
    score: float
    model: str
    account_id: str = ""
    ts: str = ""
    tags: tuple = ()  # what tag rules wrote (learners.rules); written only when some did


def format_ts(event_ts: float) -> str:
    """RFC 3339 in UTC with a ``Z``; whole seconds print without a fraction.

    >>> format_ts(1522541276.0)
    '2018-04-01T00:07:56Z'
    >>> format_ts(1522541276.25)
    '2018-04-01T00:07:56.250000Z'
    """
    dt = datetime.fromtimestamp(event_ts, _UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_id_for(tx_id: str, model: str) -> str:
    """Deterministic alert id: a replay after recovery yields the same id.

    >>> alert_id_for("t-1", "logreg") == alert_id_for("t-1", "logreg")
    True
    """
    return "a-" + hashlib.blake2b(f"{tx_id}|{model}".encode(), digest_size=10).hexdigest()


_decode_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def encode(record: msgspec.Struct | dict[str, Any]) -> bytes:
    """JSON-encode an output record (alert, score, dead letter as dict)."""
    if isinstance(record, DeadLetter):
        return _encoder.encode(record.to_json())
    return _encoder.encode(record)


Event = Union[Transaction, Label, Verdict]


def _reject(raw: bytes, origin: Origin, reason: str, category: str) -> DeadLetter:
    return DeadLetter(raw=raw, reason=reason, origin=origin, category=category)


def _ts_problem(kind: str, event_ts: float, now: Optional[float]) -> Optional[str]:
    """Why an event time is outside the accepted window, or None."""
    latest = (time.time() if now is None else now) + MAX_FUTURE_S
    if MIN_EVENT_TS <= event_ts <= latest:
        return None
    return (f"invalid {kind}: ts {format_ts(event_ts)} is outside the accepted window "
            f"[{format_ts(MIN_EVENT_TS)}, now + {MAX_FUTURE_S / 3600:.0f} h]")


def parse_record(raw: bytes | str, origin: Origin, kind: Optional[str] = None,
                 now: Optional[float] = None) -> Event | DeadLetter:
    """Decode one input record into a typed event or a dead letter; never raises.

    ``kind`` is ``"transaction"``, ``"label"`` or ``"verdict"`` when the source knows (one
    topic per kind); ``None`` tells them apart by their fields (``is_fraud`` marks a label,
    ``verdict`` an analyst's verdict). ``now``
    (POSIX seconds, default the wall clock) bounds how far in the future an event may be.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_RECORD_BYTES:
        return _reject(raw, origin, f"record of {len(raw):,} bytes is larger than the {MAX_RECORD_BYTES:,}-byte limit",
                       "too_large")
    try:
        doc = _decode_any.decode(raw)
    except msgspec.DecodeError as exc:
        return _reject(raw, origin, f"invalid JSON: {exc}", "invalid_json")
    except Exception as exc:  # e.g. RecursionError on deeply nested input
        return _reject(raw, origin, f"undecodable input: {type(exc).__name__}", "invalid_json")
    if not isinstance(doc, dict):
        return _reject(raw, origin, f"expected a JSON object, got {type(doc).__name__}", "not_an_object")
    if kind is None:
        if "verdict" in doc:
            kind = "verdict"
        elif "is_fraud" in doc:
            kind = "label"
        elif "amount" in doc:
            kind = "transaction"
        else:
            return _reject(raw, origin, "not a transaction or label: has neither 'amount' nor 'is_fraud'",
                           "not_an_event")
    if kind == "verdict":
        return _parse_verdict(doc, raw, origin, now)
    category = "invalid_label" if kind == "label" else "invalid_transaction"
    try:
        if kind == "label":
            wire = msgspec.convert(doc, _WireLabel)
            event_ts = wire.ts.timestamp()
            problem = _ts_problem(kind, event_ts, now)
            if problem:
                return _reject(raw, origin, problem, "bad_timestamp")
            return Label(
                tx_id=wire.tx_id,
                account_id=wire.account_id,
                event_ts=event_ts,
                is_fraud=wire.is_fraud,
                terminal_id=wire.terminal_id,
                origin=origin,
            )
        wire_tx = msgspec.convert(doc, _WireTransaction)
    except msgspec.ValidationError as exc:
        return _reject(raw, origin, f"invalid {kind}: {exc}", category)
    except Exception as exc:  # pragma: no cover - defensive
        return _reject(raw, origin, f"invalid {kind}: {type(exc).__name__}: {exc}", category)
    amount = wire_tx.amount
    if not math.isfinite(amount) or amount < 0:
        return _reject(raw, origin, f"invalid transaction: amount must be a finite number >= 0, got {amount!r}",
                       category)
    if amount > MAX_AMOUNT:
        return _reject(raw, origin, f"invalid transaction: amount {amount:g} is above the largest accepted amount "
                                    f"({MAX_AMOUNT:g})", category)
    event_ts = wire_tx.ts.timestamp()
    problem = _ts_problem(kind, event_ts, now)
    if problem:
        return _reject(raw, origin, problem, "bad_timestamp")
    extra = {k: v for k, v in doc.items() if k not in _TX_FIELDS} or None
    return Transaction(
        tx_id=wire_tx.tx_id,
        account_id=wire_tx.account_id,
        event_ts=event_ts,
        amount=amount,
        terminal_id=wire_tx.terminal_id,
        currency=wire_tx.currency,
        extra=extra,
        origin=origin,
    )


def _parse_verdict(doc: dict, raw: bytes, origin: Origin, now: Optional[float]) -> Verdict | DeadLetter:
    """An analyst's verdict (contract ``feedback``), or a dead letter ``invalid_verdict``.

    >>> v = parse_record(b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:07:56Z",'
    ...                  b' "verdict": "fraud"}', Origin("feedback", 1))
    >>> v.is_fraud, v.event_ts
    (True, 1522555676.0)
    >>> d = parse_record(b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:07:56Z",'
    ...                  b' "verdict": "maybe"}', Origin("feedback", 2))
    >>> d.category, d.reason
    ('invalid_verdict', "invalid verdict: Invalid enum value 'maybe' - at `$.verdict`")
    """
    try:
        wire = msgspec.convert(doc, _WireVerdict)
    except msgspec.ValidationError as exc:
        return _reject(raw, origin, f"invalid verdict: {exc}", "invalid_verdict")
    event_ts = wire.ts.timestamp()
    problem = _ts_problem("verdict", event_ts, now)
    if problem:
        return _reject(raw, origin, problem, "bad_timestamp")
    return Verdict(alert_id=wire.alert_id, tx_id=wire.tx_id, account_id=wire.account_id, event_ts=event_ts,
                   is_fraud=wire.verdict == "fraud", origin=origin)


def verdict_to_json(verdict: Verdict) -> dict[str, Any]:
    """The contract form of a verdict (what ``fraudflow investigate`` writes).

    >>> verdict_to_json(Verdict("a-1", "t-1", "c-1", 1522555676.0, False))
    {'alert_id': 'a-1', 'tx_id': 't-1', 'account_id': 'c-1', 'ts': '2018-04-01T04:07:56Z', 'verdict': 'legitimate'}
    """
    return {"alert_id": verdict.alert_id, "tx_id": verdict.tx_id, "account_id": verdict.account_id,
            "ts": format_ts(verdict.event_ts), "verdict": "fraud" if verdict.is_fraud else "legitimate"}


def transaction_to_json(tx: Transaction) -> dict[str, Any]:
    """The contract form of a transaction (what ``fraudflow simulate`` writes)."""
    doc: dict[str, Any] = {
        "tx_id": tx.tx_id,
        "account_id": tx.account_id,
        "ts": format_ts(tx.event_ts),
        "amount": tx.amount,
        "currency": tx.currency,
        "terminal_id": tx.terminal_id,
    }
    if tx.extra:
        doc.update({k: v for k, v in tx.extra.items() if k not in doc})
    return doc


def label_to_json(label: Label) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tx_id": label.tx_id,
        "account_id": label.account_id,
        "ts": format_ts(label.event_ts),
        "is_fraud": label.is_fraud,
    }
    if label.terminal_id is not None:
        doc["terminal_id"] = label.terminal_id
    return doc
