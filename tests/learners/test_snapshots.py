"""Signed model exports: round trip, tamper detection without unpickling, compatibility checks, CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from dataflows.exports import make_exporter, signing_key
from dataflows.settings import Settings, SettingsError, SnapshotSettings
from learners import snapshot_format as fmt
from learners import snapshot_render as render
from learners.features import FEATURE_NAMES
from learners.models import build_classifier
from learners.snapshot_format import SnapshotError, load_model, verify, write_export

ROOT = Path(__file__).resolve().parents[2]
KEY = b"fraudflow-test-signing-key-0123456789"
T0 = 1533081600.0  # 2018-08-01T00:00:00Z


def _rows(n: int, seed: int) -> list[tuple[dict, bool]]:
    """Synthetic transactions: frauds are larger and at night, on risky terminals."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        fraud = rng.random() < 0.2
        x = {name: rng.gauss(0.0, 1.0) for name in FEATURE_NAMES}
        if fraud:
            x["amount"] += 2.5
            x["tx_during_night"] += 1.5
            x["term_risk_7d"] += 2.0
        rows.append((x, fraud))
    return rows


def _trained(kind: str = "logreg", n: int = 400, seed: int = 0):
    model = build_classifier(kind, seed=0)
    for x, y in _rows(n, seed):
        model.learn_one(x, y)
    return model


def _document(model, kind: str = "logreg", shard: str = "shard-0.0", last_ts: float = T0 + 7.5 * 86_400,
              reason: str = "interval", **extra) -> dict:
    doc = fmt.build_document(
        shard=shard, reason=reason, kind=kind, model=model, features=FEATURE_NAMES,
        counts={"scored": 5_000, "labels_received": 4_200, "labels_learned": 400, "frauds_learned": 80,
                "implicit_negatives": 0, "late_transactions": 3},
        quality={"window_labels": 350, "window_frauds": 12, "average_precision": 0.61, "auc_roc": 0.87},
        threshold=0.5, negative_sampling=0.1, supervised=True, seed=0, code_version="test",
        settings_fingerprint="0123456789abcdef", first_ts=T0, last_ts=last_ts, built_to=last_ts - 3 * 3600,
    )
    doc.update(extra)
    return doc


@pytest.fixture(scope="module")
def logreg():
    return _trained()


@pytest.fixture
def export(tmp_path, logreg) -> Path:
    return write_export(tmp_path / "exports", _document(logreg), logreg, KEY)


def _binary(json_path: Path) -> Path:
    return json_path.with_suffix(".model")


# -- round trip ----------------------------------------------------------------------------
def test_export_verifies_and_loads_the_same_model(export, logreg):
    assert export.name == "shard-0.0-20180808T120000Z-interval.json"
    result = verify(export, KEY)
    assert result.ok and result.reason == "ok" and result.document["name"] == export.stem
    model, doc = load_model(export, KEY, expect_kind="logreg", expect_features=FEATURE_NAMES)
    for x, _ in _rows(50, seed=9):
        assert model.predict_proba_one(x) == logreg.predict_proba_one(x)
    assert doc["model"]["weights"] == pytest.approx(dict(logreg["LogisticRegression"].weights))


def test_document_follows_the_format(export, logreg):
    doc = json.loads(export.read_text())
    assert list(doc)[:3] == ["format", "name", "created_at"]
    assert doc["format"] == "fraudflow-snapshot/1" and doc["created_at"].endswith("Z")
    assert doc["event_time"] == {"first": "2018-08-01T00:00:00Z", "last": "2018-08-08T12:00:00Z",
                                 "built_to": "2018-08-08T09:00:00Z"}
    assert doc["model"]["kind"] == doc["model"]["name"] == "logreg"
    assert doc["model"]["family"] == "logistic_regression" and doc["model"]["hyper_parameters"]["seed"] == 0
    assert doc["supervised"] is True
    weights = list(doc["model"]["weights"].values())
    assert weights == sorted(weights, key=lambda w: -abs(w))
    assert set(doc["model"]) >= {"intercept", "scaler_mean", "scaler_std", "hyper_parameters"}
    assert doc["features"] == list(FEATURE_NAMES)
    blob = _binary(export).read_bytes()
    assert doc["binary"] == {"file": export.stem + ".model", "sha256": hashlib.sha256(blob).hexdigest(),
                             "bytes": len(blob)}
    assert blob[:2] == b"\x80\x05"  # pickle protocol 5
    # The signature, recomputed independently from the documented recipe.
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    assert doc["signature"] == {"algorithm": "HMAC-SHA256", "key_id": hashlib.sha256(KEY).hexdigest()[:8],
                                "value": hmac.new(KEY, canonical, hashlib.sha256).hexdigest()}


