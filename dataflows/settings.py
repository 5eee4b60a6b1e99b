"""Settings of the fraud flow: one frozen :class:`Settings` made of frozen sections.

========================  =====================================================================
``settings.input``        where events come from (``FRAUDFLOW_SOURCE``, ``FRAUDFLOW_*_FILE``, the
                          event-time guard)
``settings.sim``          the embedded simulator (``FRAUDFLOW_SIM_*``)
``settings.kafka``        brokers, topics, client tuning (``FRAUDFLOW_KAFKA_*``)
``settings.outputs``      alert, dead-letter and score files, progress reports
``settings.model``        how the model shards learn (``FRAUDFLOW_MODEL_KIND``, ...)
``settings.policy``       when a score becomes an alert (``FRAUDFLOW_THRESHOLD``, ...)
``settings.ops``          logging, metrics and health (``FRAUDFLOW_LOG_LEVEL``, ...)
``settings.snapshots``    signed model snapshots and warm start (``FRAUDFLOW_SNAPSHOT_*``)
========================  =====================================================================

Every field has one environment variable, its *flat name* in upper case after ``FRAUDFLOW_``.
The flat name is the section's ``PREFIX`` plus the field's name (``kafka.topic_alerts`` ->
``kafka_topic_alerts`` -> ``FRAUDFLOW_KAFKA_TOPIC_ALERTS``) unless the field names it
(``setting(..., name="model_kind")``). These names are the users' contract and never change.

``FRAUDFLOW_CONFIG`` may name a TOML file holding flat names (``sim_days = 30``) or section
tables (``[kafka]`` ``brokers = "k:9092"``); environment variables win over the file. A bad
value stops start-up with a :class:`SettingsError` naming the variable. Kafka client options
pass through unchanged: ``FRAUDFLOW_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL`` becomes
``security.protocol=SASL_SSL`` in ``settings.kafka.options`` (underscores become dots, lower
case), and any option may be read from a file with the ``_FILE`` suffix
(``FRAUDFLOW_KAFKA_OPT_SASL_PASSWORD_FILE``) so secrets come from mounted files, never from
code or logs.

Adding a setting is one line in its section's class, e.g. in :class:`KafkaSettings`::

    topic_feedback: str = setting("feedback", "input topic: analysts' verdicts")

gives ``settings.kafka.topic_feedback``, ``FRAUDFLOW_KAFKA_TOPIC_FEEDBACK``, the TOML keys
``kafka_topic_feedback`` and ``[kafka] topic_feedback``, and a line in ``fraudflow settings``.
A setting with no section prefix goes where it belongs (``feedback_file`` in
:class:`InputSettings` is ``FRAUDFLOW_FEEDBACK_FILE``). A setting the learners read is declared
with ``model_setting("<ModelConfig field>", help, check)``: its default comes from
:class:`learners.config.ModelConfig` and :meth:`Settings.model_config` passes it there.

>>> s = Settings.from_env({"FRAUDFLOW_SIM_DAYS": "30", "FRAUDFLOW_MODEL_KIND": "logreg"})
>>> s.sim.days, s.model.kind, s.input.source
(30, 'logreg', 'simulator')
>>> s.replace(kafka_brokers="k1:9092", kafka={"topic_alerts": "alerts-eu"}).kafka.brokers
'k1:9092'
>>> Settings.from_env({"FRAUDFLOW_SIM_DAYS": "many"})
Traceback (most recent call last):
...
dataflows.settings.SettingsError: FRAUDFLOW_SIM_DAYS: expected an integer, got 'many'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple, Optional

from learners.config import MODEL_KIND_NAMES, ModelConfig

__all__ = ["InputSettings", "KafkaSettings", "ModelSettings", "OpsSettings", "OutputSettings", "PolicySettings",
           "Settings", "SettingsError", "SimSettings", "SnapshotSettings", "Variable", "load_settings",
           "model_setting", "setting", "variables"]

PREFIX = "FRAUDFLOW_"
KAFKA_OPT_PREFIX = PREFIX + "KAFKA_OPT_"
SECRET_HINTS = ("password", "secret", "key", "token", "credential")


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names the variable."""


