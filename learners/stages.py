"""The fraud pipeline's stages: one object per keyed stage, over that key's state.

A stage takes a batch of messages (:mod:`learners.messages`) for its key and returns the
messages it sends on, ``on_batch(messages) -> messages``; a stage that waits on the wall
clock also has ``notify_at``/``on_notify``, one with work at the end of a bounded input
``on_eof``; ``snapshot()`` is its state for recovery and ``done`` says its key's state may be
dropped. The dataflow (:mod:`dataflows.fraud`) runs each stage in a Bytewax stateful step
through one generic adapter; :class:`learners.pipeline.SequentialPipeline` runs the very same
objects in a plain loop. :class:`Routes` says which key each message goes to, for both.

Per transaction: account features (then the account learns it) -> terminal features (then
the terminal counts it) -> the model shard scores it, and its feature vector waits in a
(shard, hour) bucket. Per label: the account joins it to the pending transaction (recovering
``terminal_id``) -> a fraud updates the terminal's risk -> the bucket joins the feature
vector -> the shard learns the example once released.

A stage that raises on one message (a bug: validation let it through) sends it on as a dead
letter with the exception, and the traceback goes to the log (decision 0025): the flow does
not stop, and does not stop again on every restart.

>>> from connectors.events import Transaction
>>> account = AccountStage(PipelineConfig())
>>> out = account.on_batch([(0, Transaction("t-1", "c-1", 1522541276.0, 50.0, "m-1"))])
>>> [type(m).__name__ for m in out], len(out[0].features)
(['FeaturedTransaction'], 15)
>>> terminal = TerminalStage(PipelineConfig())
>>> [m] = terminal.on_batch(out)
>>> len(m.features)
30
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Protocol, Sequence

import msgspec

from connectors.events import (DeadLetter, Label, Origin, Transaction, Verdict, encode, format_ts, label_to_json,
                               transaction_to_json, verdict_to_json)
from learners.decision import AlertPolicy, PolicyConfig
from learners.features import AccountProfile, TerminalProfile, transaction_features
from learners.messages import FeaturedTransaction, JoinedLabel, LabelledExample, RuleUpdate, Scored, UnsampledCount
from learners.pending import PendingBucket, bucket_of
from learners.rules import Outcome, Rule, RuleBook, RuleError, parse_rule
from learners.scoring import ModelConfig, ModelShard, in_sample

__all__ = ["AccountStage", "PendingStage", "PipelineConfig", "PolicyStage", "Routes", "RulesStage", "ShardStage",
           "Stage", "StageStats", "TerminalStage", "learn_at", "pending_key", "rule_update", "shard_for",
           "stamped_before_transaction", "step_failure"]

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True)
class PipelineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    risk_delay_days: int = 7  # terminal risk windows end this many days back (label delay)
    shards: int = 1
    shard_examples: str = "all"  # every shard learns every example ("all") or its accounts' ("own")
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # alert_policy: the per-card cool-down

    @property
    def retention_s(self) -> float:
        """How long the account keeps a transaction awaiting its label (event time)."""
        return self.model.label_timeout_days * DAY


def shard_for(account_id: str, shards: int) -> int:
    """Stable shard of an account (the same in every process and run)."""
    return zlib.crc32(account_id.encode()) % shards if shards > 1 else 0


def pending_key(shard_key: str, tx_ts: float) -> str:
    """Key of the bucket holding a transaction's features: its shard and hour."""
    return f"{shard_key}/{bucket_of(tx_ts)}"


def stamped_before_transaction(joined: JoinedLabel) -> bool:
    """A label dated before the transaction it labels is bad data (a chargeback cannot come
    before the payment): it is a dead letter, never learned, so it cannot teach the model
    anything before the transaction happened (decision 0024)."""
    return joined.label_ts < joined.tx_ts


