"""The fraud dataflow end to end on the Bytewax runtime (in-process workers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import TestingSink, cluster_main, run_main

from connectors.events import DeadLetter, Label, Transaction, label_to_json, transaction_to_json
from connectors.files import FileEventsSource
from connectors.sources import EventListSource
from dataflows.fraud import build_flow, pipeline_config
from dataflows.settings import Settings
from learners.evaluation import average_precision, roc_auc
from learners.pipeline import SequentialPipeline

DAY = 86_400


def run_flow(events, settings: Settings | None = None, workers: int = 1, source=None):
    settings = settings or Settings().replace(progress=False, snapshot_dir="off")
    alerts, dlq, scores = [], [], []
    parts = build_flow(settings, source=source or EventListSource(events),
                       alerts_sink=TestingSink(alerts), dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores),
                       shards=workers)
    if workers == 1:
        run_main(parts.flow)
    else:
        cluster_main(parts.flow, [], 0, worker_count_per_proc=workers)
    return alerts, dlq, scores, parts.stats


@pytest.fixture(scope="module")
def one_worker(small_stream):
    events, _ = small_stream
    return run_flow(events)


def _quality(scores, truth, after_ts):
    rows = [(truth[s.tx_id].is_fraud, s.score) for s in scores if s.ts >= after_ts]
    y, s = zip(*rows)
    return roc_auc(y, s), average_precision(y, s)


def test_every_transaction_scored_exactly_once(one_worker, small_stream):
    events, _ = small_stream
    _, dlq, scores, _ = one_worker
    tx_ids = [e.tx_id for e in events if isinstance(e, Transaction)]
    assert sorted(s.tx_id for s in scores) == sorted(tx_ids)
    assert dlq == []


def test_alerts_reach_the_sink_with_reasons(one_worker, small_stream):
    events, truth = small_stream
    alerts, _, _, stats = one_worker
    assert len(alerts) > 50
    supervised = [a for a in alerts if a.model == "binned_logreg"]
    assert supervised and all(a.reasons for a in supervised)
    assert all(a.score >= a.threshold for a in alerts)
    assert len({a.alert_id for a in alerts}) == len(alerts)
    precision = np.mean([truth[a.tx_id].is_fraud for a in supervised])
    base_rate = np.mean([t.is_fraud for t in truth.values()])
    assert precision > 10 * base_rate  # alerts are mostly frauds, not noise
    assert stats.alerts == len(alerts) and stats.alerts_confirmed > 0


def test_frauds_rank_well_above_legitimate(one_worker, small_stream, small_config):
    events, truth = small_stream
    _, _, scores, _ = one_worker
    after = _iso(small_config.start_ts + 21 * DAY)  # after two weeks of labels
    auc, ap = _quality(scores, truth, after)
    # Measured on this stream (seed 7): AUC 0.881, AP 0.690 (SGD before decision 0019: 0.877 /
    # 0.678; seeds 8, 9 measured earlier: 0.883/0.604, 0.871/0.601).
    assert auc > 0.855 and ap > 0.60, (auc, ap)
    # Far above what the amount alone gives (measured AUC 0.62, AP 0.27): the model learned.
    by_amount = [(truth[e.tx_id].is_fraud, e.amount) for e in events
                 if isinstance(e, Transaction) and _iso(e.event_ts) >= after]
    assert ap > 2 * average_precision(*zip(*by_amount))


def test_no_model_version_floods_the_alert_queue(one_worker, small_stream, small_config):
    """Once labels arrive, no day has more than 5 % of its legitimate transactions at score 0.5
    or more. Measured on this stream: at most 2.7 % (day 40); 13.4 % on day 14 before
    standardised values were clipped (versions scored whole hours at 1.0; decision 0017)."""
    events, truth = small_stream
    _, _, scores, _ = one_worker
    day_of = {e.tx_id: int((e.event_ts - small_config.start_ts) // DAY) for e in events if isinstance(e, Transaction)}
    legit, high = np.zeros(small_config.days), np.zeros(small_config.days)
    for s in scores:
        if s.model != "coldstart-hst" and not truth[s.tx_id].is_fraud:
            legit[day_of[s.tx_id]] += 1
            high[day_of[s.tx_id]] += s.score >= 0.5
    share = high[legit > 0] / legit[legit > 0]
    assert len(share) > 25 and share.max() < 0.05, np.round(share, 3)


def _iso(ts: float) -> str:
    from connectors.events import format_ts

    return format_ts(ts)


def test_flow_gives_the_bare_loop_scores(one_worker, small_sequential):
    _, _, scores, _ = one_worker
    loop = {s.tx.tx_id: round(s.score, 6) for s in small_sequential}
    flow = {s.tx_id: s.score for s in scores}
    assert flow == loop


def test_flow_gives_the_bare_loop_alerts(one_worker, small_stream):
    """The loop drives the flow's PolicyStage with the flow's own configuration (the per-card
    cool-down of the default settings): the same alerts, field for field."""
    events, _ = small_stream
    alerts, _, _, _ = one_worker
    pipe = SequentialPipeline(pipeline_config(Settings().replace(progress=False, snapshot_dir="off"), 1))
    candidates = sum(s.candidate for s in pipe.run(events))
    assert pipe.config.policy.cooldown_s == 24 * 3600.0
    assert len(pipe.alerts) > 50 and candidates > len(pipe.alerts)  # the cool-down held some candidates back
    assert sorted(alerts, key=lambda a: a.alert_id) == sorted(pipe.alerts, key=lambda a: a.alert_id)
    def by_account(items):  # the cool-down follows each card's alerts in order; across cards the flow batches
        out: dict = {}
        for a in items:
            out.setdefault(a.account_id, []).append(a.alert_id)
        return out

    assert by_account(alerts) == by_account(pipe.alerts)


def test_no_look_ahead_labels_first_gives_the_same_scores(one_worker, small_stream):
    """Every label fed before any transaction: the flow holds them until their time."""
    events, _ = small_stream
    _, _, scores, _ = one_worker
    labels = [e for e in events if isinstance(e, Label)]
    txs = [e for e in events if isinstance(e, Transaction)]
    _, dlq, early_scores, _ = run_flow(labels + txs)
    assert {s.tx_id: s.score for s in early_scores} == {s.tx_id: s.score for s in scores}
    assert dlq == []


@pytest.fixture(scope="module")
def two_workers(small_stream):
    events, _ = small_stream
    return run_flow(events, workers=2)


def test_two_workers_score_once_and_detect_as_well(one_worker, two_workers, small_stream, small_config):
    """Two model shards, each learning every example (the default): measured AP 0.6867 vs
    0.6904 for one worker, AUC 0.8779 vs 0.8805; each shard learning its own accounts' examples
    only (FRAUDFLOW_SHARD_EXAMPLES=own) gave AP 0.6706 (decision 0018; with SGD before decision
    0019: 0.6774 vs 0.6784, own 0.6578)."""
    events, truth = small_stream
    _, _, scores1, stats1 = one_worker
    alerts2, dlq2, scores2, stats2 = two_workers
    assert sorted(s.tx_id for s in scores2) == sorted(s.tx_id for s in scores1)
    assert stats2.counts()["labels_received"] == stats1.counts()["labels_received"]  # counted once, not per shard
    after = _iso(small_config.start_ts + 21 * DAY)
    auc1, ap1 = _quality(scores1, truth, after)
    auc2, ap2 = _quality(scores2, truth, after)
    assert abs(ap2 - ap1) < 0.01 and abs(auc2 - auc1) < 0.005, (ap1, ap2, auc1, auc2)
    assert alerts2 and dlq2 == []


def test_batched_exchange_detects_as_the_plain_exchange(two_workers, small_stream, small_config, monkeypatch):
    """The cross-process exchange (decision 0022: each batch grouped by destination worker,
    through the ``*_ferry`` steps) on two in-process workers scores every transaction once,
    counts the labels the same and detects as the plain keyed exchange does. Scores are not
    compared one by one: two runs of the *plain* two-worker flow already differ on 38,294 of
    54,717 transactions (by up to 0.16; most likely terminal counts following arrival order),
    with AP 0.7108 vs 0.7107; the batched exchange measured AP 0.7107 vs 0.7108, AUC 0.8765 vs
    0.8765."""
    import dataflows.fraud

    events, truth = small_stream
    _, _, plain_scores, plain_stats = two_workers
    monkeypatch.setattr(dataflows.fraud, "total_workers", lambda: 2)
    alerts, dlq, scores, stats = run_flow(events, workers=2)
    assert sorted(s.tx_id for s in scores) == sorted(s.tx_id for s in plain_scores)
    assert stats.counts()["labels_received"] == plain_stats.counts()["labels_received"]
    after = _iso(small_config.start_ts + 21 * DAY)
    auc_plain, ap_plain = _quality(plain_scores, truth, after)
    auc, ap = _quality(scores, truth, after)
    assert abs(ap - ap_plain) < 0.005 and abs(auc - auc_plain) < 0.002, (ap_plain, ap, auc_plain, auc)
    assert alerts and dlq == []


def test_malformed_lines_go_to_the_dead_letter_sink(tmp_path: Path, small_stream):
    events, _ = small_stream
    events = events[:14000]  # includes a week of labels
    tx_lines = [json.dumps(transaction_to_json(e)) for e in events if isinstance(e, Transaction)]
    label_lines = [json.dumps(label_to_json(e)) for e in events if isinstance(e, Label)]
    bad = ['{"tx_id": "t-x", "account_id": "c-1", "ts": "2018-04-02T00:00:00Z", "amount": -5, '
           '"currency": "EUR", "terminal_id": "m-1"}', "not json at all", "[1, 2, 3]", ""]
    tx_lines[10:10] = bad
    label_lines.insert(3, '{"tx_id": "t-000000001", "account_id": "c-1", "ts": "2018-04-08T00:00:00Z"}')
    (tmp_path / "tx.jsonl").write_text("\n".join(tx_lines) + "\n")
    (tmp_path / "labels.jsonl").write_bytes("\n".join(label_lines).encode() + b"\n\xff\xfe\n")
    source = FileEventsSource(str(tmp_path / "tx.jsonl"), str(tmp_path / "labels.jsonl"))
    _, dlq, scores, _ = run_flow([], source=source)
    assert len(scores) == sum(isinstance(e, Transaction) for e in events)
    assert len(dlq) == 5  # three bad transactions, one label without is_fraud, one non-UTF-8 line
    assert all(isinstance(d, DeadLetter) and d.reason for d in dlq)
    lines = sorted((d.origin.source.rsplit("/", 1)[-1], d.origin.position) for d in dlq)
    assert len(label_lines) > 1000
    assert lines == [("labels.jsonl", 4), ("labels.jsonl", len(label_lines) + 1), ("tx.jsonl", 11),
                     ("tx.jsonl", 12), ("tx.jsonl", 13)]
