"""The pipeline's stages in a plain loop: the reference the dataflow must agree with.

:class:`SequentialPipeline` drives the very stage objects the dataflow runs
(:mod:`learners.stages`), keyed by the same :class:`~learners.stages.Routes`, in one Python
loop: each event goes to its account, and each message a stage sends goes on, depth first,
to the stage it is routed to before the next one (the flow's order with one event per
batch). An alert candidate goes on to its account's :class:`~learners.stages.PolicyStage`, as
in the flow's ``alert_policy`` step, so the loop's alerts are the flow's. Benchmarks compare
the two, and tests use the loop as the reference the dataflow must agree with, score for
score and alert for alert.

>>> from connectors.simulator import SimulatorConfig, simulate
>>> from learners.decision import PolicyConfig
>>> events = list(simulate(SimulatorConfig(customers=100, terminals=200, days=10, seed=1)))
>>> pipe = SequentialPipeline(PipelineConfig(policy=PolicyConfig(cooldown_s=86_400.0)))
>>> scored = list(pipe.run(events))
>>> len(scored) == sum(type(e) is Transaction for e in events)
True
>>> sum(s.candidate for s in scored), len(pipe.alerts)  # a card's second candidate within a day: no alert
(5, 4)
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

from connectors.events import Alert, DeadLetter, Label, Transaction
from learners.messages import FeaturedTransaction, RuleUpdate, Scored
from learners.rules import Rule
from learners.scoring import ModelShard
from learners.stages import (AccountStage, PendingStage, PipelineConfig, PolicyStage, Routes, RulesStage, ShardStage,
                             TerminalStage, shard_for)

__all__ = ["PipelineConfig", "SequentialPipeline", "alerts_of", "scores_of", "shard_for"]


class SequentialPipeline:
    """Runs the pipeline's stages in one loop, in arrival order; alerts collect in ``alerts``,
    dead letters in ``dead_letters``."""

    def __init__(self, config: PipelineConfig = PipelineConfig(), rules: Sequence[Rule] = ()) -> None:
        self.config = config
        self.routes = Routes(config, [f"shard-{i}" for i in range(config.shards)])
        # each shard's rule book (apply_rules), ``rules`` to start with (FRAUDFLOW_RULES_FILE)
        self.rule_stages = {key: RulesStage(rules, name_of=self.routes.shard) for key in self.routes.keys}
        self.accounts: dict[str, AccountStage] = {}
        self.terminals: dict[str, TerminalStage] = {}
        self.buckets: dict[str, PendingStage] = {}
        self.shard_stages = {key: ShardStage(config.model, name_of=self.routes.shard) for key in self.routes.keys}
        self.policies: dict[str, PolicyStage] = {}  # by account, as the flow's alert_policy step
        self.alerts: list[Alert] = []
        self.dead_letters: list[DeadLetter] = []  # labels for unseen transactions, labels stamped before theirs

    @property
    def shards(self) -> list[ModelShard]:
        return [stage.shard for stage in self.shard_stages.values()]

    def update_rule(self, update: RuleUpdate) -> None:
        """A validated rule update (:func:`learners.stages.rule_update`) to every shard's book."""
        for stage in self.rule_stages.values():
            stage.on_batch([update])

    def _to_shard(self, key: str, m) -> Optional[Scored]:
        scored = None
        out = self.shard_stages[key].on_batch([m])
        for s in self.rule_stages[key].on_batch(out) if out else out:
            if type(s) is DeadLetter:
                self.dead_letters.append(s)
            else:
                scored = s
        return scored

    def _to_policy(self, scored: Scored) -> None:
        account_id = scored.tx.account_id
        stage = self.policies.get(account_id)
        if stage is None:
            stage = self.policies[account_id] = PolicyStage(self.config.policy)
        for a in stage.on_batch([scored]):
            if type(a) is DeadLetter:
                self.dead_letters.append(a)
            else:
                self.alerts.append(a)

    def _to_bucket(self, m) -> None:
        key = self.routes.bucket(m)
        stage = self.buckets.get(key)
        if stage is None:
            stage = self.buckets[key] = PendingStage(self.config)
        out = stage.on_batch([m])
        if stage.done:
            del self.buckets[key]
        for example in out:
            if type(example) is DeadLetter:
                self.dead_letters.append(example)
                continue
            for shard_key, to_learn in self.routes.examples(key, example):
                self._to_shard(shard_key, to_learn)

    def _to_terminal(self, m) -> Optional[Scored]:
        key = self.routes.terminal(m)
        stage = self.terminals.get(key)
        if stage is None:
            stage = self.terminals[key] = TerminalStage(self.config)
        scored = None
        for t in stage.on_batch([m]):
            kind = type(t)
            if kind is FeaturedTransaction:  # scored straight away; its features wait for the label
                scored = self._to_shard(self.routes.shard(t.tx.account_id), t)
                if scored is not None and scored.candidate:
                    self._to_policy(scored)
                self._to_bucket(t)
            elif kind is DeadLetter:
                self.dead_letters.append(t)
            else:
                self._to_bucket(t)
        return scored

    def on_event(self, event: Transaction | Label, part: int = 0) -> Optional[Scored]:
        """One event through every stage it reaches; a transaction's score."""
        stage = self.accounts.get(event.account_id)
        if stage is None:
            stage = self.accounts[event.account_id] = AccountStage(self.config)
        scored = None
        for m in stage.on_batch([(part, event)]):
            if type(m) is DeadLetter:
                self.dead_letters.append(m)
            elif self.routes.to_terminal(m):
                scored = self._to_terminal(m) or scored
            else:
                self._to_bucket(m)
        return scored

    def on_transaction(self, tx: Transaction, part: int = 0) -> Scored:
        return self.on_event(tx, part)

    def on_label(self, label: Label) -> None:
        self.on_event(label)

    def run(self, events: Iterable[Transaction | Label]) -> Iterator[Scored]:
        for event in events:
            scored = self.on_event(event)
            if scored is not None:
                yield scored


def scores_of(events: Iterable[Transaction | Label], config: PipelineConfig = PipelineConfig()) -> dict[str, float]:
    """tx_id -> score for a whole stream (tests and experiments)."""
    return {s.tx.tx_id: s.score for s in SequentialPipeline(config).run(events)}


def alerts_of(events: Iterable[Transaction | Label], config: PipelineConfig = PipelineConfig()) -> list[Alert]:
    """The alerts of a whole stream, in the order the loop raises them."""
    pipe = SequentialPipeline(config)
    for _ in pipe.run(events):
        pass
    return pipe.alerts