def _choice(*options: str):
    def check(name: str, value: str) -> None:
        if value not in options:
            raise SettingsError(f"{name}: expected one of {', '.join(options)}, got {value!r}")

    return check


def _at_least(lo: float):
    def check(name: str, value: float) -> None:
        if value < lo:
            raise SettingsError(f"{name}: must be >= {lo}, got {value!r}")

    return check


def _between(lo: float, hi: float):
    def check(name: str, value: float) -> None:
        if not lo <= value <= hi:
            raise SettingsError(f"{name}: must be between {lo} and {hi}, got {value!r}")

    return check


def setting(default: Any, help: str, check=None, *, name: str = "", secret: bool = False,
            model: str = "") -> Any:
    """A field of a settings section: its default, its help line (``fraudflow settings``), an
    optional check ``(variable, value)`` raising :class:`SettingsError`, and ``name``, its flat
    name when it is not the section's prefix plus the field's name."""
    meta = {"help": help, "check": check, "secret": secret, "name": name, "model": model}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


_MODEL = ModelConfig()


def model_setting(model_field: str, help: str, check=None, *, name: str = "") -> Any:
    """A setting the learners take: its default is ``ModelConfig.<model_field>`` and
    :meth:`Settings.model_config` passes it there (one definition of each model setting)."""
    return setting(getattr(_MODEL, model_field), help, check, name=name, model=model_field)


class _Section:
    """Base of the sections: the flat-name prefix, and a repr that never shows a secret."""

    PREFIX: ClassVar[str] = ""

    def shown(self) -> dict[str, Any]:
        """The section's values ready for JSON, secrets masked."""
        return {f.name: _shown(f, getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.shown().items())})"


def _shown(f: Field, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: ("***" if any(h in k for h in SECRET_HINTS) else v) for k, v in value.items()}
    if f.metadata.get("secret") and value:
        return "***"
    if isinstance(value, date):
        return value.isoformat()
    return value


_section = dataclass(frozen=True, repr=False)


@_section
class InputSettings(_Section):
    """Where events come from, and which event times the flow accepts."""

    source: str = setting("simulator", "simulator (built in, no broker) | files | kafka",
                          _choice("simulator", "files", "kafka"))
    transactions_file: str = setting("", "files source: transactions JSONL")
    labels_file: str = setting("", "files source: labels JSONL")
    max_event_lead_hours: float = setting(24.0,
        "an event this far ahead of its input partition's event time (plus the wall time since that advanced) "
        "is held until the partition's next event confirms the jump; alone, it is a dead letter (a bad clock)",
        _at_least(0.01))
    feedback_file: str = setting("",
        "files source: analysts' verdicts JSONL (contract feedback), learned as labels at their ts (empty: none)")
    rules_file: str = setting("",
        "YAML or JSON file of rules every model shard's rule book starts with (replays, tests; a recovered rule "
        "book wins over it)")


@_section
class SimSettings(_Section):
    """The embedded simulator (Le Borgne et al. recipe)."""

    PREFIX = "sim_"
    customers: int = setting(3_000, "simulated customers (cards)", _at_least(1))
    terminals: int = setting(6_000, "simulated terminals (merchants)", _at_least(1))
    days: int = setting(120, "simulated days", _at_least(1))
    start: date = setting(date(2018, 4, 1), "first simulated day (YYYY-MM-DD)")
    seed: int = setting(0, "simulator seed")
    radius: float = setting(5.0, "terminals within this distance are usable", _at_least(0.01))
    label_delay_days: float = setting(7.0, "label delay after each transaction", _at_least(0))
    labels: str = setting("all", "all: a label for every transaction | frauds: fraud labels only",
                          _choice("all", "frauds"))
    partitions: int = setting(1, "simulator partitions (split by account)", _at_least(1))