def learn_at(joined: JoinedLabel, config: PipelineConfig) -> float:
    """When the model may learn a joined label: at its ``label_ts``, except a fraud of a
    frauds-only feed, learned only once its transaction has reached the time-out, like the
    legitimate examples inferred there. Learning frauds at 7 days and inferred legitimate at 8+
    taught the model that whatever grows with calendar time (account history, terminals with
    known frauds) means fraud: 99 % of transactions scored ≥ 0.5 on days 14–16 (decision 0015).
    Terminal risk still counts the fraud from ``label_ts``. An analyst's verdict is learned at
    its ``label_ts`` in every mode: verdicts of both kinds come hours after their transaction,
    so learning them at once teaches no calendar-time bias (decision 0050)."""
    if joined.is_fraud and config.model.label_mode == "frauds" and not joined.verdict:
        return max(joined.label_ts, joined.tx_ts + config.retention_s)
    return joined.label_ts


class Routes:
    """Which key each message goes to: the flow's keyed exchanges and the sequential loop
    use these same functions. ``shard_keys``: the names of the model shards."""

    def __init__(self, config: PipelineConfig, shard_keys: Sequence[str]) -> None:
        self.config = config
        self.keys = tuple(shard_keys)
        self.index = {key: i for i, key in enumerate(self.keys)}
        # per message: looked up once here (decision 0061)
        self._shards = config.shards
        self._copies = config.shard_examples == "all" and config.shards > 1

    def shard(self, account_id: str) -> str:
        shards = self._shards
        return self.keys[shard_for(account_id, shards) if shards > 1 else 0]

    @staticmethod
    def to_terminal(m: Any) -> bool:
        """From ``account_profile``: transactions and fraud labels go to ``terminal_risk``."""
        kind = type(m)
        return kind is FeaturedTransaction or (kind is JoinedLabel and bool(m.is_fraud))

    @staticmethod
    def terminal(m: Any) -> str:
        return m.tx.terminal_id if type(m) is FeaturedTransaction else m.terminal_id

    def bucket(self, m: Any) -> str:
        """The (shard, hour) bucket of a transaction's features or of its label."""
        if type(m) is FeaturedTransaction:
            tx = m.tx
            return pending_key(self.shard(tx.account_id), tx.event_ts)
        return pending_key(self.shard(m.account_id), m.tx_ts)

    def examples(self, bucket_key: str, m: Any) -> list[tuple[str, Any]]:
        """A bucket's message to its own shard and an example, as a copy, to every shard that
        learns it too (``shard_examples="all"``: the same model on each, whatever the split;
        decision 0018)."""
        own = bucket_key.split("/", 1)[0]
        out = [(own, m)]
        if self._copies and type(m) is LabelledExample:
            others = self.copies_to(self.index[own], m)
            if others:
                copy = LabelledExample(m.tx_id, m.label_ts, m.is_fraud, m.packed, True, m.feed_ts)
                out.extend((self.keys[i], copy) for i in others)
        return out

    def copies_to(self, shard: int, example: LabelledExample) -> tuple[int, ...]:
        """The other shards an example of ``shard`` goes to: every one when all shards learn
        every example and it is in the negative sample (an example outside it only counts,
        at its own shard)."""
        config = self.config
        if config.shard_examples != "all" or config.shards <= 1:
            return ()
        if not in_sample(example.tx_id, example.is_fraud, example.packed, config.model.negative_sampling):
            return ()
        return tuple(i for i in range(config.shards) if i != shard)


# -- run statistics and failures -----------------------------------------------------------
class StageStats(Protocol):
    """What the stages report (:class:`dataflows.progress.RunStats` in the flow)."""

    def confirm(self, tx_id: str) -> None: ...
    def awaiting(self, delta: int) -> None: ...
    def unmatched(self, n: int) -> None: ...
    def scored(self, scored: list, shard: Any) -> None: ...
    def alerted(self, alerts: list, suppressed: int) -> None: ...
    def feedback(self, kind: str) -> None: ...
    def rule_book(self, stage: Any, active: int) -> None: ...
    def rule_matches(self, matches: dict, allowed: int) -> None: ...


class _NoStats:
    def confirm(self, tx_id: str) -> None:
        pass

    def awaiting(self, delta: int) -> None:
        pass

    def unmatched(self, n: int) -> None:
        pass

    def scored(self, scored: list, shard: Any) -> None:
        pass

    def alerted(self, alerts: list, suppressed: int) -> None:
        pass

    def feedback(self, kind: str) -> None:
        pass

    def rule_book(self, stage: Any, active: int) -> None:
        pass

    def rule_matches(self, matches: dict, allowed: int) -> None:
        pass


