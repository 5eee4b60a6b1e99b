"""Settings: typed, validated at start-up, bad values named; secrets from env or files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.settings import Settings, SettingsError, variables
from learners.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_run_the_embedded_simulator():
    s = Settings.from_env({})
    assert s.input.source == "simulator" and s.model.kind == "binned_logreg" and s.effective_label_mode == "all"


@pytest.mark.parametrize("env, message", [
    ({"FRAUDFLOW_SIM_DAYS": "many"}, "FRAUDFLOW_SIM_DAYS: expected an integer, got 'many'"),
    ({"FRAUDFLOW_SIM_DAYS": "0"}, "FRAUDFLOW_SIM_DAYS: must be >= 1"),
    ({"FRAUDFLOW_SOURCE": "ftp"}, "FRAUDFLOW_SOURCE: expected one of simulator, files, kafka"),
    ({"FRAUDFLOW_MODEL_KIND": "xgboost"}, "FRAUDFLOW_MODEL_KIND: expected one of binned_logreg, logreg"),
    ({"FRAUDFLOW_THRESHOLD": "1.5"}, "FRAUDFLOW_THRESHOLD: must be between 0.0 and 1.0"),
    ({"FRAUDFLOW_THRESHOLD": "nan"}, "FRAUDFLOW_THRESHOLD: expected a finite number"),
    ({"FRAUDFLOW_PROGRESS": "perhaps"}, "FRAUDFLOW_PROGRESS: expected true/false"),
    ({"FRAUDFLOW_SIM_START": "April"}, "FRAUDFLOW_SIM_START: expected a date"),
    ({"FRAUDFLOW_THRESHHOLD": "0.4"}, "FRAUDFLOW_THRESHHOLD: unknown setting"),
    ({"FRAUDFLOW_SOURCE": "files"}, "FRAUDFLOW_TRANSACTIONS_FILE: required when FRAUDFLOW_SOURCE=files"),
    ({"FRAUDFLOW_SOURCE": "files", "FRAUDFLOW_TRANSACTIONS_FILE": "/nope.jsonl", "FRAUDFLOW_LABELS_FILE": "/n"},
     "FRAUDFLOW_TRANSACTIONS_FILE: no such file: /nope.jsonl"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert message in str(err.value)


def test_toml_file_with_environment_overrides(tmp_path):
    cfg = tmp_path / "fraudflow.toml"
    cfg.write_text('sim_days = 12\nthreshold = 0.7\n[kafka_options]\n"client.id" = "ff"\n')
    s = Settings.from_env({"FRAUDFLOW_CONFIG": str(cfg), "FRAUDFLOW_THRESHOLD": "0.8"})
    assert (s.sim.days, s.policy.threshold, s.kafka.options["client.id"]) == (12, 0.8, "ff")
    bad = tmp_path / "bad.toml"
    bad.write_text("sim_days = = 3")
    with pytest.raises(SettingsError, match="FRAUDFLOW_CONFIG: .* is not valid TOML"):
        Settings.from_env({"FRAUDFLOW_CONFIG": str(bad)})


def test_kafka_options_pass_through_and_secrets_come_from_files(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cr3t\n")
    s = Settings.from_env({
        "FRAUDFLOW_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
        "FRAUDFLOW_KAFKA_OPT_SASL_MECHANISM": "SCRAM-SHA-512",
        "FRAUDFLOW_KAFKA_OPT_SASL_USERNAME": "fraud",
        "FRAUDFLOW_KAFKA_OPT_SASL_PASSWORD_FILE": str(secret),
    })
    assert s.kafka.options == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                               "sasl.username": "fraud", "sasl.password": "s3cr3t"}
    for shown in (repr(s.redacted()), repr(s), repr(s.kafka)):
        assert "s3cr3t" not in shown and "***" in shown
    assert "s3cr3t" not in s.fingerprint()
    with pytest.raises(SettingsError, match="FRAUDFLOW_KAFKA_OPT_SSL_KEY_PASSWORD_FILE: cannot read"):
        Settings.from_env({"FRAUDFLOW_KAFKA_OPT_SSL_KEY_PASSWORD_FILE": str(tmp_path / "missing")})


def _run_flow(env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDFLOW_")}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env, name", [
    ({"FRAUDFLOW_SIM_DAYS": "lots"}, "FRAUDFLOW_SIM_DAYS"),
    ({"FRAUDFLOW_MODEL_KIND": "xgboost"}, "FRAUDFLOW_MODEL_KIND"),
])
def test_bad_setting_stops_bytewax_run_with_one_clear_line(env, name):
    proc = _run_flow(env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"fraudflow: bad setting: {name}" in proc.stderr


def test_demo_run_under_bytewax_prints_progress_and_summary(tmp_path):
    proc = _run_flow({"FRAUDFLOW_SIM_DAYS": "25", "FRAUDFLOW_SIM_CUSTOMERS": "400", "FRAUDFLOW_SIM_TERMINALS": "800",
                      "FRAUDFLOW_ALERTS": str(tmp_path / "alerts.jsonl"), "FRAUDFLOW_DLQ": str(tmp_path / "dlq.jsonl"),
                      "FRAUDFLOW_SNAPSHOT_DIR": str(tmp_path / "snapshots")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fraudflow summary" in proc.stderr and "transactions scored" in proc.stderr
    assert (tmp_path / "alerts.jsonl").stat().st_size > 0
    assert list((tmp_path / "snapshots").glob("*shutdown.json")), "no model snapshot at the end of the run"


def test_benchmarks_measure_the_default_model():
    from benchmarks.common import DEFAULT_MODEL
    from dataflows.settings import Settings

    assert Settings().model.kind == DEFAULT_MODEL


# -- sections ------------------------------------------------------------------------------
# The variables as they were when Settings was one flat dataclass: README, deploy/, tests and
# users' configuration files name them, so the sections must not change one of them.
FLAT_NAMES_BEFORE_SECTIONS = [
    "source", "transactions_file", "labels_file", "sim_customers", "sim_terminals", "sim_days", "sim_start",
    "sim_seed", "sim_radius", "sim_label_delay_days", "sim_labels", "sim_partitions", "kafka_brokers",
    "kafka_topic_transactions", "kafka_topic_labels", "kafka_topic_alerts", "kafka_topic_dlq", "kafka_topic_scores",
    "kafka_stop_at_end", "kafka_batch_size", "kafka_fetch_wait_ms", "kafka_linger_ms", "kafka_scores_linger_ms",
    "kafka_confirm", "kafka_options", "kafka_startup_timeout_s", "alerts", "dlq", "scores", "emit_scores", "progress",
    "model_kind", "model_seed", "model_shards", "shard_examples", "label_mode", "label_timeout_days",
    "risk_delay_days", "allowed_lateness_s", "max_event_lead_hours", "negative_sampling", "warmup_frauds",
    "threshold", "coldstart_alert_rate", "alert_budget_per_day", "alert_rate", "cooldown_hours", "reasons",
    "log_level", "metrics_port", "idle_report_s", "liveness_timeout_s", "snapshot_dir", "snapshot_interval_hours",
    "snapshot_key", "snapshot_key_file", "warm_start",
]


def test_every_variable_name_is_the_one_it_was_before_the_sections():
    got = [v.variable for v in variables()]
    assert len(got) == len(set(got))
    # only additions are allowed (issue 22 adds a few); every old name is still there
    missing = {f"FRAUDFLOW_{n.upper()}" for n in FLAT_NAMES_BEFORE_SECTIONS} - set(got)
    assert not missing, missing
    for v in variables():
        assert v.variable == "FRAUDFLOW_" + v.flat.upper()


def test_each_variable_sets_its_own_field():
    """Every variable, set alone, changes exactly its own field of its own section."""
    base = Settings.from_env({})
    samples = {"int": ["3"], "float": ["0.25", "2.5"], "bool": ["1", "0"], "date": ["2019-01-02"]}
    choices = {"source": "kafka", "sim_labels": "frauds", "kafka_confirm": "batch", "model_kind": "logreg",
               "shard_examples": "own", "label_mode": "frauds", "log_level": "DEBUG"}
    for v in variables():
        if v.flat == "kafka_options" or v.flat.endswith(("_file", "warm_start")):
            continue  # options come from FRAUDFLOW_KAFKA_OPT_*; files must exist (tested above)
        candidates = [choices[v.flat]] if v.flat in choices else samples.get(v.field.type, ["value-" + v.flat])
        for raw in candidates:  # the first value the setting's check accepts that is not its default
            try:
                s = Settings.from_env({v.variable: raw})
            except SettingsError:
                continue
            if s != base:
                break
        else:
            raise AssertionError(f"no sample value for {v.variable}")
        changed = [(sec, f) for sec, shown in s.redacted().items() for f, value in shown.items()
                   if base.redacted()[sec][f] != value]
        assert changed == [(v.section, v.field.name)], (v.variable, changed)


def test_sections_group_the_settings():
    s = Settings.from_env({"FRAUDFLOW_SOURCE": "kafka", "FRAUDFLOW_KAFKA_BROKERS": "k1:9092,k2:9092",
                           "FRAUDFLOW_KAFKA_TOPIC_ALERTS": "alerts-eu", "FRAUDFLOW_ALERTS": "-",
                           "FRAUDFLOW_THRESHOLD": "0.7", "FRAUDFLOW_SNAPSHOT_DIR": "off", "FRAUDFLOW_SIM_DAYS": "9"})
    assert s.input.source == "kafka" and s.kafka.broker_list() == ["k1:9092", "k2:9092"]
    assert (s.kafka.topic_alerts, s.outputs.alerts, s.policy.threshold, s.sim.days) == ("alerts-eu", "-", 0.7, 9)
    assert s.effective_snapshot_dir == "" and s.effective_label_mode == "all"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kafka.brokers = "elsewhere"  # type: ignore[misc]
    assert list(s.redacted()) == ["input", "sim", "kafka", "outputs", "model", "policy", "ops", "snapshots"]


def test_nested_toml_tables_and_flat_keys_mean_the_same(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text('kafka_brokers = "k:9092"\nkafka_topic_alerts = "a"\nthreshold = 0.6\nsnapshot_dir = "off"\n'
                    '[kafka_options]\n"client.id" = "ff"\n')
    nested = tmp_path / "nested.toml"
    nested.write_text('[kafka]\nbrokers = "k:9092"\ntopic_alerts = "a"\n[kafka.options]\n"client.id" = "ff"\n'
                      '[policy]\nthreshold = 0.6\n[snapshots]\ndir = "off"\n')
    a = Settings.from_env({"FRAUDFLOW_CONFIG": str(flat)})
    b = Settings.from_env({"FRAUDFLOW_CONFIG": str(nested)})
    assert a == b and a.kafka.brokers == "k:9092" and a.kafka.options == {"client.id": "ff"}
    assert a.policy.threshold == 0.6 and a != Settings.from_env({})
    overridden = Settings.from_env({"FRAUDFLOW_CONFIG": str(nested), "FRAUDFLOW_KAFKA_BROKERS": "env:1"})
    assert overridden.kafka.brokers == "env:1"  # the environment wins over the file
    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbrokres = "k:9092"\n')
    with pytest.raises(SettingsError, match=r"FRAUDFLOW_CONFIG: .*unknown setting \[kafka\] brokres"):
        Settings.from_env({"FRAUDFLOW_CONFIG": str(bad)})
    typo = tmp_path / "typo.toml"
    typo.write_text("[policy]\nthreshold = 2.0\n")
    with pytest.raises(SettingsError, match="FRAUDFLOW_THRESHOLD: must be between"):
        Settings.from_env({"FRAUDFLOW_CONFIG": str(typo)})


def test_replace_by_flat_name_or_by_section():
    s = Settings()
    a = s.replace(kafka_brokers="k:1", threshold=0.3, sim={"days": 5})
    b = s.replace(kafka=s.kafka.__class__(brokers="k:1"), policy={"threshold": 0.3}, sim_days=5)
    assert a == b and (a.kafka.brokers, a.policy.threshold, a.sim.days) == ("k:1", 0.3, 5)
    assert s.kafka.brokers == "localhost:9092"  # unchanged: settings are values
    with pytest.raises(TypeError, match="unknown setting 'brokers'"):
        s.replace(brokers="k:1")
    with pytest.raises(TypeError):
        s.replace(kafka={"brokres": "k:1"})


def test_model_config_takes_every_model_setting_once():
    s = Settings.from_env({"FRAUDFLOW_MODEL_KIND": "logreg", "FRAUDFLOW_THRESHOLD": "0.4",
                           "FRAUDFLOW_NEGATIVE_SAMPLING": "0.5", "FRAUDFLOW_ALERT_RATE": "0.01",
                           "FRAUDFLOW_SIM_LABELS": "frauds", "FRAUDFLOW_SNAPSHOT_INTERVAL_HOURS": "2"})
    cfg = s.model_config(shards=3)
    assert (cfg.kind, cfg.threshold, cfg.negative_sampling, cfg.alert_rate) == ("logreg", 0.4, 0.5, 0.01)
    assert (cfg.label_mode, cfg.shards, cfg.export_interval_s) == ("frauds", 3, 7200.0)
    tagged = {v.field.metadata["model"] for v in variables() if v.field.metadata.get("model")}
    derived = {"label_mode", "shards", "export_interval_s", "quality_window"}
    assert tagged | derived == {f.name for f in dataclasses.fields(ModelConfig)}
    defaults = ModelConfig()
    for v in variables():
        if v.field.metadata.get("model"):
            assert v.default == getattr(defaults, v.field.metadata["model"]), v.variable


def test_fingerprint_is_over_the_flat_names():
    """Snapshots written before the sections carry the same fingerprint for the same settings."""
    s = Settings.from_env({"FRAUDFLOW_SIM_DAYS": "30", "FRAUDFLOW_KAFKA_OPT_SASL_PASSWORD": "x"})
    flat = {v.flat: s.redacted()[v.section][v.field.name] for v in variables()}
    assert set(flat) >= set(FLAT_NAMES_BEFORE_SECTIONS)
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    assert s.fingerprint() == hashlib.sha256(blob).hexdigest()[:16]
    assert s.fingerprint() != Settings().fingerprint()


def test_settings_command_lists_every_variable_by_section():
    proc = subprocess.run([sys.executable, "-m", "dataflows.cli", "settings"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    headers = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("[")]
    assert headers == [f"[{name}]" for name in Settings().redacted()]
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("FRAUDFLOW_")]
    want = [v.variable if v.flat != "kafka_options" else "FRAUDFLOW_KAFKA_OPT_*" for v in variables()]
    assert listed == want
