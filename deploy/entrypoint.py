"""Container entrypoint: run this pod's share of the fraudflow Bytewax cluster.

A StatefulSet runs one Bytewax process per pod. Pod ``<sts>-<i>`` is process ``i``; every
process must be given the same ordered address list, which the pods' stable DNS names under
the headless Service provide::

    <sts>-0.<service>.<namespace>.svc.<domain>:<port>;<sts>-1....;...

This script derives that from the environment, validates it, makes sure this pod's recovery
partition exists (created once, never again), and then *replaces itself* (``exec``) with::

    python -m bytewax.run dataflows.fraud:flow -w W -i I -a ADDRS -r DIR -s SNAPSHOT_S -b BACKUP_S

Anything that does not make sense stops it with one line on stderr and exit code 2, before a
partition is created: a crash-looping pod then says why in ``kubectl logs --previous``.

Environment (the manifest sets these; ``FRAUDFLOW_*`` settings are the flow's and pass through)

===============================  ==========================================================
``POD_NAME``                     pod name (downward API ``metadata.name``); else ``HOSTNAME``
``POD_NAMESPACE``                namespace (downward API ``metadata.namespace``)
``CLUSTER_SERVICE``              the headless Service that gives the pods DNS names
``CLUSTER_REPLICAS``             the StatefulSet's ``spec.replicas`` (pods in the cluster)
``CLUSTER_PORT``                 Bytewax's port between pods (default 2101)
``CLUSTER_DOMAIN``               cluster DNS domain (default ``cluster.local``)
``CLUSTER_WORKERS``              Bytewax workers (threads) per pod (default 1)
``CLUSTER_RECOVERY_DIR``         this pod's recovery volume; empty: run without recovery
``CLUSTER_RECOVERY_PARTITIONS``  total recovery partitions, fixed forever (see below)
``CLUSTER_SNAPSHOT_S``           ``-s``: seconds between recovery snapshots (default 30)
``CLUSTER_BACKUP_S``             ``-b``: seconds of extra snapshots kept for backups (default 0)
``CLUSTER_PEERS_OVERRIDE``       tests only: ``pod=host:port,...`` replaces those pods' DNS
                                 addresses (three "pods" on one machine need distinct ports)
===============================  ==========================================================

Recovery partitions: one per original pod
-----------------------------------------
Bytewax keeps recovery state in a fixed number of SQLite partitions (``part-<p>.sqlite3``,
the index is stored inside the file). The cluster as a whole must see every partition exactly
once; which process holds which does not matter, and a process may hold none.

Here the total ``P = CLUSTER_RECOVERY_PARTITIONS`` equals the replica count of the first
deployment, and pod ``i < P`` creates partition ``i`` on its own volume the first time it
starts. Pods added later (``i >= P``) hold none. A marker file written after creation means
"this volume has been initialised": a pod whose partition was moved away (scale-in, see
deploy/README.md) must not create a second, empty partition with the same index. So a
partition is created only when the volume has never been initialised, holds no
``*.sqlite3`` file and ``i < P``; a restart always resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["EntrypointError", "Plan", "bytewax_command", "ensure_recovery", "main", "plan_from_env"]

FLOW = "dataflows.fraud:flow"
MARKER = ".fraudflow-recovery.json"
PROG = "fraudflow-entrypoint"

# RFC 1123 label: what Kubernetes allows for Service names, namespaces and StatefulSet names.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD = re.compile(r"^(?P<sts>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")


class EntrypointError(Exception):
    """A configuration that cannot form a cluster; the message is the one line printed."""


@dataclass(frozen=True)
class Plan:
    """What this pod runs: derived from the environment, already validated."""

    pod: str
    statefulset: str
    ordinal: int
    replicas: int
    addresses: tuple[str, ...]
    workers: int
    recovery_dir: Optional[Path]
    recovery_partitions: int
    snapshot_s: int
    backup_s: int


def _int(env: Mapping[str, str], name: str, default: Optional[int], lo: int, hi: Optional[int] = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        if default is None:
            raise EntrypointError(f"{name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EntrypointError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise EntrypointError(f"{name}: must be {bounds}, got {value}")
    return value


def _label(env: Mapping[str, str], name: str, default: Optional[str] = None) -> str:
    value = env.get(name, "").strip() or default
    if not value:
        raise EntrypointError(f"{name} is not set")
    if not _LABEL.match(value):
        raise EntrypointError(f"{name}: {value!r} is not a valid DNS label (lower case letters, digits, '-')")
    return value


def _address(text: str, what: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EntrypointError(f"{what}: expected host:port, got {text.strip()!r}")
    return f"{host}:{int(port)}"


def _overrides(raw: str, statefulset: str, replicas: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        pod, sep, addr = entry.partition("=")
        m = _POD.match(pod.strip())
        if not sep or not m or m["sts"] != statefulset or int(m["ordinal"]) >= replicas:
            raise EntrypointError(f"CLUSTER_PEERS_OVERRIDE: {entry!r} does not name a pod "
                                  f"{statefulset}-0..{replicas - 1} (pod=host:port)")
        out[int(m["ordinal"])] = _address(addr, "CLUSTER_PEERS_OVERRIDE")
    return out


def plan_from_env(env: Mapping[str, str]) -> Plan:
    """Validate the environment and work out this pod's process id, peers and recovery."""
    pod = (env.get("POD_NAME") or env.get("HOSTNAME") or "").strip()
    if not pod:
        raise EntrypointError("POD_NAME is not set (set it from the downward API: metadata.name)")
    m = _POD.match(pod)
    if not m:
        raise EntrypointError(f"pod name {pod!r} has no ordinal: expected <statefulset>-<n>, such as fraudflow-0")
    statefulset, ordinal = m["sts"], int(m["ordinal"])
    replicas = _int(env, "CLUSTER_REPLICAS", None, 1)
    if ordinal >= replicas:
        raise EntrypointError(
            f"pod {pod} has ordinal {ordinal} but CLUSTER_REPLICAS={replicas} (ordinals 0..{replicas - 1}): "
            "change the StatefulSet's replicas and CLUSTER_REPLICAS together")
    service = _label(env, "CLUSTER_SERVICE")
    namespace = _label(env, "POD_NAMESPACE")
    domain = env.get("CLUSTER_DOMAIN", "").strip().strip(".") or "cluster.local"
    if not all(_LABEL.match(part) for part in domain.split(".")):
        raise EntrypointError(f"CLUSTER_DOMAIN: {domain!r} is not a DNS domain")
    port = _int(env, "CLUSTER_PORT", 2101, 1, 65535)
    workers = _int(env, "CLUSTER_WORKERS", 1, 1, 256)

    overrides = _overrides(env.get("CLUSTER_PEERS_OVERRIDE", ""), statefulset, replicas)
    addresses = tuple(
        overrides.get(i, f"{statefulset}-{i}.{service}.{namespace}.svc.{domain}:{port}") for i in range(replicas))
    if len(set(addresses)) != len(addresses):
        raise EntrypointError(f"two pods would share an address: {';'.join(addresses)}")

    recovery_dir: Optional[Path] = None
    partitions = 0
    raw_dir = env.get("CLUSTER_RECOVERY_DIR", "").strip()
    if raw_dir:
        recovery_dir = Path(raw_dir)
        if not recovery_dir.is_dir():
            raise EntrypointError(f"CLUSTER_RECOVERY_DIR: {raw_dir} is not a directory (mount the recovery volume)")
        if not os.access(recovery_dir, os.W_OK | os.X_OK):
            raise EntrypointError(f"CLUSTER_RECOVERY_DIR: {raw_dir} is not writable by uid {os.getuid()}")
        partitions = _int(env, "CLUSTER_RECOVERY_PARTITIONS", None, 1)
    return Plan(
        pod=pod, statefulset=statefulset, ordinal=ordinal, replicas=replicas, addresses=addresses,
        workers=workers, recovery_dir=recovery_dir, recovery_partitions=partitions,
        # bytewax.run takes whole seconds for both.
        snapshot_s=_int(env, "CLUSTER_SNAPSHOT_S", 30, 1),
        backup_s=_int(env, "CLUSTER_BACKUP_S", 0, 0),
    )


