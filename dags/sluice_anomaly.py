"""
### Sluice: anomalies and daily aggregates on Spark, every 15 minutes

`sluice_anomaly` runs every 15 minutes with catchup; the data interval is the
window. Trigger it with params `start` and `end` (ISO-8601 UTC) to run a range
instead, e.g. a whole day (`{"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"}`).

1. **plan_window** — the window: the data interval, or the params.
2. **check_spark** — Java, memory and jars for Spark, checked: a bad one fails here
   with one line naming it and the fix, not a page of JVM output.
3. **run_anomaly_job** — the provider's `SparkSubmitOperator` submits
   `include/anomaly/job.py` to the `spark_default` Connection's master
   (`local[*]` in the local stack, Spark standalone in docker-compose). It reads the
   window's minute files straight from the landing zone (`s3a://` or `file://`),
   skips quarantined files with their reason, flags anomalies per device and series
   (median/MAD per 15-minute bucket, see `include/anomaly/detect.py`) and writes one
   result per source under `anomaly/` in the landing zone. A window that completes a
   UTC day also aggregates that day.
4. **publish_results** — documents in `sluice-anomaly-*` and `sluice-daily-*`
   (deterministic ids: a rerun leaves the same set) and OpenTSDB annotations
   (`/api/annotation`), which the Grafana sensor and host dashboards show.

Connections: `spark_default`, `aws_default` (landing zone), `elasticsearch_anomaly`,
`opentsdb_default`. See docs/anomaly.md.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from sluice_airflow import catchup, start_date, task_retries
from sluice_spark import AnomalySparkSubmitOperator

JOB = str(Path(__file__).resolve().parent.parent / "include" / "anomaly" / "job.py")
WINDOW = "{{ ti.xcom_pull(task_ids='plan_window')['%s'] }}"


@dag(
    dag_id="sluice_anomaly",
    schedule=CronDataIntervalTimetable("*/15 * * * *", timezone="UTC"),
    start_date=start_date(),
    catchup=catchup(),
    max_active_runs=1,  # one Spark driver at a time on a 2-core machine
    dagrun_timeout=timedelta(hours=2),
    doc_md=__doc__,
    tags=["sluice", "spark", "anomaly"],
    params={
        "start": Param("", type="string", description="Range start, ISO-8601 UTC (empty: the data interval)"),
        "end": Param("", type="string", description="Range end, ISO-8601 UTC, exclusive (empty: the data interval)"),
    },
    default_args={"retries": task_retries(), "retry_delay": timedelta(minutes=1)},
)
def sluice_anomaly():
    @task
    def plan_window(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from include.anomaly.job import resolve_window

        return resolve_window(params or {}, data_interval_start, data_interval_end)

    @task
    def check_spark() -> dict:
        from include.anomaly.spark_env import submit_settings

        settings = submit_settings(os.environ)
        return {"java_home": settings.java_home, "driver_memory": settings.driver_memory}

    run_job = AnomalySparkSubmitOperator(
        task_id="run_anomaly_job",
        application=JOB,
        conn_id="spark_default",
        name="sluice_anomaly",
        application_args=["--start", WINDOW % "start", "--end", WINDOW % "end"],
    )

    @task
    def publish_results(window: dict) -> list[dict]:
        from include.anomaly.results import publish_window
        from include.contract import index_prefix
        from opentsdb_hook import OpenTSDBHook
        from sluice_airflow import ELASTICSEARCH_ANOMALY_CONN_ID, OPENTSDB_CONN_ID, elasticsearch_client, landing_zone

        return publish_window(landing_zone(), elasticsearch_client(ELASTICSEARCH_ANOMALY_CONN_ID), OpenTSDBHook(opentsdb_conn_id=OPENTSDB_CONN_ID).get_conn(),
                              window, prefix=index_prefix())

    window = plan_window()
    window >> check_spark() >> run_job >> publish_results(window)


sluice_anomaly()
