"""``fraudflow state show``: an account's state read back from a real Bytewax recovery store."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from connectors.events import Label, Transaction, format_ts
from connectors.simulator import SimulatorConfig, simulate
from connectors.sources import EventListSource
from dataflows import recovery_store
from dataflows.cli import state as state_cli
from dataflows.fraud import build_flow
from dataflows.settings import Settings
from learners.features import AccountProfile, ordinary_amount
from learners.pending import VECTOR_BYTES

ROOT = Path(__file__).resolve().parents[2]
CONFIG = SimulatorConfig(customers=50, terminals=100, days=12, seed=3)


@pytest.fixture(scope="module")
def recovered(tmp_path_factory) -> tuple[Path, list]:
    """Run the flow with recovery (an epoch per source batch) on a stream cut at its last transaction.

    The simulator releases each label 7 days after its transaction; a live stream read up to
    the last transaction has not seen the labels of the last 7 days yet, so those
    transactions are still awaiting a label in the account state.
    """
    events = list(simulate(CONFIG))
    end = max(e.event_ts for e in events if isinstance(e, Transaction))
    events = [e for e in events if isinstance(e, Transaction) or e.event_ts <= end]
    directory = tmp_path_factory.mktemp("recovery")
    init_db_dir(directory, 1)
    alerts, dlq, scores = [], [], []
    # no model exports: only the recovery store matters here
    settings = Settings().replace(progress=False, snapshot_dir="off")
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # whatever the flow writes by default stays out of the repository
    try:
        parts = build_flow(settings, source=EventListSource(events, max_batch_span_s=3_600.0),
                           alerts_sink=TestingSink(alerts), dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores))
        run_main(parts.flow, epoch_interval=timedelta(seconds=0), recovery_config=RecoveryConfig(directory))
    finally:
        os.chdir(here)
    assert len(scores) == sum(isinstance(e, Transaction) for e in events)
    return directory, events


def _expected_pending(events: list, account: str) -> list[tuple[str, str, str]]:
    labelled = {e.tx_id for e in events if isinstance(e, Label)}
    return [(e.tx_id, format_ts(e.event_ts), e.terminal_id) for e in events
            if isinstance(e, Transaction) and e.account_id == account and e.tx_id not in labelled]


def _busiest_recent_account(events: list) -> str:
    end = max(e.event_ts for e in events if isinstance(e, Transaction))
    recent = Counter(e.account_id for e in events
                     if isinstance(e, Transaction) and e.event_ts > end - CONFIG.label_delay_days * 86_400)
    return recent.most_common(1)[0][0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "dataflows.cli", "state", "show", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_pending_transactions_match_the_last_label_delay(recovered):
    directory, events = recovered
    account = _busiest_recent_account(events)
    expected = _expected_pending(events, account)
    end = max(e.event_ts for e in events if isinstance(e, Transaction))
    assert expected and all(ts > format_ts(end - 7 * 86_400) for _, ts, _ in expected)

    view = state_cli.account_view(recovery_store.find_account_snapshot(directory, account))
    assert view["committed"] and view["step_id"].endswith("account_profile")
    assert [(p["tx_id"], p["ts"], p["terminal_id"]) for p in view["awaiting_label"]] == expected
    assert view["early_labels"] == []

    txs = [e for e in events if isinstance(e, Transaction) and e.account_id == account]
    assert view["transactions_seen"] == len(txs)
    assert view["last_transaction"] == format_ts(txs[-1].event_ts)
    assert view["recent_terminals"] == len({t.terminal_id for t in txs[-24:]})
    assert sum(d["transactions"] for d in view["daily"]) == len(txs)  # 12 days: all within 30
    assert sum(d["amount"] for d in view["daily"]) == pytest.approx(sum(t.amount for t in txs), rel=1e-4)
    last16 = sorted(round(t.amount, 2) for t in txs[-16:])
    assert sorted(view["amount_habit"]["amounts"]) == pytest.approx(last16, abs=0.01)
    median = (last16[7] + last16[8]) / 2
    assert view["amount_habit"]["median"] == pytest.approx(median, abs=0.02)
    # the unusual-amount counts are the account's own: replay its transactions through a profile
    replay = AccountProfile()
    unusual = [not ordinary_amount(replay.observe(t)) for t in txs]
    assert sum(d["unusual_amount"] for d in view["daily"]) == sum(unusual)
    last_day = int(txs[-1].event_ts // 86_400)
    assert view["windows"]["7d"]["unusual_amount"] == sum(
        u for t, u in zip(txs, unusual) if t.event_ts // 86_400 > last_day - 7)


def test_cli_prints_the_account(recovered):
    directory, events = recovered
    account = _busiest_recent_account(events)
    expected = _expected_pending(events, account)
    shown = _cli(account, "--recovery-dir", str(directory))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"awaiting a label: {len(expected)} transaction(s)" in text
    for tx_id, ts, terminal in expected:
        assert any(tx_id in line and ts in line and terminal in line for line in text.splitlines())
    for needle in ("median", "MAD", "recent terminals", "last transaction", "30d"):
        assert needle in text

    as_json = _cli(account, "--recovery-dir", str(directory), "--json")
    assert as_json.returncode == 0
    view = json.loads(as_json.stdout)
    assert [p["tx_id"] for p in view["awaiting_label"]] == [p[0] for p in expected]


def test_missing_account_is_a_one_line_user_error(recovered, tmp_path):
    directory, _ = recovered
    missing = _cli("c-999", "--recovery-dir", str(directory))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert "'c-999' not found" in missing.stderr and "may not have transacted yet" in missing.stderr

    no_dir = _cli("c-1", "--recovery-dir", str(tmp_path / "nowhere"))
    assert no_dir.returncode == 2 and "no such recovery directory" in no_dir.stderr
    assert no_dir.stderr.count("\n") == 1
    empty = _cli("c-1", "--recovery-dir", str(tmp_path))
    assert empty.returncode == 2 and "no recovery partitions" in empty.stderr
    no_flag = _cli("c-1")
    assert no_flag.returncode == 2 and "--recovery-dir" in no_flag.stderr


class _Booby:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_state_with_globals_is_refused_without_running_it(recovered, tmp_path):
    directory, events = recovered
    account = _busiest_recent_account(events)
    copy = tmp_path / "tampered"
    shutil.copytree(directory, copy)
    marker = tmp_path / "pwned"
    with sqlite3.connect(copy / "part-0.sqlite3") as conn:
        conn.execute("UPDATE snaps SET ser_change = ? WHERE state_key = ? AND step_id LIKE '%account_profile'",
                     (pickle.dumps(_Booby(marker)), account))
    refused = _cli(account, "--recovery-dir", str(copy))
    assert refused.returncode == 2 and "not plain data" in refused.stderr
    assert not marker.exists()
    with pytest.raises(recovery_store.StateError, match="refusing to load"):
        recovery_store.plain_loads(pickle.dumps(_Booby(marker)))
    assert not marker.exists()


def test_a_recovery_store_of_another_feature_set_stops_start_up_with_a_message(recovered, tmp_path):
    directory, _ = recovered
    assert recovery_store.feature_layout_error(directory, VECTOR_BYTES) is None  # written by this version
    # The same store as an older version with two features fewer would have written it.
    copy = tmp_path / "older"
    shutil.copytree(directory, copy)
    with sqlite3.connect(copy / "part-0.sqlite3") as conn:
        rows = conn.execute("SELECT rowid, ser_change FROM snaps WHERE step_id LIKE '%await_labels' "
                            "AND ser_change IS NOT NULL").fetchall()
        older = 0
        for rowid, blob in rows:
            vectors, orphans = pickle.loads(blob)
            if vectors:
                vectors = tuple((tx_id, packed[:-8]) for tx_id, packed in vectors)
                blob = pickle.dumps((vectors, orphans))
                conn.execute("UPDATE snaps SET ser_change = ? WHERE rowid = ?", (blob, rowid))
                older += 1
    assert older, "the store holds feature vectors awaiting labels"
    problem = recovery_store.feature_layout_error(copy, VECTOR_BYTES)
    n = VECTOR_BYTES // 4
    assert problem and f"with {n - 2} features, this one has {n}" in problem

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env.update(PYTHONPATH=str(ROOT), FRAUDFLOW_PROGRESS="0", FRAUDFLOW_SIM_DAYS="2", FRAUDFLOW_SIM_CUSTOMERS="10")
    command = [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-r", str(copy), "-s", "10", "-b", "0"]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"fraudflow: the recovery store in {copy} was written by a fraudflow version with {n - 2}" in run.stderr
    assert "Traceback" not in run.stderr


def test_state_of_another_layout_is_a_one_line_error(recovered, tmp_path):
    directory, events = recovered
    account = _busiest_recent_account(events)
    copy = tmp_path / "other-layout"
    shutil.copytree(directory, copy)
    with sqlite3.connect(copy / "part-0.sqlite3") as conn:  # plain data, but not an AccountProfile snapshot
        conn.execute("UPDATE snaps SET ser_change = ? WHERE state_key = ? AND step_id LIKE '%account_profile'",
                     (pickle.dumps((1, b"", 2.0)), account))
    refused = _cli(account, "--recovery-dir", str(copy))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "does not have the layout of this fraudflow version" in refused.stderr


def test_account_view_shows_early_labels_and_known_frauds():
    """An account holding a label that came before its transaction (a chargeback or an
    analyst's verdict: 5- and 6-tuples) and a known fraud renders, and says which is which."""
    d0 = 1522540800.0
    acct = AccountProfile()
    acct.observe(Transaction("t-1", "c-1", d0, 20.0, "m-1"))
    acct.join_label("t-8", d0 + 60, True, "c-1", ("labels", 3))
    acct.join_label("t-9", d0 + 90, False, "c-1", ("feedback", 4), verdict=True)
    acct.add_known_fraud(d0 - 86_400.0, d0 + 30)
    snapshot = recovery_store.AccountSnapshot("c-1", "fraud.account_profile", 3, Path("part-0.sqlite3"), True,
                                              pickle.loads(pickle.dumps(acct.snapshot())))
    view = state_cli.account_view(snapshot)
    assert view["early_labels"] == [
        {"tx_id": "t-8", "label_ts": format_ts(d0 + 60), "is_fraud": True, "verdict": False},
        {"tx_id": "t-9", "label_ts": format_ts(d0 + 90), "is_fraud": False, "verdict": True}]
    assert view["known_frauds"] == [{"date": "2018-03-31", "known_at": format_ts(d0 + 30)}]
    page = state_cli.render_view(view)
    assert "t-9" in page and "legitimate  (analyst verdict)" in page
    assert "fraud on 2018-03-31, known at 2018-04-01T00:00:30Z" in page
    json.dumps(view)  # the --json output
