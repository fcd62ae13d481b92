"""Secrets and certificates of docker-compose.yaml: generated here, checked and issued in compose.

Three commands, one per place they run:

* ``python -m stack compose-secrets`` (on your machine, before ``docker compose up``):
  writes one random value per file under ``./secrets/`` (the folder mode 0700,
  so no other user of the machine can open it), never overwriting a file that
  exists. Compose mounts each file as a Docker secret under ``/run/secrets/``.
* ``python -m stack.compose check`` (the one-shot ``secrets-check`` service every
  other service waits for): exits 1 naming each secret that is missing, empty,
  too short or still a ``change-me`` placeholder, and each such variable of
  ``.env``, with what to do.
* ``python -m stack.compose tls`` (the one-shot ``tls-init`` service): the CA of
  stack/tls.py, kept in its own volume, signs a certificate per TLS service into
  the ``sluice-tls`` volume (docs/security.md has that contract).

Why the files are readable by all (0444) inside a 0700 folder rather than 0600:
outside Swarm, compose bind-mounts a secret file with its mode and owner from
the host and ignores ``uid``/``gid``/``mode`` (docker/compose#9648), so a 0600
file owned by you is unreadable to the containers that run as their own user
(Grafana 472, the collectors 10001, Elasticsearch 1000). The folder keeps other
users of the host out; in the container a secret looks as Swarm's default 0444.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.config import REPO_ROOT, StackConfig
from stack.secrets import new_password, write_private

#: Where ``compose-secrets`` writes (git-ignored) and docker-compose.yaml's ``secrets:`` read.
SECRETS_DIR = REPO_ROOT / "secrets"
#: Where a container sees its Docker secrets.
RUN_SECRETS = Path("/run/secrets")
#: A value nobody may keep: the placeholders of .env.example and their spellings.
PLACEHOLDER = re.compile(r"change[-_ ]?me", re.IGNORECASE)


def _fernet_key() -> str:
    """Airflow's Fernet key: 32 random bytes, URL-safe base64 (what ``Fernet.generate_key`` makes)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _fernet_problem(value: str) -> str | None:
    """None for a Fernet key, or for ``new,old`` keys while ``airflow rotate-fernet-key`` runs."""
    for key in value.split(","):
        try:
            ok = len(base64.urlsafe_b64decode(key.strip().encode())) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            return "is not a Fernet key (32 bytes, URL-safe base64; during a rotation: new,old)"
    return None


#: The compose simulator's devices (sensor-simulator: --devices 3, names room-0000 …); each is an MQTT user.
COMPOSE_DEVICES = tuple(f"room-{i:04d}" for i in range(3))


def _mqtt_devices() -> str:
    """``device:password`` lines, one MQTT user per simulated device (add a real device's line the same way)."""
    return "\n".join(f"{device}:{new_password()}" for device in COMPOSE_DEVICES)


def _mqtt_devices_problem(value: str) -> str | None:
    for n, line in enumerate(value.splitlines(), 1):
        name, sep, password = line.partition(":")
        if line.strip() and not (sep and name and len(password) >= 16):
            return f"line {n} is not device:password with a password of 16 or more characters"
    return None


@dataclass(frozen=True)
class ComposeSecret:
    """One file of ./secrets, one Docker secret of the same name."""

    name: str
    what: str
    make: Callable[[], str] = new_password
    min_length: int = 16
    validate: Callable[[str], str | None] | None = None

    def problem(self, value: str) -> str | None:
        """Why ``value`` may not be used, or None."""
        if not value:
            return "is empty"
        if PLACEHOLDER.search(value):
            return "still holds a change-me placeholder"
        if len(value) < self.min_length:
            return f"is {len(value)} characters; use at least {self.min_length}"
        return self.validate(value) if self.validate else None


