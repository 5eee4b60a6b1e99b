"""``fraudflow state show ACCOUNT``: what the flow holds for one card, read from its recovery store.

    fraudflow state show c-1076 --recovery-dir /var/lib/fraudflow/recovery [--json]

The store is read by :mod:`dataflows.recovery_store` (read-only, plain data only, so it works
next to a running flow and a tampered store cannot run code here); what an account's state
means is :meth:`learners.features.AccountProfile.describe`. This module turns that into a page
or JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from datetime import date, datetime, timedelta, timezone
from typing import Any

from dataflows.errors import FraudflowError
from dataflows.recovery_store import AccountSnapshot, find_account_snapshot
from learners.features import AccountProfile

__all__ = ["account_view", "register", "render_view"]

RECOVERY_DIR_ENV = "BYTEWAX_RECOVERY_DIRECTORY"
HISTORY_DAYS = 30  # the longest feature window (acct_nb_tx_30d, acct_avg_amount_30d)


# -- what it means -------------------------------------------------------------------------
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day)


def account_view(snapshot: AccountSnapshot) -> dict:
    """What the flow holds for the account, as JSON-ready values.

    Daily counts and amounts of the last 30 days up to the account's latest day (from its
    first transaction if that is later), the
    1/7/30-day windows the features use, the amount habit (median and MAD of the last
    amounts), recent terminals, the last transaction, transactions awaiting a label,
    labels that arrived before their transaction and the card's known frauds.
    """
    base = {"account_id": snapshot.account_id, "step_id": snapshot.step_id, "epoch": snapshot.epoch,
            "partition": snapshot.partition.name, "committed": snapshot.committed}
    if snapshot.state is None:
        return {**base, "discarded": True}
    held = AccountProfile(snapshot.state).describe(HISTORY_DAYS)
    daily = [{"date": _date(d["day"]).isoformat(), "transactions": d["transactions"], "amount": round(d["amount"], 2),
              "unusual_amount": d["unusual_amount"]} for d in held["daily"]]
    windows = {}
    for w in (1, 7, 30):
        recent = daily[-w:]
        n = sum(r["transactions"] for r in recent)
        total = sum(r["amount"] for r in recent)
        windows[f"{w}d"] = {"transactions": n, "amount": round(total, 2),
                            "average_amount": round(total / n, 2) if n else None,
                            "unusual_amount": sum(r["unusual_amount"] for r in recent)}
    habit = {"amounts": [round(a, 2) for a in held["amounts"]],
             **{k: None if held[k] is None else round(held[k], 2) for k in ("median", "mad", "robust_scale")}}
    return {
        **base,
        "discarded": False,
        "transactions_seen": held["transactions_seen"],
        "first_transaction": None if held["first_ts"] is None else _iso(held["first_ts"]),
        "last_transaction": None if held["last_ts"] is None else _iso(held["last_ts"]),
        "daily": daily,
        "windows": windows,
        "amount_habit": habit,
        "recent_terminals": held["recent_terminals"],
        "awaiting_label": [{"tx_id": p[0], "ts": _iso(p[1]), "terminal_id": p[2]}
                           for p in sorted(held["pending"], key=lambda p: (p[1], p[0]))],
        "early_labels": [{"tx_id": o[0], "label_ts": _iso(o[1]), "is_fraud": bool(o[2]),
                          "verdict": len(o) > 5 and bool(o[5])} for o in held["orphans"]],
        "known_frauds": [{"date": _date(day).isoformat(), "known_at": _iso(label_ts)}
                         for day, label_ts in held["known_frauds"]],
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
    lines += [f"  {e['tx_id']:<14} {e['label_ts']}  {'fraud' if e['is_fraud'] else 'legitimate'}"
              f"{'  (analyst verdict)' if e['verdict'] else ''}" for e in early]
    known = view["known_frauds"]
    lines += ["", f"known frauds on the card (chargebacks, analysts' fraud verdicts; what acct_days_since_known_fraud "
                  f"sees): {len(known)}"]
    lines += [f"  fraud on {k['date']}, known at {k['known_at']}" for k in known]
    return "\n".join(lines) + "\n"


# -- command -------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_state_show(args: argparse.Namespace) -> int:
    directory = args.recovery_dir or os.environ.get(RECOVERY_DIR_ENV)
    if not directory:
        raise FraudflowError(f"give --recovery-dir DIR (the directory the flow runs with, `-r DIR` or "
                             f"${RECOVERY_DIR_ENV})")
    view = account_view(find_account_snapshot(directory, args.account))  # StateError: one line, exit 2
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
