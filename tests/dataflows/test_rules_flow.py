"""Rules in the dataflow on recorded events (a replay with a rules file): rule alerts carry the
rule's id and version, allow-listed cards get no alert, tags reach the scores (decision 0055)."""

from __future__ import annotations

import json

import pytest
from bytewax.testing import TestingSink, run_main

from connectors.events import Transaction, encode
from connectors.simulator import SimulatorConfig, simulate
from connectors.sources import EventListSource
from dataflows.cli import main
from dataflows.fraud import build_flow
from dataflows.settings import Settings, SettingsError

STREAM = SimulatorConfig(customers=200, terminals=400, days=20, seed=5)


@pytest.fixture(scope="module")
def events():
    return list(simulate(STREAM))


def _replay(events, rules_file: str, shards: int = 1):
    alerts, dlq, scores = [], [], []
    settings = Settings().replace(progress=False, snapshot_dir="off", cooldown_hours=0.0, rules_file=rules_file)
    parts = build_flow(settings, source=EventListSource(events), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=shards)
    run_main(parts.flow)
    return parts, alerts, scores


def test_a_replay_applies_the_rules_file_from_the_first_event(events, tmp_path):
    txs = [e for e in events if isinstance(e, Transaction)]
    allowed = sorted({t.account_id for t in txs})[:5]
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- {id: big, version: 3, action: alert, when: 'amount > 150'}\n"
        f"- {{id: vip, version: 1, action: allow, when: \"account_id in {allowed!r}\"}}\n"
        "- {id: large, version: 1, action: tag, when: 'amount > 100', tag: large-amount}\n")
    parts, alerts, scores = _replay(events, str(rules))
    by_tx = {a.tx_id: a for a in alerts}
    ruled = {a.tx_id for a in alerts if ("rule:big", 3) in a.reasons}
    expected = {t.tx_id for t in txs if t.amount > 150 and t.account_id not in allowed}
    assert expected and ruled == expected  # every match alerts (no cool-down here), from the very first
    assert all(by_tx[t].reasons[0] == ("rule:big", 3) for t in ruled)
    assert not [a for a in alerts if a.account_id in allowed]  # the model's alerts too
    model_only = [a for a in alerts if a.tx_id not in ruled]
    assert model_only and all(not any(n.startswith("rule:") for n, _ in a.reasons) for a in model_only)
    tagged = {s.tx_id for s in scores if s.tags}
    assert tagged == {t.tx_id for t in txs if t.amount > 100}
    assert all(s.tags == ("large-amount",) for s in scores if s.tags)
    # the contract: "tags" only where a rule wrote some
    assert all(("tags" in json.loads(encode(s))) == bool(s.tags) for s in scores[:2000])
    assert all(json.loads(encode(by_tx[t]))["tags"] == ["large-amount"] for t in ruled)
    c = parts.stats.counts()
    assert c["rules_active"] == 3 and c["rule_alerts"] == len(ruled) and c["rule_allowed"] > 0
    matches, per_rule = parts.stats.rule_counts()
    assert per_rule == {"big": len(ruled)} and matches[("big", "alert")] >= len(ruled)
    assert matches[("large-amount", "tag")] == len(tagged)
    assert "rules" in parts.stats.summary()


def test_velocity_rules_alert_on_what_the_cards_last_hour_holds(events, tmp_path):
    """The classic velocity rules over a replay: the flow's alerts and tags are the transactions
    whose card had, in the hour before (event time, an hour back inclusive, itself not), the
    count and amount computed here from the events alone."""
    from collections import defaultdict

    card = next(e.account_id for e in events if isinstance(e, Transaction))
    start = events[len(events) // 2].event_ts
    burst = [Transaction(f"burst-{i}", card, start + 60.0 * i, 30.0, "m-burst") for i in range(6)]  # card testing
    stream = sorted(events + burst, key=lambda e: e.event_ts)  # stable: the burst after equal times
    rules = tmp_path / "velocity.yaml"
    rules.write_text("- {id: velocity, version: 1, action: alert, when: 'acct_nb_tx_1h >= 2'}\n"
                     "- {id: fast, version: 1, action: tag, when: 'acct_sum_amount_1h > 150', tag: fast-spend}\n")
    _, alerts, scores = _replay(stream, str(rules))
    history: dict[str, list] = defaultdict(list)
    counted = {}
    for t in (e for e in stream if isinstance(e, Transaction)):
        before = [(ts, amount) for ts, amount in history[t.account_id] if t.event_ts - 3600 <= ts <= t.event_ts]
        counted[t.tx_id] = (len(before), sum(amount for _, amount in before))
        history[t.account_id].append((t.event_ts, t.amount))
    assert max(n for n, _ in counted.values()) < 32  # under the cap: exact counts
    velocity = {tx_id for tx_id, (n, _) in counted.items() if n >= 2}
    fast = {tx_id for tx_id, (_, amount) in counted.items() if amount > 150}
    assert {f"burst-{i}" for i in range(2, 6)} <= velocity and len(velocity) > 50 and len(fast) > 50
    assert {a.tx_id for a in alerts if ("rule:velocity", 1) in a.reasons} == velocity  # no cool-down here
    assert {s.tx_id for s in scores if "fast-spend" in s.tags} == fast


def test_two_shards_apply_the_same_book(events, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"id": "big", "version": 1, "action": "alert", "when": "amount > 150"}]}))
    _, alerts, _ = _replay(events, str(rules), shards=2)
    expected = {e.tx_id for e in events if isinstance(e, Transaction) and e.amount > 150}
    assert {a.tx_id for a in alerts if ("rule:big", 1) in a.reasons} == expected


def test_a_bad_rules_file_stops_start_up_naming_the_setting(events, tmp_path, capsys, clean_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: typo, version: 1, action: alert, when: 'amout > 5'}\n")
    with pytest.raises(SettingsError, match=r"FRAUDFLOW_RULES_FILE: .*bad.yaml, rule 1: rule 'typo': unknown field"):
        build_flow(Settings().replace(progress=False, snapshot_dir="off", rules_file=str(bad)), source=EventListSource([]))
    tx, labels = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    tx.write_text("")
    labels.write_text("")
    assert main(["replay", str(tx), str(labels), "--rules", str(bad), "-q", "--alerts", str(tmp_path / "a"),
                 "--dlq", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "FRAUDFLOW_RULES_FILE" in err and "unknown field 'amout'" in err and "Traceback" not in err
