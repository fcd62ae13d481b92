"""stack/docker/kafka/entrypoint.sh, compose's Kafka start, run here without a container.

There is no container engine on this machine, so the script runs on the host
with the apache/kafka image's paths pointed elsewhere (SLUICE_KAFKA_HOME,
SLUICE_KAFKA_CONF, SLUICE_TLS_DIR, the secret file): the storage is formatted
by Kafka's own StorageTool from the local stack's jars (stack/maven/kafka-pom.xml),
so Kafka itself parses the server.properties the script wrote. Only the last
step, ``exec kafka-server-start.sh``, is replaced by a script that records its
arguments and the process list: starting a broker is the local stack's tests'
business (tests/stack/test_kafka_security.py), and compose's image is not here.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from stack.compose import issue_certificates

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "stack/docker/kafka/entrypoint.sh"
PASSWORD = "Adm1n-only-in-a-file-0123456789"


@pytest.fixture(scope="module")
def kafka_java() -> tuple[Path, str]:
    from stack.config import StackConfig
    from stack.services.kafka import POM, Kafka
    from stack.toolchain import find_jdk, maven_classpath

    kafka = Kafka(StackConfig.from_env())
    return find_jdk("kafka", 17) / "bin" / "java", maven_classpath("kafka", POM, kafka.classpath_file)


def _node(tmp_path: Path, kafka_java: tuple[Path, str], password: str = PASSWORD) -> dict[str, str]:
    java, classpath = kafka_java
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (tmp_path / "classpath").write_text(classpath)
    # What the image's kafka-run-class.sh ends with: java -cp <its jars> "$@".
    (home / "bin/kafka-run-class.sh").write_text(f'#!/bin/sh\nexec {java} -cp "$(cat {tmp_path}/classpath)" "$@"\n')
    (home / "bin/kafka-server-start.sh").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/started\nps -eo args > {tmp_path}/ps\n')
    for f in (home / "bin").iterdir():
        f.chmod(0o755)
    if not (tmp_path / "tls").exists():
        issue_certificates(tmp_path / "ca", tmp_path / "tls", {"kafka": os.getuid()})
    (tmp_path / "kafka_admin_password").write_text(password + "\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin", "SLUICE_KAFKA_HOME": str(home), "SLUICE_KAFKA_CONF": str(tmp_path / "conf"),
        "SLUICE_KAFKA_ADMIN_PASSWORD_FILE": str(tmp_path / "kafka_admin_password"),
        "SLUICE_TLS_DIR": str(tmp_path / "tls"), "SLUICE_KAFKA_NODE": "kafka",
        # The environment of docker-compose.yaml's kafka service (one node).
        "KAFKA_NODE_ID": "1", "CLUSTER_ID": "c2x1aWNlLWNvbXBvc2UtMQ", "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "CLIENT://:9092,CONTROLLER://:9093", "KAFKA_ADVERTISED_LISTENERS": "CLIENT://kafka:9092",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER", "KAFKA_INTER_BROKER_LISTENER_NAME": "CLIENT",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CLIENT:SASL_SSL,CONTROLLER:SASL_SSL",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_LOG_DIRS": str(tmp_path / "data"), "KAFKA_HEAP_OPTS": "-Xmx256m",
    }


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)


def test_a_new_node_is_formatted_with_the_admins_scram_credential_and_starts_sasl_ssl_only(tmp_path, kafka_java):
    result = _run(_node(tmp_path, kafka_java))
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "conf"
    assert (tmp_path / "started").read_text().split() == [str(conf / "server.properties")]
    # Kafka's StorageTool accepted the config and put sluice-admin's SCRAM-SHA-512 credential into the metadata.
    assert "UserScramCredentialRecord(name='sluice-admin', mechanism=2" in result.stdout
    assert (tmp_path / "data/meta.properties").exists() and not (conf / "format.args").exists()
    props = dict(line.split("=", 1) for line in (conf / "server.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_SSL"
    assert props["super.users"] == "User:sluice-admin" and props["allow.everyone.if.no.acl.found"] == "false"
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.truststore.location"] == str(tmp_path / "tls/ca.crt")
    # The key store is the node's key then its chain.
    store = (conf / "keystore.pem").read_text()
    assert store == (tmp_path / "tls/kafka.key").read_text() + (tmp_path / "tls/kafka.crt").read_text()
    assert store.count("BEGIN CERTIFICATE") == 2
    for name in ("server.properties", "admin.properties", "keystore.pem"):
        assert stat.S_IMODE((conf / name).stat().st_mode) == 0o600, name
    # The password is in the 0600 files only: not in what ran, not in any output.
    assert PASSWORD in (conf / "server.properties").read_text() and PASSWORD in (conf / "admin.properties").read_text()
    assert PASSWORD not in (tmp_path / "ps").read_text() + result.stdout + result.stderr


def test_a_formatted_node_starts_again_without_formatting(tmp_path, kafka_java):
    env = _node(tmp_path, kafka_java)
    assert _run(env).returncode == 0
    meta = (tmp_path / "data/meta.properties").read_text()
    again = _run(env)
    assert again.returncode == 0, again.stderr
    assert "Formatting" not in again.stdout and (tmp_path / "data/meta.properties").read_text() == meta


def test_a_volume_of_the_plaintext_compose_is_refused_with_what_to_do(tmp_path, kafka_java):
    env = _node(tmp_path, kafka_java)
    (tmp_path / "data/meta.properties").write_text("node.id=1\n")  # formatted before, no SCRAM marker
    result = _run(env)
    assert result.returncode == 1 and not (tmp_path / "started").exists()
    assert "formatted without SCRAM users" in result.stderr and "kafka-data" in result.stderr


@pytest.mark.parametrize("password, why", [
    ("", "missing or empty"), ('has"quote-0123456789', "quote, a backslash"), ("back\\slash-0123456789", "quote, a backslash"),
])
def test_a_bad_admin_password_stops_the_node_before_anything_is_written(tmp_path, kafka_java, password, why):
    env = _node(tmp_path, kafka_java, password)
    if not password:
        Path(env["SLUICE_KAFKA_ADMIN_PASSWORD_FILE"]).write_text("")
    result = _run(env)
    assert result.returncode == 1 and why in result.stderr
    assert not (tmp_path / "conf/server.properties").exists() and not (tmp_path / "data/meta.properties").exists()


def test_a_missing_certificate_names_tls_init(tmp_path, kafka_java):
    env = _node(tmp_path, kafka_java)
    (tmp_path / "tls/kafka.key").unlink()
    result = _run(env)
    assert result.returncode == 1 and "kafka.key is missing" in result.stderr and "tls-init" in result.stderr
