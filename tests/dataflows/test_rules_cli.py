"""`fraudflow rules check|publish|delete|list` as a user runs them (subprocesses), against the
real broker (decision 0055)."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from tests.connectors.test_kafka_cli import cli_env, fraudflow, fresh_topics

RULES = """
- id: big-night
  version: 2
  action: alert
  when: amount > 500 and tx_during_night == 1
  owner: strategy team
- {id: vip, version: 1, action: allow, when: "account_id in ['c-1', 'c-2']"}
- {id: large, version: 1, action: tag, when: "amount > 100", enabled: false}
"""


def test_check_prints_each_rule_or_the_error(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.json"
    good.write_text(RULES)
    bad.write_text(json.dumps([{"id": "x", "version": 1, "action": "alert", "when": "amount >"}]))
    env = cli_env("127.0.0.1:9", {})
    ok = fraudflow("rules", "check", str(good), env=env)
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[0] for line in ok.stdout.splitlines()] == ["big-night", "vip", "large"]
    assert "3 rules OK (2 enabled)" in ok.stderr
    refused = fraudflow("rules", "check", str(bad), env=env)
    assert refused.returncode == 1 and ok.stdout and not refused.stdout
    assert f"{bad}, rule 1: rule 'x':" in refused.stderr and "Traceback" not in refused.stderr


def test_fields_lists_every_field_with_its_type_and_a_line_on_it():
    from learners.rules import FIELDS

    out = fraudflow("rules", "fields", env=cli_env("127.0.0.1:9", {}))
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert set(lines) == set(FIELDS) | {"extra.NAME"}
    assert "saturates at 32" in lines["acct_nb_tx_1h"] and "not a model feature" in lines["acct_nb_tx_1h"]
    assert lines["acct_sum_amount_1h"].split()[1] == "number" and "not a model feature" in lines["acct_sum_amount_1h"]
    assert "by the name its reasons use" in lines["acct_nb_tx_1d"]


@pytest.mark.broker
def test_publish_list_delete_round_trip(broker, tmp_path):
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    assert fraudflow("topics", "create", "--partitions", "2", env=env).returncode == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    published = fraudflow("rules", "publish", str(rules), env=env)
    assert published.returncode == 0, published.stderr
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(topics["rules"], key=b"vip", value=b'{"id": "vip", "version": 2, "action": "allow", "when": "x"}')
    producer.send(topics["rules"], key=b"big-night", value=json.dumps(
        {"id": "big-night", "version": 1, "action": "alert", "when": "amount > 1"}).encode())  # older: ignored
    producer.flush()
    producer.close()
    listed = fraudflow("rules", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert {r["id"]: r["version"] for r in doc["rules"]} == {"big-night": 2, "vip": 1, "large": 1}
    assert len(doc["refused"]) == 1 and "rule 'vip'" in doc["refused"][0]["reason"]
    table = fraudflow("rules", "list", env=env)
    assert "strategy team" in table.stdout and "3 rules on" in table.stderr and "(2 enabled)" in table.stderr
    deleted = fraudflow("rules", "delete", "vip", env=env)
    assert deleted.returncode == 0, deleted.stderr
    after = json.loads(fraudflow("rules", "list", "--json", env=env).stdout)
    assert sorted(r["id"] for r in after["rules"]) == ["big-night", "large"]
    missing = fraudflow("rules", "list", env=cli_env(broker.bootstrap, {**topics, "rules": "no-such-rules-topic"}))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
