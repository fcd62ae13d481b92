"""Kafka's users, topics and ACLs for docker-compose: what its one-shot ``kafka-init`` runs.

The local stack does this in :meth:`stack.services.kafka.Kafka.after_start`; compose
runs the same functions of include/kafka.py as the admin ``sluice-admin``
(the brokers' own principal, whose SCRAM credential the broker's entrypoint
put into the storage when it formatted it), with every password from a Docker
secret file (:data:`stack.compose.KAFKA_SECRETS`): never on a command line or in
the environment.

    python -m stack.kafka_users --bootstrap kafka:9092 --ca-file /tls/ca.crt [--brokers 3]

sets each user's SCRAM-SHA-512 credential (a changed secret file rotates it),
creates Sluice's topics and makes the ACLs exactly :data:`include.kafka.ROLES`.
Exits non-zero naming the file or the refusal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.kafka import ADMIN_USER, DEFAULT_MECHANISM, DEFAULT_PROTOCOL, ROLES, TOPICS, apply_acls, ensure_topics, upsert_users
from stack.compose import KAFKA_SECRETS, RUN_SECRETS

log = logging.getLogger("kafka-users")


def read_passwords(folder: Path) -> dict[str, str]:
    """User -> password from the Docker secret files of :data:`KAFKA_SECRETS`; SystemExit naming a bad one."""
    out = {}
    for user, name in KAFKA_SECRETS.items():
        path = folder / name
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"kafka-users: cannot read the password of {user} from {path}: {exc.strerror}") from None
        if not text:
            raise SystemExit(f"kafka-users: {path} (the password of {user}) is empty")
        out[user] = text
    return out


def admin_settings(bootstrap: str, password: str, ca_file: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "security.protocol": DEFAULT_PROTOCOL, "sasl.mechanism": DEFAULT_MECHANISM,
            "sasl.username": ADMIN_USER, "sasl.password": password, "ssl.ca.location": ca_file, "log_level": 3}


def wait_for_brokers(admin: Any, brokers: int, timeout_s: float = 120.0) -> int:
    """Wait until ``brokers`` brokers are in the metadata (the topics' replication depends on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = len(admin.list_topics(timeout=10).brokers)
        if seen >= brokers:
            return seen
        if time.monotonic() > deadline:
            raise SystemExit(f"kafka-users: only {seen} of {brokers} brokers joined within {timeout_s:.0f} s")
        log.info("%d of %d brokers in the cluster, waiting", seen, brokers)
        time.sleep(2)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stack.kafka_users", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="the brokers, e.g. kafka:9092")
    p.add_argument("--ca-file", required=True, help="the CA that signed the brokers' certificates (/tls/ca.crt)")
    p.add_argument("--secrets-dir", type=Path, default=RUN_SECRETS, help="where the password files are")
    p.add_argument("--brokers", type=int, default=1, help="wait for this many brokers before creating topics")
    args = p.parse_args(argv)
    if not Path(args.ca_file).is_file():
        raise SystemExit(f"kafka-users: the CA file {args.ca_file} does not exist (tls-init writes /tls/ca.crt)")
    passwords = read_passwords(args.secrets_dir)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from confluent_kafka.admin import AdminClient

    settings = admin_settings(args.bootstrap, passwords[ADMIN_USER], args.ca_file)
    admin = AdminClient(settings)
    seen = wait_for_brokers(admin, args.brokers)
    upsert_users(admin, {u: pw for u, pw in passwords.items() if u != ADMIN_USER})
    created = ensure_topics(args.bootstrap, TOPICS, settings={k: v for k, v in settings.items() if k != "bootstrap.servers"})
    acls = apply_acls(admin)
    print(json.dumps({"brokers": seen, "users": sorted(ROLES), "topics_created": created, "acls": acls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
