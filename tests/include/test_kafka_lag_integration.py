"""Lag against the real Kafka: exact numbers and status changes of real groups."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_login import settings

from include.kafka_lag import GroupNotFound, LagState, Status, TopicNotFound, active_members, fetch_offsets

WINDOW = 4


@pytest.fixture
def topic(kafka):
    admin = AdminClient(settings(f"{kafka.config.host}:{kafka.port}"))
    name = f"lag-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])[name].result(timeout=30)
    yield name
    admin.delete_topics([name])[name].result(timeout=30)


@pytest.fixture
def admin(kafka):
    return AdminClient(settings(f"{kafka.config.host}:{kafka.port}"))


def produce(kafka, topic: str, counts: dict[int, int]) -> None:
    producer = Producer(settings(f"{kafka.config.host}:{kafka.port}"))
    for partition, n in counts.items():
        for i in range(n):
            producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0


def consumer(kafka, group: str) -> Consumer:
    return Consumer({
        **settings(f"{kafka.config.host}:{kafka.port}"),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
    })


def commit(kafka, group: str, topic: str, offsets: dict[int, int]) -> None:
    c = consumer(kafka, group)
    c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    c.close()


def test_lag_is_produced_minus_committed_per_partition(kafka, admin, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka, topic, {0: 12, 1: 5, 2: 9})
    commit(kafka, group, topic, {0: 7, 1: 5})
    offsets = {o.partition: o for o in fetch_offsets(admin, group, topics=[topic])}
    assert {p: (o.committed, o.log_end, o.lag) for p, o in offsets.items()} == {
        0: (7, 12, 5),
        1: (5, 5, 0),
        2: (None, 9, 9),  # never committed: everything stored is lag
    }


def test_stopped_group_turns_stop_then_ok_after_catching_up(kafka, admin, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka, topic, {0: 10, 1: 10, 2: 0})
    commit(kafka, group, topic, {0: 4, 1: 10, 2: 0})
    state = LagState()
    statuses = []
    for minute in range(WINDOW):
        report = state.observe(
            group, fetch_offsets(admin, group), at=60.0 * minute, size=WINDOW,
            active_members=active_members(admin, group),
        )
        statuses.append(report.status)
    assert statuses == [Status.OK, Status.OK, Status.OK, Status.ERR]
    assert {p.partition: p.status for p in report.partitions} == {0: Status.STOP, 1: Status.OK, 2: Status.OK}
    assert report.problems() == [f"group {group}: STOP on {topic}[0] (lag 6, committed 4)"]

    # The consumer comes back and catches up: OK again at the next check.
    commit(kafka, group, topic, {0: 10})
    report = state.observe(group, fetch_offsets(admin, group), at=60.0 * WINDOW, size=WINDOW,
                           active_members=active_members(admin, group))
    assert report.status is Status.OK and report.total_lag == 0


def test_live_consumer_that_does_not_commit_is_stall(kafka, admin, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka, topic, {0: 3, 1: 3, 2: 3})
    stuck = consumer(kafka, group)
    stuck.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while active_members(admin, group) == 0 and time.monotonic() < deadline:
            stuck.poll(0.5)  # join the group, read, never commit
        state = LagState()
        for minute in range(WINDOW):
            stuck.poll(0.2)
            report = state.observe(
                group, fetch_offsets(admin, group, topics=[topic]), at=60.0 * minute, size=WINDOW,
                active_members=active_members(admin, group),
            )
        assert report.status is Status.ERR
        assert {p.status for p in report.partitions} == {Status.STALL}
        assert report.total_lag == 9
    finally:
        stuck.close()


def test_idle_group_at_zero_lag_stays_ok(kafka, admin, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka, topic, {0: 2, 1: 0, 2: 1})
    commit(kafka, group, topic, {0: 2, 1: 0, 2: 1})
    state = LagState()
    for minute in range(WINDOW * 2):
        report = state.observe(group, fetch_offsets(admin, group), at=60.0 * minute, size=WINDOW,
                               active_members=active_members(admin, group))
        assert report.status is Status.OK


def test_unknown_group_and_topic_are_named(kafka, admin, topic):
    with pytest.raises(GroupNotFound, match="consumer group 'no-such-group' does not exist"):
        fetch_offsets(admin, "no-such-group")
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka, topic, {0: 1})
    commit(kafka, group, topic, {0: 1})
    with pytest.raises(TopicNotFound, match="topic 'no-such-topic' configured for consumer group"):
        fetch_offsets(admin, group, topics=["no-such-topic"])
