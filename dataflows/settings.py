"""Settings of the fraud flow: one frozen dataclass read from ``FRAUDFLOW_*`` variables.

Every setting has an environment variable named after it (``model_kind`` ->
``FRAUDFLOW_MODEL_KIND``). ``FRAUDFLOW_CONFIG`` may name a TOML file with the same keys in
lower case (``model_kind = "logreg"``); environment variables win over the file. A bad
value stops start-up with a :class:`SettingsError` naming the variable.

Kafka client options pass through unchanged: ``FRAUDFLOW_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL``
becomes ``security.protocol=SASL_SSL`` (underscores become dots, lower case), and any option
may be read from a file with the ``_FILE`` suffix (``FRAUDFLOW_KAFKA_OPT_SASL_PASSWORD_FILE``)
so secrets come from mounted files, never from code or logs.

>>> s = Settings.from_env({"FRAUDFLOW_SIM_DAYS": "30", "FRAUDFLOW_MODEL_KIND": "logreg"})
>>> s.sim_days, s.source
(30, 'simulator')
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
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any, Mapping, Optional

from learners.config import MODEL_KIND_NAMES, ModelConfig

__all__ = ["Settings", "SettingsError", "load_settings"]

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


def _meta(help: str, check=None, secret: bool = False) -> dict:
    return {"help": help, "check": check, "secret": secret}


def _model(name: str, help: str, check=None) -> dict:
    """A setting of the model section: its default is ``ModelConfig.<name>`` and
    :meth:`Settings.model_config` passes it there (one definition of each model setting)."""
    return {**_meta(help, check), "model": name}


_MODEL = ModelConfig()


@dataclass(frozen=True)
class Settings:
    """Everything the flow needs; see ``fraudflow settings`` for the full list with help."""

    # -- where events come from ------------------------------------------------------
    source: str = field(default="simulator", metadata=_meta(
        "simulator (built in, no broker) | files | kafka", _choice("simulator", "files", "kafka")))
    transactions_file: str = field(default="", metadata=_meta("files source: transactions JSONL"))
    labels_file: str = field(default="", metadata=_meta("files source: labels JSONL"))
    # -- embedded simulator (Le Borgne et al. recipe) ---------------------------------
    sim_customers: int = field(default=3_000, metadata=_meta("simulated customers (cards)", _at_least(1)))
    sim_terminals: int = field(default=6_000, metadata=_meta("simulated terminals (merchants)", _at_least(1)))
    sim_days: int = field(default=120, metadata=_meta("simulated days", _at_least(1)))
    sim_start: date = field(default=date(2018, 4, 1), metadata=_meta("first simulated day (YYYY-MM-DD)"))
    sim_seed: int = field(default=0, metadata=_meta("simulator seed"))
    sim_radius: float = field(default=5.0, metadata=_meta("terminals within this distance are usable", _at_least(0.01)))
    sim_label_delay_days: float = field(default=7.0, metadata=_meta("label delay after each transaction", _at_least(0)))
    sim_labels: str = field(default="all", metadata=_meta(
        "all: a label for every transaction | frauds: fraud labels only", _choice("all", "frauds")))
    sim_partitions: int = field(default=1, metadata=_meta("simulator partitions (split by account)", _at_least(1)))
    # -- Kafka -------------------------------------------------------------------------
    kafka_brokers: str = field(default="localhost:9092", metadata=_meta("comma-separated bootstrap servers"))
    kafka_topic_transactions: str = field(default="transactions", metadata=_meta("input topic"))
    kafka_topic_labels: str = field(default="labels", metadata=_meta("input topic"))
    kafka_topic_alerts: str = field(default="alerts", metadata=_meta("output topic"))
    kafka_topic_dlq: str = field(default="dlq", metadata=_meta("output topic for rejected input"))
    kafka_topic_scores: str = field(default="scores", metadata=_meta("output topic (with emit_scores)"))
    kafka_stop_at_end: bool = field(default=False, metadata=_meta(
        "stop once the topics are read to the end (backfills, tests) instead of following them"))
    kafka_batch_size: int = field(default=2000, metadata=_meta("max messages per poll", _at_least(1)))
    kafka_fetch_wait_ms: int = field(default=20, metadata=_meta(
        "consumers: how long the broker may hold a fetch that finds no new data (fetch.wait.max.ms); "
        "the test broker answers about half of it after data lands", _between(0, 300_000)))
    kafka_linger_ms: float = field(default=5.0, metadata=_meta(
        "alerts and dead-letter producers: how long librdkafka gathers messages into one batch (linger.ms)",
        _between(0, 900_000)))
    kafka_scores_linger_ms: float = field(default=20.0, metadata=_meta(
        "scores producer (one record per transaction): linger.ms; larger batches cost the broker less",
        _between(0, 900_000)))
    kafka_confirm: str = field(default="epoch", metadata=_meta(
        "epoch: outputs are sent in the background and every delivery is confirmed before the epoch closes "
        "(bytewax -s) | batch: each output batch is confirmed before the flow goes on (a broker round trip per "
        "batch)", _choice("epoch", "batch")))
    kafka_options: Mapping[str, str] = field(default_factory=dict, metadata=_meta(
        "librdkafka options from FRAUDFLOW_KAFKA_OPT_* (security.protocol, sasl.*, ssl.*)"))
    kafka_startup_timeout_s: float = field(default=30.0, metadata=_meta(
        "at start-up, wait at most this long for a broker to answer and for the flow's topics to exist, "
        "then stop with an error", _at_least(1)))
    # -- outputs -----------------------------------------------------------------------
    alerts: str = field(default="fraudflow-output/alerts.jsonl", metadata=_meta(
        "alerts JSONL file, or - for stdout (simulator/files sources)"))
    dlq: str = field(default="fraudflow-output/dlq.jsonl", metadata=_meta("dead letters JSONL file, or -"))
    scores: str = field(default="", metadata=_meta("one score per transaction to this JSONL file (empty: off)"))
    emit_scores: bool = field(default=False, metadata=_meta("kafka: also write every score to the scores topic"))
    progress: bool = field(default=True, metadata=_meta("log progress every few seconds and a summary at the end"))
    # -- model -------------------------------------------------------------------------
    model_kind: str = field(default=_MODEL.kind, metadata=_model("kind", 
        " | ".join(MODEL_KIND_NAMES), _choice(*MODEL_KIND_NAMES)))
    model_seed: int = field(default=_MODEL.seed, metadata=_model("seed", "model seed"))
    model_shards: int = field(default=0, metadata=_meta(
        "model partitions (0: one per worker); fix it in production so rescaling keeps models", _at_least(0)))
    shard_examples: str = field(default="all", metadata=_meta(
        "all | own: which labelled examples each model shard learns. all: every one, so the shards score "
        "their accounts with the same model and splitting it does not change what it learns; own: its "
        "accounts' only (each shard learns from 1/N of them, less work per shard)", _choice("all", "own")))
    label_mode: str = field(default="", metadata=_meta(
        "all | frauds (default: sim_labels for the simulator, else all)", _choice("", "all", "frauds")))
    label_timeout_days: float = field(default=_MODEL.label_timeout_days, metadata=_model("label_timeout_days", 
        "a transaction with no label this long after it is learned as legitimate (frauds mode: frauds are "
        "learned at this age too) or given up",
        _at_least(0)))
    risk_delay_days: int = field(default=7, metadata=_meta(
        "terminal risk windows end this many days back (typical label delay)", _at_least(0)))
    allowed_lateness_s: float = field(default=_MODEL.allowed_lateness_s, metadata=_model("allowed_lateness_s", 
        "event-time disorder the flow absorbs (s); the model learns labels in steps of this size, so a "
        "label is used 1 to 2 steps after it is known", _at_least(1)))
    max_event_lead_hours: float = field(default=24.0, metadata=_meta(
        "an event this far ahead of its input partition's event time (plus the wall time since that advanced) "
        "is held until the partition's next event confirms the jump; alone, it is a dead letter (a bad clock)",
        _at_least(0.01)))
    negative_sampling: float = field(default=_MODEL.negative_sampling, metadata=_model("negative_sampling", 
        "share of legitimate labels the model learns from (all frauds are learned, and every legitimate one at a "
        "terminal with known frauds); 0.1 balances the classes and measured better than 1.0", _between(0.001, 1.0)))
    warmup_frauds: int = field(default=_MODEL.warmup_frauds, metadata=_model("warmup_frauds", 
        "frauds learned before the supervised score replaces the anomaly score", _at_least(0)))
    # -- alert policy --------------------------------------------------------------------
    threshold: float = field(default=_MODEL.threshold, metadata=_model("threshold", "alert when the fraud probability reaches this",
                                                          _between(0.0, 1.0)))
    coldstart_alert_rate: float = field(default=_MODEL.coldstart_alert_rate, metadata=_model("coldstart_alert_rate", 
        "cold start (before warmup_frauds): alert on this share of transactions, the most anomalous",
        _between(0.0001, 0.5)))
    alert_budget_per_day: float = field(default=_MODEL.alert_budget_per_day, metadata=_model("alert_budget_per_day", 
        "analysts' capacity: alert on about this many transactions a day, the riskiest (0: use threshold)",
        _at_least(0)))
    alert_rate: float = field(default=_MODEL.alert_rate, metadata=_model("alert_rate", 
        "or alert on about this share of transactions, the riskiest (0: use threshold)", _between(0, 0.5)))
    cooldown_hours: float = field(default=24.0, metadata=_meta(
        "at most one alert per card within this many hours (event time)", _at_least(0)))
    reasons: int = field(default=_MODEL.reasons, metadata=_model("reasons", "reasons attached to each alert", _at_least(0)))
    # -- operations ----------------------------------------------------------------------
    log_level: str = field(default="INFO", metadata=_meta(
        "DEBUG | INFO | WARNING | ERROR", _choice("DEBUG", "INFO", "WARNING", "ERROR")))
    metrics_port: int = field(default=0, metadata=_meta(
        "serve /metrics, /healthz, /readyz on this port (0: off; 9464 in Kubernetes)", _between(0, 65535)))
    idle_report_s: float = field(default=30.0, metadata=_meta(
        "while no transaction is scored, log every this many seconds whether the flow is caught up (waiting "
        "for input) or blocked (e.g. on a broker that does not answer)", _at_least(1)))
    liveness_timeout_s: float = field(default=300.0, metadata=_meta(
        "/healthz fails once the input has not been polled for this long", _at_least(1)))
    snapshot_dir: str = field(default="", metadata=_meta(
        "write signed model snapshots here ('off': none; empty: fraudflow-output/snapshots for simulator/files, "
        "none for kafka)"))
    snapshot_interval_hours: float = field(default=24.0, metadata=_meta(
        "event time between model snapshots (also one at shutdown and on POST /snapshots)", _at_least(0)))
    snapshot_key: str = field(default="", metadata=_meta(
        "HMAC key signing snapshots (prefer snapshot_key_file); never logged", secret=True))
    snapshot_key_file: str = field(default="", metadata=_meta("file holding the snapshot signing key"))
    warm_start: str = field(default="", metadata=_meta(
        "start every model shard from this verified snapshot (.json); refused if unsigned, tampered or "
        "incompatible"))
    # -- analyst feedback (issue 22) ------------------------------------------------------
    feedback_file: str = field(default="", metadata=_meta(
        "files source: analysts' verdicts JSONL (contract feedback), learned as labels at their ts (empty: none)"))
    kafka_topic_feedback: str = field(default="feedback", metadata=_meta(
        "input topic of analysts' verdicts, read with transactions and labels (empty: none)"))

    # -- rules (issue 22) ---------------------------------------------------------------
    kafka_topic_rules: str = field(default="rules", metadata=_meta(
        "kafka: the analysts' rules, read from its start and followed (compacted, keyed by rule id, the rule's "
        "JSON as value, no value deletes it); empty: no rules topic"))
    rules_file: str = field(default="", metadata=_meta(
        "YAML or JSON file of rules every model shard's rule book starts with (replays, tests; a recovered "
        "rule book wins over it)"))

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        config_file = env.get(PREFIX + "CONFIG")
        if config_file:
            values.update(_read_toml(config_file))
        known = {f.name for f in fields(cls)}
        for key, raw in env.items():
            if not key.startswith(PREFIX) or key.startswith(KAFKA_OPT_PREFIX) or key == PREFIX + "CONFIG":
                continue
            name = key[len(PREFIX):].lower()
            if name not in known or name == "kafka_options":
                raise SettingsError(f"{key}: unknown setting (see `fraudflow settings` for the list)")
            values[name] = raw
        values["kafka_options"] = {**values.get("kafka_options", {}), **_kafka_options(env)}
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Settings":
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            var = PREFIX + f.name.upper()
            value = _coerce(var, f.type, values[f.name])
            check = f.metadata.get("check")
            if check is not None:
                check(var, value)
            kwargs[f.name] = value
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"{PREFIX}{sorted(unknown)[0].upper()}: unknown setting")
        settings = cls(**kwargs)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        if self.source == "files":
            for name in ("transactions_file", "labels_file"):
                path = getattr(self, name)
                var = PREFIX + name.upper()
                if not path:
                    raise SettingsError(f"{var}: required when FRAUDFLOW_SOURCE=files")
                if not Path(path).is_file():
                    raise SettingsError(f"{var}: no such file: {path}")
            if self.feedback_file and not Path(self.feedback_file).is_file():
                raise SettingsError(f"FRAUDFLOW_FEEDBACK_FILE: no such file: {self.feedback_file}")
        if self.source == "kafka" and not self.kafka_brokers.strip():
            raise SettingsError("FRAUDFLOW_KAFKA_BROKERS: required when FRAUDFLOW_SOURCE=kafka")
        if self.alert_budget_per_day and self.alert_rate:
            raise SettingsError("FRAUDFLOW_ALERT_RATE: set either it or FRAUDFLOW_ALERT_BUDGET_PER_DAY, not both")
        if self.warm_start and not Path(self.warm_start).is_file():
            raise SettingsError(f"FRAUDFLOW_WARM_START: no such file: {self.warm_start}")
        if self.rules_file and not Path(self.rules_file).is_file():
            raise SettingsError(f"FRAUDFLOW_RULES_FILE: no such file: {self.rules_file}")
        if self.snapshot_key_file and not Path(self.snapshot_key_file).is_file():
            raise SettingsError(f"FRAUDFLOW_SNAPSHOT_KEY_FILE: no such file: {self.snapshot_key_file}")

    @property
    def effective_snapshot_dir(self) -> str:
        if self.snapshot_dir:
            return "" if self.snapshot_dir == "off" else self.snapshot_dir
        return "" if self.source == "kafka" else "fraudflow-output/snapshots"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def model_config(self, shards: int = 1) -> ModelConfig:
        """The model section as the learners take it (``shards``: how many share the alert budget)."""
        values = {f.metadata["model"]: getattr(self, f.name) for f in fields(self) if "model" in f.metadata}
        return ModelConfig(**values, label_mode=self.effective_label_mode, shards=shards,
                           export_interval_s=self.snapshot_interval_hours * 3600.0)

    @property
    def effective_label_mode(self) -> str:
        if self.label_mode:
            return self.label_mode
        return self.sim_labels if self.source == "simulator" else "all"

    def redacted(self) -> dict[str, Any]:
        """Settings as JSON-ready values with secret-looking Kafka options masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka_options":
                value = {k: ("***" if any(h in k for h in SECRET_HINTS) else v) for k, v in value.items()}
            elif f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, date):
                value = value.isoformat()
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({shown})"

    def fingerprint(self) -> str:
        """Short hash of the settings (secrets excluded), recorded in model snapshots."""
        blob = json.dumps(self.redacted(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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
    doc = dict(doc)
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
