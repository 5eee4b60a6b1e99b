"""deploy/entrypoint.py: pod name -> process id and peers, validation, recovery partitions."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.entrypoint import MARKER, EntrypointError, Plan, bytewax_command, ensure_recovery, plan_from_env

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.py"


def pod_env(pod: str = "fraudflow-2", **more: str) -> dict[str, str]:
    env = {"POD_NAME": pod, "POD_NAMESPACE": "payments", "CLUSTER_SERVICE": "fraudflow-peers",
           "CLUSTER_REPLICAS": "3", "CLUSTER_PORT": "2101", "CLUSTER_WORKERS": "2"}
    env.update(more)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The entrypoint as a container would run it (clean environment, its own process)."""
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(ENTRYPOINT), *args], env=full, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


# -- topology -------------------------------------------------------------------------------------
def test_pod_ordinal_is_the_process_id_and_peers_come_from_the_headless_service() -> None:
    plan = plan_from_env(pod_env("fraudflow-2"))
    assert (plan.statefulset, plan.ordinal, plan.replicas, plan.workers) == ("fraudflow", 2, 3, 2)
    assert plan.addresses == tuple(
        f"fraudflow-{i}.fraudflow-peers.payments.svc.cluster.local:2101" for i in range(3))
    cmd = bytewax_command(plan, python="python")
    assert cmd == ["python", "-m", "bytewax.run", "dataflows.fraud:flow", "-w", "2", "-i", "2", "-a",
                   ";".join(plan.addresses)]


def test_names_with_dashes_domain_and_hostname_fallback() -> None:
    env = pod_env(CLUSTER_DOMAIN="k8s.internal", CLUSTER_REPLICAS="12")
    del env["POD_NAME"]
    plan = plan_from_env({**env, "HOSTNAME": "fraud-flow-eu-11"})
    assert (plan.statefulset, plan.ordinal) == ("fraud-flow-eu", 11)
    assert plan.addresses[11] == "fraud-flow-eu-11.fraudflow-peers.payments.svc.k8s.internal:2101"


def test_peer_override_maps_pods_to_local_addresses() -> None:
    plan = plan_from_env(pod_env("fraudflow-0", CLUSTER_PEERS_OVERRIDE=(
        "fraudflow-0=127.0.0.1:4100, fraudflow-2=127.0.0.1:4102")))
    assert plan.addresses == ("127.0.0.1:4100", "fraudflow-1.fraudflow-peers.payments.svc.cluster.local:2101",
                              "127.0.0.1:4102")


@pytest.mark.parametrize("env, message", [
    (pod_env("fraudflow"), "pod name 'fraudflow' has no ordinal"),
    (pod_env("fraudflow-x"), "has no ordinal"),
    (pod_env("fraudflow-01"), "has no ordinal"),
    (pod_env("Fraudflow-0"), "has no ordinal"),
    (pod_env("fraudflow-3"), "pod fraudflow-3 has ordinal 3 but CLUSTER_REPLICAS=3 (ordinals 0..2)"),
    (pod_env(CLUSTER_REPLICAS="0"), "CLUSTER_REPLICAS: must be >= 1, got 0"),
    (pod_env(CLUSTER_REPLICAS="three"), "CLUSTER_REPLICAS: expected a whole number, got 'three'"),
    ({k: v for k, v in pod_env().items() if k != "CLUSTER_REPLICAS"}, "CLUSTER_REPLICAS is not set"),
    (pod_env(CLUSTER_PORT="0"), "CLUSTER_PORT: must be between 1 and 65535, got 0"),
    (pod_env(CLUSTER_PORT="70000"), "CLUSTER_PORT: must be between 1 and 65535, got 70000"),
    (pod_env(CLUSTER_PORT="http"), "CLUSTER_PORT: expected a whole number"),
    (pod_env(CLUSTER_WORKERS="0"), "CLUSTER_WORKERS: must be between 1 and 256"),
    (pod_env(CLUSTER_SERVICE=""), "CLUSTER_SERVICE is not set"),
    (pod_env(CLUSTER_SERVICE="Fraud_Peers"), "CLUSTER_SERVICE: 'Fraud_Peers' is not a valid DNS label"),
    (pod_env(POD_NAMESPACE=""), "POD_NAMESPACE is not set"),
    (pod_env(CLUSTER_PEERS_OVERRIDE="fraudflow-5=127.0.0.1:1"), "does not name a pod fraudflow-0..2"),
    (pod_env(CLUSTER_PEERS_OVERRIDE="fraudflow-1=127.0.0.1"), "expected host:port"),
    (pod_env(CLUSTER_PEERS_OVERRIDE="fraudflow-0=h:1,fraudflow-1=h:1"), "two pods would share an address"),
    (pod_env(CLUSTER_RECOVERY_DIR="/nonexistent/recovery", CLUSTER_RECOVERY_PARTITIONS="3"), "is not a directory"),
])
def test_bad_configuration_fails_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(EntrypointError, match=re.escape(message)):
        plan_from_env(env)


