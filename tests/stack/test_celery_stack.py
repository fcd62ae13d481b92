"""SLUICE_EXECUTOR=celery in the stack: configuration, a private Redis, and ``down`` whatever the variables.

The Redis here is a private one (its own runtime folder and free ports), so the
shared stack other tests use is never touched.
"""

from __future__ import annotations

import configparser
import socket
from dataclasses import replace

import pytest
import redis

from stack import api
from stack.config import DEFAULT_PORTS, StackConfig
from stack.services.airflow import CELERY_WORKERS, write_airflow_cfg
from stack.services.redis import Redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def celery_config(tmp_path, stack_config) -> StackConfig:
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    return replace(stack_config, runtime=tmp_path / "runtime", ports=ports, executor="celery", airflow_workers=3)


def test_executor_and_worker_count_come_from_the_environment_or_say_what_is_wrong():
    config = StackConfig.from_env({"SLUICE_EXECUTOR": "celery", "SLUICE_AIRFLOW_WORKERS": "3"})
    assert (config.executor, config.airflow_workers) == ("celery", 3)
    assert StackConfig.from_env({}).executor == "local"
    with pytest.raises(ValueError, match="SLUICE_EXECUTOR='kubernetes': use local .* or celery"):
        StackConfig.from_env({"SLUICE_EXECUTOR": "kubernetes"})
    with pytest.raises(ValueError, match="SLUICE_AIRFLOW_WORKERS='two' is not a number of workers"):
        StackConfig.from_env({"SLUICE_AIRFLOW_WORKERS": "two"})
    with pytest.raises(ValueError, match=r"SLUICE_AIRFLOW_WORKERS=0: the local stack runs 1\.\.8 Celery workers"):
        StackConfig.from_env({"SLUICE_AIRFLOW_WORKERS": "0"})


def test_the_configuration_decides_which_workers_and_whether_redis_run(celery_config):
    names = [s.name for s in api.services(celery_config)]
    assert names.index("redis") < names.index("airflow-scheduler") < names.index("airflow-worker-1")
    assert [n for n in names if n.startswith("airflow-worker-")] == ["airflow-worker-1", "airflow-worker-2",
                                                                      "airflow-worker-3"]
    local = [s.name for s in api.services(replace(celery_config, executor="local"))]
    assert "redis" not in local and not any(n.startswith("airflow-worker-") for n in local)
    worker = CELERY_WORKERS[1](celery_config)
    assert worker.command()[-3:] == ["worker", "-H", "worker-2@%h"]
    env = worker.env()
    assert env["SLUICE_AIRFLOW_WORKER_HOSTNAME"].startswith("worker-2.")
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == str(celery_config.ports["airflow_worker_2_logs"])


def test_airflow_cfg_names_the_celery_executor_redis_broker_and_postgres_backend(celery_config):
    path = write_airflow_cfg(celery_config)
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert cfg["core"]["hostname_callable"] == "stack.services.airflow.worker_hostname"
    assert cfg["celery"]["broker_url"] == Redis(celery_config).broker_url()
    assert cfg["celery"]["result_backend"].startswith("db+postgresql+psycopg2://airflow:")
    assert cfg["celery"]["worker_prefetch_multiplier"] == "1"
    local = configparser.ConfigParser(interpolation=None)
    local.read(write_airflow_cfg(replace(celery_config, executor="local")))
    assert local["core"]["executor"] == "LocalExecutor" and "celery" not in local


def test_private_redis_requires_its_generated_password_and_down_stops_it_without_the_variable(celery_config):
    svc = Redis(celery_config)
    api.ensure(celery_config, ["redis"])
    try:
        password = svc.password()
        assert svc.credentials_file.stat().st_mode & 0o777 == 0o600
        assert svc.conf_file.stat().st_mode & 0o777 == 0o600
        cmdline = open(f"/proc/{svc.pid()}/cmdline", "rb").read().decode().replace("\0", " ")
        assert password not in cmdline, "the password is on Redis's command line"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=celery_config.host, port=svc.port).ping()
        with svc.client() as r:
            assert r.ping()
    finally:
        # The default (LocalExecutor) configuration does not run Redis, and `down` still stops it.
        stopped = api.down(replace(celery_config, executor="local"))
    assert stopped == ["redis"] and svc.pid() is None
