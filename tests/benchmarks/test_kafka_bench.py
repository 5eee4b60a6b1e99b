"""``make bench``'s Kafka rows make the topics the flow needs (it stopped at start-up once when
the flow began to require the feedback and rules topics, and no test ran that path)."""

from __future__ import annotations

import pytest

from benchmarks.kafka import _drop_topics, _env, _settings, _topics
from connectors.kafka import check_cluster

pytestmark = pytest.mark.broker


def test_the_benchmark_topics_are_every_topic_the_flow_checks_at_start_up(broker):
    topics = _topics(broker.bootstrap, 2)
    try:
        kafka = _settings(_env(broker.bootstrap, topics, FRAUDFLOW_KAFKA_STARTUP_TIMEOUT_S="5"))
        check_cluster(kafka, emit_scores=True)  # raises KafkaStartupError naming a missing topic
        from confluent_kafka.admin import AdminClient

        meta = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert len(meta.topics[topics["rules"]].partitions) == 1
        assert len(meta.topics[topics["feedback"]].partitions) == 2
    finally:
        _drop_topics(broker.bootstrap, topics)
