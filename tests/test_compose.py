"""docker-compose.yaml, validated by a real compose parser without an engine.

Debian's ``docker-compose`` (1.29; `make bootstrap` installs it) answers
``docker-compose config`` by parsing, interpolating and checking the file
against the compose schema, with no container engine. These tests then check
what the schema cannot: every Connection the DAGs use points at a service of
the file, every long-running service has a health check, and no credential is
in the file itself: every password is a Docker secret read from a file, none
is on a command line or in an environment value, every service waits for
secrets-check, and every image is pinned. There is no container engine here,
so nothing is started: what an image does with a *_FILE variable is taken from
its documentation (docs/security.md names each).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: run `make bootstrap` (Debian package docker-compose)"
    return subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = _compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _used_connection_ids() -> set[str]:
    """Connection ids named in dags/, plugins/ and include/, plus those of the local stack."""
    from stack.config import StackConfig
    from stack.connections import airflow_connections

    ids = set(airflow_connections(StackConfig.from_env()))
    pattern = re.compile(r"""(?:conn_id|CONN_ID|default_conn_name)\s*(?::\s*str\s*)?=\s*["']([a-z0-9_]+)["']""")
    for folder in ("dags", "plugins", "include"):
        for path in (REPO / folder).rglob("*.py"):
            ids.update(pattern.findall(path.read_text()))
    return ids


def _hosts_of(conn: dict) -> list[str]:
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    hosts = [conn["host"]] if conn.get("host") else []
    if "endpoint_url" in extra:
        hosts.append(urlsplit(extra["endpoint_url"]).hostname)
    if "bootstrap.servers" in extra:
        hosts += [s.rsplit(":", 1)[0] for s in extra["bootstrap.servers"].split(",")]
    return hosts


def test_missing_credentials_stop_compose_with_the_variable_name(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(empty)
    assert result.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", result.stderr), result.stderr


def test_every_connection_the_dags_use_points_at_a_compose_service(config):
    services = set(config["services"])
    used = _used_connection_ids()
    assert {"grafana_default", "kibana_default", "elasticsearch_default", "opentsdb_default"} <= used
    # Elasticsearch's connections (and kibana_default) carry API keys made at run time: elasticsearch-setup
    # writes them into the file Airflow's LocalFilesystemBackend reads, from the builder the local stack uses.
    from include.elasticsearch_security import airflow_connections as es_connections

    from_file = {**es_connections("elasticsearch", 9200, "/run/sluice-es/ca.crt", {}),
                 "kibana_default": {"host": "kibana"}}
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        assert json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])["connections_file_path"] == "/run/sluice-es/connections.json"
        for conn_id in used:
            key = f"AIRFLOW_CONN_{conn_id.upper()}"
            if conn_id in from_file:
                conn = from_file[conn_id]
                assert key not in env, f"{name} sets {key}: elasticsearch-setup's file defines it (one place)"
            else:
                assert key in env, f"{name} lacks {key}"
                conn = json.loads(env[key])
            hosts = _hosts_of(conn)
            assert hosts, f"{key} names no host"
            assert set(hosts) <= services, f"{key} points at {hosts}, not a compose service"


def test_every_service_has_a_health_check_or_is_a_one_shot_awaited_by_its_dependents(config):
    services = config["services"]
    one_shots = {n for n, s in services.items() if "healthcheck" not in s}
    for name in one_shots:
        assert services[name].get("restart") == "no", f"{name} has no health check and is not a one-shot"
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert cond["condition"] == wanted, f"{name} waits for {dep} with {cond['condition']}"
    assert one_shots == {"airflow-init", "minio-init", "kafka-init", "elasticsearch-setup", "secrets-check", "tls-init"}
    for name in set(services) - one_shots:
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_the_stack_has_every_component(config):
    expected = {
        "postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
        "minio", "kafka", "mosquitto", "opentsdb", "elasticsearch", "kibana", "grafana",
        "collector-host", "collector-mqtt", "stream-loader",
    }
    assert expected <= set(config["services"])
    kafka_env = config["services"]["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"], "Kafka runs in KRaft mode"


