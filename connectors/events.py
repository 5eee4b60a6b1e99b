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
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Optional, Union

import msgspec

__all__ = [
    "Alert",
    "DeadLetter",
    "Label",
    "Origin",
    "Score",
    "Transaction",
    "alert_id_for",
    "encode",
    "format_ts",
    "parse_record",
]

_UTC = timezone.utc
_TzDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# The JSON number range msgspec accepts as float; inf/nan are rejected below.
_Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


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


class Label(msgspec.Struct, frozen=True, gc=False):
    """A fraud label for an earlier transaction; ``event_ts`` is when it became known."""

    tx_id: str
    account_id: str
    event_ts: float
    is_fraud: bool
    terminal_id: Optional[str] = None


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """A rejected input: original bytes, the reason, and where it came from."""

    raw: bytes
    reason: str
    origin: Origin
    step: str = "parse"

    def to_json(self) -> dict[str, Any]:
        try:
            text, enc = self.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(self.raw).decode("ascii"), "base64"
        return {
            "raw": text,
            "encoding": enc,
            "reason": self.reason,
            "step": self.step,
            "origin": self.origin.as_dict(),
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


class Score(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line per transaction for evaluation and backtests (contract ``scores``)."""

    tx_id: str
    score: float
    model: str
    account_id: str = ""
    ts: str = ""


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


Event = Union[Transaction, Label]


def _reject(raw: bytes, origin: Origin, reason: str) -> DeadLetter:
    return DeadLetter(raw=raw, reason=reason, origin=origin)


def parse_record(raw: bytes | str, origin: Origin, kind: Optional[str] = None) -> Event | DeadLetter:
    """Decode one input record into a typed event or a dead letter; never raises.

    ``kind`` is ``"transaction"`` or ``"label"`` when the source knows (one topic per
    kind); ``None`` tells them apart by their fields (``is_fraud`` marks a label).
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        doc = _decode_any.decode(raw)
    except msgspec.DecodeError as exc:
        return _reject(raw, origin, f"invalid JSON: {exc}")
    except Exception as exc:  # pragma: no cover - defensive: decoder internals
        return _reject(raw, origin, f"undecodable input: {type(exc).__name__}")
    if not isinstance(doc, dict):
        return _reject(raw, origin, f"expected a JSON object, got {type(doc).__name__}")
    if kind is None:
        if "is_fraud" in doc:
            kind = "label"
        elif "amount" in doc:
            kind = "transaction"
        else:
            return _reject(raw, origin, "not a transaction or label: has neither 'amount' nor 'is_fraud'")
    try:
        if kind == "label":
            wire = msgspec.convert(doc, _WireLabel)
            return Label(
                tx_id=wire.tx_id,
                account_id=wire.account_id,
                event_ts=wire.ts.timestamp(),
                is_fraud=wire.is_fraud,
                terminal_id=wire.terminal_id,
            )
        wire_tx = msgspec.convert(doc, _WireTransaction)
    except msgspec.ValidationError as exc:
        return _reject(raw, origin, f"invalid {kind}: {exc}")
    except Exception as exc:  # pragma: no cover - defensive
        return _reject(raw, origin, f"invalid {kind}: {type(exc).__name__}: {exc}")
    amount = wire_tx.amount
    if not math.isfinite(amount) or amount < 0:
        return _reject(raw, origin, f"invalid transaction: amount must be a finite number >= 0, got {amount!r}")
    extra = {k: v for k, v in doc.items() if k not in _TX_FIELDS} or None
    return Transaction(
        tx_id=wire_tx.tx_id,
        account_id=wire_tx.account_id,
        event_ts=wire_tx.ts.timestamp(),
        amount=amount,
        terminal_id=wire_tx.terminal_id,
        currency=wire_tx.currency,
        extra=extra,
    )


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