NO_STATS: StageStats = _NoStats()

_FAILURE_LOG_EVERY_S = 60.0
_last_failure_log: dict[tuple[str, str], float] = {}
_NO_ORIGIN = Origin("unknown", -1)


def step_failure(step: str, exc: BaseException, doc: dict, origin: Optional[Origin]) -> DeadLetter:
    """A dead letter for an event that ``step`` raised on; the traceback is logged (at most
    once a minute per step and exception type)."""
    key = (step, type(exc).__name__)
    now = time.monotonic()
    if now - _last_failure_log.get(key, -math.inf) >= _FAILURE_LOG_EVERY_S:
        _last_failure_log[key] = now
        log.error("step %r failed on the event from %s (sent to the dead letters); a bug to report",
                  step, origin.as_dict() if origin else "?", exc_info=exc)
    text = f"{type(exc).__name__}: {exc}"
    return DeadLetter(encode(doc), f"step {step!r} failed on this event: {text[:500]}", origin or _NO_ORIGIN,
                      step=step, category="step_failure")


def _joined_doc(joined: JoinedLabel) -> dict:
    return {"tx_id": joined.tx_id, "account_id": joined.account_id, "ts": format_ts(joined.label_ts),
            "is_fraud": joined.is_fraud, "terminal_id": joined.terminal_id}


def failure_of(step: str, exc: BaseException, m: Any) -> DeadLetter:
    """The dead letter for a message ``step`` raised on: the event it carries, and where it was read."""
    kind = type(m)
    if kind is FeaturedTransaction or kind is Scored:
        return step_failure(step, exc, transaction_to_json(m.tx), m.tx.origin)
    if kind is Transaction:
        return step_failure(step, exc, transaction_to_json(m), m.origin)
    if kind is Label:
        return step_failure(step, exc, label_to_json(m), m.origin)
    if kind is Verdict:
        return step_failure(step, exc, verdict_to_json(m), m.origin)
    if kind is JoinedLabel:
        return step_failure(step, exc, _joined_doc(m), None)
    if kind is LabelledExample:
        doc = {"kind": "copy" if m.copy else "example", "tx_id": m.tx_id, "label_ts": format_ts(m.label_ts),
               "is_fraud": m.is_fraud}
        return step_failure(step, exc, doc, None)
    if kind is UnsampledCount:
        return step_failure(step, exc, {"kind": "unsampled", "received": m.received}, None)
    return step_failure(step, exc, {"kind": kind.__name__}, None)


def _before_reason(label_ts: float, tx_ts: float) -> str:
    return (f"label stamped before its transaction (label ts {format_ts(label_ts)}, transaction ts "
            f"{format_ts(tx_ts)}): not learned")


def _origin_tuple(origin: Optional[Origin]) -> Optional[tuple]:
    return None if origin is None else (origin.source, origin.position, origin.partition)


def _never() -> float:
    return -math.inf


# -- the stages ------------------------------------------------------------------------------
class Stage:
    """One keyed stage: ``on_batch`` over its key's state; the rest default to nothing to do."""

    done = False  # the key's state may be dropped (bytewax discards it; the loop deletes it)

    def on_batch(self, messages: list) -> list:
        raise NotImplementedError

    def notify_at(self) -> Optional[datetime]:
        return None

    def on_notify(self) -> list:
        return []

    def on_eof(self) -> list:
        return []

    def snapshot(self) -> Any:
        raise NotImplementedError