def test_files_are_private_and_written_atomically(export):
    for path in (export, _binary(export)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in export.parent.iterdir()) == [export.name, _binary(export).name]


# -- tampering -----------------------------------------------------------------------------
def test_one_byte_of_the_binary_changed(export):
    binary = _binary(export)
    blob = bytearray(binary.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    binary.write_bytes(bytes(blob))
    result = verify(export, KEY)
    assert not result.ok and result.reason == "binary sha256 mismatch (the model file was changed)"
    with pytest.raises(SnapshotError, match="binary sha256 mismatch"):
        load_model(export, KEY)


def test_a_weight_changed_in_the_json(export):
    doc = json.loads(export.read_text())
    feature = next(iter(doc["model"]["weights"]))
    doc["model"]["weights"][feature] += 0.5
    export.write_text(json.dumps(doc, indent=2))
    result = verify(export, KEY)
    assert not result.ok
    assert result.reason == "signature mismatch (the JSON was changed or signed with another key)"
    with pytest.raises(SnapshotError, match="signature mismatch"):
        load_model(export, KEY)


def test_another_key_is_a_signature_mismatch(export):
    assert verify(export, b"another-key-of-sufficient-length").reason.startswith("signature mismatch")
    assert verify(export, None).reason == "no signing key configured"
    with pytest.raises(SnapshotError, match="no signing key configured"):
        load_model(export, None)


class _Booby:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_binary_is_never_unpickled(export, tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Booby(probe), protocol=5))
    assert probe.exists()  # the payload works when unpickled...

    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Booby(marker), protocol=5)
    _binary(export).write_bytes(evil)  # ... swapped in, nothing recomputed
    with pytest.raises(SnapshotError, match="binary sha256 mismatch"):
        load_model(export, KEY, expect_kind="logreg", expect_features=FEATURE_NAMES)
    assert not marker.exists()

    # Recomputing the hash in the JSON without the key breaks the signature instead.
    doc = json.loads(export.read_text())
    doc["binary"].update(sha256=hashlib.sha256(evil).hexdigest(), bytes=len(evil))
    export.write_text(json.dumps(doc))
    with pytest.raises(SnapshotError, match="signature mismatch"):
        load_model(export, KEY)
    assert not marker.exists()

    # A forged unsigned export with a consistent hash is refused too.
    doc["signature"] = None
    export.write_text(json.dumps(doc))
    with pytest.raises(SnapshotError, match="unsigned"):
        load_model(export, KEY)
    assert not marker.exists()


def test_missing_binary_and_unreadable_or_foreign_json(export, tmp_path):
    _binary(export).unlink()
    assert verify(export, KEY).reason == "binary missing"
    with pytest.raises(SnapshotError, match="binary missing"):
        load_model(export, KEY)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "fraudflow-snapsh')
    assert verify(broken, KEY).reason == "unreadable JSON"
    assert verify(tmp_path / "absent.json", KEY).reason == "unreadable JSON"
    foreign = tmp_path / "package.json"
    foreign.write_text('{"name": "left-pad"}')
    assert verify(foreign, KEY) == fmt.VerifyResult(foreign, False, "not a fraudflow snapshot", None)
    with pytest.raises(SnapshotError, match="not a fraudflow snapshot"):
        load_model(foreign, KEY)


