"""Operations: metrics scraped over HTTP from a running flow, and model snapshot exports
(export -> verify -> show -> warm start, tampering refused)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, run_main

from connectors.broker import free_port
from connectors.events import Transaction
from connectors.simulator import SimulatorConfig, simulate
from connectors.sources import EventListSource
from dataflows.fraud import build_flow
from dataflows.settings import Settings
from learners.features import FEATURE_NAMES

ROOT = Path(__file__).resolve().parents[2]
KEY = "a-test-signing-key-of-32-bytes!!"


def _get(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.findall(pattern, text, flags=re.M)
    assert found, f"{name}{labels} not exposed"
    return float(found[0])


def test_running_flow_exposes_plausible_metrics(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env.update({"PYTHONPATH": str(ROOT), "FRAUDFLOW_METRICS_PORT": str(port), "FRAUDFLOW_SIM_CUSTOMERS": "1500",
                "FRAUDFLOW_SIM_TERMINALS": "3000", "FRAUDFLOW_SIM_DAYS": "90", "FRAUDFLOW_SNAPSHOT_DIR": "off",
                "FRAUDFLOW_ALERTS": str(tmp_path / "alerts.jsonl"), "FRAUDFLOW_DLQ": str(tmp_path / "dlq.jsonl")})
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the flow never became ready")
        # well into the stream: past the cold start, with alerts (polled, not a fixed sleep,
        # so a slow machine waits longer instead of scraping too early)
        deadline = time.monotonic() + 60
        while True:
            status, first = _get(base + "/metrics")
            assert status == 200
            if (re.search(r"^fraudflow_alerts_total [1-9]", first, flags=re.M)
                    and re.search(r'^fraudflow_model_supervised\{shard="shard-0.0"\} 1\.0$', first, flags=re.M)):
                break
            assert time.monotonic() < deadline, "no alerts from a supervised model within 60 s"
            time.sleep(0.5)
        time.sleep(1.5)
        _, second = _get(base + "/metrics")
        assert _get(base + "/healthz")[0] == 200
        assert proc.poll() is None, "the stream ended before the second scrape: make it longer"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    scored_1 = _metric(first, "fraudflow_transactions_scored_total")
    scored_2 = _metric(second, "fraudflow_transactions_scored_total")
    assert 0 < scored_1 < scored_2  # counting while it runs
    assert _metric(second, "fraudflow_score_count") == scored_2
    assert _metric(second, 'fraudflow_score_bucket', '{le="+Inf"}') == scored_2
    assert _metric(second, 'fraudflow_score_bucket', '{le="0.5"}') < scored_2
    received = _metric(second, "fraudflow_labels_received_total")
    assert 0 < received < scored_2  # labels lag transactions by 7 days
    frauds = _metric(second, "fraudflow_labels_learned_total", '{label="fraud"}')
    legit = _metric(second, "fraudflow_labels_learned_total", '{label="legitimate"}')
    assert 0 < frauds < legit < received  # every fraud, a sample of the legitimate
    assert _metric(second, "fraudflow_pending_transactions") > 0
    assert _metric(second, "fraudflow_alerts_total") > 0
    assert _metric(second, "fraudflow_model_supervised", '{shard="shard-0.0"}') == 1.0
    assert 0.0 < _metric(second, "fraudflow_model_average_precision", '{shard="shard-0.0"}') <= 1.0
    assert 0.5 < _metric(second, "fraudflow_model_auc_roc", '{shard="shard-0.0"}') <= 1.0
    event_time = _metric(second, "fraudflow_event_time_seconds")
    assert SimulatorConfig().start_ts < event_time < SimulatorConfig().start_ts + 90 * 86_400


def _run(events, settings: Settings):
    alerts, dlq, scores = [], [], []
    parts = build_flow(settings, source=EventListSource(events), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=1)
    run_main(parts.flow)
    return parts, scores


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDFLOW_")}
    env.update({"PYTHONPATH": str(ROOT), "FRAUDFLOW_SNAPSHOT_KEY": KEY, **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A flow run over 40 days that exports its model every 10 days and at the end."""
    out = tmp_path_factory.mktemp("snapshots")
    cfg = SimulatorConfig(customers=700, terminals=1_400, days=50, seed=21)
    events = list(simulate(cfg))
    cut = cfg.start_ts + 40 * 86_400
    first = [e for e in events if e.event_ts < cut]
    later_txs = [e for e in events if e.event_ts >= cut and isinstance(e, Transaction)]
    settings = Settings().replace(progress=False, model_kind="logreg", snapshot_dir=str(out), snapshot_key=KEY,
                                  snapshot_interval_hours=240)
    parts, _ = _run(first, settings)
    (name, shard), = parts.stats.shard_items()
    return out, shard, later_txs, settings, parts