@_section
class KafkaSettings(_Section):
    """Brokers, topics and client tuning."""

    PREFIX = "kafka_"
    brokers: str = setting("localhost:9092", "comma-separated bootstrap servers")
    topic_transactions: str = setting("transactions", "input topic")
    topic_labels: str = setting("labels", "input topic")
    topic_alerts: str = setting("alerts", "output topic")
    topic_dlq: str = setting("dlq", "output topic for rejected input")
    topic_scores: str = setting("scores", "output topic (with emit_scores)")
    topic_feedback: str = setting("feedback",
        "input topic of analysts' verdicts, read with transactions and labels (empty: none)")
    topic_rules: str = setting("rules",
        "the analysts' rules, read from its start and followed (compacted, keyed by rule id, the rule's JSON as "
        "value, no value deletes it); empty: no rules topic")
    stop_at_end: bool = setting(False,
        "stop once the topics are read to the end (backfills, tests) instead of following them")
    batch_size: int = setting(2000, "max messages per poll", _at_least(1))
    fetch_wait_ms: int = setting(20,
        "consumers: how long the broker may hold a fetch that finds no new data (fetch.wait.max.ms); "
        "the test broker answers about half of it after data lands", _between(0, 300_000))
    linger_ms: float = setting(5.0,
        "alerts and dead-letter producers: how long librdkafka gathers messages into one batch (linger.ms)",
        _between(0, 900_000))
    scores_linger_ms: float = setting(20.0,
        "scores producer (one record per transaction): linger.ms; larger batches cost the broker less",
        _between(0, 900_000))
    confirm: str = setting("epoch",
        "epoch: outputs are sent in the background and every delivery is confirmed before the epoch closes "
        "(bytewax -s) | batch: each output batch is confirmed before the flow goes on (a broker round trip per "
        "batch)", _choice("epoch", "batch"))
    options: Mapping[str, str] = setting({},
        "librdkafka options from FRAUDFLOW_KAFKA_OPT_* (security.protocol, sasl.*, ssl.*)")
    startup_timeout_s: float = setting(30.0,
        "at start-up, wait at most this long for a broker to answer and for the flow's topics to exist, "
        "then stop with an error", _at_least(1))

    def broker_list(self) -> list[str]:
        """``brokers`` as a list, blanks dropped.

        >>> KafkaSettings(brokers=" a:9092, ,b:9092").broker_list()
        ['a:9092', 'b:9092']
        """
        return [b.strip() for b in self.brokers.split(",") if b.strip()]


@_section
class OutputSettings(_Section):
    """Where the simulator and files sources write, and what the run reports."""

    alerts: str = setting("fraudflow-output/alerts.jsonl",
                          "alerts JSONL file, or - for stdout (simulator/files sources)")
    dlq: str = setting("fraudflow-output/dlq.jsonl", "dead letters JSONL file, or -")
    scores: str = setting("", "one score per transaction to this JSONL file (empty: off)")
    emit_scores: bool = setting(False, "kafka: also write every score to the scores topic")
    progress: bool = setting(True, "log progress every few seconds and a summary at the end")


@_section
class ModelSettings(_Section):
    """How the model shards learn.

    With :class:`PolicySettings` it builds the learners' :class:`~learners.config.ModelConfig`
    (:meth:`Settings.model_config`), where the defaults of ``model_setting`` fields come from."""

    kind: str = model_setting("kind", " | ".join(MODEL_KIND_NAMES), _choice(*MODEL_KIND_NAMES), name="model_kind")
    seed: int = model_setting("seed", "model seed", name="model_seed")
    shards: int = setting(0,
        "model partitions (0: one per worker); fix it in production so rescaling keeps models", _at_least(0),
        name="model_shards")
    shard_examples: str = setting("all",
        "all | own: which labelled examples each model shard learns. all: every one, so the shards score "
        "their accounts with the same model and splitting it does not change what it learns; own: its "
        "accounts' only (each shard learns from 1/N of them, less work per shard)", _choice("all", "own"))
    label_mode: str = setting("",
        "all | frauds (default: sim_labels for the simulator, else all)", _choice("", "all", "frauds"))
    label_timeout_days: float = model_setting("label_timeout_days",
        "a transaction with no label this long after it is learned as legitimate (frauds mode: frauds are "
        "learned at this age too) or given up",
        _at_least(0))
    risk_delay_days: int = setting(7,
        "terminal risk windows end this many days back (typical label delay)", _at_least(0))
    allowed_lateness_s: float = model_setting("allowed_lateness_s",
        "event-time disorder the flow absorbs (s); the model learns labels in steps of this size, so a "
        "label is used 1 to 2 steps after it is known", _at_least(1))
    negative_sampling: float = model_setting("negative_sampling",
        "share of legitimate labels the model learns from (all frauds are learned, and every legitimate one at a "
        "terminal with known frauds); 0.1 balances the classes and measured better than 1.0", _between(0.001, 1.0))
    warmup_frauds: int = model_setting("warmup_frauds",
        "frauds learned before the supervised score replaces the anomaly score", _at_least(0))
    verdict_warmup_days: float = model_setting("verdict_warmup_days",
        "analysts' verdicts dated this many days from the first transaction are learned when the label feed "
        "would have taught them (their transaction + risk_delay_days), not at once. Until twice the risk delay, "
        "the feed's examples have no terminal history and the verdicts alone carry today's counts: learned at "
        "once they caused a one-day burst of false alerts (decision 0062). 0: every verdict at once",
        _at_least(0))


