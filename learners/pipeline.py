"""The fraud pipeline's steps as plain functions over keyed state, and a sequential driver.

The dataflow (``dataflows.fraud``) calls exactly these steps from its keyed Bytewax stages;
:class:`SequentialPipeline` calls them in a bare Python loop. Benchmarks compare the two,
and tests use the loop as the reference the dataflow must agree with.

Per transaction: account features (then the account learns it) -> terminal features (then
the terminal counts it) -> its feature vector waits in a (shard, hour) bucket -> the model
shard scores it. Per label: the account joins it to the pending transaction (recovering
``terminal_id``) -> a fraud updates the terminal's risk -> the bucket joins the feature vector
-> the shard learns the example once released.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from connectors.events import Label, Transaction
from learners.features import AccountProfile, JoinedLabel, TerminalProfile, transaction_features
from learners.pending import PendingBucket, bucket_of
from learners.scoring import ModelConfig, ModelShard, Scored, in_sample

__all__ = ["PipelineConfig", "SequentialPipeline", "account_step", "copies_to", "learn_at", "pending_key",
           "shard_for", "stamped_before_transaction", "terminal_step"]

DAY = 86_400.0


@dataclass(frozen=True)
class PipelineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    risk_delay_days: int = 7  # terminal risk windows end this many days back (label delay)
    shards: int = 1
    shard_examples: str = "all"  # every shard learns every example ("all") or its accounts' ("own")

    @property
    def retention_s(self) -> float:
        """How long the account keeps a transaction awaiting its label (event time)."""
        return self.model.label_timeout_days * DAY


def shard_for(account_id: str, shards: int) -> int:
    """Stable shard of an account (the same in every process and run)."""
    return zlib.crc32(account_id.encode()) % shards if shards > 1 else 0


def copies_to(shard: int, example: tuple, config: "PipelineConfig") -> tuple[int, ...]:
    """The other shards a labelled example ``(tx_id, label_ts, is_fraud, packed)`` of ``shard``
    goes to: every one when all shards learn every example and it is in the negative sample
    (an example outside it only counts, at its own shard)."""
    if config.shard_examples != "all" or config.shards <= 1:
        return ()
    if not in_sample(example[0], example[2], example[3], config.model.negative_sampling):
        return ()
    return tuple(i for i in range(config.shards) if i != shard)


def pending_key(shard_key: str, tx_ts: float) -> str:
    """Key of the bucket holding a transaction's features: its shard and hour."""
    return f"{shard_key}/{bucket_of(tx_ts)}"


def account_step(profile: AccountProfile, tx: Transaction, config: "PipelineConfig"):
    """Account stage for a transaction: (features, labels joined now, orphans expired). A label
    whose transaction has not come one learning step after it is an orphan for good."""
    return profile.on_transaction(tx, config.retention_s, infer_negatives=config.model.label_mode == "frauds",
                                  orphan_wait_s=config.model.allowed_lateness_s)


def stamped_before_transaction(joined: JoinedLabel) -> bool:
    """A label dated before the transaction it labels is bad data (a chargeback cannot come
    before the payment): it is a dead letter, never learned, so it cannot teach the model
    anything before the transaction happened (decision 0024)."""
    return joined.label_ts < joined.tx_ts


def learn_at(joined: JoinedLabel, config: "PipelineConfig") -> float:
    """When the model may learn a joined label: at its ``label_ts``, except a fraud of a
    frauds-only feed, learned only once its transaction has reached the time-out, like the
    legitimate examples inferred there. Learning frauds at 7 days and inferred legitimate at 8+
    taught the model that whatever grows with calendar time (account history, terminals with
    known frauds) means fraud: 99 % of transactions scored ≥ 0.5 on days 14–16 (decision 0015).
    Terminal risk still counts the fraud from ``label_ts``."""
    if joined.is_fraud and config.model.label_mode == "frauds":
        return max(joined.label_ts, joined.tx_ts + config.retention_s)
    return joined.label_ts


