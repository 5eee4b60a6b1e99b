"""``fraudflow state show ACCOUNT``: what the flow holds for one card, read from its recovery store.

    fraudflow state show c-1076 --recovery-dir /var/lib/fraudflow/recovery [--json]

Bytewax 0.21 keeps its recovery store as SQLite partitions ``part-<i>.sqlite3``; table
``snaps(step_id, state_key, snap_epoch, ser_change)`` holds each keyed step's state per epoch
(``ser_change`` is the pickled state, NULL when the state was discarded), and the ``exs`` and
``fronts`` tables say how far every worker got, hence which epochs are committed (resuming
loads the latest snapshot *before* the resume epoch). The account state is the plain tuple of
:meth:`learners.features.AccountProfile.snapshot`; it is unpickled with an unpickler that
allows no globals at all, so a tampered store cannot run code here.

The store is opened read-only, so this works next to a running flow (it sees the state as of
the last snapshot).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import pickle
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from learners.features import AccountProfile

__all__ = ["AccountSnapshot", "StateError", "account_view", "feature_layout_error", "find_account_snapshot",
           "plain_loads", "register"]

log = logging.getLogger(__name__)

ACCOUNT_STEP = "account_profile"
RECOVERY_DIR_ENV = "BYTEWAX_RECOVERY_DIRECTORY"
DAY = 86_400
HISTORY_DAYS = 30  # the longest feature window (acct_nb_tx_30d, acct_avg_amount_30d)
_HORIZON = 31  # AccountProfile's daily ring: today and 30 days back
_STATE_FIELDS = (10, 11)  # 10: saved before the per-day unusual-amount counts


class StateError(Exception):
    """The recovery store cannot answer the question; the message is one line for the user."""


# -- reading the recovery store ------------------------------------------------------------
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
    dataflows.state_cli.StateError: the stored state is not plain data (refusing to load builtins.print)
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
    if not isinstance(value, tuple) or len(value) not in _STATE_FIELDS:
        raise StateError("the stored account state does not have the layout of this fraudflow version "
                         f"(expected a tuple of {' or '.join(map(str, _STATE_FIELDS))} values)")
    day, counts, sums, amounts, n_seen, first_ts, last_ts, terms, pending, orphans, *unusual = value
    ok = (isinstance(day, int) and all(isinstance(b, bytes) for b in (counts, sums, amounts, terms, *unusual))
          and all(len(b) == 2 * _HORIZON for b in unusual)
          and isinstance(n_seen, int) and isinstance(first_ts, (int, float)) and isinstance(last_ts, (int, float))
          and isinstance(pending, (tuple, list)) and isinstance(orphans, (tuple, list))
          and len(counts) == 2 * _HORIZON and len(sums) == 4 * _HORIZON)
    if not ok:
        raise StateError("the stored account state does not have the layout of this fraudflow version")
    return value


# -- what it means -------------------------------------------------------------------------
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day)


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def account_view(snapshot: AccountSnapshot) -> dict:
    """What the flow holds for the account, as JSON-ready values.

    Daily counts and amounts of the last 30 days up to the account's latest day (from its
    first transaction if that is later), the
    1/7/30-day windows the features use, the amount habit (median and MAD of the last
    amounts), recent terminals, the last transaction, transactions awaiting a label and
    labels that arrived before their transaction.
    """
    base = {"account_id": snapshot.account_id, "step_id": snapshot.step_id, "epoch": snapshot.epoch,
            "partition": snapshot.partition.name, "committed": snapshot.committed}
    if snapshot.state is None:
        return {**base, "discarded": True}
    profile = AccountProfile(snapshot.state)
    last_day = profile.day
    daily = []
    first_day = int(profile.first_ts // DAY) if profile.n_seen else last_day
    for d in range(max(first_day, last_day - HISTORY_DAYS + 1), last_day + 1):
        slot = d % _HORIZON
        daily.append({"date": _date(d).isoformat(), "transactions": int(profile.counts[slot]),
                      "amount": round(float(profile.sums[slot]), 2), "unusual_amount": int(profile.unusual[slot])})
    windows = {}
    for w in (1, 7, 30):
        recent = daily[-w:]
        n = sum(r["transactions"] for r in recent)
        total = sum(r["amount"] for r in recent)
        windows[f"{w}d"] = {"transactions": n, "amount": round(total, 2),
                            "average_amount": round(total / n, 2) if n else None,
                            "unusual_amount": sum(r["unusual_amount"] for r in recent)}
    amounts = [round(float(a), 2) for a in profile.amounts]
    habit: dict[str, Any] = {"amounts": amounts, "median": None, "mad": None, "robust_scale": None}
    if len(amounts) >= 3:
        ordered = sorted(profile.amounts)
        median = _median(ordered)
        mad = _median(sorted(abs(a - median) for a in ordered))
        habit.update(median=round(median, 2), mad=round(mad, 2),
                     robust_scale=round(1.4826 * mad + 0.05 * median + 1.0, 2))
    return {
        **base,
        "discarded": False,
        "transactions_seen": profile.n_seen,
        "first_transaction": _iso(profile.first_ts) if profile.n_seen else None,
        "last_transaction": _iso(profile.last_ts) if profile.n_seen else None,
        "daily": daily,
        "windows": windows,
        "amount_habit": habit,
        "recent_terminals": len(profile.terms),
        "awaiting_label": [{"tx_id": p[0], "ts": _iso(p[1]), "terminal_id": p[2]}
                           for p in sorted(profile.pending, key=lambda p: (p[1], p[0]))],
        "early_labels": [{"tx_id": tx_id, "label_ts": _iso(ts), "is_fraud": bool(is_fraud)}
                         for tx_id, ts, is_fraud in profile.orphans],
    }


def render_view(view: dict) -> str:
    """The account view as a readable page."""
    head = (f"account {view['account_id']}  (step {view['step_id']}, epoch {view['epoch']} in {view['partition']}"
            f"{'' if view['committed'] else ', not yet committed: a resume would recompute it'})")
    if view.get("discarded"):
        return f"{head}\n  the flow discarded this account's state\n"
    lines = [head, ""]
    habit = view["amount_habit"]
    lines += [
        "history",
        f"  transactions seen   {view['transactions_seen']:,}",
        f"  first transaction   {view['first_transaction'] or 'n/a'}",
        f"  last transaction    {view['last_transaction'] or 'n/a'}",
        f"  recent terminals    {view['recent_terminals']} (distinct, of the last {AccountProfile.RECENT_TERMINALS} "
        "kept; a terminal not among them counts as new)",
        "",
        "windows ending on the last transaction's day (what acct_nb_tx_* / acct_avg_amount_* / acct_nb_unusual_7d "
        "see; unusual: robust z >= 3)",
    ]
    for w, row in view["windows"].items():
        avg = "n/a" if row["average_amount"] is None else f"{row['average_amount']:.2f}"
        lines.append(f"  {w:>3}  {row['transactions']:>5} transactions  {row['amount']:>10.2f} total  {avg:>8} average"
                     f"  {row['unusual_amount']:>3} unusual")
    lines += ["", f"amount habit (last {len(habit['amounts'])} amounts, robust to a burst of fraud)"]
    if habit["median"] is None:
        lines.append("  not enough history yet (the habit features start at 3 amounts)")
    else:
        lines.append(f"  median {habit['median']:.2f}   MAD {habit['mad']:.2f}   "
                     f"robust scale {habit['robust_scale']:.2f} (an amount's robust z = (amount - median) / scale)")
    lines.append("  amounts " + ", ".join(f"{a:.2f}" for a in habit["amounts"]))
    lines += ["", f"daily activity, last {HISTORY_DAYS} days (from the first transaction if later)"]
    peak = max((d["transactions"] for d in view["daily"]), default=0) or 1
    for d in view["daily"]:
        bar = "#" * round(d["transactions"] / peak * 30)
        lines.append(f"  {d['date']}  {d['transactions']:>4}  {d['amount']:>10.2f}  {bar}".rstrip())
    pending = view["awaiting_label"]
    lines += ["", f"awaiting a label: {len(pending)} transaction(s)"]
    lines += [f"  {p['tx_id']:<14} {p['ts']}  {p['terminal_id']}" for p in pending]
    early = view["early_labels"]
    lines += ["", f"labels that arrived before their transaction: {len(early)}"]
    lines += [f"  {e['tx_id']:<14} {e['label_ts']}  {'fraud' if e['is_fraud'] else 'legitimate'}" for e in early]
    return "\n".join(lines) + "\n"


# -- command -------------------------------------------------------------------------------
def _user_error(message: str) -> Exception:
    """A ``dataflows.cli.UserError``: one line, exit 2."""
    from dataflows.cli import UserError

    return UserError(message)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_state_show(args: argparse.Namespace) -> int:
    directory = args.recovery_dir or os.environ.get(RECOVERY_DIR_ENV)
    if not directory:
        raise _user_error(f"give --recovery-dir DIR (the directory the flow runs with, `-r DIR` or "
                          f"${RECOVERY_DIR_ENV})")
    try:
        view = account_view(find_account_snapshot(directory, args.account))
    except StateError as exc:
        raise _user_error(str(exc)) from None
    if args.json:
        print(json.dumps(view, indent=2, default=_finite))
    else:
        print(render_view(view), end="")
    return 0


def register(subparsers: Any) -> None:
    """Add ``fraudflow state show ACCOUNT --recovery-dir DIR [--json]`` to the CLI."""
    parser = subparsers.add_parser(
        "state", help="inspect what the flow holds for a card (from its recovery store)",
        description="Read the flow's Bytewax recovery partitions (part-*.sqlite3) and show the keyed state, as of "
                    "the latest committed snapshot. Read-only: safe next to a running flow.")
    sub = parser.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "show", help="one card's history, amount habit and transactions awaiting a label",
        description="Show the account_profile state of one card: daily transaction counts and amounts over 30 "
                    "days, the median/MAD habit of its last amounts, recently used terminals, its last transaction, "
                    "the transactions still awaiting a label and labels that arrived before their transaction.",
        epilog="A card appears once it has transacted and the flow has written a snapshot since (at the end of "
               "each epoch). Exit status 2 if the directory, the partitions or the card are not found.")
    p.add_argument("account", metavar="ACCOUNT", help="account id, e.g. c-1076")
    p.add_argument("--recovery-dir", metavar="DIR",
                   help=f"recovery directory of the flow (default: ${RECOVERY_DIR_ENV})")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p.set_defaults(func=cmd_state_show)
