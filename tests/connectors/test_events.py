"""The event contract: valid records decode, anything else becomes a dead letter."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.events import (
    Alert, DeadLetter, Label, Origin, Transaction, alert_id_for, encode, format_ts, label_to_json, parse_record,
    transaction_to_json,
)

ORIGIN = Origin("transactions", 17, partition=3)
TX = {"tx_id": "t-000123", "account_id": "c-42", "ts": "2018-04-01T00:07:56Z", "amount": 57.16,
      "currency": "EUR", "terminal_id": "m-3156"}
LABEL = {"tx_id": "t-000123", "account_id": "c-42", "ts": "2018-04-08T00:07:56Z", "is_fraud": True}


def test_contract_transaction_decodes():
    tx = parse_record(json.dumps(TX).encode(), ORIGIN, "transaction")
    assert isinstance(tx, Transaction)
    assert (tx.tx_id, tx.account_id, tx.amount, tx.terminal_id, tx.currency) == ("t-000123", "c-42", 57.16,
                                                                                  "m-3156", "EUR")
    assert tx.event_ts == 1522541276.0
    assert transaction_to_json(tx) == TX


def test_extra_fields_are_carried_through():
    tx = parse_record(json.dumps({**TX, "mcc": "5411", "channel": "pos"}).encode(), ORIGIN)
    assert tx.extra == {"mcc": "5411", "channel": "pos"}
    assert transaction_to_json(tx)["mcc"] == "5411"


def test_timezone_offsets_are_normalised_to_utc():
    tx = parse_record(json.dumps({**TX, "ts": "2018-04-01T02:07:56+02:00"}).encode(), ORIGIN)
    assert tx.event_ts == 1522541276.0


def test_label_without_terminal_decodes():
    label = parse_record(json.dumps(LABEL).encode(), ORIGIN)
    assert isinstance(label, Label) and label.is_fraud and label.terminal_id is None
    assert label_to_json(label) == LABEL


@pytest.mark.parametrize("change, reason_part", [
    ({"ts": "2018-04-01T00:07:56"}, "timezone"),  # no zone
    ({"ts": "yesterday"}, "datetime"),
    ({"amount": -3.0}, "amount must be a finite number >= 0"),
    ({"amount": "12"}, "Expected `float`"),
    ({"currency": "euro"}, "currency"),
    ({"tx_id": ""}, "tx_id"),
    ({"account_id": 42}, "account_id"),
])
def test_invalid_transactions_become_dead_letters(change, reason_part):
    dead = parse_record(json.dumps({**TX, **change}).encode(), ORIGIN, "transaction")
    assert isinstance(dead, DeadLetter)
    assert reason_part.lower() in dead.reason.lower()
    doc = dead.to_json()
    assert doc["origin"] == {"topic": "transactions", "partition": 3, "offset": 17}
    assert json.loads(doc["raw"]) == {**TX, **change}


def test_non_utf8_bytes_are_kept_as_base64():
    raw = b"\xff\xfe{not json"
    dead = parse_record(raw, Origin("tx.jsonl", 9))
    doc = dead.to_json()
    assert doc["encoding"] == "base64" and base64.b64decode(doc["raw"]) == raw
    assert doc["origin"] == {"file": "tx.jsonl", "line": 9}
    assert dead.reason.startswith("invalid JSON")


def test_alert_id_is_deterministic_and_distinct():
    assert alert_id_for("t-1", "logreg") == alert_id_for("t-1", "logreg")
    assert alert_id_for("t-1", "logreg") != alert_id_for("t-2", "logreg")


def test_alert_encodes_in_contract_shape():
    alert = Alert("a-1", "t-1", "c-1", "m-1", format_ts(1522541276.0), 57.16, 0.93, 0.5, "logreg",
                  [("term_risk_7d", 0.41)], "EUR")
    doc = json.loads(encode(alert))
    assert doc == {"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "terminal_id": "m-1",
                   "ts": "2018-04-01T00:07:56Z", "amount": 57.16, "score": 0.93, "threshold": 0.5,
                   "model": "logreg", "reasons": [["term_risk_7d", 0.41]], "currency": "EUR"}


def _lands_somewhere(result) -> None:
    assert isinstance(result, (Transaction, Label, DeadLetter))
    if isinstance(result, DeadLetter):
        assert result.reason
        json.dumps(result.to_json())  # always serialisable for the dlq sink


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, "transaction", "label"]))
def test_fuzz_arbitrary_bytes_never_raise(raw, kind):
    _lands_somewhere(parse_record(raw, ORIGIN, kind))


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fuzz_arbitrary_json_never_raises(doc):
    _lands_somewhere(parse_record(msgspec.json.encode(doc), ORIGIN))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: st.one_of(st.just(v), _json) for k, v in TX.items()}))
def test_fuzz_near_valid_transactions(doc):
    result = parse_record(msgspec.json.encode(doc), ORIGIN, "transaction")
    _lands_somewhere(result)
    if doc == TX:
        assert isinstance(result, Transaction)


@pytest.mark.parametrize("amount", [1e300, 1e39, 3.5e38, 1e9 + 1])
def test_amounts_the_flow_cannot_hold_are_rejected(amount):
    dead = parse_record(json.dumps({**TX, "amount": amount}).encode(), ORIGIN, "transaction")
    assert isinstance(dead, DeadLetter) and dead.category == "invalid_transaction"
    assert "largest accepted amount" in dead.reason


@pytest.mark.parametrize("ts", ["2099-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z",
                                "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_event_times_outside_the_window_are_rejected(ts):
    for doc, kind in ((TX, "transaction"), (LABEL, "label")):
        dead = parse_record(json.dumps({**doc, "ts": ts}).encode(), ORIGIN, kind)
        assert isinstance(dead, DeadLetter) and dead.category == "bad_timestamp", dead
        assert "outside the accepted window" in dead.reason


def test_the_window_follows_the_wall_clock():
    doc = json.dumps({**TX, "ts": "2030-01-01T12:00:00Z"}).encode()
    assert isinstance(parse_record(doc, ORIGIN, "transaction", now=1893456000.0), Transaction)  # 2030-01-01
    assert isinstance(parse_record(doc, ORIGIN, "transaction", now=1893456000.0 - 86_400), DeadLetter)


def test_dead_letters_are_bounded_and_keep_size_and_hash():
    import hashlib

    raw = json.dumps({**TX, "note": "é" * 600_000}).encode()
    dead = parse_record(raw, ORIGIN, "transaction")
    assert dead.category == "too_large"
    doc = json.loads(encode(dead))
    assert doc["truncated"] and doc["size"] == len(raw) and doc["sha256"] == hashlib.sha256(raw).hexdigest()
    assert doc["encoding"] == "utf-8" and len(encode(dead)) < 12_000  # cut between characters, still text
    assert doc["origin"] == {"topic": "transactions", "partition": 3, "offset": 17}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20_000))
def test_any_bytes_give_an_event_or_a_bounded_dead_letter(raw):
    out = parse_record(raw, ORIGIN)
    if isinstance(out, DeadLetter):
        assert len(encode(out)) < 12_000 and out.category != "other"
