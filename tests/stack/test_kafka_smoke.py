"""Kafka is the real broker: exact offsets, commits and watermarks."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import ConsumerGroupTopicPartitions
from kafka_login import settings


def test_produce_consume_commit_and_describe_offsets(kafka):
    bootstrap = f"{kafka.config.host}:{kafka.port}"  # node 1 alone, over SASL_SSL as the admin
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    group = f"smoke-group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings(bootstrap))
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)

    produced = {0: 10, 1: 7, 2: 0}
    producer = Producer({**settings(bootstrap), "enable.idempotence": True})
    for partition, count in produced.items():
        for i in range(count):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0

    consumer = Consumer({
        **settings(bootstrap),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in produced])
    seen: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    while sum(len(v) for v in seen.values()) < sum(produced.values()):
        msg = consumer.poll(10)
        assert msg is not None, f"timed out with {seen}"
        assert msg.error() is None, msg.error()
        seen[msg.partition()].append(msg.value())
    assert seen[0] == [f"0-{i}".encode() for i in range(10)]
    assert seen[1] == [f"1-{i}".encode() for i in range(7)]
    # Commit everything of partition 0 but only the first 4 records of partition 1.
    consumer.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 4)], asynchronous=False)
    high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in produced}
    consumer.close()

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in produced])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}

    assert high == {0: 10, 1: 7, 2: 0}
    assert committed[0] == 10 and committed[1] == 4
    assert committed[2] < 0  # never committed: OFFSET_INVALID
    lag = {p: high[p] - max(committed[p], 0) for p in produced}
    assert lag == {0: 0, 1: 3, 2: 0}
    admin.delete_topics([topic])[topic].result(timeout=30)
