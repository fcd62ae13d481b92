"""The lag DAG under `airflow dags test` against the real Kafka, MinIO and Elasticsearch."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_login import granted, settings


def test_stopped_group_fails_the_run_naming_partitions_and_writes_lag_metrics(airflow, kafka, es, run_prefix):
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    topic, group = f"lagdag-{uuid.uuid4().hex[:8]}", f"lagdag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings(bootstrap))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)
    producer = Producer(settings(bootstrap))
    for i in range(10):
        producer.produce(topic, value=b"%d" % i, partition=0)
    producer.produce(topic, value=b"x", partition=1)
    assert producer.flush(30) == 0
    consumer = Consumer({**settings(bootstrap), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 1)], asynchronous=False)
    consumer.close()

    # The DAG checks as the lag user (connection kafka_lag), which may describe Sluice's topics and
    # group only: this test's own topic and group get the same right while it runs.
    with granted("sluice-lag", topics=(topic,), groups=(group,)):
        conf = {"groups": {group: [topic]}, "window": 2, "lag_threshold": 1000}
        # First check: the window is not full yet, nothing to alarm about.
        state, output = airflow.dags_test("sluice_kafka_lag", "2026-03-01T10:00:00+00:00", conf=conf)
        assert state == "success", output[-3000:]
        # Second check: a full window, offset unmoved, lag 6, nobody in the group: STOP.
        state, output = airflow.dags_test("sluice_kafka_lag", "2026-03-01T10:01:00+00:00", conf=conf)
        assert state == "failed", output[-3000:]
        assert f"group {group}: STOP on {topic}[0] (lag 6, committed 4)" in output
        assert "SLUICE ALERT dag=sluice_kafka_lag task=alert_on_lag" in output

        es.indices.refresh(index=f"sluice{run_prefix}-lag-*")
        hits = es.search(
            index=f"sluice{run_prefix}-lag-*", query={"term": {"group": group}}, size=10, sort=[{"@timestamp": "asc"}],
        )["hits"]["hits"]
        by_check = [(h["_source"]["partition"], h["_source"]["lag"], h["_source"]["status"]) for h in hits]
        assert sorted(by_check) == sorted([(0, 6, "OK"), (1, 0, "OK"), (0, 6, "STOP"), (1, 0, "OK")])

        # A threshold below the lag alarms on its own, naming the partition.
        conf["lag_threshold"] = 5
        commit = Consumer({**settings(bootstrap), "group.id": group})
        commit.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        commit.close()
        state, output = airflow.dags_test("sluice_kafka_lag", "2026-03-01T10:02:00+00:00", conf=conf)
        assert state == "failed"
        assert f"group {group}: lag above 5 on {topic}[0]=6" in output
    admin.delete_topics([topic])[topic].result(timeout=30)


def test_the_lag_check_user_cannot_see_a_group_it_was_not_granted(airflow, kafka):
    """Without the grant the DAG fails naming the group as unknown: the lag user describes only what ROLES gives it."""
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    topic, group = f"lagdag-{uuid.uuid4().hex[:8]}", f"lagdag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings(bootstrap))
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    consumer = Consumer({**settings(bootstrap), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    consumer.close()
    conf = {"groups": {group: [topic]}, "window": 2, "lag_threshold": 1000}
    state, output = airflow.dags_test("sluice_kafka_lag", "2026-03-01T11:00:00+00:00", conf=conf)
    assert state == "failed", output[-3000:]
    assert f"consumer group {group!r} does not exist on the cluster" in output, output[-3000:]
    admin.delete_topics([topic])[topic].result(timeout=30)
