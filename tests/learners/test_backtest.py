"""``fraudflow rules test``: a backtest checked against a case computed by hand."""

from __future__ import annotations

import argparse
import json

import pytest

from dataflows.cli import backtest as backtest_cli
from dataflows.errors import FraudflowError
from tests.learners.test_rules import TS  # Sunday 2018-04-01 00:07:56Z

H = 3600.0


def _ts(seconds: float) -> str:
    from connectors.events import format_ts

    return format_ts(seconds)


def write(path, docs):
    """JSONL, or one JSON document for a .json file (rules)."""
    path.write_text(json.dumps(docs) if path.suffix == ".json" else "".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def test_backtest_against_a_hand_computed_case(tmp_path, capsys):
    # Day 0: c-1 pays 500 (fraud), 20, then 300 two hours later (fraud); c-2 pays 900 (legitimate,
    # allow-listed). Day 1: c-1 pays 700 (legitimate), 25 hours after its first one.
    txs = [("t1", "c-1", 0.0, 500.0), ("t2", "c-1", 1 * H, 20.0), ("t3", "c-1", 2 * H, 300.0),
           ("t4", "c-2", 3 * H, 900.0), ("t5", "c-1", 25 * H, 700.0)]
    tx_file = write(tmp_path / "tx.jsonl", [{"tx_id": t, "account_id": a, "ts": _ts(TS + dt), "amount": amt,
                                            "terminal_id": "m-1", "currency": "EUR"} for t, a, dt, amt in txs])
    frauds = {"t1", "t3"}
    labels = write(tmp_path / "labels.jsonl", [{"tx_id": t, "account_id": a, "ts": _ts(TS + dt + 7 * 86400),
                                                "is_fraud": t in frauds} for t, a, dt, _ in txs])
    scores = write(tmp_path / "scores.jsonl", [{"tx_id": t, "score": s, "model": "m"} for t, s in
                                               [("t1", 0.9), ("t2", 0.1), ("t3", 0.4), ("t4", 0.95), ("t5", 0.2)]])
    alerts = write(tmp_path / "alerts.jsonl", [{"tx_id": "t1"}, {"tx_id": "t4"}])  # the model's alerts
    rules = write(tmp_path / "rules.json", [
        {"id": "big", "version": 1, "action": "alert", "when": "amount > 100"},
        {"id": "vip", "version": 1, "action": "allow", "when": "account_id in ['c-2']", "enabled": False},
        {"id": "hi", "version": 1, "action": "tag", "when": "score > 0.3"},
        {"id": "second", "version": 1, "action": "alert", "when": "acct_nb_tx_1d >= 1 and amount > 100"},
    ])
    args = argparse.Namespace(
        rules=rules, scores=scores, transactions=tx_file, labels=labels, alerts=alerts, threshold=0.5,
        cooldown_hours=24.0, report=str(tmp_path / "report"), json=True)
    assert backtest_cli.cmd_test(args) == 0
    out = json.loads(capsys.readouterr().out)
    by_rule = {r["rule"]: r for r in out["rules"]}
    # big matches t1, t3, t4, t5; the cool-down folds t3 into t1's alert (2 h later) but not t5 (25 h)
    assert by_rule["big"] == {"rule": "big", "action": "alert", "matches": 4, "alerts": 3, "alerts_per_day": 1.5,
                              "max_alerts_per_day": 2, "cards": 2, "frauds": 1, "precision": 0.3333,
                              "overlap_with_model": 2, "new_alerts": 1}
    # a disabled allow rule is backtested too: it would have suppressed the model's alert on t4
    assert by_rule["vip"] == {"rule": "vip", "action": "allow", "matches": 1, "suppressed_model_alerts": 1,
                              "frauds_among_suppressed": 0, "cards": 1}
    # tags are not folded by the cool-down: t1, t3, t4
    assert (by_rule["hi"]["alerts"], by_rule["hi"]["frauds"], by_rule["hi"]["precision"]) == (3, 2, 0.6667)
    # the card's earlier transactions that day (features by the flow's stages): t2 (1 before), t3 (2 before)
    assert (by_rule["second"]["matches"], by_rule["second"]["alerts"], by_rule["second"]["frauds"]) == (1, 1, 1)
    assert out["model"]["alerts"] == 2 and out["model"]["precision"] == 0.5
    assert out["transactions"] == 5 and out["unscored"] == 0 and out["period"] == ["2018-04-01", "2018-04-02"]
    assert (tmp_path / "report" / "rules_backtest.png").stat().st_size > 10_000


def test_backtest_table_and_errors(tmp_path, capsys, caplog):
    tx_file = write(tmp_path / "tx.jsonl", [{"tx_id": "t1", "account_id": "c-1", "ts": _ts(TS), "amount": 5.0,
                                             "terminal_id": "m-1", "currency": "EUR"}, {"tx_id": "broken"}])
    labels = write(tmp_path / "labels.jsonl", [])
    scores = write(tmp_path / "scores.jsonl", [{"tx_id": "t1", "score": 0.7, "model": "m"}])
    bad = write(tmp_path / "bad.json", [{"id": "x", "version": 1, "action": "alert", "when": "amont > 1"}])
    ns = argparse.Namespace

    with pytest.raises(FraudflowError, match="unknown field 'amont'"):
        backtest_cli.cmd_test(ns(rules=bad, scores=scores, transactions=tx_file, labels=labels, alerts=None,
                                 threshold=0.5, cooldown_hours=24.0, report=None, json=False))
    good = write(tmp_path / "good.json", [{"id": "x", "version": 1, "action": "alert", "when": "amount > 1"}])
    assert backtest_cli.cmd_test(ns(rules=good, scores=scores, transactions=tx_file, labels=labels, alerts=None,
                                    threshold=0.5, cooldown_hours=24.0, report=None, json=False)) == 0
    table = capsys.readouterr().out
    assert "model (score >= 0.5)" in table and "\nx " in table and "0%" in table  # no frauds among 1 alert
    assert "1 record(s) rejected" in caplog.text and "missing required field" in caplog.text


def test_backtest_sees_the_cards_last_hour_as_the_flow_does():
    """Velocity rules in the backtest: the features are recomputed by the flow's stages, the
    card's last hour with them (event time, an hour back inclusive, the transaction itself not)."""
    from connectors.events import Transaction
    from learners.backtest import backtest, featured
    from learners.rules import parse_rule

    minutes = [0, 20, 40, 60, 61, 121]  # c-1; c-2 pays once in between
    txs = [Transaction(f"t{i}", "c-1", TS + 60 * m, 100.0 + i, "m-1") for i, m in enumerate(minutes)]
    txs.insert(2, Transaction("other", "c-2", TS + 60 * 30, 900.0, "m-1"))
    rows = list(featured(txs))
    assert [(tx.tx_id, hour) for tx, _, hour in rows] == [
        ("t0", (0.0, 0.0)), ("t1", (1.0, 100.0)), ("other", (0.0, 0.0)), ("t2", (2.0, 201.0)),
        ("t3", (3.0, 303.0)),  # t0 is exactly an hour before: in
        ("t4", (3.0, 306.0)),  # t1 t2 t3
        ("t5", (1.0, 104.0))]  # t4 only (t3 is 61 minutes back)
    rules = [parse_rule({"id": "velocity", "version": 1, "action": "alert", "when": "acct_nb_tx_1h >= 3"}),
             parse_rule({"id": "spend", "version": 1, "action": "alert", "when": "acct_sum_amount_1h > 305"})]
    result = backtest(rules, rows, {t.tx_id: 0.1 for t in txs}, frauds={"t4"}, cooldown_s=0)
    assert (result.rules["velocity"].alerts, result.rules["velocity"].frauds) == (2, 1)
    assert (result.rules["spend"].alerts, result.rules["spend"].frauds) == (1, 1)
    # pairs without the last hour (older callers): the velocity fields are 0
    assert backtest(rules, [r[:2] for r in rows], {}, frauds=set(), cooldown_s=0).rules["velocity"].matches == 0
