"""Analysts' verdicts through the real flow: no look-ahead, no double counting, the
``investigate`` command and the loop in ``replay --analysts``.

One small stream for every test (200 cards, 14 days, labels 2 days late: the model is
supervised after a few days, and the flow's fixed cost per hour of event time stays small),
its label-feed-only run shared; the flows run in process (``build_flow`` + ``run_main``)
except the commands under test (``investigate``, ``replay --feedback``, ``replay --analysts``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, run_main

from connectors.events import Label, Transaction, Verdict, encode, label_to_json, transaction_to_json
from connectors.simulator import SimulatorConfig, simulate
from connectors.sources import EventListSource
from dataflows.fraud import build_flow
from dataflows.settings import Settings
from tests.dataflows.test_cli import fraudflow

DAY = 86_400.0
SMALL = SimulatorConfig(customers=200, terminals=400, days=14, seed=11, label_delay_days=2)


@pytest.fixture(scope="module")
def small_stream():
    truth: dict = {}
    return list(simulate(SMALL, truth=truth)), truth


def _run(events, **settings):
    """Scores, dead letters and counts. Verdicts are learned at their ts from the start unless
    ``verdict_warmup_days`` is given (a 14-day stream is inside the default warm-up)."""
    settings.setdefault("verdict_warmup_days", 0.0)
    alerts, dlq, scores = [], [], []
    parts = build_flow(Settings().replace(progress=False, snapshot_dir="off", **settings), source=EventListSource(events),
                       alerts_sink=TestingSink(alerts), dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores),
                       shards=1)
    run_main(parts.flow)
    return {s.tx_id: s.score for s in scores}, dlq, parts.stats.counts()


@pytest.fixture(scope="module")
def label_feed_only(small_stream):
    """The stream's run without verdicts (shared: every test compares with it)."""
    return _run(small_stream[0])


def _in_order(events):
    kind = {Verdict: 0, Label: 1, Transaction: 2}
    return sorted(events, key=lambda e: (e.event_ts, kind[type(e)]))