def test_exports_are_written_on_event_time_and_at_the_end(exported):
    out, shard, _, _, parts = exported
    docs = sorted(out.glob("*.json"))
    reasons = [json.loads(p.read_text())["reason"] for p in docs]
    assert reasons.count("shutdown") == 1 and reasons.count("interval") >= 3  # days 10, 20, 30
    assert parts.stats.snapshot_exports == len(docs)
    last = json.loads([p for p in docs if "shutdown" in p.name][0].read_text())
    assert last["counts"]["labels_learned"] == shard.counts["labels_learned"]
    assert last["features"] == list(FEATURE_NAMES) and last["model"]["kind"] == "logreg"
    assert last["model"]["weights"] and last["signature"]["algorithm"] == "HMAC-SHA256"
    assert 0 < last["quality"]["average_precision"] <= 1


def test_verify_show_and_tampering(exported, tmp_path):
    out, *_ = exported
    assert _cli("snapshots", "verify", str(out)).returncode == 0
    shutdown = next(out.glob("*shutdown*.json"))
    shown = _cli("snapshots", "show", str(shutdown))
    assert shown.returncode == 0
    top_weight = next(iter(json.loads(shutdown.read_text())["model"]["weights"]))
    assert top_weight in shown.stdout
    # one byte of the model binary changed: refused
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in out.glob(shutdown.stem + ".*"):
        (bad / p.name).write_bytes(p.read_bytes())
    binary = next(bad.glob("*.model"))
    blob = bytearray(binary.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    binary.write_bytes(bytes(blob))
    result = _cli("snapshots", "verify", str(bad))
    assert result.returncode != 0 and "sha256" in (result.stdout + result.stderr)


def test_warm_start_scores_like_the_original_model(exported):
    out, original, later_txs, settings, _ = exported
    snapshot = next(out.glob("*shutdown*.json"))
    warm_settings = settings.replace(warm_start=str(snapshot), snapshot_dir="off")
    parts, scores = _run(later_txs, warm_settings)  # transactions only: nothing new is learned
    (_, shard), = parts.stats.shard_items()
    assert all(s.model == "logreg" for s in scores)  # supervised from the first transaction
    from dataflows.fraud import pipeline_config
    from learners.pending import unpack
    from learners.pipeline import SequentialPipeline
    from learners.scoring import _sampling_rate, _unsample
    from learners.stages import pending_key

    # The features the flow computed, from the same steps in a plain loop (features do not
    # depend on the model); the loop keeps them as float32, awaiting labels that never come.
    loop = SequentialPipeline(pipeline_config(settings, 1))
    for tx in later_txs:
        loop.on_transaction(tx)
    tx_ts = {tx.tx_id: tx.event_ts for tx in later_txs}
    for s in scores:
        packed = loop.buckets[pending_key(loop.routes.keys[0], tx_ts[s.tx_id])].bucket.features[s.tx_id]
        x = dict(zip(FEATURE_NAMES, unpack(packed)))
        rate = _sampling_rate(x["term_log_known_frauds_30d"], settings.model.negative_sampling)
        expected = _unsample(original.model.predict_proba_one(x).get(True, 0.0), rate)
        # the same model; the flow scored float64 features, the loop kept them as float32
        assert s.score == pytest.approx(expected, rel=1e-5, abs=2e-6)


def test_tampered_or_unsigned_warm_start_stops_start_up(exported, tmp_path):
    out, *_ = exported
    snapshot = next(out.glob("*shutdown*.json"))
    doc = json.loads(snapshot.read_text())
    doc["threshold"] = 0.01  # someone edits the readable half
    (tmp_path / snapshot.name).write_text(json.dumps(doc))
    model_file = next(out.glob(snapshot.stem + ".model"))
    (tmp_path / model_file.name).write_bytes(model_file.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env.update({"PYTHONPATH": str(ROOT), "FRAUDFLOW_WARM_START": str(tmp_path / snapshot.name),
                "FRAUDFLOW_SNAPSHOT_KEY": KEY, "FRAUDFLOW_MODEL_KIND": "logreg"})
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "FRAUDFLOW_WARM_START" in proc.stderr and "signature" in proc.stderr
    del env["FRAUDFLOW_SNAPSHOT_KEY"]  # no key: nothing can be verified, so nothing is loaded
    env["FRAUDFLOW_WARM_START"] = str(snapshot)
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "FRAUDFLOW_WARM_START" in proc.stderr and "Traceback" not in proc.stderr
