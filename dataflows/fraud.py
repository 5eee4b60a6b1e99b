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
                                   read_rules -> validate_rules --(every shard)--> apply_rules
                                                 (bad rules: dlq)                 |
                                              scores <----------------------------+---> alert_policy -> alerts

Each keyed step runs one stage object of :mod:`learners.stages` through one adapter
(``_StageLogic``); what flows between them are the types of :mod:`learners.messages`, and
:class:`learners.stages.Routes` keys them.

* ``account_profile`` (keyed by ``account_id``): account features and the transactions
  awaiting labels; joins each label to its transaction (labels need no ``terminal_id``).
* ``terminal_risk`` (keyed by ``terminal_id``): terminal counts and fraud risk from
  released labels; completes the feature vector.
* ``await_labels`` (keyed by model shard and hour of the transaction): keeps feature vectors
  until their labels come and sends labelled examples on; small keys, so a snapshot carries
  only the hours that changed.
* ``score_then_learn`` (keyed by model shard): scores every transaction, learns each
  example at the event-time step after its label became known (no look-ahead).
* ``apply_rules`` (keyed by model shard): the analysts' rules (allow, alert, tag) over the
  scored transactions; rule updates from the rules topic reach every shard (decision 0055).
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
import os
import re
import sys
from pathlib import Path
from datetime import datetime
from typing import Any, Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from connectors.events import DeadLetter, Label, Score, Transaction, Verdict, format_ts, parse_record
from connectors.files import FileEventsSource, JsonlSink, truncate
from connectors.simulator import SimulatorConfig, SimulatorSource
from connectors.sources import BOARD, batch_span_for
from dataflows.cluster import (process_count, process_id, recovery_directory, recovery_enabled, shard_keys,
                               total_workers, under_bytewax_run)
from dataflows.exchange import keyed
from dataflows.exports import make_exporter, warm_start
from dataflows.metrics import serve
from dataflows.progress import RunStats, watch_idle
from dataflows.runtime import tune_gc
from dataflows.settings import Settings, SettingsError, SimSettings, load_settings
from dataflows.recovery_store import StateError, feature_layout_error, recovery_partitions
from learners.decision import PolicyConfig
from learners.messages import FeaturedTransaction, JoinedLabel, RuleUpdate, Scored
from learners.pending import VECTOR_BYTES
from learners.stages import (AccountStage, PendingStage, PipelineConfig, PolicyStage, Routes, RulesStage, ShardStage,
                             Stage, TerminalStage, rule_update)

__all__ = ["FlowParts", "build_flow", "pipeline_config"]


def pipeline_config(settings: Settings, shards: int) -> PipelineConfig:
    return PipelineConfig(model=settings.model_config(shards), risk_delay_days=settings.model.risk_delay_days,
                          shards=shards, shard_examples=settings.model.shard_examples,
                          policy=PolicyConfig(cooldown_s=settings.policy.cooldown_hours * 3600.0))


def simulator_config(sim: SimSettings) -> SimulatorConfig:
    return SimulatorConfig(customers=sim.customers, terminals=sim.terminals, days=sim.days, start=sim.start,
                           seed=sim.seed, radius=sim.radius, label_delay_days=sim.label_delay_days, labels=sim.labels)


# -- keyed stages --------------------------------------------------------------------------
class _StageLogic(StatefulBatchLogic):
    """Any stage of :mod:`learners.stages` as a Bytewax stateful step (its state is kept, and
    recovered, under the step id; ``stage.done`` discards it)."""

    __slots__ = ("stage",)

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def on_batch(self, values: list) -> tuple[list, bool]:
        stage = self.stage
        return stage.on_batch(values), stage.done

    def on_notify(self) -> tuple[list, bool]:
        stage = self.stage
        return stage.on_notify(), stage.done

    def on_eof(self) -> tuple[list, bool]:
        stage = self.stage
        return stage.on_eof(), stage.done

    def notify_at(self) -> Optional[datetime]:
        return self.stage.notify_at()

    def snapshot(self) -> Any:
        return self.stage.snapshot()


# -- wiring --------------------------------------------------------------------------------
def _parse(item: tuple[int, Any]) -> tuple[int, Any]:
    part, record = item
    if isinstance(record, (Transaction, Label, Verdict, DeadLetter)):
        return item
    raw, origin, kind = record  # raw bytes from a broker
    return part, parse_record(raw, origin, kind)