@_section
class PolicySettings(_Section):
    """When a score becomes an alert."""

    threshold: float = model_setting("threshold", "alert when the fraud probability reaches this",
                                     _between(0.0, 1.0))
    coldstart_alert_rate: float = model_setting("coldstart_alert_rate",
        "cold start (before warmup_frauds; none in the first day of event time): alert on this share of "
        "transactions, the most anomalous",
        _between(0.0001, 0.5))
    alert_budget_per_day: float = model_setting("alert_budget_per_day",
        "analysts' capacity: alert on about this many transactions a day, the riskiest (0: use threshold)",
        _at_least(0))
    alert_rate: float = model_setting("alert_rate",
        "or alert on about this share of transactions, the riskiest (0: use threshold)", _between(0, 0.5))
    cooldown_hours: float = setting(24.0,
        "at most one alert per card within this many hours (event time)", _at_least(0))
    reasons: int = model_setting("reasons", "reasons attached to each alert", _at_least(0))


@_section
class OpsSettings(_Section):
    """Logging, metrics and health."""

    log_level: str = setting("INFO", "DEBUG | INFO | WARNING | ERROR",
                             _choice("DEBUG", "INFO", "WARNING", "ERROR"))
    metrics_port: int = setting(0,
        "serve /metrics, /healthz, /readyz on this port (0: off; 9464 in Kubernetes)", _between(0, 65535))
    idle_report_s: float = setting(30.0,
        "while no transaction is scored, log every this many seconds whether the flow is caught up (waiting "
        "for input) or blocked (e.g. on a broker that does not answer)", _at_least(1))
    liveness_timeout_s: float = setting(300.0,
        "/healthz fails once the input has not been polled for this long", _at_least(1))


