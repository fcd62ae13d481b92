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
  (:func:`stack.connections.airflow_parallelism`); with ``SLUICE_EXECUTOR=celery``
  it is the celery provider's CeleryExecutor: Redis (:mod:`stack.services.redis`)
  is the broker, the stack's PostgreSQL the result backend, and N
  ``airflow celery worker`` components (``SLUICE_AIRFLOW_WORKERS``, ``run
  --workers N``) run the tasks, each its own process group, Celery node name
  ``worker-<i>@<host>``, log and log-server port;
* the JWT secret and the log-server key the components share are generated once
  into ``runtime/airflow/secrets.json`` (0600);
* Airflow's simple auth manager has one user, ``admin``, whose generated
  password is in ``runtime/airflow/simple_auth_manager_passwords.json`` (0600),
  never a fixed one.

Healthy means ``/api/v2/monitor/health`` says so for the component: the
api-server when the metadata database is healthy, the others when their
heartbeat is recent; a Celery worker when it answers Celery's ``ping``
(``celery inspect ping``) by its node name through the broker.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

from stack.config import MAX_AIRFLOW_WORKERS, StackConfig
from stack.connections import airflow_env, airflow_parallelism
from stack.secrets import secret_json
from stack.service import Service
from stack.services.postgres import Postgres
from stack.services.redis import Redis

#: ``[core] executor`` per ``SLUICE_EXECUTOR``.
EXECUTOR_CLASSES = {
    "local": "LocalExecutor",
    "celery": "CeleryExecutor",  # Airflow resolves it to the celery provider's class
}
#: The environment variable a Celery worker's task processes read their host name from.
WORKER_HOSTNAME_VAR = "SLUICE_AIRFLOW_WORKER_HOSTNAME"

ADMIN_USER = "admin"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_home(config: StackConfig) -> Path:
    return Path(airflow_env(config)["AIRFLOW_HOME"])



def password_file(config: StackConfig) -> Path:
    """Where the admin's generated password is (Airflow's simple auth manager reads it)."""
    return airflow_home(config) / "simple_auth_manager_passwords.json"


def admin_password(config: StackConfig) -> str:
    return secret_json(password_file(config), lambda: {ADMIN_USER: secrets.token_urlsafe(18)})[ADMIN_USER]


def api_url(config: StackConfig) -> str:
    return config.url("airflow_api")


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the platform: a Celery worker's own name, else the FQDN.

    Every worker of the local stack runs on this one machine, so the machine's
    name alone would not say which worker ran a task; each worker sets
    :data:`WORKER_HOSTNAME_VAR` for its task processes, and the task instance's
    ``hostname`` (UI, REST API) names the worker.
    """
    return os.environ.get(WORKER_HOSTNAME_VAR) or socket.getfqdn()


def celery_section(config: StackConfig) -> str:
    """``[celery]`` of airflow.cfg: Redis broker, PostgreSQL result backend, concurrency per worker."""
    pg = Postgres(config).credentials()
    backend = (f"db+postgresql+psycopg2://{pg['user']}:{pg['password']}@{config.host}:{config.ports['postgres']}"
               f"/{pg['database']}")
    # The machine's task slots shared by the workers, at least two each (one task can wait on a sink).
    concurrency = max(2, airflow_parallelism() // config.airflow_workers)
    return f"""
[celery]
broker_url = {Redis(config).broker_url()}
result_backend = {backend}
worker_concurrency = {concurrency}
# One task message at a time per free slot: queued tasks go to whichever worker is free,
# not to the first one that prefetched them.
worker_prefetch_multiplier = 1
"""


def write_airflow_cfg(config: StackConfig) -> Path:
    """``runtime/airflow/airflow.cfg`` for the platform (replaced at every start, mode 0600)."""
    home = airflow_home(config)
    keys = secret_json(
        home / "secrets.json",
        lambda: {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)},
    )
    admin_password(config)  # generated before the api-server reads the file
    cores = os.cpu_count() or 1
    api = api_url(config)
    text = f"""# Written by `python -m stack` (stack/services/airflow.py); replaced at every start.
[core]
executor = {EXECUTOR_CLASSES[config.executor]}
hostname_callable = stack.services.airflow.worker_hostname
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
    if config.executor == "celery":
        text += celery_section(config)
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

    @property
    def executor_file(self) -> Path:
        return self.dir / "executor"

    def prepare(self) -> None:
        super().prepare()
        self.executor_file.write_text(self.config.executor + "\n")

    def running_executor(self) -> str | None:
        """``SLUICE_EXECUTOR`` of the running scheduler (None when it is not running)."""
        if self.pid() is None:
            return None
        try:
            return self.executor_file.read_text().strip()
        except OSError:
            return None


class AirflowDagProcessor(AirflowComponent):
    name = "airflow-dag-processor"
    component = "dag-processor"
    health_key = "dag_processor"


class AirflowTriggerer(AirflowComponent):
    name = "airflow-triggerer"
    component = "triggerer"
    health_key = "triggerer"
    port_names = ("airflow_triggerer_logs",)


class AirflowCeleryWorker(AirflowComponent):
    """``airflow celery worker`` number :attr:`index` (``SLUICE_EXECUTOR=celery``)."""

    index = 0
    stop_timeout = 90.0  # a warm shutdown lets the running tasks finish first

    @classmethod
    def enabled(cls, config: StackConfig) -> bool:
        return config.executor == "celery" and cls.index <= config.airflow_workers

    @property
    def node_name(self) -> str:
        """Celery's node name: what ``-H worker-<i>@%h`` expands to."""
        return f"worker-{self.index}@{socket.gethostname()}"

    def env(self) -> dict[str, str]:
        env = super().env()
        env[WORKER_HOSTNAME_VAR] = f"worker-{self.index}.{socket.gethostname()}"
        # Each worker serves its task logs on its own port (the cfg's is the scheduler's).
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(self.port)
        return env

    def command(self) -> list[str]:
        return [AIRFLOW, "celery", "worker", "-H", f"worker-{self.index}@%h"]

    def check_health(self) -> str:
        from celery import Celery

        app = Celery(broker=Redis(self.config).broker_url())
        try:
            replies = app.control.ping(destination=[self.node_name], timeout=3)
        finally:
            app.close()
        if not any(self.node_name in reply for reply in replies):
            raise RuntimeError(f"{self.node_name} did not answer celery ping through the broker")
        return f"{self.node_name} answers celery ping"


def _worker(i: int) -> type[AirflowCeleryWorker]:
    return type(f"AirflowCeleryWorker{i}", (AirflowCeleryWorker,), {
        "name": f"airflow-worker-{i}", "index": i, "port_names": (f"airflow_worker_{i}_logs",),
        "__doc__": f"Celery worker {i} of the platform.",
    })


#: The Celery workers the stack can run; ``enabled`` keeps the configured count.
CELERY_WORKERS = tuple(_worker(i) for i in range(1, MAX_AIRFLOW_WORKERS + 1))

#: Start order: the workers after the scheduler, so queued tasks find them soon.
COMPONENTS = (AirflowApiServer, AirflowScheduler, *CELERY_WORKERS, AirflowDagProcessor, AirflowTriggerer)
