"""Settings: typed, validated at start-up, bad values named; secrets from env or files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_run_the_embedded_simulator():
    s = Settings.from_env({})
    assert s.source == "simulator" and s.model_kind == "binned_logreg" and s.effective_label_mode == "all"


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
    assert (s.sim_days, s.threshold, s.kafka_options["client.id"]) == (12, 0.8, "ff")
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
    assert s.kafka_options == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                               "sasl.username": "fraud", "sasl.password": "s3cr3t"}
    shown = repr(s.redacted())
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

    assert Settings().model_kind == DEFAULT_MODEL
