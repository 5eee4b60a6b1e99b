"""The fraud dataflow: ``python -m bytewax.run dataflows.fraud:flow``.

Steps (each a named Bytewax operator)::

    read_events -> parse_validate -> (dead letters) ------------------------------> dlq
                       |
                  key_by_account -> account_profile -> key_by_terminal -> terminal_risk
                                          |  (legitimate labels)                |
                                          +--> key_by_bucket --------+    key_by_bucket, key_by_shard
                                                                     v          v            |
                                                             await_labels (shard, hour)      |
                                                                     | (labelled examples)  | (transactions)
                                                                     +--> score_then_learn <-+
                                                                                  |
                                              scores <----------------------------+---> alert_policy -> alerts

* ``account_profile`` (keyed by ``account_id``): account features and the transactions
  awaiting labels; joins each label to its transaction (labels need no ``terminal_id``).
* ``terminal_risk`` (keyed by ``terminal_id``): terminal counts and fraud risk from
  released labels; completes the feature vector.
* ``await_labels`` (keyed by model shard and hour of the transaction): keeps feature vectors
  until their labels come and sends labelled examples on; small keys, so a snapshot carries
  only the hours that changed.
* ``score_then_learn`` (keyed by model shard): scores every transaction, learns each
  example at the event-time step after its label became known (no look-ahead).
* ``alert_policy`` (keyed by ``account_id``): threshold and per-card cool-down.

With several workers each keyed step's input comes through :func:`dataflows.exchange.keyed`:
one list per batch and destination worker crosses processes (``*_ferry`` steps), not one
pickled item per transaction (decision 0022).

Settings come from ``FRAUDFLOW_*`` variables (see ``dataflows.settings``); a bad one stops
start-up with a message naming it.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from connectors.events import (DeadLetter, Label, Origin, Score, Transaction, encode, format_ts, label_to_json,
                               parse_record, transaction_to_json)
from connectors.files import FileEventsSource, JsonlSink, truncate
from connectors.simulator import SimulatorConfig, SimulatorSource
from connectors.sources import BOARD, batch_span_for
from dataflows.cluster import (process_count, process_id, recovery_directory, recovery_enabled, shard_keys,
                               total_workers, under_bytewax_run)
from dataflows.exchange import keyed
from dataflows.exports import WarmStart, make_exporter, warm_start
from dataflows.metrics import serve
from dataflows.progress import RunStats, watch_idle
from dataflows.runtime import tune_gc
from dataflows.settings import Settings, SettingsError, load_settings
from dataflows.recovery_store import StateError, feature_layout_error, recovery_partitions
from learners.decision import AlertPolicy, PolicyConfig
from learners.features import AccountProfile, TerminalProfile
from learners.pending import VECTOR_BYTES, PendingBucket
from learners.pipeline import (PipelineConfig, account_step, copies_to, learn_at, pending_key, shard_for,
                               stamped_before_transaction, terminal_step)
from learners.scoring import ModelConfig, ModelShard, Scored, in_sample

__all__ = ["FlowParts", "build_flow", "pipeline_config"]

log = logging.getLogger(__name__)


def pipeline_config(settings: Settings, shards: int) -> PipelineConfig:
    model = ModelConfig(
        kind=settings.model_kind,
        seed=settings.model_seed,
        label_mode=settings.effective_label_mode,
        label_timeout_days=settings.label_timeout_days,
        allowed_lateness_s=settings.allowed_lateness_s,
        negative_sampling=settings.negative_sampling,
        warmup_frauds=settings.warmup_frauds,
        threshold=settings.threshold,
        coldstart_alert_rate=settings.coldstart_alert_rate,
        reasons=settings.reasons,
        export_interval_s=settings.snapshot_interval_hours * 3600.0,
        alert_budget_per_day=settings.alert_budget_per_day,
        alert_rate=settings.alert_rate,
        shards=shards,
    )
    return PipelineConfig(model=model, risk_delay_days=settings.risk_delay_days, shards=shards,
                          shard_examples=settings.shard_examples)


def simulator_config(settings: Settings) -> SimulatorConfig:
    return SimulatorConfig(
        customers=settings.sim_customers,
        terminals=settings.sim_terminals,
        days=settings.sim_days,
        start=settings.sim_start,
        seed=settings.sim_seed,
        radius=settings.sim_radius,
        label_delay_days=settings.sim_label_delay_days,
        labels=settings.sim_labels,
    )


# -- keyed stages --------------------------------------------------------------------------
# A step that raises on one event (a bug: validation let it through) must not stop the flow
# and then stop it again on every restart: the event goes to ``dlq`` with the exception, and
# the traceback to the log (decision 0025).
_FAILURE_LOG_EVERY_S = 60.0
_last_failure_log: dict[tuple[str, str], float] = {}


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


_NO_ORIGIN = Origin("unknown", -1)


def _joined_doc(account_id: str, joined) -> dict:
    return {"tx_id": joined.tx_id, "account_id": account_id, "ts": format_ts(joined.label_ts),
            "is_fraud": joined.is_fraud, "terminal_id": joined.terminal_id}


def _item_failure(step: str, exc: BaseException, item: tuple) -> DeadLetter:
    """A dead letter for a stage item: a transaction ``("tx", tx, ...)`` or a joined label
    ``(kind, account_id, joined)``."""
    if item[0] == "tx":
        return step_failure(step, exc, transaction_to_json(item[1]), item[1].origin)
    return step_failure(step, exc, _joined_doc(item[1], item[2]), None)


def _shard_failure(item: tuple, exc: BaseException) -> DeadLetter:
    if item[0] == "tx":
        return step_failure("score_then_learn", exc, transaction_to_json(item[1]), item[1].origin)
    doc = {"kind": item[0], **({"tx_id": item[1], "label_ts": format_ts(item[2]), "is_fraud": item[3]}
                               if item[0] != "unsampled" else {"received": item[1]})}
    return step_failure("score_then_learn", exc, doc, None)


def _before_reason(label_ts: float, tx_ts: float) -> str:
    return (f"label stamped before its transaction (label ts {format_ts(label_ts)}, transaction ts "
            f"{format_ts(tx_ts)}): not learned")


def _origin_tuple(origin: Optional[Origin]) -> Optional[tuple]:
    return None if origin is None else (origin.source, origin.position, origin.partition)


class _AccountLogic(StatefulBatchLogic):
    """account_profile: features, pending transactions, label join.

    A label whose transaction this account has not seen waits (an orphan) until the
    transactions' event time has passed the label by one learning step (``allowed_lateness_s``,
    read off the model shards' clocks, :data:`connectors.sources.BOARD`); then it is a dead letter
    naming where it was read. A transaction cannot come later than that without being late.
    """

    ORPHAN_CHECK_S = 1.0  # wall-clock poll while orphans wait for event time to pass them

    def __init__(self, config: PipelineConfig, stats: RunStats, state: Optional[tuple]) -> None:
        self.profile = AccountProfile(state)
        self.config = config
        self.stats = stats

    def _joined(self, account_id: str, joined, out: list, origin: Optional[Origin] = None) -> None:
        if stamped_before_transaction(joined):
            out.append(("dead", DeadLetter(encode(_joined_doc(account_id, joined)), _before_reason(joined.label_ts,
                                                                                                   joined.tx_ts),
                                           origin or _NO_ORIGIN, step="account_profile", category="bad_timestamp")))
            return
        if joined.is_fraud:
            out.append(("fraud", account_id, joined))
            self.stats.confirm(joined.tx_id)
        else:
            out.append(("label", account_id, joined))

    @staticmethod
    def _orphan_dead_letter(orphan: tuple, why: str, tx: Optional[Transaction] = None) -> tuple:
        """``tx``: the orphan's own transaction, which came after the label's ts."""
        tx_id, label_ts, is_fraud, account_id, origin = (*orphan, "?", None)[:5] if len(orphan) < 5 else orphan
        raw = encode({"tx_id": tx_id, "account_id": account_id, "ts": format_ts(label_ts), "is_fraud": is_fraud})
        where = Origin(*origin) if origin else Origin("labels", -1)
        if tx is not None:
            return ("dead", DeadLetter(raw, _before_reason(label_ts, tx.event_ts), where, step="account_profile",
                                       category="bad_timestamp"))
        return ("dead", DeadLetter(raw, f"label for a transaction this flow never saw ({why})", where,
                                   step="account_profile", category="unknown_transaction"))

    def _one(self, part: int, event: Any, out: list) -> None:
        profile = self.profile
        if type(event) is Transaction:
            features, joined, expired = account_step(profile, event, self.config)
            out.append(("tx", event, features, part))
            for j in joined:
                self._joined(event.account_id, j, out)
            for orphan in expired:
                out.append(self._orphan_dead_letter(orphan, "by its ts plus one learning step of event time",
                                                    event if orphan[0] == event.tx_id else None))
        else:
            j = profile.join_label(event.tx_id, event.event_ts, event.is_fraud, event.account_id,
                                   _origin_tuple(event.origin))
            if j is not None:
                self._joined(event.account_id, j, out, event.origin)

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        for part, event in values:
            try:
                self._one(part, event, out)
            except Exception as exc:
                doc = transaction_to_json(event) if type(event) is Transaction else label_to_json(event)
                out.append(("dead", step_failure("account_profile", exc, doc, event.origin)))
        return out, False

    def notify_at(self) -> Optional[datetime]:
        if self.profile.orphans:
            return datetime.now(timezone.utc) + timedelta(seconds=self.ORPHAN_CHECK_S)
        return None

    def on_notify(self) -> tuple[list, bool]:
        """Orphans the transactions' event time has passed by a learning step are dead letters."""
        horizon = BOARD.event_time() - self.config.model.allowed_lateness_s
        profile = self.profile
        due = [o for o in profile.orphans if o[1] < horizon]
        if not due:
            return [], False
        profile.orphans = [o for o in profile.orphans if o[1] >= horizon]
        out = [self._orphan_dead_letter(o, "by its ts plus one learning step of event time") for o in due]
        return out, profile.empty

    def on_eof(self) -> tuple[list, bool]:
        # End of a bounded input: labels whose transaction never came are dead letters.
        orphans, self.profile.orphans = self.profile.orphans, []
        return [self._orphan_dead_letter(o, "by the end of the input") for o in orphans], False

    def snapshot(self) -> tuple:
        return self.profile.snapshot()


