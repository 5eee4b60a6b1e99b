"""The pipeline steps in a plain loop: when a frauds-only feed's examples are learned."""

from __future__ import annotations

from connectors.simulator import SimulatorConfig, simulate
from learners.messages import JoinedLabel
from learners.pipeline import PipelineConfig, SequentialPipeline
from learners.scoring import ModelConfig
from learners.stages import learn_at

D0 = 1522540800.0
DAY = 86_400.0


def test_frauds_of_a_frauds_only_feed_are_learned_at_the_time_out():
    frauds_only = PipelineConfig(model=ModelConfig(label_mode="frauds", label_timeout_days=8.0))
    every_label = PipelineConfig(model=ModelConfig(label_mode="all"))
    fraud = JoinedLabel("t-1", D0, "m-1", D0 + 7 * DAY, True)
    inferred = JoinedLabel("t-2", D0, "m-1", D0 + 8 * DAY + 3600, None)
    assert learn_at(fraud, frauds_only) == D0 + 8 * DAY  # with the legitimate of its time
    assert learn_at(inferred, frauds_only) == D0 + 8 * DAY + 3600
    assert learn_at(fraud, every_label) == D0 + 7 * DAY


def _share_alerting(scored) -> float:
    scored = [s for s in scored if s.tx.event_ts >= D0 + 12 * DAY and s.model != "coldstart-hst"]
    return sum(s.score >= 0.5 for s in scored) / len(scored)


def test_a_frauds_only_feed_does_not_flood_alerts_after_the_cold_start(small_config, small_sequential):
    # Measured on this stream: 4.5 % of supervised scores >= 0.5 with every label, 6.3 % with
    # frauds only (4.6 % / 7.9 % with SGD); 33 % when frauds were learned a day before the
    # legitimate of their time.
    # Every label: the small stream (customers=600, terminals=1_200, days=45, seed=7) through the
    # default loop, whose label mode is "all" (the session's shared run, small_sequential).
    assert small_config.labels == "all" and PipelineConfig() == PipelineConfig(model=ModelConfig(label_mode="all"))
    assert small_config.start_ts == D0
    frauds_only = list(simulate(small_config.with_(labels="frauds")))
    pipe = SequentialPipeline(PipelineConfig(model=ModelConfig(label_mode="frauds")))
    assert _share_alerting(pipe.run(frauds_only)) < 2 * _share_alerting(small_sequential)


def test_every_shard_learns_every_example_unless_told_own():
    events = list(simulate(SimulatorConfig(customers=200, terminals=400, days=20, seed=3)))
    runs = {}
    for name, config in {"one": PipelineConfig(), "all": PipelineConfig(shards=3),
                         "own": PipelineConfig(shards=3, shard_examples="own")}.items():
        pipe = SequentialPipeline(config)
        list(pipe.run(events))
        runs[name] = [(s.counts["labels_received"], s.counts["frauds_learned"]) for s in pipe.shards]
    (received, frauds), = runs["one"]
    assert received > 2000 and frauds > 20
    # a label is received (counted) by its own shard; the others learn a copy of it
    assert sum(r for r, _ in runs["all"]) == received and all(0 < r < received for r, _ in runs["all"])
    # each shard learns every fraud, up to its own accounts' last transaction (the last hours differ)
    assert all(frauds - 5 <= f <= frauds for _, f in runs["all"])
    own = runs["own"]
    assert sum(r for r, _ in own) == received and frauds - 15 <= sum(f for _, f in own) <= frauds
    assert all(f < frauds * 0.6 for _, f in own)
