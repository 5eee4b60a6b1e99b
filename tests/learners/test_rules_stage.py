"""apply_rules: the rule book of a model shard over scored transactions (decision 0055)."""

from __future__ import annotations

import json
import pickle

import pytest

from connectors.events import DeadLetter, Origin, Transaction
from learners.decision import AlertPolicy, PolicyConfig
from learners.features import FEATURE_NAMES
from learners.messages import RuleUpdate, Scored
from learners.rules import parse_rule
from learners.stages import RulesStage, rule_update

NIGHT = FEATURE_NAMES.index("tx_during_night")
WHERE = Origin("rules", 3, 0)


def spec(rule_id: str, version: int, action: str, when: str, **more) -> dict:
    return {"id": rule_id, "version": version, "action": action, "when": when, **more}


def rule(*args, **more):
    return parse_rule(spec(*args, **more))


def scored(account: str = "c-1", amount: float = 50.0, score: float = 0.1, candidate: bool = False,
           night: float = 0.0, reasons=None, tx_id: str = "t-1", ts: float = 1522541276.0,
           last_hour: tuple = (0.0, 0.0)) -> Scored:
    features = [0.0] * len(FEATURE_NAMES)
    features[0], features[NIGHT] = amount, night
    return Scored(Transaction(tx_id, account, ts, amount, "m-1"), score, 0.5, "logreg", reasons, candidate,
                  tuple(features), last_hour=last_hour)


def update(s: dict) -> RuleUpdate:
    return rule_update(s["id"].encode(), json.dumps(s).encode(), WHERE)


BOOK = [rule("big-night", 2, "alert", "amount > 500 and tx_during_night == 1"),
        rule("vip", 1, "allow", "account_id in ['c-7', 'c-8']"),
        rule("large", 1, "tag", "amount > 100", tag="large-amount")]


def test_an_alert_rule_makes_a_candidate_whatever_the_score_with_the_rule_first_among_the_reasons():
    stage = RulesStage(BOOK)
    [low] = stage.on_batch([scored(amount=900, night=1)])
    assert low.candidate and low.reasons == [("rule:big-night", 2)] and low.tags == ("large-amount",)
    [high] = stage.on_batch([scored(amount=900, night=1, score=0.9, candidate=True, reasons=[("amount", 1.5)])])
    assert high.reasons == [("rule:big-night", 2), ("amount", 1.5)] and high.score == 0.9
    [day] = stage.on_batch([scored(amount=900, night=0)])  # the rule does not match: nothing but the tag
    assert not day.candidate and day.reasons is None and day.tags == ("large-amount",)


def test_allow_wins_over_the_model_and_over_alert_rules():
    stage = RulesStage(BOOK)
    model, ruled, plain = stage.on_batch([
        scored("c-7", amount=60, score=0.97, candidate=True, reasons=[("amount", 2.0)]),
        scored("c-8", amount=900, night=1),
        scored("c-1", amount=60, score=0.97, candidate=True, reasons=[("amount", 2.0)]),
    ])
    assert not model.candidate and model.reasons is None and model.score == 0.97
    assert not ruled.candidate and ruled.tags == ("large-amount",)  # allowed, still tagged
    assert plain.candidate and plain.reasons == [("amount", 2.0)]  # not allow-listed: the model's alert stays


def test_a_tag_rule_annotates_only():
    [s] = RulesStage(BOOK).on_batch([scored(amount=150, score=0.7, candidate=True, reasons=[("amount", 1.0)])])
    assert s.candidate and s.reasons == [("amount", 1.0)] and s.tags == ("large-amount",)


def test_an_empty_book_returns_the_batch_itself():
    batch = [scored(), scored(tx_id="t-2")]
    assert RulesStage().on_batch(batch) is batch
    dead = DeadLetter(b"x", "why", WHERE)
    mixed = [dead, scored(amount=900, night=1)]
    assert RulesStage(BOOK).on_batch(mixed)[0] is dead  # score_then_learn's dead letters go on


def test_versions_apply_in_order_and_tombstones_delete():
    stage = RulesStage()
    hit = scored(amount=900, night=1)
    assert stage.on_batch([update(spec("r", 2, "alert", "amount > 500")), hit])[0].reasons == [("rule:r", 2)]
    # an older version (a replay, a late publish) is ignored; a newer one replaces it
    assert stage.on_batch([update(spec("r", 1, "alert", "amount > 5000")), hit])[0].reasons == [("rule:r", 2)]
    assert not stage.on_batch([update(spec("r", 3, "alert", "amount > 5000")), hit])[0].candidate
    assert stage.on_batch([update(spec("r", 4, "alert", "amount > 800")), hit])[0].reasons == [("rule:r", 4)]
    # a disabled version is held (a newer one is needed to enable it again) but does not fire
    assert not stage.on_batch([update(spec("r", 5, "alert", "amount > 800", enabled=False)), hit])[0].candidate
    assert len(stage.book) == 0 and stage.book.get("r").version == 5
    tombstone = rule_update(b"r", None, WHERE)
    assert tombstone == RuleUpdate("r", None, 3)
    stage.on_batch([tombstone])
    assert stage.book.get("r") is None
    # after a delete the id is free again, from any version
    assert stage.on_batch([update(spec("r", 1, "alert", "amount > 500")), hit])[0].reasons == [("rule:r", 1)]


def test_updates_apply_to_the_messages_after_them_in_a_batch():
    stage = RulesStage()
    before, after = stage.on_batch([scored(amount=900, tx_id="t-1"), update(spec("r", 1, "alert", "amount > 500")),
                                    scored(amount=900, tx_id="t-2")])
    assert (before.tx.tx_id, before.candidate) == ("t-1", False)
    assert (after.tx.tx_id, after.candidate) == ("t-2", True)