class _TerminalLogic(StatefulBatchLogic):
    """terminal_risk: terminal features; fraud labels update the risk."""

    def __init__(self, delay_days: int, step_s: float, state: Optional[tuple]) -> None:
        self.profile = TerminalProfile(delay_days, state, label_step_s=step_s)

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        profile = self.profile
        for item in values:
            try:
                if item[0] == "tx":
                    _, tx, account_features, part = item
                    out.append(("tx", tx, terminal_step(profile, tx, account_features), part))
                else:
                    _, account_id, joined = item
                    profile.add_fraud(joined.tx_ts, joined.label_ts, joined.unexplained)
                    out.append(("label", account_id, joined))
            except Exception as exc:
                out.append(("dead", _item_failure("terminal_risk", exc, item)))
        return out, False

    def snapshot(self) -> tuple:
        return self.profile.snapshot()


class _BucketLogic(StatefulBatchLogic):
    """await_labels: feature vectors of one (shard, hour) until their labels come. Examples
    outside the negative sample leave as one ("unsampled", count, inferred) item per batch."""

    # A bucket some of whose labels never come (a frauds-only feed and a card that stopped
    # transacting) is dropped this long (wall clock) after it was last touched.
    FORGET_AFTER = timedelta(days=2)

    def __init__(self, config: PipelineConfig, stats: RunStats, state: Optional[tuple]) -> None:
        self.bucket = PendingBucket(state)
        self.config = config
        self.stats = stats
        self._touched = datetime.now(timezone.utc)  # restored buckets get the full grace too
        stats.awaiting(len(self.bucket.features))

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        bucket = self.bucket
        before = len(bucket.features)
        rate, unsampled, implicit = self.config.model.negative_sampling, 0, 0
        for item in values:
            try:
                if item[0] == "tx":
                    _, tx, features, _ = item
                    examples = bucket.add(tx.tx_id, features)
                else:
                    _, _, joined = item
                    examples = bucket.label(joined.tx_id, learn_at(joined, self.config), joined.is_fraud)
            except Exception as exc:
                out.append(("dead", _item_failure("await_labels", exc, item)))
                continue
            for example in examples:
                if in_sample(example[0], example[2], example[3], rate):
                    out.append(("example", *example))
                else:  # never learned: counted at its shard, and nothing more crosses processes
                    unsampled += 1
                    implicit += example[2] is None
        if unsampled:
            out.append(("unsampled", unsampled, implicit))
        self._touched = datetime.now(timezone.utc)
        self.stats.awaiting(len(bucket.features) - before)
        return out, bucket.empty

    def notify_at(self) -> Optional[datetime]:
        return self._touched + self.FORGET_AFTER

    def on_notify(self) -> tuple[list, bool]:
        self.stats.unmatched(len(self.bucket.features) + len(self.bucket.orphans))
        self.stats.awaiting(-len(self.bucket.features))
        return [], True

    def snapshot(self) -> tuple:
        return self.bucket.snapshot()