def test_verdicts_never_change_the_score_of_an_earlier_transaction(small_stream, label_feed_only):
    """Wrong verdicts (legitimate transactions called fraud) all dated at V, fed before every
    transaction: scores before V are unchanged, scores after V move (they were learned), and
    the later chargebacks of those transactions are neither learned again nor dead letters."""
    events, truth = small_stream
    txs = [e for e in events if type(e) is Transaction]
    v_ts = txs[len(txs) // 2].event_ts
    chosen = [t for t in txs if t.event_ts < v_ts - DAY and not truth[t.tx_id].is_fraud][-300:]
    verdicts = [Verdict(f"a-{t.tx_id}", t.tx_id, t.account_id, v_ts, True) for t in chosen]
    base, base_dlq, _ = label_feed_only
    fed, dlq, counts = _run(verdicts + events)
    assert base_dlq == [] and dlq == []
    before = [t.tx_id for t in txs if t.event_ts <= v_ts]
    after = [t.tx_id for t in txs if t.event_ts > v_ts + 2 * 3600]
    assert all(fed[tx_id] == base[tx_id] for tx_id in before)
    changed = sum(fed[tx_id] != base[tx_id] for tx_id in after)
    assert changed > len(after) // 2, f"only {changed} of {len(after)} later scores moved: verdicts not learned?"
    assert counts["feedback"]["verdicts"] == len(verdicts)
    # each chosen transaction's chargeback ("legitimate", 2 days later) came and was dropped
    labelled = {e.tx_id for e in events if type(e) is Label}
    assert counts["feedback"]["labels_duplicate"] == sum(t.tx_id in labelled for t in chosen) > 0
    assert counts["feedback"]["verdicts_deferred"] == 0


@pytest.fixture(scope="module")
def label_feed_two_days_late(small_stream):
    """The stream's run without verdicts, terminal risk 2 days back (this stream's label delay)."""
    return _run(small_stream[0], risk_delay_days=2)


def test_verdicts_in_the_warm_up_are_learned_when_the_feed_would_teach_them(small_stream, label_feed_two_days_late):
    """Verdicts inside the warm-up (set to 37 days from the first transaction: this whole
    stream) are learned at their transaction + the risk delay, the time the label feed teaches
    them (this stream's feed is 2 days late; the risk delay is set to match), not at their ts
    (decision 0062). Right "legitimate" verdicts then change no score at all; wrong ones change
    none before the first of those times and some after it."""
    events, truth = small_stream
    txs = [e for e in events if type(e) is Transaction]
    v_ts = txs[len(txs) // 4].event_ts
    # transactions whose chargeback comes after V (an earlier one would not be moved)
    chosen = [t for t in txs if v_ts - 2 * DAY < t.event_ts < v_ts - DAY and not truth[t.tx_id].is_fraud][-300:]
    base, _, _ = label_feed_two_days_late
    for wrong in (False, True):
        verdicts = [Verdict(f"a-{t.tx_id}", t.tx_id, t.account_id, v_ts, wrong) for t in chosen]
        fed, dlq, counts = _run(_in_order(verdicts + events), verdict_warmup_days=37.0, risk_delay_days=2)
        assert dlq == []
        assert counts["feedback"]["verdicts"] == len(verdicts)
        # counted where learned: a fraud always, a legitimate example only in the negative sample
        assert counts["feedback"]["verdicts_deferred"] == len(verdicts) if wrong else \
            0 < counts["feedback"]["verdicts_deferred"] < len(verdicts)
        if not wrong:
            assert fed == base
            continue
        feed_from = min(t.event_ts for t in chosen) + 2 * DAY
        assert all(fed[t.tx_id] == base[t.tx_id] for t in txs if t.event_ts <= feed_from)
        assert any(fed[t.tx_id] != base[t.tx_id] for t in txs if t.event_ts > feed_from + 2 * 3600)


def test_verdicts_listed_before_every_transaction_change_no_score(small_stream, label_feed_two_days_late):
    """Right "legitimate" verdicts dated days ahead, listed before every transaction (out of
    event-time order, as a file out of order could have them): the transactions after them
    are batched by their own event time, so they get the terminal counts and scores of the run
    without verdicts. (A batch opened by the verdicts reached back 3.6 days over 658
    transactions, which the account step regrouped by card: a terminal saw them out of order,
    t-000000627's terminal counted 1 transaction 2 days back instead of 4, and 2,775 scores
    differed.)"""
    events, truth = small_stream
    txs = [e for e in events if type(e) is Transaction]
    v_ts = txs[len(txs) // 4].event_ts
    chosen = [t for t in txs if v_ts - 2 * DAY < t.event_ts < v_ts - DAY and not truth[t.tx_id].is_fraud][-300:]
    verdicts = [Verdict(f"a-{t.tx_id}", t.tx_id, t.account_id, v_ts, False) for t in chosen]
    base, _, _ = label_feed_two_days_late
    fed, dlq, counts = _run(verdicts + events, verdict_warmup_days=37.0, risk_delay_days=2)
    assert dlq == [] and counts["feedback"]["verdicts"] == len(verdicts)
    assert sum(fed[t.tx_id] != base[t.tx_id] for t in txs) == 0


def test_a_chargeback_for_an_answered_transaction_is_learned_once(small_stream, label_feed_only):
    """Verdicts that agree with the later chargebacks: every label reaches the model once and
    every fraud is learned once, as without them; nothing is dead. (Legitimate examples are
    sampled by their features too, and fraud verdicts change terminal risk earlier: so the
    count of learned legitimate examples is compared with legitimate verdicts only.)"""
    events, truth = small_stream
    labels = {e.tx_id: e for e in events if type(e) is Label}
    txs = [e for e in events if type(e) is Transaction and e.tx_id in labels]
    chosen = [t for t in txs if truth[t.tx_id].is_fraud][:150] + [t for t in txs if not truth[t.tx_id].is_fraud][:150]
    verdicts = [Verdict(f"a-{t.tx_id}", t.tx_id, t.account_id, t.event_ts + 4 * 3600, truth[t.tx_id].is_fraud)
                for t in chosen]
    _, _, base = label_feed_only
    _, dlq, fed = _run(_in_order(verdicts + events))
    assert dlq == []
    assert fed["feedback"] == {"verdicts": 300, "labels_duplicate": 300, "labels_overturning_verdict": 0,
                               "verdicts_deferred": 0}
    assert fed["frauds_learned"] == base["frauds_learned"]
    assert fed["labels_received"] == base["labels_received"]
    _, dlq, legit_only = _run(_in_order(verdicts[150:] + events))
    assert dlq == [] and legit_only["feedback"]["labels_duplicate"] == 150
    assert (legit_only["labels_learned"], legit_only["frauds_learned"]) == (base["labels_learned"],
                                                                            base["frauds_learned"])


# -- the command line ----------------------------------------------------------------------
def _write_files(events, prefix: Path) -> None:
    """The stream as ``fraudflow simulate`` writes it (PREFIX.transactions.jsonl, .labels.jsonl)."""
    with open(f"{prefix}.transactions.jsonl", "wb") as tx_fh, open(f"{prefix}.labels.jsonl", "wb") as label_fh:
        for e in events:
            if type(e) is Transaction:
                tx_fh.write(encode(transaction_to_json(e)) + b"\n")
            else:
                label_fh.write(encode(label_to_json(e)) + b"\n")


def _replay_in_process(out: Path, name: str, desk=None):
    """What ``fraudflow replay s.transactions.jsonl s.labels.jsonl --scores/--alerts/--dlq NAME.*``
    runs (``--analysts`` with a desk), in this process; the run's counts."""
    settings = Settings().replace(progress=False, snapshot_dir="off", verdict_warmup_days=0.0).replace(
        source="files", transactions_file=str(out / "s.transactions.jsonl"), labels_file=str(out / "s.labels.jsonl"),
        alerts=str(out / f"{name}.alerts.jsonl"), dlq=str(out / f"{name}.dlq.jsonl"),
        scores=str(out / f"{name}.scores.jsonl"))
    parts = build_flow(settings, shards=1, desk=desk)
    run_main(parts.flow)
    return parts.stats.counts()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_stream):
    """The stream in files, and its plain replay (``p.*``; in process: the command itself is
    tested below with ``--feedback`` and ``--analysts``)."""
    out = tmp_path_factory.mktemp("feedback")
    _write_files(small_stream[0], out / "s")
    return out, _replay_in_process(out, "p")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_investigate_answers_within_capacity_after_the_delay_with_the_truth(recorded):
    out, _ = recorded
    env = {"FRAUDFLOW_SNAPSHOT_DIR": "off"}
    proc = fraudflow("investigate", "p.alerts.jsonl", "--labels", "s.labels.jsonl", "--out", "v.jsonl",
                     "--capacity", "3", "--delay-hours", "6", "--json", cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert "verdicts on" in proc.stderr and "cards/day" in proc.stderr
    verdicts = _lines(out / "v.jsonl")
    alerts = {a["alert_id"]: a for a in _lines(out / "p.alerts.jsonl")}
    frauds = {d["tx_id"] for d in _lines(out / "s.labels.jsonl") if d["is_fraud"]}
    from learners.analysts import _ts

    per_day: dict[str, int] = {}
    for v in verdicts:
        alert = alerts[v["alert_id"]]
        assert _ts(v["ts"]) == _ts(alert["ts"]) + 6 * 3600
        assert (v["verdict"] == "fraud") == (v["tx_id"] in frauds)
        per_day[alert["ts"][:10]] = per_day.get(alert["ts"][:10], 0) + 1
    assert max(per_day.values()) == 3 and len(verdicts) < len(alerts)
    assert [v["ts"] for v in verdicts] == sorted(v["ts"] for v in verdicts)
    assert json.loads(proc.stdout)["verdicts"] == len(verdicts)
    assert "no --transactions: the cases answer the alerted transaction only" in proc.stderr
    # with the transactions, a case also answers the card's others of the review window: from 2
    # days before the alert up to the verdict (decisions 0066, 0067)
    proc = fraudflow("investigate", "p.alerts.jsonl", "--labels", "s.labels.jsonl", "--out", "vr.jsonl",
                     "--capacity", "3", "--delay-hours", "6", "--transactions", "s.transactions.jsonl",
                     "--review-days", "2", cwd=out)
    assert proc.returncode == 0, proc.stderr
    reviewed = _lines(out / "vr.jsonl")
    txs = {t["tx_id"]: t for t in _lines(out / "s.transactions.jsonl")}
    on_alert = [v for v in reviewed if v["tx_id"] == alerts[v["alert_id"]]["tx_id"]]
    assert on_alert == verdicts  # the same cases
    others = [v for v in reviewed if v["tx_id"] != alerts[v["alert_id"]]["tx_id"]]
    assert len(others) > len(verdicts) and len({v["tx_id"] for v in reviewed}) == len(reviewed)
    def in_window(tx: dict, v: dict) -> bool:
        return tx["account_id"] == v["account_id"] and \
            _ts(tx["ts"]) < _ts(v["ts"]) and _ts(alerts[v["alert_id"]]["ts"]) - _ts(tx["ts"]) <= 2 * 86_400

    for v in others:
        alert, tx = alerts[v["alert_id"]], txs[v["tx_id"]]
        assert tx["account_id"] == alert["account_id"] == v["account_id"] and in_window(tx, v)
        assert _ts(v["ts"]) == _ts(alert["ts"]) + 6 * 3600 and (v["verdict"] == "fraud") == (v["tx_id"] in frauds)
    assert any(_ts(txs[v["tx_id"]]["ts"]) > _ts(alerts[v["alert_id"]]["ts"]) for v in others)  # after the alert too
    assert f"and {len(others):,} on the cards' other transactions from 2 days before the alert to the verdict" \
        in proc.stderr
    label_ts = {d["tx_id"]: _ts(d["ts"]) for d in _lines(out / "s.labels.jsonl")}
    assert all(label_ts[v["tx_id"]] > _ts(v["ts"]) for v in others)  # none charged back before the case answered
    assert any(0 <= label_ts[t] - _ts(alerts[v["alert_id"]]["ts"]) <= 6 * 3600 for v in on_alert for t in txs
               if in_window(txs[t], v))  # there were such
    # and every transaction of a case's window is answered, unless charged back before the verdict
    answered = {v["tx_id"] for v in reviewed}
    for v in on_alert:
        window = [t for t, tx in txs.items() if in_window(tx, v)]
        assert all(t in answered or label_ts[t] <= _ts(v["ts"]) for t in window), v
    # the verdicts file goes back into a replay (--feedback) and is learned, none a dead letter
    proc = fraudflow("replay", "s.transactions.jsonl", "s.labels.jsonl", "--feedback", "vr.jsonl", "--alerts",
                     "fb.alerts.jsonl", "--dlq", "fb.dlq.jsonl", cwd=out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"analysts' verdicts    {len(reviewed):>12,}" in proc.stderr
    assert (out / "fb.dlq.jsonl").read_text() == ""


def test_replay_with_analysts_in_the_loop_is_deterministic_and_learns(recorded, small_stream):
    """``replay --analysts`` (a subprocess), the same loop in this process, and the loop over
    the stream as a list (``EventListSource`` with a desk: what ``benchmarks.feedback`` runs)
    give the same scores and verdicts, and the loop learns more than the plain replay."""
    from dataflows.cli.common import REVIEW_DAYS
    from dataflows.cli.replay import _write_verdicts
    from learners.analysts import AnalystConfig, AnalystDesk, read_frauds

    out, plain = recorded
    env = {"FRAUDFLOW_SNAPSHOT_DIR": "off", "FRAUDFLOW_VERDICT_WARMUP_DAYS": "0"}  # this stream is inside the warm-up
    proc = fraudflow("replay", "s.transactions.jsonl", "s.labels.jsonl", "--analysts", "--capacity", "10",
                     "--delay-hours", "4", "--scores", "a.scores.jsonl", "--alerts", "a.alerts.jsonl",
                     "--dlq", "a.dlq.jsonl", "--verdicts", "a.verdicts.jsonl", cwd=out, env=env)
    assert proc.returncode == 0, proc.stderr
    review = REVIEW_DAYS * 86_400.0  # the command's default
    desk = AnalystDesk(AnalystConfig(10, 4 * 3600.0, review), read_frauds(str(out / "s.labels.jsonl")))
    again = _replay_in_process(out, "b", desk)
    _write_verdicts(str(out / "b.verdicts.jsonl"), desk)
    assert sorted((out / "a.scores.jsonl").read_bytes().splitlines()) == \
        sorted((out / "b.scores.jsonl").read_bytes().splitlines())
    assert (out / "a.verdicts.jsonl").read_bytes() == (out / "b.verdicts.jsonl").read_bytes()
    listed = AnalystDesk(AnalystConfig(10, 4 * 3600.0, review), read_frauds(str(out / "s.labels.jsonl")))
    scores: list = []
    parts = build_flow(Settings().replace(progress=False, snapshot_dir="off", verdict_warmup_days=0.0),
                       source=EventListSource(small_stream[0], desk=listed),
                       alerts_sink=TestingSink([]), dlq_sink=TestingSink([]), scores_sink=TestingSink(scores),
                       shards=1, desk=listed)
    run_main(parts.flow)
    assert sorted(encode(s) for s in scores) == sorted((out / "b.scores.jsonl").read_bytes().splitlines())
    assert listed.answered == desk.answered
    verdicts = _lines(out / "a.verdicts.jsonl")
    assert len(verdicts) > 20 and (out / "a.dlq.jsonl").read_text() == ""
    assert f"analysts' verdicts    {len(verdicts):>12,}" in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "labels received" in x)
    learned = int(line.split("learned from ")[1].split(":")[0].replace(",", ""))
    assert learned == again["labels_learned"]
    # verdicts teach the model frauds days before their chargebacks: more examples by the end
    assert learned > plain["labels_learned"]