def _score_record(scored: Scored) -> Score:
    tx = scored.tx
    return Score(tx.tx_id, round(scored.score, 6), scored.model, tx.account_id, format_ts(tx.event_ts), scored.tags)


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
    desk: Optional[Any] = None,
) -> FlowParts:
    """Wire the fraud flow from settings; sources and sinks may be passed in (tests).

    ``desk``: simulated analysts inside the loop (:class:`learners.analysts.AnalystDesk`,
    ``fraudflow replay --analysts``; files source, one process): the alert policy hands its
    alerts to it and the files source injects its verdicts (:class:`connectors.files.FileEventsSource`)."""
    workers = total_workers()
    n_shards = shards or settings.model.shards or workers
    config = pipeline_config(settings, n_shards)
    keys = shard_keys(n_shards)  # names independent of the worker count: models survive rescaling
    stats = RunStats(progress=settings.outputs.progress, shared_examples=config.shard_examples == "all")
    BOARD.clear()  # a new flow in this process: no clocks from an earlier one

    if source is None:
        source = _default_source(settings, desk)
    wants_scores = bool(settings.outputs.scores or settings.outputs.emit_scores)
    if alerts_sink is None or dlq_sink is None or (scores_sink is None and wants_scores):
        default_alerts, default_dlq, default_scores = _default_sinks(settings)
        alerts_sink = alerts_sink or default_alerts
        dlq_sink = dlq_sink or default_dlq
        scores_sink = scores_sink or default_scores

    routes = Routes(config, keys)
    flow = Dataflow("fraudflow")
    inp = op.input("read_events", flow, source)
    parsed = op.map("parse_validate", inp, _parse)
    valid = op.branch("split_dead_letters", parsed, lambda pe: type(pe[1]) is not DeadLetter)
    by_account = keyed("key_by_account", valid.trues, lambda pe: (pe[1].account_id, pe), workers)
    account_out = op.stateful_batch(
        "account_profile", by_account,
        lambda state: _StageLogic(AccountStage(config, state, stats, event_time=BOARD.event_time)))
    to_terminal = op.branch("terminal_bound", op.key_rm("unkey_account", account_out), routes.to_terminal)
    by_terminal = keyed("key_by_terminal", to_terminal.trues, lambda m: (routes.terminal(m), m), workers)
    terminal_out = op.stateful_batch("terminal_risk", by_terminal,
                                     lambda state: _StageLogic(TerminalStage(config, state)))
    rest = op.branch("labels_or_dead", to_terminal.falses, lambda m: type(m) is JoinedLabel)

    # A transaction goes to its model shard straight from terminal_risk (scored without an
    # extra hop) and, in parallel, to await_labels, which keeps its features for its label.
    terminal_split = op.branch("terminal_dead", op.key_rm("unkey_terminal", terminal_out),
                               lambda m: type(m) is not DeadLetter)
    terminal_items = terminal_split.trues
    to_buckets = op.merge("to_buckets", terminal_items, rest.trues)
    awaiting_split = op.branch("await_dead", op.stateful_batch(
        "await_labels", keyed("key_by_bucket", to_buckets, lambda m: (routes.bucket(m), m), workers),
        lambda state: _StageLogic(PendingStage(config, state, stats))), lambda kv: type(kv[1]) is not DeadLetter)
    awaiting = awaiting_split.trues
    to_score = op.filter("transactions_to_score", terminal_items, lambda m: type(m) is FeaturedTransaction)
    examples = keyed("examples_to_shards", awaiting, lambda kv: routes.examples(*kv), workers, many=True)
    by_shard = op.merge(
        "to_shard",
        keyed("key_by_shard", to_score, lambda m: (routes.shard(m.tx.account_id), m), workers),
        examples,
    )
    model_config = config.model
    exporter = make_exporter(settings, stats.exported)
    warm = warm_start(settings.snapshots, settings.model.kind)

    def shard_stage(state: Optional[bytes]) -> _StageLogic:
        stage = ShardStage(model_config, state, stats, routes.shard, exporter, publish=BOARD.publish)
        if state is None and warm is not None:
            warm.apply(stage.shard)
        return _StageLogic(stage)

    shard_out = op.stateful_batch("score_then_learn", by_shard, shard_stage)
    # The analysts' rules (decision 0055): a rule book per model shard, on the shard's own
    # worker (score_then_learn's output is keyed by the shard already: nothing crosses
    # processes); rule updates are validated once where they are read and sent to every shard.
    initial_rules = _initial_rules(settings)
    rules_in = _rules_input(flow, settings, keys, workers)
    bad_rules = None
    if rules_in is not None:
        updates = op.branch("rule_or_bad", op.map("validate_rules", rules_in, _validate_rule),
                            lambda m: type(m) is RuleUpdate)
        bad_rules = updates.falses
        shard_out = op.merge("scored_and_rules", shard_out, keyed(
            "rules_to_shards", updates.trues, lambda u: [(key, u) for key in keys], workers, many=True))
    scored_split = op.branch("shard_dead", op.key_rm("unkey_shard", op.stateful_batch(
        "apply_rules", shard_out,
        lambda state: _StageLogic(RulesStage(initial_rules, state, stats, name_of=routes.shard)))),
        lambda s: type(s) is not DeadLetter)
    scored = scored_split.trues
    if desk is not None:  # the loop's drain count: transactions that were no alert candidate are done here
        scored = op.inspect("count_for_analysts", scored, lambda _s, item: desk.on_scored(item))
    if scores_sink is not None:
        _write("write_scores", op.map("score_record", scored, _score_record), scores_sink)
    candidates = op.filter("alert_candidates", scored, lambda s: s.candidate)
    alerts = op.stateful_batch(
        "alert_policy",
        keyed("key_candidates", candidates, lambda s: (s.tx.account_id, s), workers),
        lambda state: _StageLogic(PolicyStage(config.policy, state, stats,
                                              handoff=desk.on_alerts if desk is not None else None)),
    )
    alerts_split = op.branch("policy_dead", op.key_rm("unkey_alerts", alerts), lambda a: type(a) is not DeadLetter)
    _write("write_alerts", alerts_split.trues, alerts_sink)
    dead = op.merge(
        "dead_letters",
        op.map("parse_dead", valid.falses, lambda pe: pe[1]),
        op.merge("stages_dead", rest.falses, terminal_split.falses,
                 op.key_rm("unkey_await_dead", awaiting_split.falses)),
        scored_split.falses,
        alerts_split.falses,
        *([bad_rules] if bad_rules is not None else []),
    )
    _write("write_dlq", op.inspect("count_dead", dead, lambda _s, d: stats.dead(d.category)), dlq_sink)
    if settings.ops.metrics_port:
        serve(stats, settings.ops.metrics_port, liveness_timeout_s=settings.ops.liveness_timeout_s,
              request_snapshot=stats.request_exports)
    return FlowParts(flow, stats, settings)