class _ShardLogic(StatefulBatchLogic):
    """score_then_learn: one model shard."""

    def __init__(self, config: ModelConfig, stats: RunStats, name_of: Callable[[str], str],
                 exporter: Optional[Callable], warm: Optional[WarmStart], state: Optional[bytes]) -> None:
        self.shard = ModelShard(config, state, exporter=exporter)
        if state is None and warm is not None:
            warm.apply(self.shard)
        self.stats = stats
        self.name_of = name_of

    def on_batch(self, values: list) -> tuple[list, bool]:
        shard = self.shard
        if shard.name is None:
            first_tx = next((v for v in values if v[0] == "tx"), None)
            if first_tx is not None:
                shard.name = self.name_of(first_tx[1].account_id)
        failed: list = []

        def on_error(item: tuple, exc: Exception) -> DeadLetter:
            failed.append(item)
            return _shard_failure(item, exc)

        out = shard.on_batch(values, on_error=on_error)
        BOARD.publish(shard.clocks)  # cross-process pacing of the Kafka source
        self.stats.scored([s for s in out if type(s) is not DeadLetter] if failed else out, shard)
        return out, False


    def on_eof(self) -> tuple[list, bool]:
        self.shard.export("shutdown")
        return [], False

    def snapshot(self) -> bytes:
        return self.shard.snapshot()