def terminal_step(profile: TerminalProfile, tx: Transaction, account_features: tuple) -> tuple[float, ...]:
    """Terminal stage for a transaction: the full feature vector."""
    return transaction_features(tx.amount, tx.event_ts) + account_features + profile.observe(tx.event_ts)


class SequentialPipeline:
    """Runs the pipeline steps in one loop, in arrival order."""

    def __init__(self, config: PipelineConfig = PipelineConfig()) -> None:
        self.config = config
        self.accounts: dict[str, AccountProfile] = {}
        self.terminals: dict[str, TerminalProfile] = {}
        self.shards = [ModelShard(config.model) for _ in range(config.shards)]
        self.buckets: dict[tuple[int, int], PendingBucket] = {}
        self.unmatched_labels = 0

    def _bucket(self, shard: int, tx_ts: float) -> PendingBucket:
        key = (shard, bucket_of(tx_ts))
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = PendingBucket()
        return bucket

    def _examples(self, shard: int, tx_ts: float, examples: list) -> None:
        own = self.shards[shard]
        for example in examples:
            own.on_example(*example)
            for other in copies_to(shard, example, self.config):
                self.shards[other].on_example(*example, copy=True)
        key = (shard, bucket_of(tx_ts))
        if self.buckets[key].empty:
            del self.buckets[key]

    def _terminal(self, terminal_id: str) -> TerminalProfile:
        t = self.terminals.get(terminal_id)
        if t is None:
            t = self.terminals[terminal_id] = TerminalProfile(
                self.config.risk_delay_days, label_step_s=self.config.model.allowed_lateness_s)
        return t

    def _joined(self, account_id: str, joined: JoinedLabel) -> None:
        if stamped_before_transaction(joined):
            self.unmatched_labels += 1
            return
        if joined.is_fraud:
            self._terminal(joined.terminal_id).add_fraud(joined.tx_ts, joined.label_ts, joined.unexplained)
        shard = shard_for(account_id, self.config.shards)
        bucket = self._bucket(shard, joined.tx_ts)
        examples = bucket.label(joined.tx_id, learn_at(joined, self.config), joined.is_fraud)
        self._examples(shard, joined.tx_ts, examples)

    def on_transaction(self, tx: Transaction, part: int = 0) -> Scored:
        acct = self.accounts.get(tx.account_id)
        if acct is None:
            acct = self.accounts[tx.account_id] = AccountProfile()
        account_features, joined, expired = account_step(acct, tx, self.config)
        self.unmatched_labels += len(expired)
        features = terminal_step(self._terminal(tx.terminal_id), tx, account_features)
        shard = shard_for(tx.account_id, self.config.shards)
        examples = self._bucket(shard, tx.event_ts).add(tx.tx_id, features)
        scored = self.shards[shard].on_transaction(tx, features, part)
        self._examples(shard, tx.event_ts, examples)
        for j in joined:
            self._joined(tx.account_id, j)
        return scored

    def on_label(self, label: Label) -> None:
        acct = self.accounts.get(label.account_id)
        if acct is None:
            acct = self.accounts[label.account_id] = AccountProfile()
        joined = acct.join_label(label.tx_id, label.event_ts, label.is_fraud)
        if joined is not None:
            self._joined(label.account_id, joined)

    def run(self, events: Iterable[Transaction | Label]) -> Iterator[Scored]:
        for event in events:
            if isinstance(event, Transaction):
                yield self.on_transaction(event)
            else:
                self.on_label(event)


def scores_of(events: Iterable[Transaction | Label], config: PipelineConfig = PipelineConfig(),
              keep: Optional[set] = None) -> dict[str, float]:
    """tx_id -> score for a whole stream (tests and experiments)."""
    return {s.tx.tx_id: s.score for s in SequentialPipeline(config).run(events)}