class AccountStage(Stage):
    """account_profile (keyed by ``account_id``): takes ``(partition, Transaction | Label)``;
    sends a :class:`FeaturedTransaction` with the account's features, each label joined to its
    transaction (:class:`JoinedLabel`), and dead letters.

    A label whose transaction this account has not seen waits (an orphan) until the
    transactions' event time (``event_time``: the model shards' clocks,
    :data:`connectors.sources.BOARD`, in the flow) has passed the label by one learning step
    (``allowed_lateness_s``); then it is a dead letter naming where it was read. A
    transaction cannot come later than that without being late.
    """

    ORPHAN_CHECK_S = 1.0  # wall-clock poll while orphans wait for event time to pass them

    def __init__(self, config: PipelineConfig, state: Optional[tuple] = None, stats: StageStats = NO_STATS,
                 event_time: Callable[[], float] = _never) -> None:
        self.profile = AccountProfile(state, label_step_s=config.model.allowed_lateness_s)
        self.config = config
        self.stats = stats
        self.event_time = event_time
        model = config.model  # what every transaction needs, looked up once
        self._retention_s = config.retention_s
        self._infer_negatives = model.label_mode == "frauds"
        self._lateness_s = model.allowed_lateness_s  # how long orphans wait; how late a transaction may come

    def _joined(self, joined: JoinedLabel, out: list, origin: Optional[Origin] = None) -> None:
        if joined.release:
            out.append(joined)
            return
        if joined.label_ts < joined.tx_ts:  # stamped_before_transaction
            out.append(DeadLetter(encode(_joined_doc(joined)), _before_reason(joined.label_ts, joined.tx_ts),
                                  origin or _NO_ORIGIN, step="account_profile", category="bad_timestamp"))
            return
        out.append(joined)
        if joined.is_fraud:
            self.profile.add_known_fraud(joined.tx_ts, joined.label_ts)
            self.stats.confirm(joined.tx_id)

    @staticmethod
    def _orphan_dead_letter(orphan: tuple, why: str, tx: Optional[Transaction] = None) -> DeadLetter:
        """``tx``: the orphan's own transaction, which came after the label's ts."""
        tx_id, label_ts, is_fraud, account_id, origin = (*orphan, "?", None)[:5] if len(orphan) < 5 else orphan[:5]
        raw = encode({"tx_id": tx_id, "account_id": account_id, "ts": format_ts(label_ts), "is_fraud": is_fraud})
        where = Origin(*origin) if origin else Origin("labels", -1)
        if tx is not None:
            return DeadLetter(raw, _before_reason(label_ts, tx.event_ts), where, step="account_profile",
                              category="bad_timestamp")
        return DeadLetter(raw, f"label for a transaction this flow never saw, or had learned a label for already "
                               f"({why})", where,
                          step="account_profile", category="unknown_transaction")

    def _label(self, event: Any, out: list) -> None:
        """A label or an analyst's verdict."""
        profile = self.profile
        verdict = type(event) is Verdict
        if profile.verdicts and profile.verdict_for(event.tx_id) is not None:
            # an analyst answered this transaction already (decision 0050)
            kind, j = profile.settle(event.tx_id, event.event_ts, event.is_fraud, event.account_id, verdict)
            self.stats.feedback("labels_overturning_verdict" if kind == "overturned" else "labels_duplicate")
            if j is not None:
                self._joined(j, out, event.origin)
            return
        if verdict:
            self.stats.feedback("verdicts")
        j = profile.join_label(event.tx_id, event.event_ts, event.is_fraud, event.account_id,
                               _origin_tuple(event.origin), verdict)
        if j is not None:
            self._joined(j, out, event.origin)

    def on_batch(self, messages: list) -> list:
        out: list = []
        profile = self.profile
        on_transaction, last_hour = profile.on_transaction, profile.last_hour
        retention_s, infer, lateness_s = self._retention_s, self._infer_negatives, self._lateness_s
        for part, event in messages:
            try:
                if type(event) is Transaction:
                    hour = last_hour(event.event_ts)  # the rules' velocity fields (decision 0063)
                    # the allowed lateness: how long orphan labels wait, and how late a
                    # transaction may come and still count the last hour's
                    features, joined, expired = on_transaction(event, retention_s, infer, lateness_s, lateness_s)
                    out.append(FeaturedTransaction(event, features, part, hour))
                    for j in joined:
                        self._joined(j, out)
                    for orphan in expired:
                        out.append(self._orphan_dead_letter(orphan, "by its ts plus one learning step of event time",
                                                            event if orphan[0] == event.tx_id else None))
                else:
                    self._label(event, out)
            except Exception as exc:
                out.append(failure_of("account_profile", exc, event))
        return out

    def notify_at(self) -> Optional[datetime]:
        if self.profile.orphans:
            return datetime.now(timezone.utc) + timedelta(seconds=self.ORPHAN_CHECK_S)
        return None

    def on_notify(self) -> list:
        """Orphans the transactions' event time has passed by a learning step are dead letters."""
        horizon = self.event_time() - self.config.model.allowed_lateness_s
        profile = self.profile
        due = [o for o in profile.orphans if o[1] < horizon]
        if not due:
            return []
        profile.orphans = [o for o in profile.orphans if o[1] >= horizon]
        self.done = profile.empty
        return [self._orphan_dead_letter(o, "by its ts plus one learning step of event time") for o in due]

    def on_eof(self) -> list:
        # End of a bounded input: labels whose transaction never came are dead letters.
        orphans, self.profile.orphans = self.profile.orphans, []
        return [self._orphan_dead_letter(o, "by the end of the input") for o in orphans]

    def snapshot(self) -> tuple:
        return self.profile.snapshot()