#: Every secret docker-compose.yaml declares. A service's engineer adds theirs here
#: (and to the file's top-level ``secrets:``); tests/test_compose.py checks both agree.
SECRETS: tuple[ComposeSecret, ...] = (
    ComposeSecret("postgres_password", "Airflow's metadata database (user airflow)"),
    ComposeSecret("redis_password", "Redis, the Celery broker (profile celery)"),
    ComposeSecret("airflow_fernet_key", "Airflow's Fernet key (encrypts connections in its database)",
                  make=_fernet_key, min_length=44, validate=_fernet_problem),
    ComposeSecret("airflow_jwt_secret", "Airflow's JWT signing secret (api-server and task tokens)"),
    ComposeSecret("airflow_api_secret_key", "Airflow's api secret_key (session signing)"),
    ComposeSecret("minio_root_password", "MinIO's root user (MINIO_ROOT_USER in .env)"),
    ComposeSecret("minio_collector_secret", "MinIO's user sluice-collector (writes raw/; stack/minio_users.py)"),
    ComposeSecret("minio_airflow_secret", "MinIO's user sluice-airflow (reads raw/, writes loaded/; stack/minio_users.py)"),
    ComposeSecret("mqtt_devices", "Mosquitto's device users: device:password lines (the simulator's three)",
                  make=_mqtt_devices, validate=_mqtt_devices_problem),
    ComposeSecret("mqtt_collector_password", "Mosquitto's user sluice-mqtt-collector (the MQTT collector)"),
    ComposeSecret("elastic_password", "Elasticsearch's superuser elastic"),
    ComposeSecret("kibana_system_password", "Kibana's own user kibana_system"),
    ComposeSecret("kibana_encryption_key", "Kibana's saved-objects encryption key", min_length=32),
    ComposeSecret("grafana_admin_password", "Grafana's admin (GRAFANA_ADMIN_USER in .env)"),
    # Kafka (SASL_SSL/SCRAM-SHA-512): the brokers' admin and one user per program (KAFKA_SECRETS below).
    ComposeSecret("kafka_admin_password", "Kafka's admin sluice-admin (the brokers' principal, kafka-init)"),
    ComposeSecret("kafka_mqtt_collector_password", "Kafka's user sluice-mqtt-collector (collector-mqtt)"),
    ComposeSecret("kafka_host_collector_password", "Kafka's user sluice-host-collector (collector-host)"),
    ComposeSecret("kafka_stream_loader_password", "Kafka's user sluice-stream-loader (stream-loader)"),
    ComposeSecret("kafka_lag_password", "Kafka's user sluice-lag (Airflow's connection kafka_lag)"),
    ComposeSecret("kafka_airflow_password", "Kafka's user sluice-airflow (Airflow's connection kafka_default)"),
)

#: Kafka user -> the compose secret holding its password. Literal because secrets-check's image has
#: stack/ only (include/kafka.py needs orjson); tests/stack/test_compose_secrets.py checks that the
#: users are exactly include.kafka's ADMIN_USER and ROLES.
KAFKA_SECRETS: dict[str, str] = {
    "sluice-admin": "kafka_admin_password",
    "sluice-mqtt-collector": "kafka_mqtt_collector_password",
    "sluice-host-collector": "kafka_host_collector_password",
    "sluice-stream-loader": "kafka_stream_loader_password",
    "sluice-lag": "kafka_lag_password",
    "sluice-airflow": "kafka_airflow_password",
}

#: Variables of .env the check also reads (passed to it by docker-compose.yaml); none are secret.
CHECKED_ENV = ("MINIO_ROOT_USER", "GRAFANA_ADMIN_USER", "AIRFLOW_ADMIN_USER")


