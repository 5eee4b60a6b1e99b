"""Analysts' verdicts over the real broker (issue 22): ``fraudflow investigate --kafka`` reads
the flow's alerts topic and writes verdicts to the feedback topic; ``fraudflow produce PREFIX``
loads ``PREFIX.feedback.jsonl``; a ``python -m bytewax.run dataflows.fraud:flow`` process reads
the feedback topic and learns the verdicts (its run summary counts them, and the chargebacks
that followed them are not learned again). Commands run as the installed console script,
outputs are read back with kafka-python."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.connectors.test_kafka_cli import FRAUDFLOW, cli_env, fraudflow, fresh_topics, lines
from tests.kafka_helpers import FlowCluster, read_topic

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """200 cards, 14 days, labels 2 days late: about a hundred alerts, the model supervised
    after a few days (as tests/dataflows/test_feedback_flow.py)."""
    prefix = tmp_path_factory.mktemp("sim") / "sim"
    done = subprocess.run([str(FRAUDFLOW), "simulate", "--out", str(prefix), "--days", "14", "--customers", "200",
                           "--terminals", "400", "--seed", "11", "--label-delay-days", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return prefix


def _run_flow(broker, topics: dict[str, str], log_dir: Path) -> str:
    """The flow over the topics to their end, one process; its log (with the summary)."""
    env = cli_env(broker.bootstrap, topics, FRAUDFLOW_SOURCE="kafka", FRAUDFLOW_KAFKA_STOP_AT_END="1",
                  FRAUDFLOW_EMIT_SCORES="1", FRAUDFLOW_SNAPSHOT_DIR="off", FRAUDFLOW_PROGRESS="1",
                  FRAUDFLOW_VERDICT_WARMUP_DAYS="0")  # the stream is shorter than the warm-up (decision 0062)
    log_dir.mkdir()
    cluster = FlowCluster({k: v for k, v in env.items() if k.startswith("FRAUDFLOW_")}, log_dir=log_dir).start()
    assert cluster.wait(timeout=300) == [0], cluster.logs()
    return "\n".join(f.read_text(errors="replace") for f in sorted(log_dir.glob("flow-*.log")))


def _learned(log: str) -> int:
    line = next(x for x in log.splitlines() if "labels received" in x)
    return int(line.split("learned from ")[1].split(":")[0].replace(",", ""))


def test_investigate_over_kafka_and_the_flow_learns_the_feedback_topic(broker, sim: Path, tmp_path: Path) -> None:
    from learners.analysts import _ts

    n_tx, n_labels = len(lines(Path(f"{sim}.transactions.jsonl"))), len(lines(Path(f"{sim}.labels.jsonl")))
    frauds = {d["tx_id"] for d in map(json.loads, lines(Path(f"{sim}.labels.jsonl"))) if d["is_fraud"]}

    # 1. the label feed alone through the flow: alerts on the alerts topic
    topics = fresh_topics()
    env = cli_env(broker.bootstrap, topics)
    created = fraudflow("topics", "create", "--partitions", "2", env=env)
    assert created.returncode == 0, created.stderr
    assert f"{topics['feedback']} created" in re.sub(r" +", " ", created.stdout)
    done = fraudflow("produce", str(sim), "-q", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["produced"] == {"transaction": n_tx, "label": n_labels}
    plain = _run_flow(broker, topics, tmp_path / "plain")
    assert "fraudflow summary" in plain and "analysts' verdicts" not in plain
    alerts = {a["alert_id"]: a for a in read_topic(broker.bootstrap, topics["alerts"], quiet_s=2.0)}
    assert len(alerts) > 30

    # 2. the analysts read the alerts topic and answer on the feedback topic
    copy = tmp_path / "verdicts.jsonl"
    done = fraudflow("investigate", "--kafka", "--labels", f"{sim}.labels.jsonl", "--capacity", "10",
                     "--delay-hours", "4", "--json", "-q", "--out", str(copy), env=env)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["alerts"] == len(alerts) and 20 < counts["taken"] < len(alerts)
    assert max(counts["cards_per_day"].values()) <= 10
    # the cases went over the cards' transactions from 3 days before the alert (the default
    # --review-days) to the verdict, read from the transactions topic (decisions 0066, 0067)
    assert counts["reviewed"] > 0 and counts["verdicts"] == counts["taken"] + counts["reviewed"]
    verdicts = read_topic(broker.bootstrap, topics["feedback"], expect=counts["verdicts"])
    assert len(verdicts) == counts["verdicts"]
    assert sorted(json.dumps({k: v for k, v in d.items() if k != "_at"}, sort_keys=True) for d in verdicts) == \
        sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines(copy))  # --out: the same verdicts
    txs = {d["tx_id"]: d for d in map(json.loads, lines(Path(f"{sim}.transactions.jsonl")))}
    assert len({v["tx_id"] for v in verdicts}) == len(verdicts)  # each transaction answered once
    on_alert = 0
    for v in verdicts:
        alert = alerts[v["alert_id"]]
        assert v["account_id"] == alert["account_id"] == txs[v["tx_id"]]["account_id"]
        assert _ts(v["ts"]) == _ts(alert["ts"]) + 4 * 3600
        assert -4 * 3600 < _ts(alert["ts"]) - _ts(txs[v["tx_id"]]["ts"]) <= 3 * 86_400
        assert (v["verdict"] == "fraud") == (v["tx_id"] in frauds)
        on_alert += v["tx_id"] == alert["tx_id"]
    assert on_alert == counts["taken"]
    assert any(v["verdict"] == "fraud" for v in verdicts) and any(v["verdict"] == "legitimate" for v in verdicts)

    # 3. the verdicts as a recorded PREFIX.feedback.jsonl, produced with the stream to fresh topics
    prefix = tmp_path / "rec"
    for kind in ("transactions", "labels"):
        os.symlink(f"{sim}.{kind}.jsonl", f"{prefix}.{kind}.jsonl")
    docs = sorted(({k: val for k, val in v.items() if k != "_at"} for v in verdicts), key=lambda d: d["ts"])
    Path(f"{prefix}.feedback.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    topics2 = fresh_topics()
    env2 = cli_env(broker.bootstrap, topics2)
    assert fraudflow("topics", "create", "--partitions", "2", env=env2).returncode == 0
    done = fraudflow("produce", str(prefix), "-q", env=env2)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "produced": {"transaction": n_tx, "label": n_labels, "verdict": len(verdicts)},
        "topics": {"transaction": topics2["transactions"], "label": topics2["labels"], "verdict": topics2["feedback"]}}
    landed = read_topic(broker.bootstrap, topics2["feedback"], expect=len(verdicts))
    assert sorted(json.dumps({k: v for k, v in d.items() if k != "_at"}, sort_keys=True) for d in landed) == \
        sorted(json.dumps(d, sort_keys=True) for d in docs)

    # 4. the flow reads the feedback topic: every verdict joined and learned, each one's
    # chargeback (every transaction has a label) not learned again. The one exception the
    # flow allows: the cases cover 3 days and the labels come 2 days late, so a reviewed
    # transaction's chargeback can come minutes after its verdict, and the flow may take the
    # two in either order within its disorder bound (FRAUDFLOW_ALLOWED_LATENESS_S, 1 h). If the
    # chargeback wins, it is learned and the verdict is a dead letter (decision 0066).
    fed = _run_flow(broker, topics2, tmp_path / "fed")
    n = len(verdicts)
    n_dead = int(re.search(r"dead letters +(\d+)", fed).group(1))
    dead = read_topic(broker.bootstrap, topics2["dlq"], expect=n_dead, quiet_s=1.0)
    label_ts = {d["tx_id"]: _ts(d["ts"]) for d in map(json.loads, lines(Path(f"{sim}.labels.jsonl")))}
    racing = sum(0 < label_ts[v["tx_id"]] - _ts(v["ts"]) <= 3600 for v in verdicts)
    assert len(dead) == n_dead <= racing, (dead, racing)
    for d in dead:
        verdict = json.loads(d["raw"])
        assert d["origin"]["topic"] == topics2["feedback"] and d["category"] == "unknown_transaction", d
        assert 0 < label_ts[verdict["tx_id"]] - _ts(verdict["ts"]) <= 3600, d  # its chargeback, just after it
        assert "already" in d["reason"], d
    assert re.search(rf"analysts' verdicts +{n:,} +\({n - n_dead:,} later labels for answered transactions not "
                     r"learned again, 0 chargebacks", fed), fed[-3000:]
    assert len(read_topic(broker.bootstrap, topics2["scores"], expect=n_tx)) == n_tx
    # frauds learned from verdicts hours after the alert, not days later from the chargeback:
    # more examples learned by the end of the stream than with the label feed alone
    assert _learned(fed) > _learned(plain)
