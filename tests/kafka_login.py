"""How the tests log in to the local stack's Kafka (SASL_SSL, SCRAM-SHA-512, trusting the stack's CA).

Tests make topics and consumer groups of their own (``t.<run>.raw``, ``g-<run>``),
names no role of :data:`include.kafka.ROLES` may touch, so they log in as the
admin by default; tests of the rights themselves (tests/stack/test_kafka_security.py)
log in as the roles. Everything comes from :mod:`stack.services.kafka`, the one
place of the stack's Kafka credentials.
"""

from __future__ import annotations

from stack.config import StackConfig
from stack.services.kafka import ADMIN_USER, client_env, client_settings, kafka_passwords
from stack.tls import ca_cert_path


def settings(bootstrap: str | None = None, *, user: str = ADMIN_USER, config: StackConfig | None = None) -> dict[str, str]:
    """librdkafka settings: bootstrap (the stack's, or ``bootstrap``) and ``user``'s login."""
    out = client_settings(config or StackConfig.from_env(), user)
    if bootstrap:
        out["bootstrap.servers"] = bootstrap
    return out


def security(*, user: str = ADMIN_USER, config: StackConfig | None = None) -> dict[str, str]:
    """``user``'s login alone (no bootstrap), e.g. for ``producer_config(bootstrap, **security())``."""
    out = settings(user=user, config=config)
    del out["bootstrap.servers"]
    return out


def options(*, user: str = ADMIN_USER, config: StackConfig | None = None) -> dict[str, str]:
    """``KafkaClientOptions`` fields (collector and loader configs) logging in as ``user``."""
    config = config or StackConfig.from_env()
    return {"kafka_username": user, "kafka_password": kafka_passwords(config)[user],
            "kafka_ca_file": str(ca_cert_path(config))}


def env(*, user: str = ADMIN_USER, config: StackConfig | None = None) -> dict[str, str]:
    """``SLUICE_KAFKA_*`` environment of a collector or loader process (password by file, never a flag)."""
    return client_env(config or StackConfig.from_env(), user)


class granted:
    """A context in which ``user`` may do ``operations`` on a test's own topic and group (ACLs removed after).

    The lag check's user may describe only Sluice's topics and group; a test
    that points the lag DAG at a topic and group of its own grants the same
    rights on those for its duration. ``python -m stack up kafka`` would
    remove them too (:func:`include.kafka.apply_acls` keeps exactly ROLES).
    """

    def __init__(self, user: str, *, topics: tuple[str, ...] = (), groups: tuple[str, ...] = (),
                 operations: tuple[str, ...] = ("DESCRIBE",)) -> None:
        from include.kafka import Grant, _acl_bindings

        grants = [Grant("topic", t, operations) for t in topics] + [Grant("group", g, operations) for g in groups]
        self.bindings = list(_acl_bindings({user: grants}))

    def __enter__(self) -> granted:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({**settings(), "log_level": 0})
        for future in self.admin.create_acls(self.bindings, request_timeout=15).values():
            future.result(15)
        return self

    def __exit__(self, *exc: object) -> None:
        from confluent_kafka.admin import AclBindingFilter

        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                    b.permission_type) for b in self.bindings]
        for future in self.admin.delete_acls(filters, request_timeout=15).values():
            future.result(15)