def partition_files(directory: Path) -> list[Path]:
    """Recovery partitions in ``directory``, by bytewax's own rule (any ``*.sqlite3`` file)."""
    return sorted(p for p in directory.iterdir() if p.suffix == ".sqlite3" and p.is_file())


def ensure_recovery(plan: Plan) -> str:
    """Create this pod's recovery partition if its volume was never initialised; say what happened.

    Never touches an existing partition: a restarted pod resumes from what it holds.
    """
    directory = plan.recovery_dir
    if directory is None:
        return "recovery off (CLUSTER_RECOVERY_DIR is empty): a restart starts from scratch"
    for stale in directory.glob(".init-*"):  # left by a crash during a previous creation
        shutil.rmtree(stale, ignore_errors=True)
    existing = partition_files(directory)
    marker = directory / MARKER
    total = plan.recovery_partitions
    if existing:
        return f"resuming: {len(existing)} recovery partition file(s) here ({', '.join(p.name for p in existing)})"
    if marker.exists():
        return "no recovery partition here (moved to another pod's volume); resuming from the others"
    if plan.ordinal >= total:
        return f"no recovery partition here: pod {plan.ordinal} joined after the {total} original pods"
    if plan.replicas < total:
        raise EntrypointError(
            f"refusing to create recovery partition {plan.ordinal} of {total} with CLUSTER_REPLICAS={plan.replicas}: "
            f"partitions {plan.replicas}..{total - 1} would never exist; the first deployment needs "
            "CLUSTER_REPLICAS >= CLUSTER_RECOVERY_PARTITIONS")
    from bytewax.recovery import init_db_dir  # imported late: validation errors stay fast

    scratch = directory / f".init-{os.getpid()}"
    scratch.mkdir()
    try:
        try:
            init_db_dir(scratch, total)  # creates part-0..part-(P-1); this pod keeps its own
        except Exception as exc:  # bytewax reports SQLite failures as its own exception types
            raise EntrypointError(f"cannot create recovery partitions in {directory}: {exc}") from None
        name = f"part-{plan.ordinal}.sqlite3"
        os.replace(scratch / name, directory / name)  # same volume: atomic
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tmp = directory / f"{MARKER}.tmp"
    tmp.write_text(json.dumps({"pod": plan.pod, "partition": plan.ordinal, "partitions": total}) + "\n")
    os.replace(tmp, marker)
    return f"created recovery partition {plan.ordinal} of {total}"