class TerminalStage(Stage):
    """terminal_risk (keyed by ``terminal_id``): completes a transaction's feature vector
    with the terminal's counts and risk; a fraud label updates the risk and goes on."""

    def __init__(self, config: PipelineConfig, state: Optional[tuple] = None) -> None:
        self.profile = TerminalProfile(config.risk_delay_days, state, label_step_s=config.model.allowed_lateness_s)

    def on_batch(self, messages: list) -> list:
        out: list = []
        profile = self.profile
        for m in messages:
            try:
                if type(m) is FeaturedTransaction:
                    tx = m.tx
                    features = transaction_features(tx.amount, tx.event_ts) + m.features + profile.observe(tx.event_ts)
                    out.append(FeaturedTransaction(tx, features, m.part, m.last_hour))
                else:
                    profile.add_fraud(m.tx_ts, m.label_ts, m.unexplained)
                    out.append(m)
            except Exception as exc:
                out.append(failure_of("terminal_risk", exc, m))
        return out

    def snapshot(self) -> tuple:
        return self.profile.snapshot()


class PendingStage(Stage):
    """await_labels (keyed by model shard and hour of the transaction): keeps feature vectors
    until their labels come and sends a :class:`LabelledExample` on; the examples outside the
    negative sample leave as one :class:`UnsampledCount` per batch."""

    # A bucket some of whose labels never come (a frauds-only feed and a card that stopped
    # transacting) is dropped this long (wall clock) after it was last touched.
    FORGET_AFTER = timedelta(days=2)

    def __init__(self, config: PipelineConfig, state: Optional[tuple] = None, stats: StageStats = NO_STATS) -> None:
        self.bucket = PendingBucket(state)
        self.config = config
        self.stats = stats
        self._rate = config.model.negative_sampling
        self._frauds_feed = config.model.label_mode == "frauds"  # learn_at differs from label_ts only there
        # a verdict's transaction + this: when the label feed would teach it (learn_at's time for a fraud)
        self._feed_delay = config.retention_s if self._frauds_feed else config.risk_delay_days * DAY
        # Wall clock (POSIX s) of the last batch; restored buckets get the full grace too. The
        # datetime bytewax wants is built in notify_at, and only when a second has passed.
        self._touched = time.time()
        self._forget_at: Optional[datetime] = None
        self._forget_base = -math.inf
        stats.awaiting(len(self.bucket.features))

    def on_batch(self, messages: list) -> list:
        out: list = []
        bucket = self.bucket
        before = len(bucket.features)
        rate, unsampled, implicit = self._rate, 0, 0
        frauds_feed, feed_delay = self._frauds_feed, self._feed_delay
        for m in messages:
            try:
                if type(m) is FeaturedTransaction:
                    examples = bucket.add(m.tx.tx_id, m.features)
                elif m.release:
                    bucket.release(m.tx_id)
                    continue
                elif m.verdict:
                    examples = bucket.label(m.tx_id, m.label_ts, m.is_fraud, m.keep, m.tx_ts + feed_delay)
                else:
                    examples = bucket.label(m.tx_id, learn_at(m, self.config) if frauds_feed else m.label_ts,
                                            m.is_fraud, m.keep)
            except Exception as exc:
                out.append(failure_of("await_labels", exc, m))
                continue
            for example in examples:
                if in_sample(example.tx_id, example.is_fraud, example.packed, rate):
                    out.append(example)
                else:  # never learned: counted at its shard, and nothing more crosses processes
                    unsampled += 1
                    implicit += example.is_fraud is None
        if unsampled:
            out.append(UnsampledCount(unsampled, implicit))
        self._touched = time.time()
        after = len(bucket.features)
        if after != before:
            self.stats.awaiting(after - before)
        self.done = bucket.empty
        return out

    def notify_at(self) -> Optional[datetime]:
        """``FORGET_AFTER`` after the last batch (up to a second later: the datetime is made
        again only when the last batch is a second past the one it was made for)."""
        if self._touched > self._forget_base:
            base = self._forget_base = math.ceil(self._touched)
            self._forget_at = datetime.fromtimestamp(base, timezone.utc) + self.FORGET_AFTER
        return self._forget_at

    def on_notify(self) -> list:
        self.stats.unmatched(len(self.bucket.features) + len(self.bucket.orphans))
        self.stats.awaiting(-len(self.bucket.features))
        self.done = True
        return []

    def snapshot(self) -> tuple:
        return self.bucket.snapshot()