def generate(folder: Path = SECRETS_DIR, secrets: Iterable[ComposeSecret] = SECRETS) -> list[tuple[str, bool]]:
    """Make every missing secret file; (name, made now) per secret. Existing files are never touched."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    out = []
    for secret in secrets:
        path = folder / secret.name
        made = False
        if not path.exists():
            try:
                write_private(path, secret.make())  # O_EXCL: a file made meanwhile is kept
                path.chmod(0o444)  # see the module docstring: the 0700 folder is the lock
                made = True
            except FileExistsError:
                pass
        out.append((secret.name, made))
    return out


def problems(folder: Path, environ: Mapping[str, str], secrets: Iterable[ComposeSecret] = SECRETS,
             env_names: Iterable[str] = CHECKED_ENV) -> list[str]:
    """Every reason compose must not start: one line per secret or variable, naming it and the fix."""
    fix = "run `python -m stack compose-secrets` (it makes missing files and keeps existing ones)"
    out = []
    for secret in secrets:
        path = folder / secret.name
        where = f"secret {secret.name} (./secrets/{secret.name}, {secret.what})"
        if not path.is_file():
            out.append(f"{where} is missing: {fix}")
            continue
        try:
            value = path.read_text().strip()
        except OSError as exc:
            out.append(f"{where} cannot be read ({exc.strerror}): make it readable in the container, "
                       f"e.g. `chmod 0444 secrets/{secret.name}` (the folder stays 0700)")
            continue
        why = secret.problem(value)
        if why:
            out.append(f"{where} {why}: delete the file and {fix}, or write your own value into it")
    for name in env_names:
        value = environ.get(name, "")
        if not value:
            out.append(f"{name} is not set: set it in .env (see .env.example)")
        elif PLACEHOLDER.search(value):
            out.append(f"{name}={value!r} in .env is a change-me placeholder: replace it in .env")
    return out


def _parse_owner(text: str) -> tuple[str, int]:
    service, sep, uid = text.partition("=")
    if not (sep and re.fullmatch(r"[a-z0-9][a-z0-9-]*", service) and uid.isdigit()):
        raise ValueError(f"{text!r}: give SERVICE=UID, e.g. mosquitto=1883 (the uid that reads the key)")
    return service, int(uid)


def issue_certificates(ca_runtime: Path, out: Path, owners: Mapping[str, int]) -> list[str]:
    """Sign a certificate per service with the CA under ``ca_runtime/tls`` and publish it in ``out``.

    ``out`` gets ``ca.crt`` and ``<service>.crt`` (0644) and ``<service>.key``
    (0400, owned by the uid that service runs as). The CA's key stays in
    ``ca_runtime``, which only this step mounts.
    """
    from stack import tls  # cryptography: only where certificates are made

    config = StackConfig.from_env({"SLUICE_RUNTIME": str(ca_runtime)})
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    tls.ensure_ca(config)
    shutil.copyfile(tls.ca_cert_path(config), out / "ca.crt")
    (out / "ca.crt").chmod(0o644)
    done = []
    for service, uid in owners.items():
        cert = tls.server_cert(config, service)
        shutil.copyfile(cert.cert, out / f"{service}.crt")
        (out / f"{service}.crt").chmod(0o644)
        key = out / f"{service}.key"
        write_private(key, cert.key.read_bytes(), replace=True)
        if os.geteuid() == 0:
            os.chown(key, uid, 0)
        key.chmod(0o400)
        done.append(service)
    return done


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m stack.compose", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("secrets", help="write missing ./secrets files (random values); never overwrites")
    p.add_argument("--dir", type=Path, default=SECRETS_DIR, help="default: ./secrets of the repository")
    p = sub.add_parser("check", help="exit 1 while a secret or .env value is missing or a change-me placeholder")
    p.add_argument("--dir", type=Path, default=RUN_SECRETS, help="default: /run/secrets (in a container)")
    p = sub.add_parser("tls", help="sign a certificate per TLS service into the shared volume")
    p.add_argument("--ca-runtime", type=Path, required=True, help="runtime folder whose tls/ holds the CA")
    p.add_argument("--out", type=Path, required=True, help="the sluice-tls volume (/tls)")
    p.add_argument("owners", nargs="+", metavar="SERVICE=UID", help="a service and the uid its key belongs to")
    args = parser.parse_args(argv)

    if args.cmd == "secrets":
        for name, made in generate(args.dir):
            print(f"{'made' if made else 'kept'} {args.dir / name}")
        print(f"{args.dir} is mode 0700; rotate a secret: see docs/security.md")
        return 0
    if args.cmd == "check":
        found = problems(args.dir, env)
        for line in found:
            print(f"refusing to start: {line}", file=sys.stderr)
        if found:
            print("docker compose up starts nothing until these are fixed (docs/security.md)", file=sys.stderr)
            return 1
        print(f"secrets-check: {len(SECRETS)} secrets and {len(CHECKED_ENV)} .env values are set and none is a placeholder")
        return 0
    try:
        owners = dict(_parse_owner(text) for text in args.owners)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for service in issue_certificates(args.ca_runtime, args.out, owners):
        print(f"tls-init: {args.out}/{service}.crt and .key (owner uid {owners[service]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
