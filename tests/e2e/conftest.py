"""A real Airflow for end-to-end tests: its own home and SQLite, the local stack's services.

Every test session gets a fresh ``AIRFLOW_HOME`` (``airflow db migrate`` once),
its own landing-zone prefix (``s3://sluice-landing/e2e-<hex>``) and its own
Elasticsearch index prefix, so it never meets another engineer's data or
``runtime/airflow``. Airflow runs as subprocesses: ``airflow dags test`` for
single runs, and scheduler + dag-processor + api-server (each in its own process
group, stopped as a group) for ``airflow backfill create``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from include import elasticsearch as es_mod
from include.landing import S3Landing
from stack.config import LANDING_BUCKET

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
_FINISHED = re.compile(r"DagRun Finished: dag_id=(?P<dag>[^,]+),.*? state=(?P<state>[a-z_]+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """Runs the ``airflow`` CLI with one environment."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = env
        self.home = home

    def run(self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [AIRFLOW, *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    def dags_test(self, dag_id: str, logical_date: str, *, conf: dict | None = None, env: dict | None = None) -> tuple[str, str]:
        """``airflow dags test``: (final state of the run, output)."""
        args = ["dags", "test", dag_id, logical_date]
        if conf:
            args += ["--conf", json.dumps(conf)]
        proc = self.run(*args, check=False, env=env)
        output = proc.stdout + proc.stderr
        states = [m["state"] for m in _FINISHED.finditer(output) if m["dag"] == dag_id]
        return (states[-1] if states else f"no run (exit {proc.returncode})"), output

    @contextmanager
    def services(self):
        """Scheduler, dag-processor and api-server, each in its own process group; stopped as groups."""
        procs = []
        try:
            for name in ("api-server", "dag-processor", "scheduler"):
                log = open(self.home / f"{name}.log", "w")
                procs.append(
                    subprocess.Popen([AIRFLOW, name], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
                )
                if name == "api-server":
                    # Tasks report to the api-server's Execution API from their first second: a
                    # scheduler started before it answers fails them with "connection refused"
                    # (seen on a loaded 2-core machine, where the api-server takes a minute to come up).
                    self._wait_api_server(procs[-1])
            yield procs
        finally:
            for proc in procs:
                _stop_group(proc)

    def _wait_api_server(self, proc: subprocess.Popen, timeout: float = 300) -> None:
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}/api/v2/monitor/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"airflow api-server exited with {proc.returncode}; see {self.home / 'api-server.log'}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"airflow api-server did not answer {url} within {timeout:.0f} s")

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs; [] when the CLI could not read them this time (SQLite busy)."""
        proc = self.run("dags", "list-runs", dag_id, "-o", "json", check=False)
        out = proc.stdout
        # Warnings may precede the JSON; it is the last line.
        lines = [line for line in out.splitlines() if line.startswith("[")]
        return json.loads(lines[-1]) if lines else []


def _stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.5)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def airflow(tmp_path_factory, minio, elasticsearch, opentsdb, run_prefix, es_connections) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow")
    api_port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        # A busy timeout: the CLI, scheduler and dag-processor share one SQLite file.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "SLUICE_LANDING_URL": f"s3://{LANDING_BUCKET}/{run_prefix}",
        "SLUICE_ES_INDEX_PREFIX": f"sluice{run_prefix}",
        # Each DAG task's Elasticsearch connection with its role's key for this prefix.
        **es_connections(f"sluice{run_prefix}"),
        "SLUICE_TASK_RETRIES": "0",
        "SLUICE_START_DATE": "2020-01-01T00:00:00+00:00",
        # Unpaused for the backfill test: only the latest minute, not every one since 2020.
        "SLUICE_CATCHUP": "false",
    }
    af = Airflow(env, home)
    af.run("db", "migrate")
    yield af
    # Whatever a test's DAG runs indexed under this session's prefix goes, used `es` or not.
    client = elasticsearch.admin(request_timeout=60)
    try:
        es_mod.drop_prefix(client, env["SLUICE_ES_INDEX_PREFIX"])
    finally:
        client.close()


@pytest.fixture(scope="session")
def landing(minio, run_prefix) -> S3Landing:
    """The run's landing prefix through MinIO's root account, on purpose: the test seeds raw files
    (the collectors' part), reads what the DAGs wrote and removes it all afterwards, which no
    Sluice user may (nobody deletes raw/). The DAGs themselves run as Airflow's user (aws_default)."""
    zone = S3Landing(minio.admin_client(), LANDING_BUCKET, run_prefix)
    yield zone
    for info in list(zone.list("")):
        zone.delete(info.key)


@pytest.fixture(scope="session")
def es(elasticsearch, run_prefix):
    """The tests' own checks and clean-up (admin); the DAGs use their roles' keys."""
    client = elasticsearch.admin(request_timeout=60)
    yield client
    try:
        es_mod.drop_prefix(client, f"sluice{run_prefix}")
    finally:
        client.close()