def test_named_volumes_and_no_credentials_in_the_file(config):
    declared = set(config["volumes"])
    for name, svc in config["services"].items():
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in declared, f"{name} uses undeclared volume {source}"
    # No secret comes from .env any more (tests/test_no_secrets.py scans the file's text for literals):
    # the file interpolates no secret-like variable, and the example sets none.
    text = COMPOSE.read_text()
    assert not re.findall(r"\$\{\w*(?:PASSWORD|SECRET|_KEY|TOKEN)\w*", text)
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, _value = line.partition("=")
        assert not re.search(r"PASSWORD|SECRET|KEY|TOKEN", key), f".env.example sets a secret: {line}"


def test_kafka_cluster_profile_runs_three_voters_and_clients_bootstrap_all(tmp_path):
    env = tmp_path / "cluster.env"
    env.write_text(ENV_EXAMPLE.read_text() + "\n".join([
        "COMPOSE_PROFILES=kafka-cluster",
        "SLUICE_KAFKA_VOTERS=1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
        "SLUICE_KAFKA_REPLICATION=3",
        "SLUICE_KAFKA_MIN_ISR=2",
        "SLUICE_KAFKA_BOOTSTRAP=kafka:9092,kafka-2:9092,kafka-3:9092",
    ]) + "\n")
    result = _compose_config(env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    nodes = {name: services[name]["environment"] for name in ("kafka", "kafka-2", "kafka-3")}
    assert {e["KAFKA_NODE_ID"] for e in nodes.values()} == {1, 2, 3}
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in nodes.values()} == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({e["CLUSTER_ID"] for e in nodes.values()}) == 1
    assert {e["KAFKA_MIN_INSYNC_REPLICAS"] for e in nodes.values()} == {"2"}
    assert services["stream-loader"]["environment"]["SLUICE_KAFKA_BOOTSTRAP"] == "kafka:9092,kafka-2:9092,kafka-3:9092"


