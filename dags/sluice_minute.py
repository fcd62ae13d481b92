"""
### Sluice: load each minute's landed files (one DAG per source)

`sluice_host_minute` and `sluice_sensor_minute` run every minute with catchup;
the data interval is the minute. For that minute they

1. **wait_for_minute_files** — a reschedule-mode sensor (no worker slot held
   between pokes): done as soon as every live collector (heartbeat under
   `heartbeats/`) has written its manifest of the minute under `manifests/`,
   else after the grace period (`SLUICE_GRACE_SECONDS`, default
   45 s after the minute ends) with what is there. Why it went on (`manifests`
   or `grace`, the live and stopped writers, seconds after the minute) is kept
   as its XCom `readiness`. Stragglers are loaded by `sluice_sweep_late_files`.
2. **csv_to_json** — typed JSON documents, one per CSV row, staged as NDJSON
   under `staged/` in the landing zone; a bad file is quarantined with its
   reason, a bad row rejected with its reason, the rest goes on.
3. **load_elasticsearch** (one `load_<sink>` task per sink of `SLUICE_SINKS`) —
   daily indices `{prefix}-{source}-YYYY.MM.DD` (`SLUICE_ES_INDEX_PREFIX`, default `sluice`) behind an index template,
   deterministic ids, so a rerun overwrites.
4. **record_loads** — a load record per file under `loaded/` and a dead-letter
   record under `deadletter/file/` for what was refused (see `include/loads.py`).
5. **record_freshness** (with the OpenTSDB sink) — `sluice.pipeline.last_loaded_minute`
   tagged `source=`, which the freshness dashboard shows as "last minute loaded".

Logic lives in `include/pipeline.py`; steps 2-4 are wired by
`sluice_airflow.transform_and_load`, shared with the sweep. Connections:
`aws_default` (landing zone), `elasticsearch_default`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from include.pipeline import DEFAULT_GRACE_SECONDS
from include.schemas import SOURCES
from include.sinks import OPENTSDB, configured_sinks
from sluice_airflow import catchup, landing_zone, start_date, task_retries, transform_and_load

GRACE_SECONDS = float(os.environ.get("SLUICE_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def minute_dag(source: str):
    @dag(
        dag_id=f"sluice_{source}_minute",
        # An interval timetable: the run of 07:11 covers [07:11, 07:12) and starts after 07:12.
        schedule=CronDataIntervalTimetable("* * * * *", timezone="UTC"),
        start_date=start_date(),
        catchup=catchup(),
        max_active_runs=4,
        dagrun_timeout=timedelta(minutes=30),
        doc_md=__doc__,
        tags=["sluice", source, "load"],
        default_args={
            "retries": task_retries(),
            "retry_delay": timedelta(seconds=20),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=5),
        },
    )
    def pipeline():
        @task.sensor(task_id="wait_for_minute_files", mode="reschedule", poke_interval=10, timeout=15 * 60)
        def wait_for_minute_files(data_interval_start=None, ti=None) -> PokeReturnValue:
            from include.pipeline import file_ref, minute_files_ready

            ready = minute_files_ready(
                landing_zone(), source, data_interval_start, now=datetime.now(timezone.utc), grace_seconds=GRACE_SECONDS
            )
            if ready.done:
                # Why the run went on (manifests or grace, which writers): for the Sluice page and the tests.
                ti.xcom_push(key="readiness", value=ready.evidence(data_interval_start))
            return PokeReturnValue(is_done=ready.done, xcom_value=[file_ref(f) for f in ready.files])

        @task
        def record_freshness(data_interval_start=None) -> None:
            from opentsdb_hook import OpenTSDBHook

            from include.pipeline import record_freshness as record

            record(OpenTSDBHook().get_conn(), source, data_interval_start)

        recorded = transform_and_load(source, wait_for_minute_files())
        if OPENTSDB in configured_sinks():
            recorded >> record_freshness()

    return pipeline()


for _source in SOURCES:
    minute_dag(_source)