# -- unsigned exports ----------------------------------------------------------------------
def test_unsigned_exports_are_written_with_one_warning_and_never_load(tmp_path, logreg, caplog):
    with caplog.at_level(logging.WARNING):
        # the flow's start-up
        assert make_exporter(Settings().replace(snapshot_dir=str(tmp_path)), lambda: None) is not None
        first = write_export(tmp_path, _document(logreg), logreg, None)
        write_export(tmp_path, _document(logreg, last_ts=T0 + 86_400), logreg, None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unsigned" in warnings[0].getMessage()
    assert "FRAUDFLOW_SNAPSHOT_KEY_FILE" in warnings[0].getMessage()
    assert json.loads(first.read_text())["signature"] is None
    assert verify(first, KEY).reason == "unsigned"
    with pytest.raises(SnapshotError, match="unsigned"):
        load_model(first, KEY)


# -- compatibility -------------------------------------------------------------------------
def test_wrong_kind_is_refused(export):
    with pytest.raises(SnapshotError, match="snapshot model kind 'logreg' does not match FRAUDFLOW_MODEL_KIND 'arf'"):
        load_model(export, KEY, expect_kind="arf")


def test_wrong_features_are_refused(export):
    with pytest.raises(SnapshotError, match="lacks new_feature"):
        load_model(export, KEY, expect_features=[*FEATURE_NAMES, "new_feature"])
    with pytest.raises(SnapshotError, match="has unknown amount"):
        load_model(export, KEY, expect_features=FEATURE_NAMES[1:])
    with pytest.raises(SnapshotError, match="different order"):
        load_model(export, KEY, expect_features=list(reversed(FEATURE_NAMES)))


def test_a_future_format_is_refused_after_verification(export):
    doc = json.loads(export.read_text())
    doc["format"] = "fraudflow-snapshot/2"
    doc["signature"]["value"] = hmac.new(KEY, fmt.canonical_json(doc), hashlib.sha256).hexdigest()
    export.write_text(json.dumps(doc))
    assert verify(export, KEY).ok
    with pytest.raises(SnapshotError, match="format 'fraudflow-snapshot/2' is not supported"):
        load_model(export, KEY)


def test_bad_shard_or_reason_is_refused(tmp_path, logreg):
    with pytest.raises(SnapshotError, match="reason 'nightly'"):
        write_export(tmp_path, _document(logreg, reason="nightly"), logreg, KEY)
    with pytest.raises(SnapshotError, match="not a plain name"):
        write_export(tmp_path, _document(logreg, shard="../etc"), logreg, KEY)
    assert list(tmp_path.iterdir()) == []


# -- the key -------------------------------------------------------------------------------
def test_signing_key_from_the_settings(tmp_path):
    def key(**env: str):
        return signing_key(Settings.from_env({f"FRAUDFLOW_{k}": v for k, v in env.items()}).snapshots)

    assert key() is None
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    assert key(SNAPSHOT_KEY_FILE=str(key_file)) == KEY
    assert key(SNAPSHOT_KEY=KEY.decode()) == KEY
    assert key(SNAPSHOT_KEY_FILE=str(key_file), SNAPSHOT_KEY="another-key-of-sufficient-length") == KEY
    assert key(SNAPSHOT_KEY="") is None  # empty is unset, as for every FRAUDFLOW_ string setting
    with pytest.raises(SettingsError, match="FRAUDFLOW_SNAPSHOT_KEY_FILE: no such file"):
        key(SNAPSHOT_KEY_FILE=str(tmp_path / "nope"))
    with pytest.raises(SettingsError, match="FRAUDFLOW_SNAPSHOT_KEY_FILE: cannot read"):
        signing_key(SnapshotSettings(key_file=str(tmp_path / "nope")))  # gone after the settings were read
    with pytest.raises(SettingsError, match="FRAUDFLOW_SNAPSHOT_KEY: .*at least 16") as info:
        key(SNAPSHOT_KEY="hunter2")
    assert "hunter2" not in str(info.value)
    key_file.write_bytes(b"\n")
    with pytest.raises(SettingsError, match="FRAUDFLOW_SNAPSHOT_KEY_FILE.* empty"):
        key(SNAPSHOT_KEY_FILE=str(key_file))
    with pytest.raises(SnapshotError, match="test: the snapshot signing key is empty"):
        fmt.check_key(b"", "test")


# -- reading for people --------------------------------------------------------------------
def test_show_lists_the_top_weights_with_sign(export):
    doc = json.loads(export.read_text())
    text = render.render_show(doc, top=5)
    top5 = list(doc["model"]["weights"].items())[:5]
    for name, weight in top5:
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert f"{weight:+.4f}" in line and "#" in line
    sixth = list(doc["model"]["weights"])[5]
    assert f"  {sixth} " not in text
    for needle in ("logreg (logistic_regression)", "2018-08-01T00:00:00Z .. 2018-08-08T12:00:00Z", "5,000",
                   "average precision", "0.61", "alert threshold", "0123456789abcdef", "test", "HMAC-SHA256"):
        assert needle in text, needle


def test_show_and_plot_tree_importances(tmp_path):
    arf = _trained("arf", n=1_200)
    path = write_export(tmp_path, _document(arf, kind="arf"), arf, KEY)
    doc = json.loads(path.read_text())
    importances = doc["model"]["feature_importances"]
    assert importances and abs(sum(importances.values()) - 1.0) < 1e-9
    text = render.render_show(doc)
    assert "feature importances" in text and next(iter(importances)) in text
    png = render.plot_export(doc, tmp_path / "arf.png")
    assert imread(png).shape[0] > 200
    model, _ = load_model(path, KEY, expect_kind="arf")
    x = _rows(1, 5)[0][0]
    assert model.predict_proba_one(x) == arf.predict_proba_one(x)


def test_diff_shows_what_moved(tmp_path, logreg):
    a = write_export(tmp_path, _document(logreg), logreg, KEY)
    later = _trained(n=1_500, seed=1)
    b_doc = _document(later, last_ts=T0 + 14 * 86_400, threshold=0.6)
    b_doc["counts"]["labels_learned"] = 1_500
    b_doc["features"] = [*FEATURE_NAMES, "acct_new_country"]
    b = write_export(tmp_path, b_doc, later, KEY)
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    text = render.diff_exports(da, db, top=3)
    wa, wb = da["model"]["weights"], db["model"]["weights"]
    most = max(wa, key=lambda n: abs(wb[n] - wa[n]))
    assert most in text
    assert "labels learned" in text and "+1,100" in text
    assert "threshold" in text and "0.5 -> 0.6" in text
    assert "only in B" in text and "acct_new_country" in text


def test_list_exports_sorted_by_shard_then_event_time(tmp_path, logreg):
    for shard, day, reason in (("shard-1.0", 3, "interval"), ("shard-0.0", 5, "shutdown"),
                               ("shard-0.0", 2, "interval"), ("shard-10.0", 1, "on_demand")):
        write_export(tmp_path, _document(logreg, shard=shard, last_ts=T0 + day * 86_400, reason=reason), logreg,
                     KEY)
    (tmp_path / "notes.json").write_text("[]")
    names = [s["name"] for s in fmt.list_exports(tmp_path)]
    assert names == ["shard-0.0-20180803T000000Z-interval", "shard-0.0-20180806T000000Z-shutdown",
                     "shard-1.0-20180804T000000Z-interval", "shard-10.0-20180802T000000Z-on_demand"]


# -- the command line ----------------------------------------------------------------------
def _cli(*args: str, key: bytes | None = KEY, cwd: Path | None = None, **settings: str
         ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    if key is not None:
        env["FRAUDFLOW_SNAPSHOT_KEY"] = key.decode()
    env.update({f"FRAUDFLOW_{k}": v for k, v in settings.items()})
    return subprocess.run([sys.executable, "-m", "dataflows.cli", "snapshots", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def export_dir(tmp_path, logreg) -> Path:
    directory = tmp_path / "snapshots"
    write_export(directory, _document(logreg), logreg, KEY)
    later = _trained(n=800, seed=2)
    write_export(directory, _document(later, last_ts=T0 + 9 * 86_400, reason="shutdown"), later, KEY)
    return directory


def test_cli_list_show_diff(export_dir, tmp_path):
    listed = _cli("list", str(export_dir))
    assert listed.returncode == 0, listed.stderr
    assert "shard-0.0-20180808T120000Z-interval" in listed.stdout and "2 export(s)" in listed.stdout
    assert listed.stdout.index("20180808T") < listed.stdout.index("20180810T")

    png = tmp_path / "weights.png"
    shown = _cli("show", "shard-0.0-20180808", "--dir", str(export_dir), "--plot", str(png))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("verification: OK")
    doc = json.loads((export_dir / "shard-0.0-20180808T120000Z-interval.json").read_text())
    for name in list(doc["model"]["weights"])[:5]:
        assert name in shown.stdout
    assert imread(png).shape[0] > 200

    as_json = _cli("show", str(export_dir / "shard-0.0-20180808T120000Z-interval.model"), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == doc

    diffed = _cli("diff", "shard-0.0-20180808", "shard-0.0-20180810", "--dir", str(export_dir))
    assert diffed.returncode == 0, diffed.stderr
    assert "moved most" in diffed.stdout and "labels learned" in diffed.stdout


def test_cli_verify_exit_codes(export_dir, tmp_path):
    ok = _cli("verify", str(export_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [line.split()[0] for line in ok.stdout.splitlines()] == ["OK", "OK"]

    binary = next(export_dir.glob("*interval.model"))
    binary.write_bytes(binary.read_bytes()[:-1] + b"\x00")
    unsigned_dir = tmp_path / "unsigned"
    model = _trained(n=50)
    write_export(unsigned_dir, _document(model), model, None)
    bad = _cli("verify", str(export_dir), str(unsigned_dir))
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert len(lines) == 3
    assert any(line.startswith("FAILED") and "binary sha256 mismatch" in line for line in lines)
    assert any(line.startswith("FAILED") and line.endswith("unsigned") for line in lines)
    assert sum(line.startswith("OK") for line in lines) == 1

    no_key = _cli("verify", str(export_dir), key=None)
    assert no_key.returncode == 1 and "no signing key configured" in no_key.stdout

    missing = _cli("verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no such file or directory" in missing.stderr


def test_cli_user_errors_are_one_line(export_dir, tmp_path):
    absent = _cli("show", "shard-9", "--dir", str(export_dir))
    assert absent.returncode == 2 and absent.stderr.count("\n") == 1
    assert "no export named 'shard-9'" in absent.stderr
    ambiguous = _cli("show", "shard-0.0", "--dir", str(export_dir))
    assert ambiguous.returncode == 2 and "matches 2 exports" in ambiguous.stderr
    no_dir = _cli("list", str(tmp_path / "nowhere"))
    assert no_dir.returncode == 2 and "no such directory" in no_dir.stderr
    short_key = _cli("verify", str(export_dir), key=b"short")
    assert short_key.returncode == 2 and "FRAUDFLOW_SNAPSHOT_KEY" in short_key.stderr
    assert "short" not in short_key.stderr.replace("FRAUDFLOW", "")


def test_cli_default_directory_is_where_the_flow_writes(export_dir, tmp_path):
    listed = _cli("list", SNAPSHOT_DIR=str(export_dir))
    assert listed.returncode == 0 and "2 export(s)" in listed.stdout
    verified = _cli("verify", SNAPSHOT_DIR=str(export_dir))
    assert verified.returncode == 0 and verified.stdout.count("OK") == 2
    # the flow on the simulator writes to fraudflow-output/snapshots under its working directory
    (tmp_path / "fraudflow-output").mkdir()
    export_dir.rename(tmp_path / "fraudflow-output" / "snapshots")
    assert "2 export(s)" in _cli("list", cwd=tmp_path).stdout
    # on Kafka without FRAUDFLOW_SNAPSHOT_DIR the flow writes none: the command asks for the directory
    off = _cli("list", cwd=tmp_path, SOURCE="kafka", KAFKA_BROKERS="127.0.0.1:9")
    assert off.returncode == 2 and off.stderr.count("\n") == 1 and "give the directory" in off.stderr
    bad = _cli("list", cwd=tmp_path, SNAPSHOT_INTERVAL_HOURS="soon")
    assert bad.returncode == 2 and "FRAUDFLOW_SNAPSHOT_INTERVAL_HOURS" in bad.stderr


def test_cli_help_explains_each_action():
    top = _cli("--help")
    assert top.returncode == 0
    for action in ("list", "show", "diff", "verify"):
        assert action in top.stdout
    verify_help = _cli("verify", "--help")
    assert "Exit status" in verify_help.stdout and "FRAUDFLOW_SNAPSHOT_KEY_FILE" in verify_help.stdout
    show_help = _cli("show", "--help")
    assert "--plot" in show_help.stdout and "NAME_OR_PATH" in show_help.stdout