class _PolicyLogic(StatefulBatchLogic):
    """alert_policy: per-card cool-down over the shard's alert candidates."""

    def __init__(self, config: PolicyConfig, stats: RunStats, state: Optional[tuple]) -> None:
        self.policy = AlertPolicy(config, state)
        self.stats = stats

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        decide = self.policy.decide
        failed = 0
        for scored in values:
            try:
                alert = decide(scored)
            except Exception as exc:
                out.append(step_failure("alert_policy", exc, transaction_to_json(scored.tx), scored.tx.origin))
                failed += 1
                continue
            if alert is not None:
                out.append(alert)
        self.stats.alerted([a for a in out if type(a) is not DeadLetter] if failed else out, len(values) - len(out))
        return out, False

    def snapshot(self) -> tuple:
        return self.policy.snapshot()


# -- wiring --------------------------------------------------------------------------------
def _parse(item: tuple[int, Any]) -> tuple[int, Any]:
    part, record = item
    if isinstance(record, (Transaction, Label, DeadLetter)):
        return item
    raw, origin, kind = record  # raw bytes from a broker
    return part, parse_record(raw, origin, kind)


def _score_record(scored: Scored) -> Score:
    tx = scored.tx
    return Score(tx.tx_id, round(scored.score, 6), scored.model, tx.account_id, format_ts(tx.event_ts))


