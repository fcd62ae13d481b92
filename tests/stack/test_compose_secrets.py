"""The secrets and certificates of docker-compose.yaml (stack/compose.py, stack/docker/secret_env.py).

No container engine here: the generator, the refusal check and the certificate
step run as the compose one-shots run them (``python -m stack.compose ...``),
against temporary folders; the Airflow wrapper execs a real child process.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stack.compose import CHECKED_ENV, SECRETS, generate, issue_certificates, problems

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "stack" / "docker" / "secret_env.py"
GOOD_ENV = {name: f"user-{i}" for i, name in enumerate(CHECKED_ENV)}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **(env or {})})


# --- generator ------------------------------------------------------------------------------------

def test_the_generator_writes_every_secret_once_into_a_private_folder(tmp_path):
    folder = tmp_path / "secrets"
    result = _run("-m", "stack", "compose-secrets", "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(s.name for s in SECRETS)
    values = {n: (folder / n).read_text() for n in names}
    for name, value in values.items():
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o444, name
        assert not value.endswith("\n"), name
        assert next(s for s in SECRETS if s.name == name).problem(value) is None, name
    assert len(set(values.values())) == len(values), "every secret is its own random value"
    assert len(base64.urlsafe_b64decode(values["airflow_fernet_key"])) == 32
    assert result.stdout.count("made ") == len(SECRETS)


def test_the_generator_never_overwrites_and_fills_only_what_is_missing(tmp_path):
    folder = tmp_path / "secrets"
    generate(folder)
    (folder / "postgres_password").chmod(0o600)
    (folder / "postgres_password").write_text("my-own-postgres-password-0123456789")
    (folder / "grafana_admin_password").unlink()
    before = {p.name: p.read_text() for p in folder.iterdir()}
    made = dict(generate(folder))
    assert [n for n, m in made.items() if m] == ["grafana_admin_password"]
    after = {p.name: p.read_text() for p in folder.iterdir()}
    assert {n: v for n, v in after.items() if n in before} == before
    assert after["postgres_password"] == "my-own-postgres-password-0123456789"


# --- the refusal check ----------------------------------------------------------------------------

def test_a_generated_folder_passes_the_check(tmp_path):
    generate(tmp_path)
    assert problems(tmp_path, GOOD_ENV) == []
    result = _run("-m", "stack.compose", "check", "--dir", str(tmp_path), env=GOOD_ENV)
    assert result.returncode == 0, result.stderr
    assert f"{len(SECRETS)} secrets" in result.stdout


@pytest.mark.parametrize("name, value, why", [
    ("elastic_password", "change-me-elastic", "change-me placeholder"),
    ("minio_root_password", "CHANGEME-minio-1234567890", "change-me placeholder"),
    ("mqtt_collector_password", "", "is empty"),
    ("mqtt_devices", "room-0000 no-colon-here-at-all-000", "line 1 is not device:password"),
    ("redis_password", "short", "at least 16"),
    ("kibana_encryption_key", "x" * 31, "at least 32"),
    ("airflow_fernet_key", "y" * 44, "not a Fernet key"),
])
def test_the_check_refuses_each_bad_secret_naming_it_and_the_fix(tmp_path, name, value, why):
    generate(tmp_path)
    (tmp_path / name).chmod(0o600)
    (tmp_path / name).write_text(value + "\n")
    found = problems(tmp_path, GOOD_ENV)
    assert len(found) == 1 and name in found[0] and why in found[0], found
    result = _run("-m", "stack.compose", "check", "--dir", str(tmp_path), env=GOOD_ENV)
    assert result.returncode == 1
    assert f"refusing to start: secret {name} (./secrets/{name}" in result.stderr
    assert "python -m stack compose-secrets" in result.stderr
    if value:
        assert value not in result.stderr + result.stdout, "the check must not print the value"


def test_the_check_takes_two_fernet_keys_while_they_are_rotated(tmp_path):
    generate(tmp_path)
    path = tmp_path / "airflow_fernet_key"
    path.chmod(0o600)
    path.write_text(base64.urlsafe_b64encode(b"n" * 32).decode() + "," + base64.urlsafe_b64encode(b"o" * 32).decode())
    assert problems(tmp_path, GOOD_ENV) == []
    path.write_text(base64.urlsafe_b64encode(b"n" * 32).decode() + ",not-a-key")
    assert "not a Fernet key" in problems(tmp_path, GOOD_ENV)[0]


def test_the_check_names_every_missing_secret_at_once(tmp_path):
    generate(tmp_path)
    for name in ("postgres_password", "grafana_admin_password"):
        (tmp_path / name).unlink()
    (tmp_path / "grafana_admin_password").mkdir()  # what Docker makes of a missing bind-mount source
    found = problems(tmp_path, GOOD_ENV)
    assert [f.split(" ")[1] for f in found] == ["postgres_password", "grafana_admin_password"]
    assert all("is missing" in f and "python -m stack compose-secrets" in f for f in found)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_secret_says_how_to_make_it_readable(tmp_path):
    generate(tmp_path)
    (tmp_path / "postgres_password").chmod(0o000)
    (found,) = problems(tmp_path, GOOD_ENV)
    assert "cannot be read" in found and "chmod 0444 secrets/postgres_password" in found


def test_the_check_refuses_a_placeholder_or_missing_value_of_env(tmp_path):
    generate(tmp_path)
    env = {**GOOD_ENV, "MINIO_ROOT_USER": "change-me-user"}
    del env["GRAFANA_ADMIN_USER"]
    found = problems(tmp_path, env)
    assert len(found) == 2
    assert "MINIO_ROOT_USER='change-me-user' in .env is a change-me placeholder" in found[0]
    assert "GRAFANA_ADMIN_USER is not set: set it in .env" in found[1]


# --- certificates ---------------------------------------------------------------------------------

def test_tls_init_publishes_a_chain_per_service_and_keeps_the_ca_key_apart(tmp_path):
    ca_runtime, out = tmp_path / "ca", tmp_path / "tls"
    result = _run("-m", "stack.compose", "tls", "--ca-runtime", str(ca_runtime), "--out", str(out),
                  "mosquitto=1883", "kafka=1000")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "kafka.crt", "kafka.key", "mosquitto.crt", "mosquitto.key"]
    assert (ca_runtime / "tls" / "ca.key").exists() and not (out / "ca.key").exists()
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    for service, uid in (("mosquitto", 1883), ("kafka", 1000)):
        chain = x509.load_pem_x509_certificates((out / f"{service}.crt").read_bytes())
        chain[0].verify_directly_issued_by(ca)
        assert chain[1] == ca
        names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert service in names.get_values_for_type(x509.DNSName)
        key = serialization.load_pem_private_key((out / f"{service}.key").read_bytes(), password=None)
        assert key.public_key() == chain[0].public_key()
        st = (out / f"{service}.key").stat()
        assert stat.S_IMODE(st.st_mode) == 0o400
        if os.geteuid() == 0:
            assert st.st_uid == uid  # the user that service runs as reads its key
        assert stat.S_IMODE((out / f"{service}.crt").stat().st_mode) == 0o644


def test_tls_init_again_keeps_the_ca_and_the_certificates(tmp_path):
    ca_runtime, out = tmp_path / "ca", tmp_path / "tls"
    issue_certificates(ca_runtime, out, {"elasticsearch": 1000})
    first = (out / "ca.crt").read_bytes(), (out / "elasticsearch.crt").read_bytes()
    issue_certificates(ca_runtime, out, {"elasticsearch": 1000})
    assert ((out / "ca.crt").read_bytes(), (out / "elasticsearch.crt").read_bytes()) == first


@pytest.mark.parametrize("owner", ["mosquitto", "mosquitto=", "Mosquitto=1883", "kafka=root"])
def test_tls_init_refuses_a_bad_owner_spec(tmp_path, owner):
    result = _run("-m", "stack.compose", "tls", "--ca-runtime", str(tmp_path / "ca"), "--out", str(tmp_path / "tls"), owner)
    assert result.returncode == 2
    assert "give SERVICE=UID" in result.stderr and not (tmp_path / "tls").exists()


# --- the Airflow entrypoint wrapper ---------------------------------------------------------------

_PRINT_CONNS = "import json, os; print(json.dumps({k: json.loads(v) for k, v in os.environ.items() if k.startswith('AIRFLOW_CONN_')}))"


def _wrapped(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "SLUICE_CONN_"))}
    return subprocess.run([sys.executable, str(WRAPPER), sys.executable, "-c", _PRINT_CONNS],
                          capture_output=True, text=True, timeout=60, env={**clean, **env})


def test_the_wrapper_fills_connections_from_files_then_execs_the_command(tmp_path):
    (tmp_path / "pw").write_text("s3cr3t-from-a-file\n")
    (tmp_path / "key").write_text("api-key-from-a-file")
    result = _wrapped({
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws", "login": "sluice", "extra": {"region_name": "us-east-1"}}',
        "SLUICE_CONN_AWS_DEFAULT__PASSWORD_FILE": str(tmp_path / "pw"),
        "AIRFLOW_CONN_KIBANA_DEFAULT": '{"conn_type": "http", "host": "kibana"}',
        "SLUICE_CONN_KIBANA_DEFAULT__EXTRA__API_KEY_FILE": str(tmp_path / "key"),
        "AIRFLOW_CONN_OPENTSDB_DEFAULT": '{"conn_type": "http", "host": "opentsdb"}',
        # A double underscore in the extra's key is a dot: librdkafka's sasl.password of a Kafka connection.
        "AIRFLOW_CONN_KAFKA_LAG": '{"conn_type": "kafka", "extra": {"sasl.username": "sluice-lag"}}',
        "SLUICE_CONN_KAFKA_LAG__EXTRA__SASL__PASSWORD_FILE": str(tmp_path / "pw"),
    })
    assert result.returncode == 0, result.stderr
    conns = json.loads(result.stdout)
    assert conns["AIRFLOW_CONN_AWS_DEFAULT"] == {"conn_type": "aws", "login": "sluice", "password": "s3cr3t-from-a-file",
                                                 "extra": {"region_name": "us-east-1"}}
    assert conns["AIRFLOW_CONN_KIBANA_DEFAULT"]["extra"] == {"api_key": "api-key-from-a-file"}
    assert conns["AIRFLOW_CONN_OPENTSDB_DEFAULT"] == {"conn_type": "http", "host": "opentsdb"}
    assert conns["AIRFLOW_CONN_KAFKA_LAG"]["extra"] == {"sasl.username": "sluice-lag", "sasl.password": "s3cr3t-from-a-file"}


def test_the_compose_kafka_secrets_are_the_users_of_include_kafka():
    from include.kafka import ADMIN_USER, ROLES
    from stack.compose import KAFKA_SECRETS, SECRETS

    assert set(KAFKA_SECRETS) == {ADMIN_USER, *ROLES}, "one compose secret per Kafka user of include/kafka.py"
    assert set(KAFKA_SECRETS.values()) <= {s.name for s in SECRETS}


def test_kafka_init_names_the_secret_file_it_cannot_read(tmp_path):
    from stack.compose import KAFKA_SECRETS
    from stack.kafka_users import read_passwords

    for name in KAFKA_SECRETS.values():
        (tmp_path / name).write_text(f"pw-of-{name}\n")
    assert read_passwords(tmp_path)["sluice-lag"] == "pw-of-kafka_lag_password"
    (tmp_path / "kafka_lag_password").write_text("\n")
    with pytest.raises(SystemExit, match="kafka_lag_password .the password of sluice-lag. is empty"):
        read_passwords(tmp_path)
    (tmp_path / "kafka_lag_password").write_text("pw-again")
    (tmp_path / "kafka_airflow_password").unlink()
    with pytest.raises(SystemExit, match="cannot read the password of sluice-airflow"):
        read_passwords(tmp_path)


@pytest.mark.parametrize("env, message", [
    ({"SLUICE_CONN_MQTT_DEFAULT__PASSWORD_FILE": "{pw}"}, "AIRFLOW_CONN_MQTT_DEFAULT is not set"),
    ({"AIRFLOW_CONN_MQTT_DEFAULT": '{"host": "mosquitto"', "SLUICE_CONN_MQTT_DEFAULT__PASSWORD_FILE": "{pw}"},
     "AIRFLOW_CONN_MQTT_DEFAULT is not JSON"),
    ({"AIRFLOW_CONN_MQTT_DEFAULT": '"mqtt://x"', "SLUICE_CONN_MQTT_DEFAULT__PASSWORD_FILE": "{pw}"},
     "is not a JSON object"),
    ({"AIRFLOW_CONN_MQTT_DEFAULT": "{}", "SLUICE_CONN_MQTT_DEFAULT__PASSWORD_FILE": "{missing}"},
     "SLUICE_CONN_MQTT_DEFAULT__PASSWORD_FILE: cannot read"),
], ids=["no-connection", "bad-json", "not-an-object", "unreadable-file"])
def test_the_wrapper_stops_with_the_variable_named_and_runs_nothing(tmp_path, env, message):
    (tmp_path / "pw").write_text("s3cr3t")
    env = {k: v.replace("{pw}", str(tmp_path / "pw")).replace("{missing}", str(tmp_path / "missing")) for k, v in env.items()}
    result = _wrapped(env)
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr and "s3cr3t" not in result.stderr
