"""Airflow as services of the local stack: api-server, scheduler, dag-processor, triggerer.

Each component is its own process (not ``airflow standalone``), started like
every other service: its own process group (so ``down`` also ends the
LocalExecutor's task processes the scheduler forks), a pid file with the
process's start time, a log under ``runtime/airflow-<component>/``. They share
one ``AIRFLOW_HOME`` (``runtime/airflow``), whose ``airflow.cfg`` (mode 0600)
this module writes at every start:

* the metadata database is the stack's PostgreSQL (:mod:`stack.services.postgres`);
  the api-server's start runs ``airflow db migrate`` first (idempotent);
* the executor is the LocalExecutor, with parallelism from the machine's cores
  (:func:`stack.connections.airflow_parallelism`). A CeleryExecutor would be one
  more component (``airflow celery worker``) and another ``executor`` line here;
* the JWT secret and the log-server key the components share are generated once
  into ``runtime/airflow/secrets.json`` (0600);
* Airflow's simple auth manager has one user, ``admin``, whose generated
  password is in ``runtime/airflow/simple_auth_manager_passwords.json`` (0600),
  never a fixed one.

Healthy means ``/api/v2/monitor/health`` says so for the component: the
api-server when the metadata database is healthy, the others when their
heartbeat is recent.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from stack.config import StackConfig
from stack.connections import airflow_env
from stack.service import Service
from stack.services.postgres import Postgres

ADMIN_USER = "admin"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_home(config: StackConfig) -> Path:
    return Path(airflow_env(config)["AIRFLOW_HOME"])


def _secret_file(path: Path, make) -> dict:
    """The JSON in ``path``; created with ``make()`` (mode 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(make(), fh)
            fh.write("\n")
    return json.loads(path.read_text())


def password_file(config: StackConfig) -> Path:
    """Where the admin's generated password is (Airflow's simple auth manager reads it)."""
    return airflow_home(config) / "simple_auth_manager_passwords.json"


def admin_password(config: StackConfig) -> str:
    return _secret_file(password_file(config), lambda: {ADMIN_USER: secrets.token_urlsafe(18)})[ADMIN_USER]


def api_url(config: StackConfig) -> str:
    return config.url("airflow_api")


def write_airflow_cfg(config: StackConfig) -> Path:
    """``runtime/airflow/airflow.cfg`` for the platform (replaced at every start, mode 0600)."""
    home = airflow_home(config)
    keys = _secret_file(
        home / "secrets.json",
        lambda: {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)},
    )
    admin_password(config)  # generated before the api-server reads the file
    cores = os.cpu_count() or 1
    api = api_url(config)
    text = f"""# Written by `python -m stack` (stack/services/airflow.py); replaced at every start.
[core]
executor = LocalExecutor
execution_api_server_url = {api}/execution/
auth_manager = airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
simple_auth_manager_users = {ADMIN_USER}:admin
simple_auth_manager_passwords_file = {password_file(config)}

[database]
sql_alchemy_conn = {Postgres(config).sqlalchemy_url()}

[api]
host = {config.host}
port = {config.ports['airflow_api']}
base_url = {api}
workers = {min(2, cores)}
secret_key = {keys['secret_key']}

[api_auth]
jwt_secret = {keys['jwt_secret']}

[logging]
worker_log_server_port = {config.ports['airflow_worker_logs']}
trigger_log_server_port = {config.ports['airflow_triggerer_logs']}

[dag_processor]
# New DAG files show up within a minute, not the default five.
refresh_interval = 60
"""
    path = home / "airflow.cfg"
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)
    return path


def platform_env(config: StackConfig) -> dict[str, str]:
    """Environment of the Airflow components (and of the CLI run against the platform)."""
    env = {**os.environ, **airflow_env(config)}
    # The cfg file decides these; an inherited variable (a test's SQLite) must not override them.
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API__PORT", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__CORE__EXECUTOR"):
        env.pop(key, None)
    # Unpaused on a running platform: from the latest minute on, not every minute since SLUICE_START_DATE.
    env.setdefault("SLUICE_CATCHUP", "false")
    return env


def component_health(config: StackConfig, component: str) -> str:
    """``/api/v2/monitor/health`` for one component; raises unless it reports healthy."""
    from stack.airflow_api import monitor_health

    report = monitor_health(config)
    entry = report.get(component) or {}
    if entry.get("status") != "healthy":
        raise RuntimeError(f"{component} is {entry.get('status') or 'not reported'} in /api/v2/monitor/health")
    beat = next((v for k, v in entry.items() if k.startswith("latest_") and v), None)
    return f"{component} healthy" + (f", heartbeat {beat}" if beat else "")


class AirflowComponent(Service):
    """One ``airflow <component>`` process; subclasses set name, component and health key."""

    component = ""
    health_key = ""
    start_timeout = 180.0  # Airflow's import alone takes 10-20 s on two busy cores
    stop_timeout = 60.0  # the scheduler waits for its running tasks' processes

    def env(self) -> dict[str, str]:
        return platform_env(self.config)

    def prepare(self) -> None:
        write_airflow_cfg(self.config)

    def command(self) -> list[str]:
        return [AIRFLOW, self.component]

    def check_health(self) -> str:
        return component_health(self.config, self.health_key)


class AirflowApiServer(AirflowComponent):
    name = "airflow-api-server"
    component = "api-server"
    health_key = "metadatabase"
    port_names = ("airflow_api",)

    def prepare(self) -> None:
        super().prepare()
        print(f"{self.name}: airflow db migrate (PostgreSQL on port {self.config.ports['postgres']}) ...", flush=True)
        self.run_checked([AIRFLOW, "db", "migrate"], "airflow db migrate", env=self.env(), timeout=900)


class AirflowScheduler(AirflowComponent):
    name = "airflow-scheduler"
    component = "scheduler"
    health_key = "scheduler"
    port_names = ("airflow_worker_logs",)


class AirflowDagProcessor(AirflowComponent):
    name = "airflow-dag-processor"
    component = "dag-processor"
    health_key = "dag_processor"


class AirflowTriggerer(AirflowComponent):
    name = "airflow-triggerer"
    component = "triggerer"
    health_key = "triggerer"
    port_names = ("airflow_triggerer_logs",)


#: Start order; a Celery worker component would follow the scheduler here.
COMPONENTS = (AirflowApiServer, AirflowScheduler, AirflowDagProcessor, AirflowTriggerer)