class FlowParts:
    """What :func:`build_flow` built: the flow, its run statistics and its settings."""

    def __init__(self, flow: Dataflow, stats: RunStats, settings: Settings) -> None:
        self.flow = flow
        self.stats = stats
        self.settings = settings


def build_flow(
    settings: Settings,
    source: Optional[Source] = None,
    alerts_sink: Optional[Sink] = None,
    dlq_sink: Optional[Sink] = None,
    scores_sink: Optional[Sink] = None,
    shards: Optional[int] = None,
) -> FlowParts:
    """Wire the fraud flow from settings; sources and sinks may be passed in (tests)."""
    workers = total_workers()
    n_shards = shards or settings.model_shards or workers
    config = pipeline_config(settings, n_shards)
    keys = shard_keys(n_shards)  # names independent of the worker count: models survive rescaling
    stats = RunStats(progress=settings.progress, shared_examples=config.shard_examples == "all")
    BOARD.clear()  # a new flow in this process: no clocks from an earlier one

    if source is None:
        source = _default_source(settings)
    if alerts_sink is None or dlq_sink is None or (scores_sink is None and (settings.scores or settings.emit_scores)):
        default_alerts, default_dlq, default_scores = _default_sinks(settings)
        alerts_sink = alerts_sink or default_alerts
        dlq_sink = dlq_sink or default_dlq
        scores_sink = scores_sink or default_scores

    flow = Dataflow("fraudflow")
    inp = op.input("read_events", flow, source)
    parsed = op.map("parse_validate", inp, _parse)
    valid = op.branch("split_dead_letters", parsed, lambda pe: type(pe[1]) is not DeadLetter)
    by_account = keyed("key_by_account", valid.trues, lambda pe: (pe[1].account_id, pe), workers)
    account_out = op.stateful_batch(
        "account_profile", by_account, lambda state: _AccountLogic(config, stats, state)
    )
    to_terminal = op.branch("terminal_bound", op.key_rm("unkey_account", account_out),
                            lambda v: v[0] in ("tx", "fraud"))
    by_terminal = keyed("key_by_terminal", to_terminal.trues,
                        lambda v: (v[1].terminal_id if v[0] == "tx" else v[2].terminal_id, v), workers)
    delay, step = config.risk_delay_days, config.model.allowed_lateness_s
    terminal_out = op.stateful_batch("terminal_risk", by_terminal,
                                     lambda state: _TerminalLogic(delay, step, state))
    rest = op.branch("labels_or_dead", to_terminal.falses, lambda v: v[0] == "label")

    def bucket_key(v: tuple) -> tuple[str, tuple]:
        if v[0] == "tx":
            tx = v[1]
            return pending_key(keys[shard_for(tx.account_id, n_shards)], tx.event_ts), v
        joined = v[2]
        return pending_key(keys[shard_for(v[1], n_shards)], joined.tx_ts), v

    # A transaction goes to its model shard straight from terminal_risk (scored without an
    # extra hop) and, in parallel, to await_labels, which keeps its features for its label.
    terminal_split = op.branch("terminal_dead", op.key_rm("unkey_terminal", terminal_out), lambda v: v[0] != "dead")
    terminal_items = terminal_split.trues
    to_buckets = op.merge("to_buckets", terminal_items, rest.trues)
    awaiting_split = op.branch("await_dead", op.stateful_batch(
        "await_labels", keyed("key_by_bucket", to_buckets, bucket_key, workers),
        lambda state: _BucketLogic(config, stats, state)), lambda kv: kv[1][0] != "dead")
    awaiting = awaiting_split.trues
    to_score = op.filter("transactions_to_score", terminal_items, lambda v: v[0] == "tx")
    shard_index = {key: i for i, key in enumerate(keys)}

    def to_shards(kv: tuple[str, tuple]) -> list[tuple[str, tuple]]:
        """An example to its own shard and, as a copy, to every shard that learns it too
        (FRAUDFLOW_SHARD_EXAMPLES=all: the same model on each, whatever the split; decision 0018)."""
        own, example = kv[0].split("/", 1)[0], kv[1]
        out = [(own, example)]
        if example[0] == "unsampled":
            return out
        others = copies_to(shard_index[own], example[1:], config)
        if others:
            copy = ("copy", *example[1:])
            out.extend((keys[i], copy) for i in others)
        return out

    examples = keyed("examples_to_shards", awaiting, to_shards, workers, many=True)
    by_shard = op.merge(
        "to_shard",
        keyed("key_by_shard", to_score, lambda v: (keys[shard_for(v[1].account_id, n_shards)], v), workers),
        examples,
    )
    model_config = config.model
    exporter = make_exporter(settings, stats.exported)
    warm = warm_start(settings)

    def name_of(account_id: str) -> str:
        return keys[shard_for(account_id, n_shards)]

    scored_split = op.branch("shard_dead", op.key_rm("unkey_shard", op.stateful_batch(
        "score_then_learn", by_shard, lambda state: _ShardLogic(model_config, stats, name_of, exporter, warm, state)
    )), lambda s: type(s) is not DeadLetter)
    scored = scored_split.trues
    if scores_sink is not None:
        _write("write_scores", op.map("score_record", scored, _score_record), scores_sink)
    candidates = op.filter("alert_candidates", scored, lambda s: s.reasons is not None)
    policy_config = PolicyConfig(cooldown_s=settings.cooldown_hours * 3600.0)
    alerts = op.stateful_batch(
        "alert_policy",
        keyed("key_candidates", candidates, lambda s: (s.tx.account_id, s), workers),
        lambda state: _PolicyLogic(policy_config, stats, state),
    )
    alerts_split = op.branch("policy_dead", op.key_rm("unkey_alerts", alerts), lambda a: type(a) is not DeadLetter)
    _write("write_alerts", alerts_split.trues, alerts_sink)
    dead = op.merge(
        "dead_letters",
        op.map("parse_dead", valid.falses, lambda pe: pe[1]),
        op.map("stage_dead", op.merge("stages_dead", rest.falses, terminal_split.falses,
                                      op.key_rm("unkey_await_dead", awaiting_split.falses)), lambda v: v[1]),
        scored_split.falses,
        alerts_split.falses,
    )
    _write("write_dlq", op.inspect("count_dead", dead, lambda _s, d: stats.dead(d.category)), dlq_sink)
    if settings.metrics_port:
        serve(stats, settings.metrics_port, liveness_timeout_s=settings.liveness_timeout_s,
              request_snapshot=stats.request_exports)
    return FlowParts(flow, stats, settings)