def _initial_rules(settings: Settings) -> list:
    """The rule book every model shard starts with (``rules_file``); a bad file is a bad setting."""
    path = settings.input.rules_file
    if not path:
        return []
    from learners.rules import RuleError, read_rules

    try:
        rules = read_rules(path)
    except RuleError as exc:
        raise SettingsError(f"FRAUDFLOW_RULES_FILE: {exc}") from None
    logging.getLogger(__name__).info("%d rules from %s in every rule book", len(rules), path)
    return rules


def _rules_input(flow: Dataflow, settings: Settings, keys: tuple, workers: int) -> Optional[Stream]:
    """The rules topic as a stream of :class:`connectors.kafka.RuleMessage` (Kafka source
    only, and only with ``kafka.topic_rules``); None otherwise."""
    if settings.input.source != "kafka" or not settings.kafka.topic_rules:
        return None
    from connectors.kafka import rules_source

    return op.input("read_rules", flow, rules_source(settings.kafka, process_id(), process_count()))


def _validate_rule(message: Any) -> Any:
    """``validate_rules``: a rules-topic record -> :class:`RuleUpdate` or a ``bad_rule`` dead letter."""
    update = rule_update(message.key, message.value, message.origin)
    log = logging.getLogger(__name__)
    if type(update) is RuleUpdate:
        log.info("rule %r read at %s: %s", update.rule_id, message.origin.as_dict(),
                 "delete" if update.spec is None else f"version {update.spec['version']}, sent to every model shard")
    else:
        log.warning("bad rule at %s (dead-lettered; the version in force stays): %s", message.origin.as_dict(),
                    update.reason)
    return update