class ShardStage(Stage):
    """score_then_learn (keyed by model shard): a :class:`ModelShard` scores each
    :class:`FeaturedTransaction` (a :class:`Scored`) and learns the examples.

    ``name_of``: the shard's name from an account id (for its exports); ``publish``: gets
    the shard's partition clocks after every batch (the Kafka source's cross-process pacing).
    """

    def __init__(self, config: ModelConfig, state: Optional[bytes] = None, stats: StageStats = NO_STATS,
                 name_of: Optional[Callable[[str], str]] = None, exporter: Optional[Callable] = None,
                 publish: Optional[Callable[[dict], None]] = None) -> None:
        self.shard = ModelShard(config, state, exporter=exporter)
        self.stats = stats
        self.name_of = name_of
        self.publish = publish
        self.failures = 0  # messages the shard raised on (dead letters)

    def _failed(self, m: Any, exc: Exception) -> DeadLetter:
        self.failures += 1
        return failure_of("score_then_learn", exc, m)

    def on_batch(self, messages: list) -> list:
        shard = self.shard
        if shard.name is None and self.name_of is not None:
            first = next((m for m in messages if type(m) is FeaturedTransaction), None)
            if first is not None:
                shard.name = self.name_of(first.tx.account_id)
        failures = self.failures
        out = shard.on_batch(messages, on_error=self._failed)
        if self.publish is not None:
            self.publish(shard.clocks)
        self.stats.scored([s for s in out if type(s) is not DeadLetter] if self.failures != failures else out, shard)
        return out

    def on_eof(self) -> list:
        self.shard.export("shutdown")
        return []

    def snapshot(self) -> bytes:
        return self.shard.snapshot()


class PolicyStage(Stage):
    """alert_policy (keyed by ``account_id``): per-card cool-down over the alert candidates.

    ``handoff(alerts, candidates)``: called after every batch with its alerts and how many
    candidates it took, for an in-process analyst desk (:class:`learners.analysts.AnalystDesk`,
    ``fraudflow replay --analysts``)."""

    def __init__(self, config: PolicyConfig, state: Optional[tuple] = None, stats: StageStats = NO_STATS,
                 handoff: Optional[Callable[[list, int], None]] = None) -> None:
        self.policy = AlertPolicy(config, state)
        self.stats = stats
        self.handoff = handoff

    def on_batch(self, messages: list) -> list:
        out: list = []
        decide = self.policy.decide
        failed = 0
        for scored in messages:
            try:
                alert = decide(scored)
            except Exception as exc:
                out.append(failure_of("alert_policy", exc, scored))
                failed += 1
                continue
            if alert is not None:
                out.append(alert)
        alerts = [a for a in out if type(a) is not DeadLetter] if failed else out
        self.stats.alerted(alerts, len(messages) - len(out))
        if self.handoff is not None:
            self.handoff(alerts, len(messages))
        return out

    def snapshot(self) -> tuple:
        return self.policy.snapshot()


