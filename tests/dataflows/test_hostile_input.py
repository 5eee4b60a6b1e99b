"""Nothing a user sends takes the flow down (issue 19): hostile records through the running
flow become dead letters naming their origin, one bad clock does not move event time for the
others, and a step that raises on one event sends that event to the dead letters."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import TestingSink, run_main

from connectors.events import MAX_RECORD_BYTES, DeadLetter, Label, Transaction, encode, label_to_json, \
    transaction_to_json
from connectors.files import FileEventsSource
from dataflows.fraud import build_flow
from dataflows.settings import Settings

DAY = 86_400


def _run(tmp_path: Path, tx_lines: list, label_lines: list, tag: str):
    tx_path, label_path = tmp_path / f"{tag}.tx.jsonl", tmp_path / f"{tag}.labels.jsonl"
    tx_path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in tx_lines) + b"\n")
    label_path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in label_lines)
                           + b"\n")
    alerts, dlq, scores = [], [], []
    parts = build_flow(Settings().replace(progress=False, snapshot_dir="off"),
                       source=FileEventsSource(str(tx_path), str(label_path)),
                       alerts_sink=TestingSink(alerts), dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores))
    run_main(parts.flow)
    return alerts, dlq, {s.tx_id: s.score for s in scores}, scores


@pytest.fixture(scope="module")
def clean_lines(small_stream):
    events, _ = small_stream
    events = events[:16_000]  # about a week: the first labels released
    tx = [json.dumps(transaction_to_json(e)) for e in events if isinstance(e, Transaction)]
    labels = [json.dumps(label_to_json(e)) for e in events if isinstance(e, Label)]
    return events, tx, labels


@pytest.fixture(scope="module")
def baseline(clean_lines, tmp_path_factory):
    _, tx, labels = clean_lines
    return _run(tmp_path_factory.mktemp("baseline"), tx, labels, "clean")


def _tx(tx_id: str, ts: str, amount=10.0, **more) -> str:
    return json.dumps({"tx_id": tx_id, "account_id": "c-hostile", "ts": ts, "amount": amount, "currency": "EUR",
                       "terminal_id": "m-1", **more})


HOSTILE_TX = [
    # (raw line, expected category)
    (_tx("t-huge", "2018-04-05T10:00:00Z", 1e300), "invalid_transaction"),
    (_tx("t-f32", "2018-04-05T10:00:00Z", 1e39), "invalid_transaction"),
    ('{"tx_id": "t-nan", "account_id": "c-1", "ts": "2018-04-05T10:00:00Z", "amount": NaN, "currency": "EUR", '
     '"terminal_id": "m-1"}', "invalid_json"),
    (_tx("t-2099", "2099-01-01T00:00:00Z"), "bad_timestamp"),
    (_tx("t-1970", "1970-01-01T00:00:00Z"), "bad_timestamp"),
    (_tx("t-year1", "0001-01-01T00:00:00Z"), "bad_timestamp"),
    (_tx("t-big", "2018-04-05T10:00:00Z", note="x" * 1_000_000), "too_large"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),
    (b"\xff\xfe\x00binary", "invalid_json"),
    ("{}", "invalid_transaction"),  # the file says it is a transaction: fields missing
    (_tx("t-long-id" * 100, "2018-04-05T10:00:00Z"), "invalid_transaction"),
]


def test_hostile_records_are_dead_letters_and_change_no_score(clean_lines, baseline, tmp_path):
    events, tx, labels = clean_lines
    tx = list(tx)
    # Interleave the hostile lines early in the stream (in the first days: before the model
    # learns anything, where a moved clock would change every later score).
    position = 500
    for i, (raw, _) in enumerate(HOSTILE_TX):
        tx.insert(position + 40 * i, raw)
    first_ts = events[0].event_ts
    # An in-window outlier: a 2025 transaction alone in a 2018 stream (a bad clock).
    tx.insert(position + 900, _tx("t-2025", "2025-06-01T00:00:00Z"))
    # A label for an account and transaction this flow never saw, early in the labels.
    labels = list(labels)
    labels.insert(5, json.dumps({"tx_id": "t-ghost", "account_id": "c-ghost", "is_fraud": True,
                                 "ts": msgspec.json.decode(labels[5])["ts"]}))
    _, dlq, scores, _ = _run(tmp_path, tx, labels, "hostile")
    _, _, clean_scores, _ = baseline

    # every good transaction scored once, with exactly the score it gets without the hostile lines
    assert scores == clean_scores
    by_id = {}
    for d in dlq:
        assert isinstance(d, DeadLetter) and d.reason
        doc = json.loads(encode(d))
        assert len(encode(d)) < 12_000  # bounded, whatever came in
        by_id[doc["origin"]["line"], doc["origin"]["file"].rsplit(".", 2)[-2]] = doc
    expected_lines = {position + 40 * i + 1: cat for i, (_, cat) in enumerate(HOSTILE_TX)}
    tx_dead = {line: doc["category"] for (line, kind), doc in by_id.items() if kind == "tx"}
    outlier_line = position + 900 + 1
    assert tx_dead == {**expected_lines, outlier_line: "bad_timestamp"}
    assert "days ahead of its partition's event time" in by_id[outlier_line, "tx"]["reason"]
    big = by_id[position + 40 * 6 + 1, "tx"]
    assert big["truncated"] and big["size"] > MAX_RECORD_BYTES and len(big["sha256"]) == 64
    ghost = by_id[6, "labels"]
    assert ghost["category"] == "unknown_transaction" and '"t-ghost"' in ghost["raw"]
    assert first_ts < 2e9


def test_label_stamped_before_its_transaction_is_not_learned(clean_lines, baseline, tmp_path):
    events, tx, labels = clean_lines
    _, _, clean_scores, _ = baseline
    txs = [e for e in events if isinstance(e, Transaction)]
    victim = txs[len(txs) // 3]
    early = dict(tx_id=victim.tx_id, account_id=victim.account_id, is_fraud=True)
    early["ts"] = msgspec.json.decode(json.dumps(transaction_to_json(
        Transaction("x", "x", victim.event_ts - 2 * DAY, 1.0, "x"))))["ts"]
    labels = [json.dumps(early)] + list(labels)  # the labels file's first line, dated 2 days before its transaction
    _, dlq, scores, _ = _run(tmp_path, tx, labels, "early-label")
    assert scores == clean_scores  # never learned: no score moves, the flow did not stall
    (dead,) = dlq
    assert dead.category in ("bad_timestamp", "unknown_transaction")
    assert dead.origin.position == 1 and dead.origin.source.endswith("labels.jsonl")


@pytest.mark.parametrize("target, method", [
    ("learners.features.AccountProfile", "features"),
    ("learners.features.TerminalProfile", "observe"),
    ("learners.pending.PendingBucket", "add"),
    ("learners.scoring.ModelShard", "on_transaction"),
    ("learners.decision.AlertPolicy", "decide"),
])
def test_a_step_that_raises_on_one_event_dead_letters_it(clean_lines, baseline, tmp_path, monkeypatch, target,
                                                          method):
    """An injected fault (a bug) in each keyed stage: the event goes to the dead letters with the
    exception and the step's name, and the flow scores every other transaction."""
    import importlib

    events, tx, labels = clean_lines
    clean_alerts, _, clean_scores, _ = baseline
    module_name, cls_name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    original = getattr(cls, method)
    alerted = [a.tx_id for a in clean_alerts]
    poison = alerted[len(alerted) // 2] if method == "decide" else msgspec.json.decode(tx[2000])["tx_id"]

    def faulty(self, *args, **kwargs):
        first = args[0] if args else None
        tx_id = getattr(first, "tx_id", None) or getattr(getattr(first, "tx", None), "tx_id", None) or first
        if tx_id == poison or (method == "observe" and getattr(faulty, "tx_id", None) == poison):
            raise ZeroDivisionError("injected fault")
        return original(self, *args, **kwargs)

    if method == "observe":  # TerminalProfile.observe(event_ts): fail for the poison transaction's time
        poison_ts = next(e.event_ts for e in events if isinstance(e, Transaction) and e.tx_id == poison)

        def faulty(self, event_ts, *args, **kwargs):  # noqa: F811
            if event_ts == poison_ts:
                raise ZeroDivisionError("injected fault")
            return original(self, event_ts, *args, **kwargs)

    monkeypatch.setattr(cls, method, faulty)
    _, dlq, scores, _ = _run(tmp_path, tx, labels, "fault")
    failures = [d for d in dlq if d.category == "step_failure"]
    assert failures, dlq
    assert all("injected fault" in d.reason and "ZeroDivisionError" in d.reason for d in failures)
    assert poison in {json.loads(d.raw)["tx_id"] for d in failures}
    assert all(d.origin.source.endswith("tx.jsonl") for d in failures)  # the transaction's file and line
    if method in ("decide", "add"):  # after scoring, or beside it (await_labels keeps the features)
        assert set(scores) == set(clean_scores)
    else:
        assert set(scores) == set(clean_scores) - {json.loads(d.raw)["tx_id"] for d in failures}


def test_replay_of_a_file_with_a_poison_line_exits_cleanly(clean_lines, tmp_path):
    """`fraudflow replay` (the user's command, a subprocess) on a file whose one line held an
    amount of 1e300 (before: an OverflowError in await_labels, a Rust panic, exit 1)."""
    import subprocess
    import sys

    _, tx, labels = clean_lines
    tx = list(tx[:3000])
    tx.insert(100, _tx("t-huge", msgspec.json.decode(tx[100])["ts"], 1e300))
    (tmp_path / "tx.jsonl").write_text("\n".join(tx) + "\n")
    (tmp_path / "labels.jsonl").write_text("\n".join(labels[:10]) + "\n")
    run = subprocess.run([sys.executable, "-m", "dataflows.cli", "replay", str(tmp_path / "tx.jsonl"),
                          str(tmp_path / "labels.jsonl"), "--dlq", str(tmp_path / "dlq.jsonl"),
                          "--alerts", str(tmp_path / "alerts.jsonl"), "--scores", str(tmp_path / "scores.jsonl")],
                         capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "FRAUDFLOW_SNAPSHOT_DIR": "off"}, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr
    assert "panicked" not in run.stderr and "Traceback" not in run.stderr
    (dead,) = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    assert dead["origin"]["line"] == 101 and "largest accepted amount" in dead["reason"]
    assert sum(1 for _ in (tmp_path / "scores.jsonl").open()) == 3000