def bytewax_command(plan: Plan, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "bytewax.run", FLOW, "-w", str(plan.workers),
           "-i", str(plan.ordinal), "-a", ";".join(plan.addresses)]
    if plan.recovery_dir is not None:
        cmd += ["-r", str(plan.recovery_dir), "-s", str(plan.snapshot_s), "-b", str(plan.backup_s)]
    return cmd


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    """``entrypoint.py`` runs the flow; ``entrypoint.py --init-only`` prepares and prints the command."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    init_only = "--init-only" in argv
    unknown = [a for a in argv if a != "--init-only"]
    if unknown:
        print(f"{PROG}: error: unexpected argument {unknown[0]!r} (only --init-only)", file=sys.stderr)
        return 2
    try:
        plan = plan_from_env(env)
        recovery = ensure_recovery(plan)
    except EntrypointError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only volume
        print(f"{PROG}: error: recovery directory: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    cmd = bytewax_command(plan)
    print(f"{PROG}: pod {plan.pod} is process {plan.ordinal} of {plan.replicas} ({plan.workers} worker(s) each); "
          f"{recovery}", file=sys.stderr)
    print(f"{PROG}: {'command' if init_only else 'exec'} {' '.join(cmd)}", file=sys.stderr, flush=True)
    if init_only:
        return 0
    os.execv(cmd[0], cmd)
    return 127  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