@_section
class SnapshotSettings(_Section):
    """Signed model snapshots, and warm start from one."""

    PREFIX = "snapshot_"
    dir: str = setting("",
        "write signed model snapshots here ('off': none; empty: fraudflow-output/snapshots for simulator/files, "
        "none for kafka)")
    interval_hours: float = setting(24.0,
        "event time between model snapshots (also one at shutdown and on POST /snapshots)", _at_least(0))
    key: str = setting("", "HMAC key signing snapshots (prefer snapshot_key_file); never logged", secret=True)
    key_file: str = setting("", "file holding the snapshot signing key")
    warm_start: str = setting("",
        "start every model shard from this verified snapshot (.json); refused if unsigned, tampered or "
        "incompatible", name="warm_start")


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the flow needs, in sections; ``fraudflow settings`` lists them with help."""

    input: InputSettings = field(default_factory=InputSettings)
    sim: SimSettings = field(default_factory=SimSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    snapshots: SnapshotSettings = field(default_factory=SnapshotSettings)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """The settings of ``FRAUDFLOW_*`` variables (``os.environ`` by default) over the TOML
        file ``FRAUDFLOW_CONFIG`` names; an unknown ``FRAUDFLOW_*`` variable is an error."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        config_file = env.get(PREFIX + "CONFIG")
        if config_file:
            values.update(_read_toml(config_file))
        for key, raw in env.items():
            if not key.startswith(PREFIX) or key.startswith(KAFKA_OPT_PREFIX) or key == PREFIX + "CONFIG":
                continue
            name = key[len(PREFIX):].lower()
            if name not in _INDEX or name == "kafka_options":
                raise SettingsError(f"{key}: unknown setting (see `fraudflow settings` for the list)")
            values[name] = raw
        values["kafka_options"] = {**values.get("kafka_options", {}), **_kafka_options(env)}
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Settings":
        """Validated settings from flat names (``{"sim_days": 30}``) and/or section tables
        (``{"sim": {"days": 30}}``), raw strings or typed values."""
        flat = _flatten(values, "")
        changes: dict[str, dict[str, Any]] = {}
        for var in variables():
            if var.flat not in flat:
                continue
            value = _coerce(var.variable, var.field.type, flat[var.flat])
            check = var.field.metadata.get("check")
            if check is not None:
                check(var.variable, value)
            changes.setdefault(var.section, {})[var.field.name] = value
        unknown = set(flat) - set(_INDEX)
        if unknown:
            raise SettingsError(f"{PREFIX}{sorted(unknown)[0].upper()}: unknown setting")
        settings = cls(**{name: _SECTIONS[name](**kw) for name, kw in changes.items()})
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        inp = self.input
        if inp.source == "files":
            for name in ("transactions_file", "labels_file"):
                path = getattr(inp, name)
                var = PREFIX + name.upper()
                if not path:
                    raise SettingsError(f"{var}: required when FRAUDFLOW_SOURCE=files")
                if not Path(path).is_file():
                    raise SettingsError(f"{var}: no such file: {path}")
            if inp.feedback_file and not Path(inp.feedback_file).is_file():
                raise SettingsError(f"FRAUDFLOW_FEEDBACK_FILE: no such file: {inp.feedback_file}")
        if inp.source == "kafka" and not self.kafka.brokers.strip():
            raise SettingsError("FRAUDFLOW_KAFKA_BROKERS: required when FRAUDFLOW_SOURCE=kafka")
        if self.policy.alert_budget_per_day and self.policy.alert_rate:
            raise SettingsError("FRAUDFLOW_ALERT_RATE: set either it or FRAUDFLOW_ALERT_BUDGET_PER_DAY, not both")
        snap = self.snapshots
        if snap.warm_start and not Path(snap.warm_start).is_file():
            raise SettingsError(f"FRAUDFLOW_WARM_START: no such file: {snap.warm_start}")
        if self.input.rules_file and not Path(self.input.rules_file).is_file():
            raise SettingsError(f"FRAUDFLOW_RULES_FILE: no such file: {self.input.rules_file}")
        if snap.key_file and not Path(snap.key_file).is_file():
            raise SettingsError(f"FRAUDFLOW_SNAPSHOT_KEY_FILE: no such file: {snap.key_file}")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed, named by flat name (``model_kind="logreg"``) or by
        section, as a section or a mapping of its fields (``kafka={"brokers": "k:9092"}``).
        Values are taken as they are (typed, not checked).

        >>> Settings().replace(threshold=0.7, sim={"days": 9}).policy.threshold
        0.7
        """
        sections: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name in _SECTIONS:
                if isinstance(value, _SECTIONS[name]):
                    sections[name] = {f.name: getattr(value, f.name) for f in fields(value)}
                elif isinstance(value, Mapping):
                    sections.setdefault(name, {}).update(value)
                else:
                    raise TypeError(f"replace: {name}= takes a {_SECTIONS[name].__name__} or a mapping")
            elif name in _INDEX:
                var = _INDEX[name]
                sections.setdefault(var.section, {})[var.field.name] = value
            else:
                raise TypeError(f"replace: unknown setting {name!r}")
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), **kw) for name, kw in sections.items()})

    @property
    def effective_snapshot_dir(self) -> str:
        snap_dir = self.snapshots.dir
        if snap_dir:
            return "" if snap_dir == "off" else snap_dir
        return "" if self.input.source == "kafka" else "fraudflow-output/snapshots"

    @property
    def effective_label_mode(self) -> str:
        if self.model.label_mode:
            return self.model.label_mode
        return self.sim.labels if self.input.source == "simulator" else "all"

    def model_config(self, shards: int = 1) -> ModelConfig:
        """The model section as the learners take it (``shards``: how many share the alert budget)."""
        values = {var.field.metadata["model"]: getattr(getattr(self, var.section), var.field.name)
                  for var in variables() if var.field.metadata.get("model")}
        return ModelConfig(**values, label_mode=self.effective_label_mode, shards=shards,
                           export_interval_s=self.snapshots.interval_hours * 3600.0)

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Settings as JSON-ready values by section, secrets (and secret-looking Kafka options)
        masked."""
        return {f.name: getattr(self, f.name).shown() for f in fields(self)}

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in fields(self))})"

    def fingerprint(self) -> str:
        """Short hash of the settings (secrets excluded), recorded in model snapshots; taken
        over the flat names, so it did not change when the settings became sections."""
        shown = self.redacted()
        flat = {var.flat: shown[var.section][var.field.name] for var in variables()}
        blob = json.dumps(flat, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Settings)}  # type: ignore[misc]


