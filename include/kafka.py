"""Kafka topics of Sluice and the producer settings the collectors share.

The broker does not create topics on first use (``auto.create.topics.enable``
is off in the local stack, and should be everywhere): :func:`ensure_topics`
creates them on purpose, idempotently, with the partition count below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

# Dead-letter names belong to the reading contract; re-exported for the topic list below.
from include.contract import DEADLETTER_TOPIC as DEADLETTER
from include.contract import HEADER_REASON as HEADER_REASON

log = logging.getLogger(__name__)

#: Original MQTT payloads, value unchanged, key = device, headers = topic and receive time.
SENSORS_RAW = "sluice.sensors.raw"
#: One JSON object per host CSV row, key = host.
HOST_METRICS = "sluice.host.metrics"
#: DEADLETTER (imported above): dead letters of kinds payload (MQTT payloads without a
#: valid reading) and record (Kafka records the stream loader refused).

TOPICS = (SENSORS_RAW, HOST_METRICS, DEADLETTER)
PARTITIONS = 3

#: Header names on forwarded MQTT payloads.
HEADER_MQTT_TOPIC = "mqtt_topic"
HEADER_RECEIVED_AT = "received_at"


def producer_config(
    bootstrap: str, *, message_timeout_s: float = 30.0, client_id: str = "sluice", **extra: Any
) -> dict[str, Any]:
    """librdkafka settings for a producer that neither loses nor duplicates on retry.

    ``acks=all`` and idempotence make a broker-side retry write once; the
    delivery report comes after the broker stored the record, or with an error
    after ``message_timeout_s`` seconds (the caller then keeps the record).
    """
    config = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500000,
        "message.timeout.ms": int(message_timeout_s * 1000),
        "reconnect.backoff.max.ms": 2000,
        "log_level": 3,
    }
    config.update(extra)
    return config


def min_insync_replicas(replication: int) -> int:
    """Copies an ``acks=all`` write needs: 2 of 3 or more replicas (one may be down), else 1."""
    return 1 if replication < 3 else 2


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str] = TOPICS,
    *,
    partitions: int = PARTITIONS,
    replication: int | None = None,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create whichever of ``topics`` do not exist; return the names created.

    ``replication`` defaults to what the cluster can hold: 3 where there are
    three or more brokers, with ``min.insync.replicas=2`` so that ``acks=all``
    writes survive one broker down and never rest on a single copy; 1 on a
    single broker.

    Raises RuntimeError naming the topic when the broker refuses one, and
    KafkaException when the broker cannot be reached within ``timeout_s``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # not in its __all__

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    meta = admin.list_topics(timeout=timeout_s)
    wanted = [t for t in dict.fromkeys(topics) if t not in meta.topics]
    if not wanted:
        return []
    if replication is None:
        replication = min(3, len(meta.brokers))
    config = {"min.insync.replicas": str(min_insync_replicas(replication))}
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication, config=config) for t in wanted],
        request_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(topic)
            log.info("created Kafka topic %s (%d partitions, replication %d)", topic, partitions, replication)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise RuntimeError(f"creating Kafka topic {topic} failed: {exc.args[0].str()}") from exc
    return created