def _write(step_id: str, up: Stream, sink: Sink) -> None:
    """``op.output``; a partitioned sink (Kafka: it confirms deliveries when the epoch closes)
    takes ``(key, item)`` pairs and picks its partition itself, so the key is empty."""
    if isinstance(sink, FixedPartitionedSink):
        up = op.key_on(f"{step_id}_pairs", up, _no_key)
    op.output(step_id, up, sink)


def _no_key(_item: Any) -> str:
    return ""


def _default_source(settings: Settings) -> Source:
    span = batch_span_for(settings.allowed_lateness_s)
    if settings.source == "simulator":
        return SimulatorSource(simulator_config(settings), partitions=settings.sim_partitions, max_batch_span_s=span)
    if settings.source == "files":
        return FileEventsSource(settings.transactions_file, settings.labels_file, max_batch_span_s=span,
                                max_lead_s=settings.max_event_lead_hours * 3600)
    from connectors.kafka import kafka_source

    return kafka_source(settings, process_id(), process_count())


def _default_sinks(settings: Settings) -> tuple[Sink, Sink, Optional[Sink]]:
    if settings.source == "kafka":
        from connectors.kafka import kafka_sinks

        return kafka_sinks(settings, process_id(), process_count(), total_workers())
    scores = JsonlSink(settings.scores) if settings.scores else None
    return JsonlSink(settings.alerts), JsonlSink(settings.dlq), scores


