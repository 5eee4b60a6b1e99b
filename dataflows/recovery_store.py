"""Reading a Bytewax recovery store: what the flow saved, as plain data, without running it.

Bytewax 0.21 keeps its recovery store as SQLite partitions ``part-<i>.sqlite3``; table
``snaps(step_id, state_key, snap_epoch, ser_change)`` holds each keyed step's state per epoch
(``ser_change`` is the pickled state, NULL when the state was discarded), and the ``exs`` and
``fronts`` tables say how far every worker got, hence which epochs are committed (resuming
loads the latest snapshot *before* the resume epoch). Keyed states here are plain values
(:meth:`learners.features.AccountProfile.snapshot`, the packed vectors awaiting labels); they
are unpickled with an unpickler that allows no globals at all, so a tampered store cannot run
code. Partitions are opened read-only, so this works next to a running flow (it sees the
state as of the last snapshot).

Used by the flow's start-up (:func:`feature_layout_error`) and by ``fraudflow state show``
(:func:`find_account_snapshot`).
"""

from __future__ import annotations

import io
import logging
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dataflows.errors import FraudflowError
from learners.features import AccountProfile

__all__ = ["ACCOUNT_STEP", "AccountSnapshot", "StateError", "committed_state", "feature_layout_error",
           "find_account_snapshot", "plain_loads", "recovery_partitions"]

log = logging.getLogger(__name__)

ACCOUNT_STEP = "account_profile"


