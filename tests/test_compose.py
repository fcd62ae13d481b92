"""docker-compose.yaml, validated by a real compose parser without an engine.

Debian's ``docker-compose`` (1.29; `make bootstrap` installs it) answers
``docker-compose config`` by parsing, interpolating and checking the file
against the compose schema, with no container engine. These tests then check
what the schema cannot: every Connection the DAGs use points at a service of
the file, every long-running service has a health check, and no credential is
in the file itself.
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
    assert one_shots == {"airflow-init", "minio-init", "elasticsearch-certs", "elasticsearch-setup"}
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
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)(password|secret|key)\W*[:=]\W*(admin|changeme|minioadmin|elastic)\b", text)
    # Every secret comes from .env; the example holds placeholders only.
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if re.search(r"PASSWORD|SECRET|KEY", key):
            assert value.startswith("change-me"), line


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
        assert airflow_env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:change-me-redis@redis:6379/0", name
        assert airflow_env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://airflow:"), name
        assert urlsplit(airflow_env["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == "postgres", name
    worker = services["airflow-worker"]
    assert worker["command"] == ["celery", "worker"] or worker["command"] == "celery worker"
    # `--scale airflow-worker=N` needs a service without a fixed container name or host port.
    assert "container_name" not in worker and not worker.get("ports")
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # The password reaches Redis through its config file, never its command line.
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--requirepass" not in redis_cmd and "change-me-redis" not in redis_cmd
    assert "/tmp/redis.conf" in redis_cmd


def test_default_compose_is_the_local_executor_without_redis_or_workers(config):
    assert config["services"]["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert [config["services"][n].get("profiles") for n in ("redis", "airflow-worker")] == [["celery"], ["celery"]]