def test_snapshot_round_trip_keeps_the_book_and_its_versions():
    stage = RulesStage(BOOK)
    stage.on_batch([update(spec("big-night", 3, "alert", "amount > 700")), rule_update(b"large", None, WHERE)])
    state = pickle.loads(pickle.dumps(stage.snapshot()))
    restored = RulesStage(initial=[rule("other", 1, "alert", "amount > 0")], state=state)  # the state wins
    assert restored.book.rules() == stage.book.rules()
    assert {r.id: r.version for r in restored.book.rules()} == {"big-night": 3, "vip": 1}
    probe = [scored(amount=800), scored("c-7", amount=800), scored(amount=600)]
    assert restored.on_batch(list(probe)) == stage.on_batch(list(probe))


def test_rule_updates_cross_processes():
    m = update(spec("vip", 1, "allow", "account_id in ['c-1']"))
    assert pickle.loads(pickle.dumps(m)) == m


@pytest.mark.parametrize("key, value, says", [
    (b"r", b"{not json", "rule 'r': invalid JSON"),
    (b"r", json.dumps(spec("r", 1, "alert", "amount > 5", colour="red")).encode(), "rule 'r': unknown key 'colour'"),
    (b"r", json.dumps(spec("r", 1, "alert", "amount >")).encode(), "rule 'r': "),
    (b"r", json.dumps(spec("r", 0, "alert", "amount > 5")).encode(), "'version' must be a whole number"),
    (b"r", json.dumps(spec("r", 1, "block", "amount > 5")).encode(), "'action' must be one of"),
    (b"r", b"[1, 2]", "a rule must be a mapping"),
    (b"q", json.dumps(spec("r", 1, "alert", "amount > 5")).encode(), "published under the key 'q'"),
    (None, json.dumps(spec("r", 1, "alert", "amount > 5")).encode(), "published without a key"),
    (None, None, "without a key"),
    (b"\xff", None, "not UTF-8"),
])
def test_a_bad_rule_is_a_dead_letter_naming_it(key, value, says):
    dead = rule_update(key, value, WHERE)
    assert type(dead) is DeadLetter and dead.category == "bad_rule" and dead.step == "read_rules"
    assert says in dead.reason and dead.origin == WHERE
    assert dead.raw == (value or b"")


def test_velocity_rules_read_the_cards_last_hour():
    """The classic velocity rules: more than 4 transactions on the card in the last hour, or more
    than 1,000 spent in it; the fields travel beside the model's vector, not in it."""
    stage = RulesStage([rule("velocity", 1, "alert", "acct_nb_tx_1h > 4 or acct_sum_amount_1h + amount > 1000"),
                        rule("burst", 1, "tag", "acct_nb_tx_1h >= 2 and acct_sum_amount_1h / acct_nb_tx_1h < 5")])
    quiet, busy, spent, small = stage.on_batch([
        scored(last_hour=(4.0, 300.0), tx_id="t-1"),
        scored(last_hour=(5.0, 300.0), tx_id="t-2"),
        scored(amount=200.0, last_hour=(1.0, 850.0), tx_id="t-3"),
        scored(last_hour=(3.0, 6.0), tx_id="t-4"),
    ])
    assert not quiet.candidate and quiet.tags == ()
    assert busy.candidate and busy.reasons == [("rule:velocity", 1)] and busy.last_hour == (5.0, 300.0)
    assert spent.candidate and spent.reasons == [("rule:velocity", 1)]
    assert not small.candidate and small.tags == ("burst",)
    assert len(busy.features) == len(FEATURE_NAMES)  # the model's vector as it was
    # no last hour (nothing before it): zero, so the division has no value and the tag rule is false
    [alone] = stage.on_batch([scored(tx_id="t-5")])
    assert not alone.candidate and alone.tags == ()


def test_rule_alerts_keep_the_cool_down():
    stage, policy = RulesStage(BOOK), AlertPolicy(PolicyConfig(cooldown_s=3600))
    first, second = stage.on_batch([scored(amount=900, night=1, tx_id="t-1"),
                                    scored(amount=950, night=1, tx_id="t-2", ts=1522541276.0 + 600)])
    assert first.candidate and second.candidate
    alert = policy.decide(first)
    assert alert.reasons == [("rule:big-night", 2)] and alert.tags == ("large-amount",)
    assert policy.decide(second) is None  # within the card's cool-down


def test_the_reference_loop_applies_the_rules():
    from connectors.simulator import SimulatorConfig, simulate
    from learners.pipeline import PipelineConfig, SequentialPipeline

    events = list(simulate(SimulatorConfig(customers=60, terminals=120, days=4, seed=3)))
    accounts = sorted({e.account_id for e in events})
    rules = [rule("big", 1, "alert", "amount > 120"), rule("vip", 1, "allow", f"account_id in ['{accounts[0]}']")]
    pipe = SequentialPipeline(PipelineConfig(shards=2), rules=rules)
    out = list(pipe.run(events))
    ruled = [s for s in out if s.reasons and s.reasons[0] == ("rule:big", 1)]
    expected = [s for s in out if s.tx.amount > 120 and s.tx.account_id != accounts[0]]
    assert ruled and [s.tx.tx_id for s in ruled] == [s.tx.tx_id for s in expected]
    assert not any(s.candidate for s in out if s.tx.account_id == accounts[0])
    pipe.update_rule(rule_update(b"big", None, WHERE))
    assert all(len(stage.book) == 1 for stage in pipe.rule_stages.values())
