"""
### Sluice: find and load late files

Every 10 minutes, for each source, lists the landing zone over the last
`hours` (param, default 6) and the load records of the same minutes
(`loaded/…/{writer}.csv@{etag}.json`), and loads every file that has no record
for its current etag: a spooled upload that arrived after its minute's run, a
file that grew after it was loaded (a collector restarted within the minute), a
file whose load failed. The last 3 minutes are left to their own minute runs.

Tasks per source group: **find_late_files** → **csv_to_json** →
**load_elasticsearch** (one `load_<sink>` per sink of `SLUICE_SINKS`) →
**record_loads**, the same steps as the minute DAGs (`include/pipeline.py`,
wired once by `sluice_airflow.transform_and_load`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TaskGroup, dag, task

from include.schemas import SOURCES
from sluice_airflow import landing_zone, task_retries, transform_and_load


@dag(
    dag_id="sluice_sweep_late_files",
    schedule="*/10 * * * *",
    start_date=datetime.fromisoformat("2020-01-01T00:00:00+00:00"),  # no catchup: only the latest run
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["sluice", "load", "late-files"],
    params={"hours": Param(6, type="number", minimum=0.1, maximum=72, description="how far back to look, hours")},
    default_args={"retries": task_retries(), "retry_delay": timedelta(seconds=30)},
)
def sluice_sweep_late_files():
    for source in SOURCES:
        with TaskGroup(group_id=source):
            sweep(source)


def sweep(source: str) -> None:
    @task
    def find_late_files(data_interval_end=None, params=None) -> list[dict]:
        from include.pipeline import file_ref, find_late_files as find

        return [file_ref(f) for f in find(landing_zone(), source, end=data_interval_end, hours=float(params["hours"]))]

    transform_and_load(source, find_late_files())


sluice_sweep_late_files()
