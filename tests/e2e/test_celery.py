"""The platform on the CeleryExecutor: Redis as broker, two ``airflow celery worker`` services.

The module brings up the platform as ``SLUICE_EXECUTOR=celery python -m stack run
--workers 2`` does (a scheduler running the LocalExecutor is restarted on
Celery; it stays so for the rest of the session), then: scheduled minutes of
both minute DAGs over the collectors' landed files, and a fast backfill over
four hours of landed host files, load exact counts (landed rows = Elasticsearch
documents = OpenTSDB points), and the task instances' ``hostname`` (REST API)
names only the workers, and both of them.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta, timezone

import pytest

from include.contract import minute_key
from include.landing import open_landing
from include.opentsdb import OpenTSDBClient
from stack import api, demo
from stack.airflow_api import MINUTE_DAGS, AirflowClient
from stack.connections import landing_url
from stack.platform import apply_executor, unpause
from stack.services import AIRFLOW, COLLECTORS
from stack.services.airflow import CELERY_WORKERS
from stack.services.elasticsearch import Elasticsearch
from stack.services.minio import MinIO
from tests.e2e.test_minute_pipeline import host_csv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

WORKERS = 2
#: Four whole hours of the backfill, two landed minutes each, one writer (a past day no collector writes).
BACKFILL_FROM = datetime(2020, 9, 5, 10, 0, tzinfo=timezone.utc)
BACKFILL_HOURS = 4
BACKFILL_MINUTES = [BACKFILL_FROM + timedelta(hours=h, minutes=m) for h in range(BACKFILL_HOURS) for m in (7, 31)]
WRITER = "celery-e2e-1"


@pytest.fixture(scope="module")
def celery_config(stack_config):
    return dataclasses.replace(stack_config, executor="celery", airflow_workers=WORKERS)


@pytest.fixture(scope="module")
def celery_platform(celery_config, local_stack, minio, kafka, elasticsearch, opentsdb, mosquitto):
    """Everything ``make run`` starts, with Redis and two Celery workers; the minute DAGs and the fast
    backfill unpaused (not the Spark and reconcile DAGs: two cores are busy enough)."""
    apply_executor(celery_config)
    for cls in (*AIRFLOW, *COLLECTORS):
        if cls.enabled(celery_config):
            local_stack.started += api.ensure(celery_config, [cls.name])
    unpause(celery_config, dags=(*MINUTE_DAGS, "sluice_backfill_fast"))
    client = AirflowClient(celery_config)
    client.login()
    return client


@pytest.fixture(scope="module")
def platform_landing(minio, stack_config):
    return open_landing(landing_url(stack_config), s3_client=MinIO(stack_config).admin_client())  # root: the test only inspects


def _worker_names(config) -> set[str]:
    return {cls(config).env()["SLUICE_AIRFLOW_WORKER_HOSTNAME"] for cls in CELERY_WORKERS if cls.enabled(config)}


def _counts(config, landing, source: str, minute: datetime) -> tuple[int, int, int]:
    es = Elasticsearch(config).admin(request_timeout=60)  # the test's own refresh and counts
    es.indices.refresh(index="sluice-*")
    with OpenTSDBClient(config.url("opentsdb")) as tsdb:
        _, rows = demo.landed_rows(landing, source, minute)
        return rows, demo.es_docs(es, source, minute), demo.tsdb_points(tsdb, source, minute)


def test_both_workers_answer_celery_ping_and_status_lists_them(celery_platform, celery_config):
    for cls in CELERY_WORKERS[:WORKERS]:
        svc = cls(celery_config)
        ok, detail = svc.health()
        assert ok and "answers celery ping" in detail, (svc.name, detail)
    assert not any(cls(celery_config).pid() for cls in CELERY_WORKERS[WORKERS:])
    assert (celery_config.runtime / "redis-credentials.json").stat().st_mode & 0o777 == 0o600
    assert (celery_config.runtime / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600


def test_scheduled_minutes_and_a_fast_backfill_load_exact_counts_on_both_workers(
        celery_platform, celery_config, platform_landing):
    client = celery_platform
    # The backfill's landed files: two minutes in each of four past hours.
    for m in BACKFILL_MINUTES:
        platform_landing.put(minute_key("host", m, WRITER), host_csv(WRITER, m))

    now = datetime.now(timezone.utc)
    minutes = [now.replace(second=0, microsecond=0) + timedelta(minutes=i) for i in (1, 2)]
    backfill = client.trigger("sluice_backfill_fast", {
        "source": "host", "from": BACKFILL_FROM.isoformat().replace("+00:00", "Z"),
        "to": (BACKFILL_FROM + timedelta(hours=BACKFILL_HOURS)).isoformat().replace("+00:00", "Z"),
    }, run_id=f"celery_e2e__{now:%Y%m%dT%H%M%S}")
    runs = demo.wait_for_runs(client, minutes, timeout=(minutes[-1] - now).total_seconds() + 600)
    deadline = time.monotonic() + 600
    while (run := client.dag_run("sluice_backfill_fast", backfill["dag_run_id"]))["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"the fast backfill is still {run['state']} after 600 s"
        time.sleep(5)
    assert run["state"] == "success", run

    hostnames: dict[str, set[str]] = {}
    for (dag, minute), r in runs.items():
        assert r["state"] == "success", (dag, minute, r)
        source = dag.removeprefix("sluice_").removesuffix("_minute")
        rows, docs, points = _counts(celery_config, platform_landing, source, minute)
        assert rows > 0, f"nothing landed for {source} {minute:%H:%M}"
        assert (docs, points) == (rows, rows), f"{source} {minute:%H:%M}: landed, ES, OpenTSDB = {rows, docs, points}"
        for ti in client.task_instances(dag, r["dag_run_id"]):
            hostnames.setdefault(dag, set()).add(ti["hostname"])
    for m in BACKFILL_MINUTES:
        assert _counts(celery_config, platform_landing, "host", m) == (60, 60, 60), m

    hours = [ti for ti in client.task_instances("sluice_backfill_fast", backfill["dag_run_id"])
             if ti["task_id"] == "load_hour"]
    assert sorted(ti["map_index"] for ti in hours) == list(range(BACKFILL_HOURS))
    assert all(ti["state"] == "success" for ti in hours), hours
    workers = _worker_names(celery_config)
    hostnames["sluice_backfill_fast.load_hour"] = {ti["hostname"] for ti in hours}
    every = set().union(*hostnames.values())
    assert every <= workers, f"task instances ran on {every}, not only on the workers {workers}"
    # Both workers took tasks. Which one takes a given task is Celery's choice: the four mapped
    # hours fit in one worker's four slots, and a CI run saw them all go to one worker.
    assert every == workers, f"by DAG: {hostnames}"