def test_default_compose_runs_one_kafka_node(config):
    # Nodes 2 and 3 start only with their profile (compose 1.29's `config` lists them with it).
    assert [config["services"][n].get("profiles") for n in ("kafka", "kafka-2", "kafka-3")] == [
        None, ["kafka-cluster"], ["kafka-cluster"]]
    assert config["services"]["kafka"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"


def test_celery_profile_runs_redis_and_scalable_workers_on_the_executor_from_env(tmp_path):
    env = tmp_path / "celery.env"
    env.write_text(ENV_EXAMPLE.read_text().replace("AIRFLOW__CORE__EXECUTOR=LocalExecutor", "AIRFLOW__CORE__EXECUTOR=CeleryExecutor")
                   + "COMPOSE_PROFILES=celery\n")
    result = _compose_config(env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"redis", "airflow-worker"} <= set(services)
    for name in (*AIRFLOW_SERVICES, "airflow-worker"):
        airflow_env = services[name]["environment"]
        assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        # The URLs are made when Airflow reads them (_CMD), from the Docker secrets.
        assert "redis://:%s@redis:6379/0" in airflow_env["AIRFLOW__CELERY__BROKER_URL_CMD"], name
        assert "/run/secrets/redis_password" in airflow_env["AIRFLOW__CELERY__BROKER_URL_CMD"], name
        backend = airflow_env["AIRFLOW__CELERY__RESULT_BACKEND_CMD"]
        assert "db+postgresql+psycopg2://airflow:%s@postgres/airflow" in backend and "postgres_password" in backend, name
        assert "AIRFLOW__CELERY__BROKER_URL" not in airflow_env and "AIRFLOW__CELERY__RESULT_BACKEND" not in airflow_env
    worker = services["airflow-worker"]
    assert worker["command"] == ["celery", "worker"] or worker["command"] == "celery worker"
    # `--scale airflow-worker=N` needs a service without a fixed container name or host port.
    assert "container_name" not in worker and not worker.get("ports")
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # The password reaches Redis through its config file, never its command line.
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--requirepass" not in redis_cmd and "/run/secrets/redis_password" in redis_cmd
    assert "/tmp/redis.conf" in redis_cmd


def test_default_compose_is_the_local_executor_without_redis_or_workers(config):
    assert config["services"]["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert [config["services"][n].get("profiles") for n in ("redis", "airflow-worker")] == [["celery"], ["celery"]]


# --- Secrets, the refusal check, pinned images (issue 15, item 6) ---------------------------------

from stack.compose import CHECKED_ENV, SECRETS  # noqa: E402  (the one list of compose secrets)

#: Services that need a credential to run or to answer their health check.
TAKES_A_SECRET = {
    "postgres", "redis", "minio", "minio-init", "kafka", "kafka-2", "kafka-3", "kafka-init", "mosquitto", "elasticsearch", "elasticsearch-setup", "kibana",
    "grafana", "collector-host", "collector-mqtt", "stream-loader", "sensor-simulator", "secrets-check",
    "airflow-init", *AIRFLOW_SERVICES, "airflow-worker",
}
#: Environment names that carry a secret when they hold a value (not a file name).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|FERNET|JWT")
#: Non-secrets that match SECRET_NAME: the S3 access key *id* (a user name).
# Names that match the pattern but hold none: an access key id, and the section name of Airflow's secrets backend.
NOT_SECRET = {"SLUICE_S3_ACCESS_KEY", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"}
#: A password handed to a program as an argument (ps and /proc show it), in any form we have had.
ON_A_COMMAND_LINE = re.compile(
    r"-[pP]\s*[\"']?\$|--password|--requirepass|mosquitto_passwd\s+(?:-\w+\s+)*-b\b|-u\s+[\"']?[\w-]*:\$"
    r"|\$\$?\{?(?!\w*_FILE\b)\w*(?:PASSWORD|SECRET|TOKEN)\w*")


def _mounted(svc: dict) -> set[str]:
    return {s["source"] if isinstance(s, dict) else s for s in svc.get("secrets") or []}


def _run_text(svc: dict) -> str:
    """What a service runs: entrypoint, command and health check, as one text."""
    parts = []
    for key in ("entrypoint", "command"):
        value = svc.get(key) or []
        parts += [value] if isinstance(value, str) else value
    parts += (svc.get("healthcheck") or {}).get("test") or []
    return " ".join(map(str, parts))


@pytest.fixture(scope="module")
def celery_config(tmp_path_factory) -> dict:
    env = tmp_path_factory.mktemp("celery") / "celery.env"
    env.write_text(ENV_EXAMPLE.read_text() + "COMPOSE_PROFILES=celery,kafka-cluster\n")
    result = _compose_config(env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_compose_secrets_are_the_generators_files(config):
    declared = config["secrets"]
    known = {s.name for s in SECRETS}
    assert not set(declared) - known, (f"{sorted(set(declared) - known)}: add each to stack/compose.py SECRETS "
                                       "(the generator makes it and secrets-check checks it)")
    assert not known - set(declared), f"{sorted(known - set(declared))}: declare it under the file's secrets:"
    for name, spec in declared.items():
        assert Path(spec["file"]) == REPO / "secrets" / name, name
    ignored = subprocess.run(["git", "check-ignore", "-q", "secrets/postgres_password"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, "./secrets must be git-ignored"


def test_every_service_that_takes_a_password_reads_it_from_a_docker_secret(celery_config):
    services = celery_config["services"]
    assert TAKES_A_SECRET <= set(services)
    for name in TAKES_A_SECRET:
        assert _mounted(services[name]), f"{name} mounts no Docker secret"
    for name, svc in services.items():
        mounted = _mounted(svc)
        assert mounted <= set(celery_config["secrets"]), name
        env = svc.get("environment") or {}
        for key, value in env.items():
            value = str(value)
            if key.endswith("_FILE") and value.startswith("/run/sluice-es/"):
                # An Elasticsearch API key elasticsearch-setup made at run time (es-keys volume, 0640): not a Docker secret.
                assert "es-keys" in {str(v).split(":")[0] for v in svc.get("volumes") or []} or any(
                    isinstance(v, dict) and v.get("source") == "es-keys" for v in svc.get("volumes") or []), name
            elif key.endswith("_FILE") and value.startswith("/tls/"):
                # A public certificate (the CA) from tls-init's volume: not a secret, but the volume is mounted.
                assert any(str(v).startswith("sluice-tls:") or (isinstance(v, dict) and v.get("source") == "sluice-tls")
                           for v in svc.get("volumes") or []), f"{name}: {key}={value} but sluice-tls is not mounted"
            elif key.endswith("_FILE"):
                # /run/secrets/<name>, or MinIO's bare secret name (its image's convention)
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{name}: {key}={value} is not a secret it mounts"
            elif key.endswith("_CMD"):
                used = set(re.findall(r"/run/secrets/(\w+)", value))
                assert used and used <= mounted, f"{name}: {key} reads no mounted secret"
            elif key.startswith("AIRFLOW_CONN_"):
                conn = json.loads(value)
                assert "password" not in conn and not {"api_key", "token"} & set(conn.get("extra") or {}), (
                    f"{name}: {key} carries its secret; give it as SLUICE_CONN_<ID>__PASSWORD_FILE")
            else:
                assert not SECRET_NAME.search(key) or key in NOT_SECRET, f"{name}: {key} holds a secret in the environment"
        for secret in re.findall(r"/run/secrets/(\w+)", _run_text(svc)):
            assert secret in mounted, f"{name} reads /run/secrets/{secret} without mounting it"


def test_every_connection_secret_file_fills_a_connection_the_service_has(config):
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        wrapped = [k for k in env if k.startswith("SLUICE_CONN_")]
        assert wrapped, name
        for key in wrapped:
            match = re.match(r"SLUICE_CONN_([A-Z0-9_]+?)__(LOGIN|PASSWORD|EXTRA__\w+)_FILE$", key)
            assert match, f"{name}: {key} is not SLUICE_CONN_<ID>__<FIELD>_FILE"
            assert f"AIRFLOW_CONN_{match[1]}" in env, f"{name}: {key} names no Connection"
    dockerfile = (REPO / "stack/docker/airflow.Dockerfile").read_text()
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entrypoint and json.loads(entrypoint[-1]) == [
        "python", "/opt/sluice-bin/secret_env.py", "/usr/bin/dumb-init", "--", "/entrypoint"]


def test_no_password_on_a_command_line_or_in_a_health_check(celery_config):
    for name, svc in celery_config["services"].items():
        text = _run_text(svc)
        assert not ON_A_COMMAND_LINE.search(text), f"{name}: {ON_A_COMMAND_LINE.search(text)[0]!r} in {text!r}"
    for script in ("stack/docker/mosquitto/entrypoint.sh", "stack/docker/kibana/entrypoint.sh"):
        code = "\n".join(line for line in (REPO / script).read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not ON_A_COMMAND_LINE.search(code), f"{script}: {ON_A_COMMAND_LINE.search(code)[0]!r}"


@pytest.mark.parametrize("text", [
    'mosquitto_sub -u "$$MQTT_USERNAME" -P "$$MQTT_PASSWORD" -t x',
    'mysqladmin ping -p$MYSQL_ROOT_PASSWORD',
    'mosquitto_passwd -b -c /mosquitto/data/passwords "$MQTT_USERNAME" "$MQTT_PASSWORD"',
    'mosquitto_passwd -c -b file user pw',
    'curl -fs -u "elastic:$$ELASTIC_PASSWORD" http://localhost:9200',
    'redis-server --requirepass "$$REDIS_PASSWORD"',
    'kafka-topics.sh --command-config x --password hunter22',
    'printf "requirepass %s" "$$REDIS_PASSWORD" > /tmp/redis.conf',  # the secret from the environment
])
def test_the_command_line_rule_catches_each_form_we_had(text):
    assert ON_A_COMMAND_LINE.search(text)


def test_the_command_line_rule_lets_a_secret_file_through():
    assert not ON_A_COMMAND_LINE.search('cat "$MQTT_PASSWORD_FILE" | curl -K - -fs http://x "$$(cat /run/secrets/p)"')


def test_the_refusal_check_runs_before_every_other_service(celery_config):
    services = celery_config["services"]
    for name, svc in services.items():
        if name == "secrets-check":
            continue
        dep = (svc.get("depends_on") or {}).get("secrets-check")
        assert dep == {"condition": "service_completed_successfully"}, f"{name} does not wait for secrets-check"
    check = services["secrets-check"]
    assert check["command"] == ["python", "-m", "stack.compose", "check"]
    assert _mounted(check) == set(celery_config["secrets"]), "secrets-check must see every secret"
    assert set(CHECKED_ENV) <= set(check["environment"])
    assert check.get("restart") == "no" and not check.get("depends_on")


def test_tls_services_wait_for_tls_init_and_only_it_holds_the_ca_key(celery_config):
    services = celery_config["services"]
    for name, svc in services.items():
        sources = {v["source"] if isinstance(v, dict) else v.split(":")[0]: v for v in svc.get("volumes") or []}
        if name != "tls-init":
            assert "sluice-ca" not in sources, f"{name} mounts the CA's key"
        if "sluice-tls" in sources and name != "tls-init":
            vol = sources["sluice-tls"]
            target, read_only = (vol["target"], vol.get("read_only")) if isinstance(vol, dict) else (vol.split(":")[1], vol.endswith(":ro"))
            assert target == "/tls" and read_only, f"{name} mounts sluice-tls other than at /tls read-only"
            assert services[name]["depends_on"].get("tls-init") == {"condition": "service_completed_successfully"}, name
    init = services["tls-init"]
    assert init["command"][:3] == ["python", "-m", "stack.compose"] and "tls" in init["command"]
    owners = dict(arg.split("=") for arg in init["command"] if "=" in arg)
    assert {"mosquitto", "kafka", "elasticsearch", "minio"} <= set(owners)


def test_every_image_is_pinned(celery_config):
    for name, svc in celery_config["services"].items():
        image = svc.get("image", "")
        assert image, f"{name} has no image"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"
        if "build" in svc:
            assert tag == "local", f"{name}: a built image is tagged :local"
    for dockerfile in (REPO / "stack/docker").glob("*.Dockerfile"):
        for base in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M):
            assert ":" in base.rpartition("/")[2] and not base.endswith(":latest"), f"{dockerfile.name}: FROM {base}"


@pytest.mark.parametrize("image, pinned", [
    ("petergrace/opentsdb-docker:latest", False), ("petergrace/opentsdb-docker", False),
    ("localhost:5000/sluice", False), ("postgres:16", True), ("docker.elastic.co/kibana/kibana:9.1.5", True),
])
def test_the_pin_rule(image, pinned):
    tag = image.rpartition("/")[2].partition(":")[2]
    assert (bool(tag) and tag != "latest") is pinned


# --- Kafka SASL_SSL and MinIO over TLS with least-privilege users (issue 15, items 3 and 5) -------

#: Every compose program that talks to Kafka, and the user of include/kafka.py ROLES it logs in as.
KAFKA_CLIENTS = {"collector-host": "sluice-host-collector", "collector-mqtt": "sluice-mqtt-collector",
                 "stream-loader": "sluice-stream-loader"}
#: Airflow's Kafka connections and their users.
KAFKA_CONNECTIONS = {"KAFKA_DEFAULT": "sluice-airflow", "KAFKA_LAG": "sluice-lag"}


def test_no_kafka_listener_or_client_is_plaintext(celery_config):
    text = COMPOSE.read_text()
    assert "PLAINTEXT" not in text, "compose's Kafka is SASL_SSL only"
    for name in ("kafka", "kafka-2", "kafka-3"):
        env = celery_config["services"][name]["environment"]
        protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(protocols.values()) == {"SASL_SSL"}, name
        listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
        assert listeners == set(protocols), f"{name}: a listener without a protocol of the map"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"CLIENT://{name}:9092"
        assert env["SLUICE_KAFKA_NODE"] == name
        svc = celery_config["services"][name]
        assert _mounted(svc) == {"kafka_admin_password"}, name
        assert "--command-config /tmp/sluice-kafka/admin.properties" in _run_text(svc), name


def test_the_broker_entrypoint_writes_the_local_stacks_security_settings():
    """The secret-bearing settings the compose entrypoint adds are the local stack's (stack/services/kafka.py)."""
    script = (REPO / "stack/docker/kafka/entrypoint.sh").read_text()
    local = (REPO / "stack/services/kafka.py").read_text()
    for setting in ("listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                    "listener.name.controller.sasl.enabled.mechanisms=PLAIN", "sasl.mechanism.controller.protocol=PLAIN",
                    "ssl.keystore.type=PEM", "ssl.truststore.type=PEM", "ssl.endpoint.identification.algorithm=https",
                    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    "allow.everyone.if.no.acl.found=false", "listener.name.client.scram-sha-512.sasl.jaas.config=",
                    "listener.name.controller.plain.sasl.jaas.config="):
        assert setting in script and setting in local, setting
    assert "super.users=User:$admin" in script and "admin=sluice-admin" in script
    assert "umask 077" in script and "--add-scram" in script and '"@$args"' in script


def test_every_kafka_client_logs_in_with_its_own_user_and_a_password_file(celery_config):
    from include.kafka import ROLES
    from stack.compose import KAFKA_SECRETS

    services = celery_config["services"]
    for name, user in KAFKA_CLIENTS.items():
        env, svc = services[name]["environment"], services[name]
        assert user in ROLES, user
        assert env["SLUICE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["SLUICE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["SLUICE_KAFKA_USERNAME"] == user, name
        assert env["SLUICE_KAFKA_PASSWORD_FILE"] == f"/run/secrets/{KAFKA_SECRETS[user]}", name
        assert env["SLUICE_KAFKA_CA_FILE"] == "/tls/ca.crt", name
        # Its own password only, and it starts once kafka-init made the users and ACLs.
        assert {s for s in _mounted(svc) if s.startswith("kafka_")} == {KAFKA_SECRETS[user]}, name
        assert svc["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}, name
    for name in (*AIRFLOW_SERVICES, "airflow-worker"):
        env = services[name]["environment"]
        for conn_id, user in KAFKA_CONNECTIONS.items():
            extra = json.loads(env[f"AIRFLOW_CONN_{conn_id}"])["extra"]
            assert extra["security.protocol"] == "SASL_SSL" and extra["sasl.mechanism"] == "SCRAM-SHA-512", conn_id
            assert extra["sasl.username"] == user and extra["ssl.ca.location"] == "/tls/ca.crt", conn_id
            assert "sasl.password" not in extra, conn_id
            assert env[f"SLUICE_CONN_{conn_id}__EXTRA__SASL__PASSWORD_FILE"] == f"/run/secrets/{KAFKA_SECRETS[user]}"
        assert {s for s in _mounted(services[name]) if s.startswith("kafka_")} == {
            KAFKA_SECRETS[u] for u in KAFKA_CONNECTIONS.values()}, name
    # The users named are all the users there are: nobody shares one, none is missing.
    assert set(KAFKA_CLIENTS.values()) | set(KAFKA_CONNECTIONS.values()) == set(ROLES)


def test_kafka_init_makes_the_users_as_the_admin_from_the_secrets(celery_config):
    from stack.compose import KAFKA_SECRETS

    init = celery_config["services"]["kafka-init"]
    assert init["entrypoint"] == ["python", "-m", "stack.kafka_users"]
    assert init["command"][init["command"].index("--ca-file") + 1] == "/tls/ca.crt"
    assert _mounted(init) == set(KAFKA_SECRETS.values())
    assert init["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert init["image"] == "sluice-airflow:local"  # confluent-kafka and the project's code


def test_minio_is_https_with_the_ca_and_nobody_but_minio_init_has_roots_key(celery_config):
    services = celery_config["services"]
    minio = services["minio"]
    run = _run_text(minio)
    assert "--certs-dir /tmp/certs" in run and "cp /tls/minio.crt /tmp/certs/public.crt" in run
    assert "cp /tls/minio.key /tmp/certs/private.key" in run
    assert "https://localhost:9000" in " ".join(minio["healthcheck"]["test"])
    init = services["minio-init"]
    assert init["command"][init["command"].index("--endpoint") + 1] == "https://minio:9000"
    assert init["command"][init["command"].index("--ca-file") + 1] == "/tls/ca.crt"
    for name, svc in services.items():
        if "minio_root_password" in _mounted(svc):
            assert name in {"minio", "minio-init", "secrets-check"}, f"{name} holds MinIO's root key"
        env = svc.get("environment") or {}
        if "SLUICE_S3_ENDPOINT_URL" in env:
            assert env["SLUICE_S3_ENDPOINT_URL"] == "https://minio:9000" and env["SLUICE_S3_CA_BUNDLE"] == "/tls/ca.crt"
            assert env["SLUICE_S3_ACCESS_KEY"] == "sluice-collector", name
            assert env["SLUICE_S3_SECRET_KEY_FILE"] == "/run/secrets/minio_collector_secret", name
            assert not {"minio_root_password", "minio_airflow_secret"} & _mounted(svc), f"{name} gets another MinIO key"
    for name in (*AIRFLOW_SERVICES, "airflow-worker"):
        env = services[name]["environment"]
        conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
        assert conn["login"] == "sluice-airflow" and conn["extra"]["endpoint_url"] == "https://minio:9000"
        assert conn["extra"]["verify"] == "/tls/ca.crt"  # the Spark job's AWS_CA_BUNDLE too (plugins/sluice_spark.py)
        assert env["SLUICE_CONN_AWS_DEFAULT__PASSWORD_FILE"] == "/run/secrets/minio_airflow_secret"
        assert "minio_collector_secret" not in _mounted(services[name])
    assert "http://minio" not in COMPOSE.read_text()