# -- rules -----------------------------------------------------------------------------------
_decode_json = msgspec.json.Decoder()


def rule_update(key: Optional[bytes], value: Optional[bytes], origin: Origin) -> Any:
    """One message of the rules topic (keyed by rule id, the rule's JSON, or no value: delete
    it), validated once, before it is sent to every model shard: a :class:`RuleUpdate`, or a
    dead letter (category ``bad_rule``) naming the rule and what is wrong (decision 0055).

    >>> where = Origin("rules", 7, 0)
    >>> rule_update(b"big", b'{"id": "big", "version": 1, "action": "alert", "when": "amount > 500"}', where).spec
    {'id': 'big', 'version': 1, 'action': 'alert', 'when': 'amount > 500', 'enabled': True}
    >>> rule_update(b"big", None, where)
    RuleUpdate(rule_id='big', spec=None, offset=7)
    >>> rule_update(b"big", b'{"id": "big", "version": 2, "action": "alert", "when": "amout > 5"}', where).reason
    "rule 'big': unknown field 'amout' at column 1 (did you mean 'amount'?)"
    >>> rule_update(b"other", b'{"id": "big", "version": 2, "action": "alert", "when": "amount > 5"}', where).reason
    "rule 'big': published under the key 'other'; a rule's key is its id (compaction keeps the latest per key)"
    """

    def bad(reason: str) -> DeadLetter:
        return DeadLetter(value or b"", reason, origin, step="read_rules", category="bad_rule")

    try:
        rule_id = key.decode("utf-8") if key else ""
    except UnicodeDecodeError:
        return bad("rule key is not UTF-8 text")
    if value is None:
        if not rule_id:
            return bad("a delete (a message without value) without a key: the key names the rule to delete")
        return RuleUpdate(rule_id, None, origin.position)
    named = f"rule {rule_id!r}" if rule_id else "rule without a key"
    try:
        doc = _decode_json.decode(value)
    except msgspec.DecodeError as exc:
        return bad(f"{named}: invalid JSON: {exc}")
    except Exception as exc:  # e.g. RecursionError on deeply nested input
        return bad(f"{named}: undecodable: {type(exc).__name__}")
    try:
        rule = parse_rule(doc)
    except RuleError as exc:
        return bad(str(exc) if rule_id else f"{exc} (and the message has no key)")
    if rule.id != rule_id:
        return bad(f"rule {rule.id!r}: published under the key {rule_id!r}; a rule's key is its id (compaction keeps "
                   "the latest per key)" if rule_id else
                   f"rule {rule.id!r}: published without a key; a rule's key is its id (compaction keeps the latest "
                   "per key, and a delete names it)")
    return RuleUpdate(rule.id, rule.spec(), origin.position)


_logged_updates: set = set()  # (rule id, offset, verdict): each update logged once per process, not per shard


def _log_update(m: RuleUpdate, verdict: str) -> None:
    mark = (m.rule_id, m.offset, verdict)
    if mark in _logged_updates:
        return
    if len(_logged_updates) > 10_000:
        _logged_updates.clear()
    _logged_updates.add(mark)
    log.log(logging.WARNING if verdict.startswith("ignored") else logging.INFO, "rule %r (offset %d): %s", m.rule_id,
            m.offset, verdict)