@pytest.mark.parametrize("env, message", [
    (pod_env("fraudflow"), "pod name 'fraudflow' has no ordinal: expected <statefulset>-<n>"),
    (pod_env("fraudflow-3"), "pod fraudflow-3 has ordinal 3 but CLUSTER_REPLICAS=3"),
    (pod_env(CLUSTER_PORT="99999"), "CLUSTER_PORT: must be between 1 and 65535, got 99999"),
])
def test_the_process_exits_2_with_one_line_on_stderr_and_no_traceback(env, message) -> None:
    out = run(env)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fraudflow-entrypoint: error: " + message), out.stderr
    assert "Traceback" not in out.stderr


# -- recovery partitions ----------------------------------------------------------------------------
def _fingerprint(directory: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.iterdir()) if p.is_file()}


def _partition_meta(path: Path) -> list[tuple[int, int]]:
    """(index, count) recorded inside a bytewax recovery partition."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT part_index, part_count FROM parts").fetchall()


def test_first_start_creates_this_pods_partition_and_a_restart_resumes(tmp_path: Path) -> None:
    volume = tmp_path / "recovery-fraudflow-1"
    volume.mkdir()
    (volume / "lost+found").mkdir()  # what a fresh ext4 volume holds
    env = pod_env("fraudflow-1", CLUSTER_RECOVERY_DIR=str(volume), CLUSTER_RECOVERY_PARTITIONS="3",
                  CLUSTER_SNAPSHOT_S="10", CLUSTER_BACKUP_S="60")
    first = run(env, "--init-only")
    assert first.returncode == 0, first.stderr
    assert "created recovery partition 1 of 3" in first.stderr
    assert sorted(p.name for p in volume.iterdir()) == [MARKER, "lost+found", "part-1.sqlite3"]
    assert _partition_meta(volume / "part-1.sqlite3") == [(1, 3)]
    assert "-i 1 -a fraudflow-0.fraudflow-peers.payments.svc.cluster.local:2101;" in first.stderr
    assert f"-r {volume} -s 10 -b 60" in first.stderr

    before = _fingerprint(volume)
    second = run(env, "--init-only")  # the pod restarts
    assert second.returncode == 0, second.stderr
    assert "resuming: 1 recovery partition file(s) here (part-1.sqlite3)" in second.stderr
    assert _fingerprint(volume) == before, "a restart must never touch existing partitions"


def test_existing_partitions_are_never_reinitialised(tmp_path: Path) -> None:
    # A volume holding partitions under any name (bytewax reads every *.sqlite3) is resumed.
    from bytewax.recovery import init_db_dir

    init_db_dir(tmp_path, 2)
    before = _fingerprint(tmp_path)
    plan = plan_from_env(pod_env("fraudflow-0", CLUSTER_RECOVERY_DIR=str(tmp_path), CLUSTER_RECOVERY_PARTITIONS="3"))
    assert ensure_recovery(plan).startswith("resuming: 2 recovery partition file(s)")
    assert _fingerprint(tmp_path) == before


def _plan(tmp_path: Path, pod: str, replicas: int, partitions: int) -> Plan:
    return plan_from_env(pod_env(pod, CLUSTER_REPLICAS=str(replicas), CLUSTER_RECOVERY_DIR=str(tmp_path),
                                 CLUSTER_RECOVERY_PARTITIONS=str(partitions)))


def test_a_pod_added_by_scaling_out_holds_no_partition(tmp_path: Path) -> None:
    assert "joined after the 3 original pods" in ensure_recovery(_plan(tmp_path, "fraudflow-3", 4, 3))
    assert list(tmp_path.iterdir()) == []


def test_a_volume_whose_partition_was_moved_away_gets_no_new_one(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "fraudflow-2", 3, 3)
    ensure_recovery(plan)
    (tmp_path / "part-2.sqlite3").rename(tmp_path.parent / "moved.sqlite3")  # scale-in procedure
    assert "moved to another pod's volume" in ensure_recovery(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]


def test_a_first_deployment_smaller_than_the_partition_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EntrypointError, match="partitions 2..2 would never exist"):
        ensure_recovery(_plan(tmp_path, "fraudflow-0", 2, 3))
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_an_interrupted_creation_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".init-123").mkdir()
    (tmp_path / ".init-123" / "part-0.sqlite3").write_bytes(b"half written")
    assert ensure_recovery(_plan(tmp_path, "fraudflow-0", 3, 3)) == "created recovery partition 0 of 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "part-0.sqlite3"]
    assert _partition_meta(tmp_path / "part-0.sqlite3") == [(0, 3)]
