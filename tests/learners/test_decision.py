"""Alert policy: threshold, daily budget or rate, and one open alert per card per cool-down."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from connectors.events import Transaction
from learners.decision import AlertPolicy, PolicyConfig
from learners.pipeline import PipelineConfig, SequentialPipeline
from learners.scoring import ModelConfig, Scored

DAY = 86_400


_SCORED: dict = {}


def _candidates(events, model: ModelConfig) -> list[Scored]:
    """Alert candidates of the small stream under ``model`` (computed once per config)."""
    key = (id(events), model)
    if key not in _SCORED:
        pipe = SequentialPipeline(PipelineConfig(model=model))
        _SCORED[key] = [s for s in pipe.run(events) if s.candidate]
    return _SCORED[key]


def _alerts(events, model: ModelConfig, cooldown_s: float = 0.0):
    policies: dict[str, AlertPolicy] = {}
    out = []
    for scored in _candidates(events, model):
        policy = policies.setdefault(scored.tx.account_id, AlertPolicy(PolicyConfig(cooldown_s)))
        alert = policy.decide(scored)
        if alert is not None:
            out.append((scored, alert))
    return out


@pytest.mark.parametrize("budget", [15, 40])
def test_daily_budget_sets_the_alert_volume(small_stream, small_config, budget):
    events, _ = small_stream
    alerts = _alerts(events, ModelConfig(alert_budget_per_day=budget))
    per_day = Counter(int((s.tx.event_ts - small_config.start_ts) // DAY) for s, _ in alerts
                      if s.model != "coldstart-hst")
    steady = [per_day[d] for d in range(15, small_config.days)]  # once supervised and a day of history
    mean = sum(steady) / len(steady)
    assert 0.75 * budget <= mean <= 1.25 * budget, (budget, mean)
    assert all(a.threshold == s.threshold for s, a in alerts)


def test_alert_rate_sets_the_share_of_transactions(small_stream, small_config):
    events, _ = small_stream
    txs = [e for e in events if isinstance(e, Transaction) and e.event_ts >= small_config.start_ts + 15 * DAY]
    alerts = [s for s, _ in _alerts(events, ModelConfig(alert_rate=0.01))
              if s.tx.event_ts >= small_config.start_ts + 15 * DAY]
    assert 0.007 <= len(alerts) / len(txs) <= 0.013


def test_budget_alerts_are_the_riskiest(small_stream):
    events, truth = small_stream
    budget = [s for s, _ in _alerts(events, ModelConfig(alert_budget_per_day=15)) if s.model != "coldstart-hst"]
    precision = sum(truth[s.tx.tx_id].is_fraud for s in budget) / len(budget)
    base_rate = sum(t.is_fraud for t in truth.values()) / len(truth)
    print(f"budget alerts: {len(budget)}, precision {precision:.3f}, base rate {base_rate:.3f}")
    assert precision > 10 * base_rate


def test_one_open_alert_per_card_within_the_cooldown(small_stream, small_sequential):
    events, _ = small_stream
    # The default configuration's candidates: the session's run of the default loop, computed once.
    assert PipelineConfig(model=ModelConfig()) == PipelineConfig()
    _SCORED.setdefault((id(events), ModelConfig()), [s for s in small_sequential if s.candidate])
    cooldown = 24 * 3600
    alerts = _alerts(events, ModelConfig(), cooldown_s=cooldown)
    by_card = defaultdict(list)
    for scored, _ in alerts:
        by_card[scored.tx.account_id].append(scored.tx.event_ts)
    for times in by_card.values():
        times.sort()
        assert all(b - a >= cooldown for a, b in zip(times, times[1:]))
    without = _alerts(events, ModelConfig(), cooldown_s=0)
    assert len(without) > len(alerts)  # the cool-down folded some into open alerts


def test_policy_state_round_trip():
    policy = AlertPolicy(PolicyConfig(3600))
    tx = Transaction("t-1", "c-1", 1000.0, 10.0, "m-1")
    assert policy.decide(Scored(tx, 0.9, 0.5, "logreg", [], True)) is not None
    restored = AlertPolicy(PolicyConfig(3600), policy.snapshot())
    later = Transaction("t-2", "c-1", 1600.0, 10.0, "m-1")
    assert restored.decide(Scored(later, 0.9, 0.5, "logreg", [], True)) is None
