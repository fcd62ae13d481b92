"""Kafka's security on the real broker: who may log in, and what each Sluice user may do.

Every refusal is checked beside the same call succeeding with the right login,
so "refused" never just means "the broker is down". The users and their rights
are include.kafka.ROLES; the stack sets them (stack/services/kafka.py).
Nothing here writes to or commits in Sluice's own topics and group: rights to
do that are shown by what the refusals leave out, and used by the platform tests.
"""

from __future__ import annotations

import json
import stat
import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType, ResourceType
from kafka_login import settings

from include.kafka import ADMIN_USER, DEADLETTER, HOST_METRICS, ROLES, SENSORS_RAW, STREAM_GROUP, apply_acls
from include.kafka_lag import fetch_offsets
from stack.services.kafka import kafka_passwords, users_file

pytestmark = pytest.mark.integration


def errors_of(conf: dict, seconds: float = 8.0) -> list:
    """librdkafka's errors (error_cb) while a producer tries to reach the cluster with ``conf``."""
    errors: list = []
    producer = Producer({**conf, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not errors:
        producer.poll(0.2)
    return errors


def delivery(user: str, topic: str) -> str | None:
    """The error name a produce to ``topic`` as ``user`` ends with (None: stored). Only for refused writes."""
    results: list = []
    producer = Producer({**settings(user=user), "log_level": 0, "message.timeout.ms": 15000})
    producer.produce(topic, b"must not be stored", on_delivery=lambda err, msg: results.append(err))
    producer.flush(20)
    assert results, "no delivery report"
    return results[0].name() if results[0] else None


def first_consumer_error(user: str, group: str, topics: list[str], seconds: float = 15.0) -> str | None:
    consumer = Consumer({**settings(user=user), "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "log_level": 0})
    consumer.subscribe(topics)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                return msg.error().name()
            if msg is not None:
                return None  # a record was read
        return None
    finally:
        consumer.close()


def assigned_errors(consumer: Consumer, seconds: float = 15.0) -> list[str]:
    """Error names an assigned consumer meets until a topic error or a record ("record") comes."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not {"TOPIC_AUTHORIZATION_FAILED", "record"} & set(seen):
        msg = consumer.poll(0.5)
        if msg is not None:
            seen.append(msg.error().name() if msg.error() else "record")
    return seen


def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(kafka):
    good = settings()
    assert AdminClient({**good, "log_level": 0}).list_topics(timeout=10).brokers  # the broker answers a real login
    wrong = errors_of({**good, "sasl.password": "not-the-password"})
    assert [e.name() for e in wrong][:1] == ["_AUTHENTICATION"], wrong
    assert "invalid credentials" in wrong[0].str()
    assert [e.name() for e in errors_of({**good, "sasl.username": "nobody"})][:1] == ["_AUTHENTICATION"]
    # TLS without SASL, and plain TCP: the broker drops the connection before any request.
    tls_only = {k: v for k, v in good.items() if not k.startswith("sasl.")} | {"security.protocol": "SSL"}
    for conf in (tls_only, {"bootstrap.servers": good["bootstrap.servers"]}):
        with pytest.raises(KafkaException):
            AdminClient({**conf, "log_level": 0}).list_topics(timeout=5)


def test_clients_verify_the_brokers_certificate(kafka):
    # Without the stack's CA (the system trust store only), the TLS handshake fails on the client's side.
    untrusted = {k: v for k, v in settings().items() if k != "ssl.ca.location"}
    errors = errors_of(untrusted)
    assert errors and any("certificate verify failed" in e.str() or e.name() == "_SSL" for e in errors), errors


def test_the_collectors_user_cannot_read_the_stream_loaders_group_nor_consume(kafka):
    for user in ("sluice-mqtt-collector", "sluice-host-collector"):
        assert first_consumer_error(user, STREAM_GROUP, [SENSORS_RAW]) == "GROUP_AUTHORIZATION_FAILED"
        admin = AdminClient({**settings(user=user), "log_level": 0})
        future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(STREAM_GROUP)])[STREAM_GROUP]
        with pytest.raises(KafkaException) as info:
            future.result(15)
        assert info.value.args[0].name() == "GROUP_AUTHORIZATION_FAILED"
        # Not even by assignment, without a group: it may write its topics, never read them.
        consumer = Consumer({**settings(user=user), "group.id": f"sec-{uuid.uuid4().hex[:8]}", "log_level": 0})
        consumer.assign([TopicPartition(SENSORS_RAW if "mqtt" in user else HOST_METRICS, 0, 0)])
        try:
            seen = assigned_errors(consumer)
        finally:
            consumer.close()
        assert "TOPIC_AUTHORIZATION_FAILED" in seen and "record" not in seen, seen


def test_each_collector_may_write_only_its_own_topics(kafka):
    assert delivery("sluice-host-collector", SENSORS_RAW) == "TOPIC_AUTHORIZATION_FAILED"
    assert delivery("sluice-host-collector", DEADLETTER) == "TOPIC_AUTHORIZATION_FAILED"
    assert delivery("sluice-mqtt-collector", HOST_METRICS) == "TOPIC_AUTHORIZATION_FAILED"
    # What a collector may write it also sees; what it may not, it does not even see.
    topics = AdminClient({**settings(user="sluice-mqtt-collector"), "log_level": 0}).list_topics(timeout=10).topics
    assert {SENSORS_RAW, DEADLETTER} <= set(topics) and HOST_METRICS not in topics


def test_the_loaders_user_cannot_produce_to_the_collectors_topics(kafka):
    assert delivery("sluice-stream-loader", SENSORS_RAW) == "TOPIC_AUTHORIZATION_FAILED"
    assert delivery("sluice-stream-loader", HOST_METRICS) == "TOPIC_AUTHORIZATION_FAILED"
    # It may read them (by assignment here, to leave the real group alone) ...
    consumer = Consumer({**settings(user="sluice-stream-loader"), "group.id": STREAM_GROUP, "log_level": 0})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(SENSORS_RAW, 0), timeout=10)
        assert 0 <= low <= high
    finally:
        consumer.close()
    # ... but in no group but its own.
    assert first_consumer_error("sluice-stream-loader", f"other-{uuid.uuid4().hex[:8]}", [SENSORS_RAW]) \
        == "GROUP_AUTHORIZATION_FAILED"


def test_the_lag_users_may_describe_offsets_and_nothing_more(kafka):
    lag = AdminClient({**settings(user="sluice-lag"), "log_level": 0})
    assert set(lag.list_topics(timeout=10).topics) == {SENSORS_RAW, HOST_METRICS}
    (described,) = lag.describe_consumer_groups([STREAM_GROUP]).values()
    assert described.result(15).group_id == STREAM_GROUP
    known = {g.group_id for g in lag.list_consumer_groups(request_timeout=15).result().valid}
    assert known <= {STREAM_GROUP}  # other groups are invisible to it
    if STREAM_GROUP in known:  # a loader ran on this stack: the lag check reads its offsets
        offsets = fetch_offsets(lag, STREAM_GROUP, topics=[SENSORS_RAW, HOST_METRICS], timeout=15)
        assert {o.topic for o in offsets} == {SENSORS_RAW, HOST_METRICS}
    # Describing is all: no record, no commit, no write.
    assert first_consumer_error("sluice-lag", STREAM_GROUP, [SENSORS_RAW]) == "GROUP_AUTHORIZATION_FAILED"
    assert delivery("sluice-lag", SENSORS_RAW) == "TOPIC_AUTHORIZATION_FAILED"


def test_airflows_user_reads_by_assignment_and_writes_nothing(kafka):
    consumer = Consumer({**settings(user="sluice-airflow"), "group.id": "sluice-reconcile",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        for topic in (SENSORS_RAW, HOST_METRICS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            assert 0 <= low <= high
        # Fetching what the reconcile DAG counts: no authorization error (a record, or nothing yet).
        consumer.assign([TopicPartition(SENSORS_RAW, p, 0) for p in range(3)])
        seen = assigned_errors(consumer, seconds=5)
        assert not set(seen) - {"record", "_PARTITION_EOF"}, seen
    finally:
        consumer.close()
    assert delivery("sluice-airflow", DEADLETTER) == "TOPIC_AUTHORIZATION_FAILED"
    assert first_consumer_error("sluice-airflow", STREAM_GROUP, [SENSORS_RAW]) == "GROUP_AUTHORIZATION_FAILED"


def test_acls_are_exactly_the_roles_and_a_stray_grant_is_removed(kafka):
    admin = AdminClient({**settings(), "log_level": 0})
    assert apply_acls(admin) == {"added": 0, "removed": 0}  # the stack applied them at start
    stray = AclBinding(ResourceType.TOPIC, HOST_METRICS, ResourcePatternType.LITERAL, "User:sluice-mqtt-collector",
                       "*", AclOperation.READ, AclPermissionType.ALLOW)
    for future in admin.create_acls([stray]).values():
        future.result(15)
    assert apply_acls(admin) == {"added": 0, "removed": 1}
    assert apply_acls(admin) == {"added": 0, "removed": 0}


def test_passwords_live_in_0600_files_and_never_on_a_command_line(kafka):
    passwords = kafka_passwords(kafka.config)
    assert set(passwords) == {ADMIN_USER, *ROLES}
    for path in (users_file(kafka.config), kafka.properties_file, kafka.keystore_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    cmdline = open(f"/proc/{kafka.pid()}/cmdline", "rb").read().decode(errors="replace")
    assert not [u for u, pw in passwords.items() if pw in cmdline]
    assert not (kafka.dir / "format.args").exists()  # the formatter's argument file is gone
    # The admin's password is in the broker's JAAS lines; no other user's is anywhere in its folder.
    text = "".join(p.read_text(errors="replace") for p in kafka.dir.glob("*") if p.is_file() and p != users_file(kafka.config))
    assert not [u for u, pw in passwords.items() if u != ADMIN_USER and pw in text]
    assert json.loads(users_file(kafka.config).read_text()) == passwords


def test_rotating_a_users_password_refuses_the_old_one_at_once(kafka):
    from stack.services.kafka import password_file, rotate_password

    user = "sluice-host-collector"
    old = settings(user=user)
    assert "host-collector" in rotate_password(kafka.config, user)
    new = settings(user=user)
    assert new["sasl.password"] != old["sasl.password"]
    assert password_file(kafka.config, user).read_text() == new["sasl.password"]
    assert [e.name() for e in errors_of(old)][:1] == ["_AUTHENTICATION"]
    assert HOST_METRICS in AdminClient({**new, "log_level": 0}).list_topics(timeout=10).topics
    with pytest.raises(KeyError, match="no Kafka user 'nobody'"):
        rotate_password(kafka.config, "nobody")