class Variable(NamedTuple):
    """One setting: its section, its field there, its flat name and its variable."""

    section: str
    field: Field
    flat: str
    variable: str

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _variables() -> tuple[Variable, ...]:
    out = []
    for name, cls in _SECTIONS.items():
        for f in fields(cls):
            flat = f.metadata.get("name") or cls.PREFIX + f.name
            out.append(Variable(name, f, flat, PREFIX + flat.upper()))
    return tuple(out)


_VARIABLES = _variables()
_INDEX: dict[str, Variable] = {v.flat: v for v in _VARIABLES}
assert len(_INDEX) == len(_VARIABLES), "two settings share a flat name"
assert not set(_INDEX) & set(_SECTIONS), "a flat name equals a section name"


def variables() -> tuple[Variable, ...]:
    """Every setting, section by section, in declaration order.

    >>> [v.variable for v in variables() if v.section == "snapshots"][:2]
    ['FRAUDFLOW_SNAPSHOT_DIR', 'FRAUDFLOW_SNAPSHOT_INTERVAL_HOURS']
    """
    return _VARIABLES


def _flatten(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Flat names for section tables (``{"kafka": {"brokers": ...}}`` -> ``kafka_brokers``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            by_field = {v.field.name: v.flat for v in _VARIABLES if v.section == key}
            for sub, sub_value in value.items():
                if sub not in by_field:
                    raise SettingsError(f"{where}unknown setting [{key}] {sub} (see `fraudflow settings` for the list)")
                flat[by_field[sub]] = sub_value
        else:
            flat[key] = value
    return flat


def _coerce(var: str, type_name: Any, raw: Any) -> Any:
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if t.startswith("Mapping"):
        if not isinstance(raw, Mapping):
            raise SettingsError(f"{var}: expected a table of options")
        return {str(k): str(v) for k, v in raw.items()}
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        low = str(raw).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{var}: expected true/false (1/0), got {raw!r}")
    if t == "int":
        if isinstance(raw, bool):
            raise SettingsError(f"{var}: expected an integer, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise SettingsError(f"{var}: expected an integer, got {raw!r}") from None
    if t == "float":
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise SettingsError(f"{var}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{var}: expected a finite number, got {raw!r}")
        return value
    if t == "date":
        if isinstance(raw, date):
            return raw
        try:
            return date.fromisoformat(str(raw).strip())
        except ValueError:
            raise SettingsError(f"{var}: expected a date YYYY-MM-DD, got {raw!r}") from None
    return str(raw)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"FRAUDFLOW_CONFIG: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"FRAUDFLOW_CONFIG: {path} is not valid TOML: {exc}") from None
    doc = _flatten(doc, f"FRAUDFLOW_CONFIG: {path}: ")
    if "kafka_options" in doc and not isinstance(doc["kafka_options"], dict):
        raise SettingsError("FRAUDFLOW_CONFIG: kafka_options must be a table")
    return doc


def _kafka_options(env: Mapping[str, str]) -> dict[str, str]:
    """librdkafka options from FRAUDFLOW_KAFKA_OPT_*; a ``_FILE`` suffix reads the value from a file."""
    opts: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith(KAFKA_OPT_PREFIX):
            continue
        name = key[len(KAFKA_OPT_PREFIX):]
        if name.endswith("_FILE"):
            name = name[: -len("_FILE")]
            try:
                raw = Path(raw).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{key}: cannot read {raw}: {exc.strerror}") from None
        opts[name.lower().replace("_", ".")] = raw
    return opts


def load_settings() -> Settings:
    return Settings.from_env()
