"""The flow against a real Kafka-compatible broker (tansu), as `python -m bytewax.run`
processes: end to end, crash and resume, broker outage, and scaling across processes.

kafka-python is the independent client that produces inputs and reads outputs."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from connectors.events import Transaction
from connectors.simulator import SimulatorConfig, simulate
from dataflows.recovery_store import committed_state
from learners.evaluation import average_precision
from tests.kafka_helpers import (FlowCluster, approx_count, by_tx, init_recovery, make_topics, produce_stream, read_topic,
                                 tx_offsets)

pytestmark = pytest.mark.broker

STREAM = SimulatorConfig(customers=500, terminals=1_000, days=40, seed=11)


@pytest.fixture(scope="module")
def stream_events():
    truth: dict = {}
    events = list(simulate(STREAM, truth=truth))
    return events, truth


def _ap(scores: dict[str, float], truth: dict, after_ts: float, tx_ts: dict[str, float]) -> float:
    rows = [(truth[t].is_fraud, s) for t, s in scores.items() if tx_ts[t] >= after_ts]
    return average_precision(*zip(*rows))


@pytest.fixture(scope="module")
def tx_times(stream_events):
    events, _ = stream_events
    return {e.tx_id: e.event_ts for e in events if isinstance(e, Transaction)}


def test_end_to_end_scores_alerts_and_dead_letters(broker, stream_events, tmp_path):
    events, truth = stream_events
    stream = produce_stream(broker.bootstrap, events, truth, partitions=2)
    cluster = FlowCluster(stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1"), log_dir=tmp_path).start()
    assert cluster.wait(timeout=300) == [0], cluster.logs()
    scores = read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids))
    per_tx = by_tx(scores)
    assert sorted(per_tx) == sorted(stream.tx_ids)
    assert all(len(v) == 1 for v in per_tx.values()), "a transaction was scored twice"
    alerts = read_topic(broker.bootstrap, stream.topics["alerts"])
    assert len(alerts) > 50 and len({a["alert_id"] for a in alerts}) == len(alerts)
    supervised = [a for a in alerts if a["model"] != "coldstart-hst"]
    assert np.mean([truth[a["tx_id"]].is_fraud for a in supervised]) > 0.5  # measured 0.79
    dlq = read_topic(broker.bootstrap, stream.topics["dlq"], expect=stream.malformed)
    assert len(dlq) == stream.malformed
    for dead in dlq:
        assert dead["reason"] and set(dead["origin"]) == {"topic", "partition", "offset"}
        assert dead["origin"]["topic"] in (stream.topics["transactions"], stream.topics["labels"])
    assert {d["encoding"] for d in dlq} == {"utf-8", "base64"}
    assert "fraudflow summary" in cluster.logs()


@pytest.fixture(scope="module")
def long_stream_events():
    truth: dict = {}
    events = list(simulate(STREAM.with_(days=90), truth=truth))
    return events, truth


LATENESS = 24 * 3600


def _kill_with_scores_to_replay(cluster: FlowCluster, bootstrap: str, stream, recovery) -> list[dict]:
    """SIGKILL every process of ``cluster`` at a moment when scores beyond the last committed
    snapshot are on the broker, so the restart has something to replay; return the scores.

    A kill that falls just after a commit, before the next epoch's first score reached the
    broker, leaves nothing to replay (it happened 1 run in about 10, decision 0033's epoch close
    makes such a window every second). So: pause the processes, read the offset a resume would
    read the transactions from (the committed snapshot of the input partition) and the scores
    written so far; kill if some scored transaction lies at or after that offset, else let them
    run a moment and look again."""
    offsets = tx_offsets(bootstrap, stream.topics["transactions"])
    key = f"0-{stream.topics['transactions']}"
    for look in range(1, 21):
        cluster.pause()
        resume_at = committed_state(recovery, "read_events", key)
        scores = read_topic(bootstrap, stream.topics["scores"], quiet_s=1.0)
        if resume_at is not None and any(offsets[s["tx_id"]] >= resume_at for s in scores):
            cluster.kill()
            print(f"killed at look {look}: resume offset {resume_at}, {len(scores)} scores written")
            return scores
        cluster.pause(False)
        time.sleep(0.3)
    cluster.kill()
    raise AssertionError("no moment with scores beyond the committed snapshot in 20 looks")


@pytest.mark.serial  # measured: fails 1 run in 2 while a CPU-bound process competes (below)
def test_crash_of_a_two_process_cluster_resumes_from_recovery(broker, long_stream_events, tmp_path):
    """Both processes of a cluster are SIGKILLed mid-stream and restarted from their recovery
    stores. The input has one partition, so it enters through one process while the keyed
    state (accounts, terminals, the two model shards) is split across both: recovery is what
    is tested here, free of the drift between processes that read different partitions (see
    test_one_and_two_processes_detect_equally)."""
    events, truth = long_stream_events
    stream = produce_stream(broker.bootstrap, events, truth, partitions=1)
    recovery = init_recovery(tmp_path / "recovery", 2)
    # A full-speed replay of this sparse stream (about 40 transactions an hour: a tenth of a
    # second's lag of one process is hours of event time) lets the stages on one process run
    # hours ahead of the other's (decision 0010). A day of allowed lateness absorbs
    # that on an idle machine. Measured: with six hours, 2 of 5 runs failed (22 of 1,432 replayed
    # scored differently; AP 0.0055 from the reference); with a day, 6 of 6 passed with none
    # scored differently, and 1 of 2 failed while a CPU-bound process competed (169 of 4,041).
    env = stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_MODEL_SHARDS="2",
                     FRAUDFLOW_ALLOWED_LATENESS_S=str(LATENESS))
    first = FlowCluster(env, processes=2, recovery_dir=recovery, log_dir=tmp_path).start()
    total = len(stream.tx_ids)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # let it get well into the stream (and past the cold start)
        if approx_count(broker.bootstrap, stream.topics["scores"]) > 0.4 * total:
            break
        time.sleep(0.2)
    before = _kill_with_scores_to_replay(first, broker.bootstrap, stream, recovery)
    assert 0.2 * total < len(before) < total, f"kill was not mid-stream: {len(before)} of {total}"

    second = FlowCluster(env, processes=2, recovery_dir=recovery, log_dir=tmp_path).start()
    assert second.wait(timeout=300) == [0, 0], second.logs()
    scores = read_topic(broker.bootstrap, stream.topics["scores"], expect=total, quiet_s=3.0)
    per_tx = by_tx(scores)
    assert sorted(per_tx) == sorted(stream.tx_ids), "a transaction was never scored"
    seen_before = {s["_at"] for s in before}
    after = [s for s in scores if s["_at"] not in seen_before]
    # Duplicates come only from replaying what followed the last snapshot.
    replayed = {s["tx_id"] for s in after} & {s["tx_id"] for s in before}
    assert 0 < len(replayed) < 0.6 * total
    assert {t for t, v in per_tx.items() if len(v) > 1} <= replayed
    differ = [t for t in replayed if len(set(per_tx[t])) > 1]
    spread = max((max(per_tx[t]) - min(per_tx[t]) for t in differ), default=0.0)
    print(f"replayed {len(replayed)}, scored differently on replay {len(differ)}, max difference {spread:.4f}")
    # The restored state scores a replayed transaction as the lost run did.
    assert len(differ) <= 0.01 * len(replayed), (len(differ), spread)
    # The model continued from its recovered state: the first scores after the restart come
    # from the supervised model (a fresh model would be on the cold-start anomaly score).
    first_after = [s for s in after if s["tx_id"] not in replayed][:200]
    assert first_after and all(s["model"] == "binned_logreg" for s in first_after)
    alerts = read_topic(broker.bootstrap, stream.topics["alerts"])
    ids: dict[str, set] = {}
    for a in alerts:
        ids.setdefault(a["tx_id"], set()).add(a["alert_id"])
    assert all(len(v) == 1 for v in ids.values()), "a duplicate alert is not identifiable by alert_id"
    # Detection is what an uninterrupted run gives: the same pipeline, sequentially, 2 shards.
    from learners.pipeline import PipelineConfig, SequentialPipeline
    from learners.scoring import ModelConfig

    config = PipelineConfig(model=ModelConfig(allowed_lateness_s=LATENESS), shards=2)
    reference = {s.tx.tx_id: s.score for s in SequentialPipeline(config).run(events)}
    tx_ts = {e.tx_id: e.event_ts for e in events if isinstance(e, Transaction)}
    after_ts = STREAM.start_ts + 14 * 86_400
    resumed_ap = _ap({t: v[-1] for t, v in per_tx.items()}, truth, after_ts, tx_ts)
    reference_ap = _ap(reference, truth, after_ts, tx_ts)
    print(f"AP after day 14: resumed {resumed_ap:.4f}, uninterrupted sequential reference {reference_ap:.4f}")
    assert abs(resumed_ap - reference_ap) < 0.005, (resumed_ap, reference_ap)


def test_broker_outage_is_survived_without_loss(broker, stream_events, tmp_path):
    events, truth = stream_events
    stream = produce_stream(broker.bootstrap, events, truth, partitions=2)
    cluster = FlowCluster(stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1"), log_dir=tmp_path).start()
    time.sleep(4)  # mid-stream
    broker.pause()
    try:
        time.sleep(6)
        assert all(p.poll() is None for p in cluster.procs), "the flow died during the outage"
    finally:
        broker.resume()
    assert cluster.wait(timeout=300) == [0], cluster.logs()
    per_tx = by_tx(read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids)))
    assert sorted(per_tx) == sorted(stream.tx_ids)


SCALING_STREAM = SimulatorConfig(customers=1_000, terminals=2_000, days=45, seed=11)


@pytest.mark.serial  # two processes read at independent speeds: no competing test on the CPU
def test_one_and_two_processes_detect_equally(broker, tmp_path):
    """Scaling out moves model shards between processes; with the shard count fixed (as in
    production, FRAUDFLOW_MODEL_SHARDS) detection must not change.

    Individual scores can differ: two processes read their partitions at independent speeds, so
    some transactions see an older model version and a few labels are learned a step late. AP
    barely moves (measured: 0.6377 for 1 process, 0.6396 / 0.6385 / 0.6366 for 2). Before
    standardised values were clipped it wandered by up to 0.0104 (0.5105 vs 0.5209):
    two model versions scored a whole hour at 1.0 and which transactions met them depended on
    timing (decision 0017).
    """
    truth: dict = {}
    events = list(simulate(SCALING_STREAM, truth=truth))
    tx_times = {e.tx_id: e.event_ts for e in events if isinstance(e, Transaction)}
    after = SCALING_STREAM.start_ts + 14 * 86_400
    results = {}
    stream = produce_stream(broker.bootstrap, events, truth, partitions=2, malformed=False)
    for processes in (1, 2):
        # the same input topics, fresh output topics per run
        outputs = {k: v for k, v in make_topics(broker.bootstrap, 2).items() if k in ("alerts", "dlq", "scores")}
        stream = replace(stream, topics={**stream.topics, **outputs})
        env = stream.env(FRAUDFLOW_KAFKA_STOP_AT_END="1", FRAUDFLOW_MODEL_SHARDS="2")
        cluster = FlowCluster(env, processes=processes, log_dir=tmp_path).start()
        assert cluster.wait(timeout=300) == [0] * processes, cluster.logs()
        per_tx = by_tx(read_topic(broker.bootstrap, stream.topics["scores"], expect=len(stream.tx_ids)))
        assert sorted(per_tx) == sorted(stream.tx_ids)
        # Every label found its transaction: the topics are co-partitioned and each process reads
        # both halves of its partitions, paced together (none lost to cross-process drift).
        assert read_topic(broker.bootstrap, stream.topics["dlq"], quiet_s=1.0) == []
        results[processes] = _ap({t: v[0] for t, v in per_tx.items()}, truth, after, tx_times)
    print(f"average precision after day 14, 1 vs 2 processes: {results}")
    assert abs(results[1] - results[2]) < 0.01, results
