"""Kafka topics of Sluice, its users and their rights, and the client settings everyone shares.

The broker does not create topics on first use (``auto.create.topics.enable``
is off in the local stack, and should be everywhere): :func:`ensure_topics`
creates them on purpose, idempotently, with the partition count below.

Every client talks SASL_SSL with SCRAM-SHA-512 (:func:`security_settings`), as
one of the users of :data:`ROLES`, each allowed exactly what its program does
(:func:`apply_acls` makes the broker's ACLs match, :func:`upsert_users` sets the
SCRAM credentials). Only the broker's own principal is a super user.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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

#: The stream loader's consumer group (the Kafka lag DAG watches the same one).
STREAM_GROUP = "sluice-stream-loader"
#: The group id of the reconcile DAG's counting consumers (they assign, never join or commit).
RECONCILE_GROUP = "sluice-reconcile"

# --- Security: protocols, users, rights -------------------------------------------------------

#: librdkafka's ``security.protocol`` values; SASL_SSL is Sluice's default everywhere.
SECURITY_PROTOCOLS = ("SASL_SSL", "SSL", "SASL_PLAINTEXT", "PLAINTEXT")
#: SASL mechanisms a Kafka listener may offer; Sluice's brokers offer SCRAM-SHA-512 to clients.
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_PROTOCOL = "SASL_SSL"
DEFAULT_MECHANISM = "SCRAM-SHA-512"


def security_settings(
    protocol: str = DEFAULT_PROTOCOL,
    *,
    mechanism: str = DEFAULT_MECHANISM,
    username: str = "",
    password: str = "",
    ca_file: str = "",
) -> dict[str, str]:
    """librdkafka settings for ``protocol`` (``security.protocol``, ``sasl.*``, ``ssl.ca.location``).

    Raises ValueError saying what is missing: SASL needs a user and a
    password; ``ca_file`` (the CA that signed the brokers' certificates) must be
    a readable file when given, else the system's trust store is used.
    """
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"Kafka security protocol {protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
    out = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"Kafka SASL mechanism {mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}")
        if not (username and password):
            raise ValueError(f"Kafka {protocol} needs a user name and a password (got "
                             f"{'a user' if username else 'no user'} and {'a password' if password else 'no password'})")
        out.update({"sasl.mechanism": mechanism, "sasl.username": username, "sasl.password": password})
    if protocol.endswith("SSL") and ca_file:
        from pathlib import Path

        if not Path(ca_file).is_file():
            raise ValueError(f"Kafka CA file {ca_file} does not exist: name the CA certificate that signed the brokers'")
        out["ssl.ca.location"] = ca_file
    return out


@dataclass(frozen=True)
class Grant:
    """Operations a user may do on one topic or consumer group (a literal name, never a prefix)."""

    resource: str  # "topic" | "group"
    name: str
    operations: tuple[str, ...]


#: Kafka's principal of the brokers and of the stack's own administration (topics, users, ACLs):
#: the only super user.
ADMIN_USER = "sluice-admin"

#: Every other user and exactly what it may do. WRITE and READ imply DESCRIBE in Kafka; a
#: producer with WRITE may be idempotent (KIP-679) without a cluster-wide right. Nobody but the
#: admin may create or delete topics: the stack creates them (``ensure_topics`` then finds them).
ROLES: dict[str, tuple[Grant, ...]] = {
    # collectors/mqtt.py: original payloads, and payloads without a valid reading.
    "sluice-mqtt-collector": (Grant("topic", SENSORS_RAW, ("WRITE",)), Grant("topic", DEADLETTER, ("WRITE",))),
    # collectors/host.py: host rows.
    "sluice-host-collector": (Grant("topic", HOST_METRICS, ("WRITE",)),),
    # collectors/stream: consume both topics in its group, commit there, dead-letter what it refuses.
    "sluice-stream-loader": (
        Grant("topic", SENSORS_RAW, ("READ",)),
        Grant("topic", HOST_METRICS, ("READ",)),
        Grant("group", STREAM_GROUP, ("READ",)),
        Grant("topic", DEADLETTER, ("WRITE",)),
    ),
    # The lag check (dags/kafka_lag.py, `stack status`): offsets and watermarks, the group's
    # committed offsets and members. DESCRIBE only: it cannot read a record or move an offset.
    "sluice-lag": (
        Grant("topic", SENSORS_RAW, ("DESCRIBE",)),
        Grant("topic", HOST_METRICS, ("DESCRIBE",)),
        Grant("group", STREAM_GROUP, ("DESCRIBE",)),
    ),
    # Airflow's other Kafka task, the reconcile DAG (include/reconcile.py count_kafka): it reads
    # both topics by assignment to count a minute's readings, under its own group id, never committing.
    "sluice-airflow": (
        Grant("topic", SENSORS_RAW, ("READ",)),
        Grant("topic", HOST_METRICS, ("READ",)),
        Grant("group", RECONCILE_GROUP, ("DESCRIBE",)),
    ),
}


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
    settings: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create whichever of ``topics`` do not exist; return the names created.

    ``settings`` are librdkafka settings added to the admin client's (the
    credentials of :func:`security_settings`). A user who may not create topics
    (every user but the admin) finds the stack's topics there and creates none.

    ``replication`` defaults to what the cluster can hold: 3 where there are
    three or more brokers, with ``min.insync.replicas=2`` so that ``acks=all``
    writes survive one broker down and never rest on a single copy; 1 on a
    single broker.

    Raises RuntimeError naming the topic when the broker refuses one, and
    KafkaException when the broker cannot be reached within ``timeout_s``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # not in its __all__

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3, **(settings or {})})
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


def _acl_bindings(roles: Mapping[str, Iterable[Grant]]) -> set[Any]:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    return {
        AclBinding(kinds[g.resource], g.name, ResourcePatternType.LITERAL, f"User:{user}", "*",
                   getattr(AclOperation, op), AclPermissionType.ALLOW)
        for user, grants in roles.items() for g in grants for op in g.operations
    }


def apply_acls(admin: Any, roles: Mapping[str, Iterable[Grant]] = ROLES, *, timeout_s: float = 15.0) -> dict[str, int]:
    """Make the broker's ACLs of the users in ``roles`` exactly ``roles``: add what is missing, delete the rest.

    ``admin`` is a confluent-kafka AdminClient of a super user. ACLs of other
    principals are left alone. Returns ``{"added": n, "removed": m}``; raises
    RuntimeError naming the binding the broker refused.
    """
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    wanted = _acl_bindings(roles)
    # None matches any name, principal and host (the stubs say str).
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
                                  AclOperation.ANY, AclPermissionType.ANY)
    have = set(admin.describe_acls(everything, request_timeout=timeout_s).result(timeout=timeout_s))
    ours = {f"User:{u}" for u in roles}
    stale = [b for b in have if b.principal in ours and b not in wanted]
    missing = [b for b in wanted if b not in have]
    for binding, future in (admin.create_acls(missing, request_timeout=timeout_s).items() if missing else ()):
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            raise RuntimeError(f"the broker refused ACL {binding}: {exc}") from exc
    if stale:
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                    b.operation, b.permission_type) for b in stale]
        for _, future in admin.delete_acls(filters, request_timeout=timeout_s).items():
            future.result(timeout=timeout_s)
    if missing or stale:
        log.info("Kafka ACLs: %d added, %d removed", len(missing), len(stale))
    return {"added": len(missing), "removed": len(stale)}


def upsert_users(admin: Any, passwords: Mapping[str, str], *, mechanism: str = DEFAULT_MECHANISM,
                 iterations: int = 8192, timeout_s: float = 15.0) -> None:
    """Set the SCRAM credentials of ``passwords`` (user -> password) on the cluster; new users are created.

    Setting a password again is how it is rotated: connected clients keep their
    sessions, new logins need the new one. Raises RuntimeError naming the user
    the broker refused (never the password).
    """
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    kind = getattr(ScramMechanism, mechanism.replace("-", "_"))
    upserts = [UserScramCredentialUpsertion(user, ScramCredentialInfo(kind, iterations), pw.encode())
               for user, pw in passwords.items()]
    for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            raise RuntimeError(f"setting the Kafka SCRAM credentials of {user} failed: {exc}") from None