def _write(step_id: str, up: Stream, sink: Sink) -> None:
    """``op.output``; a partitioned sink (Kafka: it confirms deliveries when the epoch closes)
    takes ``(key, item)`` pairs and picks its partition itself, so the key is empty."""
    if isinstance(sink, FixedPartitionedSink):
        up = op.key_on(f"{step_id}_pairs", up, _no_key)
    op.output(step_id, up, sink)


def _no_key(_item: Any) -> str:
    return ""


def _default_source(settings: Settings, desk: Optional[Any] = None) -> Source:
    span = batch_span_for(settings.model.allowed_lateness_s)
    inp = settings.input
    if inp.source == "simulator":
        sim = settings.sim
        return SimulatorSource(simulator_config(sim), partitions=sim.partitions, max_batch_span_s=span)
    if inp.source == "files":
        return FileEventsSource(inp.transactions_file, inp.labels_file, max_batch_span_s=span,
                                max_lead_s=inp.max_event_lead_hours * 3600, feedback_path=inp.feedback_file, desk=desk)
    from connectors.kafka import kafka_source

    return kafka_source(settings.kafka, process_id(), process_count(), max_batch_span_s=span,
                        max_lead_s=inp.max_event_lead_hours * 3600)


def _default_sinks(settings: Settings) -> tuple[Sink, Sink, Optional[Sink]]:
    out = settings.outputs
    if settings.input.source == "kafka":
        from connectors.kafka import kafka_sinks

        return kafka_sinks(settings.kafka, out.emit_scores, process_id(), process_count(), total_workers())
    scores = JsonlSink(out.scores) if out.scores else None
    return JsonlSink(out.alerts), JsonlSink(out.dlq), scores


def _prepare_outputs(settings: Settings) -> None:
    """A fresh run (no recovery) starts with empty output files, written by process 0."""
    if settings.input.source == "kafka" or recovery_enabled() or process_id() != 0:
        return
    for path in (settings.outputs.alerts, settings.outputs.dlq, settings.outputs.scores):
        truncate(path)


def _startup_problem(settings: Settings) -> Optional[str]:
    """What stops this run before it starts (one line), or None: a recovery directory that
    cannot be resumed, an unreachable broker, missing topics (waited for a bounded time)."""
    directory = recovery_directory()
    if directory:
        try:
            recovery_partitions(directory)
        except StateError as exc:
            # An empty directory is fine in a cluster: a process that joins a scaled-out cluster
            # (a new Kubernetes pod, its volume empty) holds no partition; the others do.
            if process_count() == 1 or not Path(directory).is_dir():
                return f"-r {directory}: {exc}"
        problem = feature_layout_error(directory, VECTOR_BYTES)
        if problem:
            return problem
    if settings.input.source == "kafka":
        from connectors.kafka import KafkaStartupError, check_cluster

        try:
            check_cluster(settings.kafka, settings.outputs.emit_scores)
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
        logging.basicConfig(level=settings.ops.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        problem = _startup_problem(settings) if under_bytewax_run() else None
        if problem:
            sys.exit(f"fraudflow: {problem}")
        parts = build_flow(settings)
    except SettingsError as exc:
        sys.exit(f"fraudflow: bad setting: {exc}")
    if under_bytewax_run():
        _prepare_outputs(settings)
        _report_failures(parts.stats, debug=settings.ops.log_level == "DEBUG")
        if settings.outputs.progress:
            kafka = settings.input.source == "kafka"
            atexit.register(parts.stats.print_summary, None if kafka else settings.outputs)
            if kafka:
                from connectors.kafka import kafka_problem

                watch_idle(parts.stats, settings.ops.idle_report_s,
                           f"most likely writing to a Kafka broker that does not answer ({settings.kafka.brokers}, "
                           "FRAUDFLOW_KAFKA_BROKERS); it continues when the broker answers",
                           lambda within_s: _kafka_note(kafka_problem(within_s)))
            else:
                watch_idle(parts.stats, settings.ops.idle_report_s)
    return parts.flow


def __getattr__(name: str) -> Any:
    # ``flow`` is built on first access (``python -m bytewax.run dataflows.fraud:flow``),
    # so importing this module for ``build_flow`` reads no settings.
    if name == "flow":
        value = globals()["flow"] = _module_flow()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
