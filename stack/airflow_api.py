"""The platform's Airflow through its REST API (``/api/v2``), as a user's script would use it.

One small client for the CLI (``run``, ``status``, ``demo``), the soak benchmark
and the tests: it logs in as ``admin`` with the generated password
(``POST /auth/token``), then reads DAG runs and unpauses DAGs. Errors name the
request and Airflow's answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests

from stack.config import StackConfig

#: The DAGs ``python -m stack run`` unpauses: what runs by itself on a schedule.
#: (``sluice_backfill_fast`` and ``provision_dashboards`` are run by hand.)
SCHEDULED_DAGS = (
    "sluice_host_minute", "sluice_sensor_minute", "sluice_sweep_late_files", "sluice_kafka_lag",
    "sluice_reconcile", "sluice_anomaly",
)
MINUTE_DAGS = ("sluice_host_minute", "sluice_sensor_minute")


class AirflowApiError(RuntimeError):
    """A REST call failed: the message has the method, path, status and Airflow's detail."""


def monitor_health(config: StackConfig, timeout: float = 5) -> dict[str, Any]:
    """``GET /api/v2/monitor/health`` (no login needed): component -> {"status": ...}."""
    resp = requests.get(f"{config.url('airflow_api')}/api/v2/monitor/health", timeout=timeout)
    resp.raise_for_status()
    return resp.json()


class AirflowClient:
    """A logged-in session against the platform's api-server."""

    def __init__(self, config: StackConfig, *, username: str = "admin", password: str | None = None) -> None:
        from stack.services.airflow import admin_password

        self.base = config.url("airflow_api")
        self.username = username
        self.password = password if password is not None else admin_password(config)
        self.session = requests.Session()
        self._token: str | None = None

    def login(self) -> str:
        resp = self.session.post(
            f"{self.base}/auth/token", json={"username": self.username, "password": self.password}, timeout=30
        )
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"POST /auth/token as {self.username}: HTTP {resp.status_code} {resp.text[:300]}")
        self._token = resp.json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {self._token}"
        return self._token

    def request(self, method: str, path: str, **kwargs) -> Any:
        if self._token is None:
            self.login()
        resp = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        if resp.status_code == 401:  # the token expired: log in again once
            self.login()
            resp = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        if resp.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}")

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    def dag_runs(self, dag_id: str = "~", *, since: datetime | None = None, state: str | None = None,
                 run_type: str | None = None, limit: int = 100) -> list[dict]:
        """DAG runs (``~``: of every DAG), newest logical date first."""
        params: dict[str, Any] = {"limit": limit, "order_by": "-logical_date"}
        if since is not None:
            params["logical_date_gte"] = since.isoformat()
        if state:
            params["state"] = state
        if run_type:
            params["run_type"] = run_type
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """The value a task instance pushed as XCom ``key`` (AirflowApiError with HTTP 404 when there is none)."""
        from urllib.parse import quote

        return self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
                                   f"/xcomEntries/{quote(key, safe='')}")["value"]

    def trigger(self, dag_id: str, conf: dict[str, Any], *, run_id: str,
                logical_date: datetime | None = None) -> dict:
        """``POST /dags/{dag_id}/dagRuns``: a manual run ``run_id`` with ``conf`` (the DAG must be unpaused to run).

        A busy api-server may create the run and answer after the client's timeout:
        the run id is ours, so a timed-out request is answered by reading the run back.
        """
        body = {"dag_run_id": run_id, "conf": conf, "logical_date": logical_date.isoformat() if logical_date else None}
        try:
            return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)
        except requests.Timeout:
            return self.dag_run(dag_id, run_id)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
