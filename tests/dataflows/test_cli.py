"""The fraudflow command line: simulate -> replay -> evaluate, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fraudflow(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDFLOW_")}
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    proc = fraudflow("simulate", "--out", str(out / "s"), "--customers", "400", "--terminals", "800", "--days", "35",
                     "--seed", "4", cwd=out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    return out, summary


def test_simulate_writes_the_contract_files(simulated):
    out, summary = simulated
    tx_lines = (out / "s.transactions.jsonl").read_text().splitlines()
    label_lines = (out / "s.labels.jsonl").read_text().splitlines()
    assert len(tx_lines) == summary["n_transactions"] == len(label_lines) == summary["n_labels"]
    tx = json.loads(tx_lines[0])
    assert set(tx) == {"tx_id", "account_id", "ts", "amount", "currency", "terminal_id"}
    assert tx["ts"].endswith("Z")
    frauds = [json.loads(line) for line in label_lines if '"is_fraud":true' in line]
    assert len(frauds) == summary["n_frauds"] and {f["fraud_scenario"] for f in frauds} <= {1, 2, 3}
    ts = [json.loads(line)["ts"] for line in label_lines]
    assert ts == sorted(ts)


def test_replay_then_evaluate(simulated):
    out, summary = simulated
    proc = fraudflow("replay", "s.transactions.jsonl", "s.labels.jsonl", "--scores", "scores.jsonl",
                     "--alerts", "alerts.jsonl", "--dlq", "dlq.jsonl", cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert "fraudflow summary" in proc.stderr
    scores = (out / "scores.jsonl").read_text().splitlines()
    assert len(scores) == summary["n_transactions"]
    assert len({json.loads(s)["tx_id"] for s in scores}) == len(scores)
    assert (out / "alerts.jsonl").stat().st_size > 0 and (out / "dlq.jsonl").read_text() == ""
    proc = fraudflow("evaluate", "scores.jsonl", "s.labels.jsonl", "s.transactions.jsonl",
                     "--test-start", "2018-04-28", cwd=out)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["test_start"] == "2018-04-28" and metrics["transactions"] > 1000
    assert 0.5 < metrics["auc_roc"] <= 1.0 and 0 < metrics["average_precision"] <= 1.0
    assert 0 <= metrics["card_precision_at_100"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["replay", "missing.jsonl", "also-missing.jsonl"], "no such file: missing.jsonl"),
    (["simulate", "--out", "x", "--days", "0"], "must be >= 1"),
    (["evaluate", "nope.jsonl", "a", "b"], "no such file: nope.jsonl"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    proc = fraudflow(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_rejects_a_file_that_is_not_scores(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"tx_id": "t-1"}\n')
    (tmp_path / "l.jsonl").write_text("")
    (tmp_path / "t.jsonl").write_text("")
    proc = fraudflow("evaluate", "bad.jsonl", "l.jsonl", "t.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "bad.jsonl:1: not a valid record" in proc.stderr


def test_help_explains_every_command(tmp_path):
    proc = fraudflow("--help", cwd=tmp_path)
    for command in ("simulate", "replay", "evaluate", "settings"):
        assert command in proc.stdout
    settings = fraudflow("settings", cwd=tmp_path)
    assert "FRAUDFLOW_SOURCE" in settings.stdout and "FRAUDFLOW_KAFKA_OPT_*" in settings.stdout