class StateError(FraudflowError):
    """The recovery store cannot answer the question; the message is one line for the user."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain values only (tuples, lists, dicts, str, bytes, numbers): no globals."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def plain_loads(blob: bytes) -> Any:
    """Unpickle ``blob`` allowing no class or function at all.

    >>> plain_loads(pickle.dumps((1, 2.5, b"x", "y", (True, None))))
    (1, 2.5, b'x', 'y', (True, None))
    >>> plain_loads(pickle.dumps(print))
    Traceback (most recent call last):
    ...
    dataflows.recovery_store.StateError: the stored state is not plain data (refusing to load builtins.print)
    """
    try:
        return _PlainUnpickler(io.BytesIO(blob)).load()
    except pickle.UnpicklingError as exc:
        raise StateError(f"the stored state is not plain data ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pickle
        raise StateError(f"the stored state is not a readable pickle ({type(exc).__name__}: {exc})") from None


def recovery_partitions(directory: str | Path) -> list[Path]:
    """The ``part-*.sqlite3`` files of a recovery directory."""
    root = Path(directory)
    if not root.is_dir():
        raise StateError(f"no such recovery directory: {root}; create it once with "
                         f"`python -m bytewax.recovery {root} N` (N recovery partitions, e.g. 4)")
    parts = sorted(root.glob("part-*.sqlite3"), key=lambda p: (len(p.name), p.name))
    if not parts:
        raise StateError(f"no recovery partitions (part-*.sqlite3) in {root}; create them with "
                         f"`python -m bytewax.recovery {root} N` and run the flow with -r {root}")
    return parts


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        conn.execute("SELECT 1 FROM snaps LIMIT 1")
    except sqlite3.Error as exc:
        raise StateError(f"{path} is not a readable bytewax recovery partition ({exc})") from None
    return conn


def _resume_epoch(conns: list[sqlite3.Connection]) -> Optional[int]:
    """The epoch a resumed run starts at: snapshots before it are committed (as bytewax computes it)."""
    executions: dict[int, tuple[int, int]] = {}
    frontiers: dict[tuple[int, int], int] = {}
    for conn in conns:
        for ex_num, workers, resume in conn.execute("SELECT ex_num, worker_count, resume_epoch FROM exs"):
            executions[ex_num] = (workers, resume)
        for ex_num, worker, frontier in conn.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts"):
            frontiers[(ex_num, worker)] = max(frontier, frontiers.get((ex_num, worker), frontier))
    if not executions:
        return None
    last = max(executions)
    workers, resume = executions[last]
    return min(max(resume, frontiers.get((last, w), resume)) for w in range(workers))


def committed_state(directory: str | Path, step_suffix: str, state_key: str) -> Optional[Any]:
    """The state a resume would give ``state_key`` of the step whose id ends with ``step_suffix``
    (its latest snapshot before the resume epoch, as plain data), or None if it has none; e.g.
    the offset an input partition is read again from."""
    conns = [_connect(path) for path in recovery_partitions(directory)]
    try:
        resume = _resume_epoch(conns)
        if resume is None:
            return None
        best: Optional[tuple[int, Any]] = None
        for conn in conns:
            row = conn.execute("SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE ? AND state_key = ? "
                               "AND snap_epoch < ? ORDER BY snap_epoch DESC LIMIT 1",
                               (f"%{step_suffix}", state_key, resume)).fetchone()
            if row and (best is None or row[0] > best[0]):
                best = row
    finally:
        for conn in conns:
            conn.close()
    return plain_loads(best[1]) if best and best[1] is not None else None


def feature_layout_error(directory: str | Path, vector_bytes: int) -> Optional[str]:
    """Why this version cannot resume the recovery store in ``directory``, or None.

    Feature vectors awaiting their labels (step ``await_labels``) are stored packed, 4 bytes per
    feature of the version that wrote them; a version with another feature set would fail on
    the first one it learns. The newest stored buckets are read (plain data only) until one
    holds a vector. None also when there is no store, or no vector in it yet.
    """
    try:
        parts = recovery_partitions(directory)
    except StateError:
        return None  # nothing to resume: bytewax itself says what is missing
    for path in parts:
        try:
            conn = _connect(path)
        except StateError:
            continue
        try:
            rows = conn.execute("SELECT ser_change FROM snaps WHERE step_id LIKE ? AND ser_change IS NOT NULL "
                                "ORDER BY snap_epoch DESC LIMIT 50", ("%await_labels",)).fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            conn.close()
        for (blob,) in rows:
            try:
                vectors, _orphans = plain_loads(blob)
            except (StateError, TypeError, ValueError):
                continue
            if not vectors:
                continue
            packed = vectors[0][1]  # (tx_id, packed features)
            if len(packed) == vector_bytes:
                return None
            return (f"the recovery store in {directory} was written by a fraudflow version with "
                    f"{len(packed) // 4} features, this one has {vector_bytes // 4}: resume it with "
                    "that version, or start this one with a fresh recovery directory")
    return None


def _is_account_step(step_id: str) -> bool:
    return step_id == ACCOUNT_STEP or step_id.endswith("." + ACCOUNT_STEP)


@dataclass(frozen=True)
class AccountSnapshot:
    """The latest stored state of one account."""

    account_id: str
    step_id: str
    epoch: int
    partition: Path
    committed: bool  # False: written in an epoch not all workers have finished (a resume would redo it)
    state: Optional[tuple]  # None: the state was discarded


def find_account_snapshot(directory: str | Path, account_id: str) -> AccountSnapshot:
    """The latest committed snapshot of ``account_id`` in the step whose id ends with ``account_profile``.

    If the account only has snapshots newer than the resume epoch (an epoch still in
    progress), the newest of those is returned with ``committed=False``.

    Raises
    ------
    StateError
        No such directory, no partitions, unreadable partitions, or the account is not there.
    """
    parts = recovery_partitions(directory)
    conns = [_connect(p) for p in parts]
    try:
        resume = _resume_epoch(conns)
        rows = []
        for path, conn in zip(parts, conns):
            for step_id, epoch, blob in conn.execute(
                    "SELECT step_id, snap_epoch, ser_change FROM snaps WHERE state_key = ? ORDER BY snap_epoch DESC",
                    (account_id,)):
                if _is_account_step(step_id):
                    rows.append((epoch, step_id, path, blob))
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the recovery store in {directory} ({exc})") from None
    finally:
        for conn in conns:
            conn.close()
    if not rows:
        raise StateError(f"account {account_id!r} not found in the recovery store {directory}: it may not have "
                         "transacted yet, or no snapshot has been written since it did (state is saved at the end "
                         "of each epoch)")
    rows.sort(key=lambda r: r[0], reverse=True)
    committed = [r for r in rows if resume is None or r[0] < resume]
    epoch, step_id, path, blob = committed[0] if committed else rows[0]
    log.debug("account %s: step %s epoch %s in %s (resume epoch %s)", account_id, step_id, epoch, path, resume)
    state = None if blob is None else _account_state(plain_loads(blob))
    return AccountSnapshot(account_id, step_id, epoch, path, bool(committed), state)


def _account_state(value: Any) -> tuple:
    """Check the layout of ``AccountProfile.snapshot()`` before trusting it."""
    if not AccountProfile.is_snapshot(value):
        raise StateError("the stored account state does not have the layout of this fraudflow version")
    return value