class RulesStage(Stage):
    """apply_rules (keyed by model shard): the analysts' rule book over the scored
    transactions (decision 0055). Its state is the book, snapshotted as the rules' specs.

    Per :class:`Scored`: an ``allow`` rule that matches makes it no alert candidate, whatever
    the score and whatever the alert rules say (allow wins, as in Stripe Radar); otherwise an
    ``alert`` rule makes it a candidate with ``("rule:ID", version)`` first among its reasons;
    ``tag`` rules write their tags (to the score record and the alert). The cool-down of
    ``alert_policy`` applies after this, to rule alerts too. A :class:`RuleUpdate` changes the
    book for the messages after it (a rule replaces only an older version of itself). With no
    rule in force a batch is returned as it is.

    ``initial``: the book of a key seen for the first time (``FRAUDFLOW_RULES_FILE``); a
    restored state wins over it. ``name_of``: the shard's name from an account id (metrics).

    >>> from connectors.events import Transaction
    >>> from learners.features import FEATURE_NAMES
    >>> stage = RulesStage([parse_rule({"id": "big", "version": 3, "action": "alert", "when": "amount > 500"})])
    >>> tx = Transaction("t-1", "c-1", 1522541276.0, 640.0, "m-1")
    >>> [s] = stage.on_batch([Scored(tx, 0.1, 0.5, "logreg", None, False, (640.0,) + (0.0,) * 28)])
    >>> s.candidate, s.reasons
    (True, [('rule:big', 3)])
    >>> _ = stage.on_batch([RuleUpdate("big", None)])  # deleted
    >>> stage.on_batch([Scored(tx, 0.1, 0.5, "logreg", None, False, (640.0,) + (0.0,) * 28)])[0].candidate
    False
    """

    def __init__(self, initial: Sequence[Rule] = (), state: Optional[list] = None, stats: StageStats = NO_STATS,
                 name_of: Optional[Callable[[str], str]] = None) -> None:
        self.book = RuleBook.from_snapshot(state) if state is not None else RuleBook(initial)
        self.stats = stats
        self.name_of = name_of
        self.name: Optional[str] = None
        stats.rule_book(self, len(self.book))

    def _learn_name(self, messages: list) -> None:
        first = next((m for m in messages if type(m) is Scored), None)
        if first is not None:
            self.name = self.name_of(first.tx.account_id)

    def on_batch(self, messages: list) -> list:
        if self.name is None and self.name_of is not None:
            self._learn_name(messages)
        book = self.book
        if not len(book):
            for m in messages:
                if type(m) is RuleUpdate:
                    break
            else:
                return messages  # no rule in force: nothing to do (the common case)
        out: list = []
        matches: dict = {}
        allowed = 0
        for m in messages:
            kind = type(m)
            if kind is Scored:
                try:
                    outcome = book.evaluate(m.tx, m.features, m.score, m.threshold, m.last_hour)
                    if outcome is not None:
                        if outcome.allow and (m.candidate or outcome.alert):
                            allowed += 1  # an alert the allow rules suppressed
                        m = self._decide(m, outcome, matches)
                except Exception as exc:
                    out.append(failure_of("apply_rules", exc, m))
                    continue
                out.append(m)
            elif kind is RuleUpdate:
                self._update(m)
            else:
                out.append(m)  # score_then_learn's dead letters go on
        if matches or allowed:
            self.stats.rule_matches(matches, allowed)
        return out

    def _decide(self, scored: Scored, outcome: Outcome, matches: dict) -> Scored:
        for action, names in (("allow", outcome.allow), ("alert", outcome.alert), ("tag", outcome.tags)):
            for name in names:
                k = (name, action)
                matches[k] = matches.get(k, 0) + 1
        if outcome.allow:
            candidate, reasons = False, None
        elif outcome.alert:
            get = self.book.get
            candidate = True
            reasons = [(f"rule:{rule_id}", get(rule_id).version) for rule_id in outcome.alert]
            reasons.extend(scored.reasons or ())
        else:
            candidate, reasons = scored.candidate, scored.reasons
        return Scored(scored.tx, scored.score, scored.threshold, scored.model, reasons, candidate, scored.features,
                      outcome.tags, scored.last_hour)

    def _update(self, m: RuleUpdate) -> None:
        book = self.book
        if m.spec is None:
            _log_update(m, "deleted" if book.delete(m.rule_id) else "delete of a rule not held (nothing to do)")
        else:
            try:
                rule = parse_rule(m.spec)  # validated at read_rules; compiled here (closures stay in-process)
            except RuleError as exc:  # pragma: no cover - read_rules let through what it should not have
                log.error("rule update %r refused at apply_rules: %s", m.rule_id, exc)
                return
            held = book.get(rule.id)
            if book.put(rule):
                _log_update(m, f"version {rule.version} in force ({'enabled' if rule.enabled else 'disabled'})")
            else:
                _log_update(m, f"ignored: version {rule.version} is not newer than version {held.version} in force")
        self.stats.rule_book(self, len(book))

    def snapshot(self) -> list:
        return self.book.snapshot()