def _prepare_outputs(settings: Settings) -> None:
    """A fresh run (no recovery) starts with empty output files, written by process 0."""
    if settings.source == "kafka" or recovery_enabled() or process_id() != 0:
        return
    for path in (settings.alerts, settings.dlq, settings.scores):
        truncate(path)


def _startup_problem(settings: Settings) -> Optional[str]:
    """What stops this run before it starts (one line), or None: a recovery directory that
    cannot be resumed, an unreachable broker, missing topics (waited for a bounded time)."""
    directory = recovery_directory()
    if directory:
        try:
            recovery_partitions(directory)
        except StateError as exc:
            return f"-r {directory}: {exc}"
        problem = feature_layout_error(directory, VECTOR_BYTES)
        if problem:
            return problem
    if settings.source == "kafka":
        from connectors.kafka import KafkaStartupError, check_cluster

        try:
            check_cluster(settings)
        except KafkaStartupError as exc:
            return str(exc)
    return None


def _one_line(exc: BaseException) -> str:
    """``OverflowError: … (error calling … in step "fraudflow.await_labels" …)``: the root cause
    first, then where bytewax says it happened."""
    root = exc
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    text = f"{type(root).__name__}: {root}".splitlines()[0]
    if re.search(r"(Send|Recv) thread panic", text):  # timely's connection to a peer process broke
        return ("lost the connection to another process of the cluster (it died, or the network failed); "
                "restart every process (with -r they resume from the last snapshot)")
    if root is not exc:
        where = re.sub(r"^\(src/[^)]*\):\s*", "", str(exc)).splitlines()
        if where:
            text += f" ({where[0]})"
    return text[:500]


def _report_failures(stats: RunStats, debug: bool) -> None:
    """An exception that ends the run is one line (the traceback with FRAUDFLOW_LOG_LEVEL=DEBUG),
    and the summary says the run failed."""
    previous = sys.excepthook

    def hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _one_line(exc)
        stats.failed(reason)
        if debug:
            previous(exc_type, exc, tb)
        print(f"fraudflow: the flow stopped: {reason}"
              + ("" if debug else " (FRAUDFLOW_LOG_LEVEL=DEBUG shows the traceback)"), file=sys.stderr, flush=True)

    sys.excepthook = hook
    if not debug:
        # bytewax turns a step's exception into a Rust panic of its worker thread; its stack
        # (dozens of lines, with RUST_BACKTRACE=1) says nothing the line above does not
        os.environ["RUST_BACKTRACE"] = "0"


def _kafka_note(problem: Optional[str]) -> Optional[str]:
    return f"Kafka client: {problem}" if problem else None


def _module_flow() -> Dataflow:
    tune_gc()
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        problem = _startup_problem(settings) if under_bytewax_run() else None
        if problem:
            sys.exit(f"fraudflow: {problem}")
        parts = build_flow(settings)
    except SettingsError as exc:
        sys.exit(f"fraudflow: bad setting: {exc}")
    if under_bytewax_run():
        _prepare_outputs(settings)
        _report_failures(parts.stats, debug=settings.log_level == "DEBUG")
        if settings.progress:
            atexit.register(parts.stats.print_summary, settings)
            if settings.source == "kafka":
                from connectors.kafka import kafka_problem

                watch_idle(parts.stats, settings.idle_report_s,
                           f"most likely writing to a Kafka broker that does not answer ({settings.kafka_brokers}, "
                           "FRAUDFLOW_KAFKA_BROKERS); it continues when the broker answers",
                           lambda within_s: _kafka_note(kafka_problem(within_s)))
            else:
                watch_idle(parts.stats, settings.idle_report_s)
    return parts.flow


def __getattr__(name: str) -> Any:
    # ``flow`` is built on first access (``python -m bytewax.run dataflows.fraud:flow``),
    # so importing this module for ``build_flow`` reads no settings.
    if name == "flow":
        value = globals()["flow"] = _module_flow()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
