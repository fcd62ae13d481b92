"""
### Sluice: fast backfill of a large range

Triggered by hand with `source`, `from` and `to` (UTC, `to` exclusive):

    airflow dags trigger sluice_backfill_fast \
        --conf '{"source": "host", "from": "2026-11-21T00:00:00Z", "to": "2026-11-22T00:00:00Z"}'

**list_hours** splits the range into hours; **load_hour** is mapped over them:
it lists the hour's files once, transforms them with the columnar engine and
bulk-loads the whole hour into every sink of `SLUICE_SINKS` in one task, then
writes the same load and dead-letter records as the minute DAGs. Ids are the
same as the minute DAGs', so it can overlap them (or itself) safely.
**summarize** adds the hours up. For a few minutes, `airflow backfill create`
over `sluice_{source}_minute` does the same run by run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from sluice_airflow import landing_zone, sink, task_retries


@dag(
    dag_id="sluice_backfill_fast",
    schedule=None,
    start_date=datetime.fromisoformat("2020-01-01T00:00:00+00:00"),  # manual only; any logical date
    catchup=False,
    doc_md=__doc__,
    tags=["sluice", "load", "backfill"],
    params={
        "source": Param("host", enum=["host", "sensor"], description="which landing-zone source"),
        "from": Param("2026-11-21T00:00:00Z", type="string", description="first minute, ISO-8601 UTC"),
        "to": Param("2026-11-22T00:00:00Z", type="string", description="end of the range (exclusive), ISO-8601 UTC"),
    },
    default_args={"retries": task_retries(), "retry_delay": timedelta(seconds=30)},
)
def sluice_backfill_fast():
    @task
    def list_hours(params=None) -> list[str]:
        from include.contract import check_source
        from include.pipeline import hours_between, parse_range

        check_source(params["source"])
        start, end = parse_range(params["from"], params["to"])
        return hours_between(start, end)

    @task(max_active_tis_per_dag=2)
    def load_hour(hour: str, params=None, run_id=None) -> dict:
        from include.pipeline import hour_files, load_files, parse_range
        from include.sinks import configured_sinks

        start, end = parse_range(params["from"], params["to"])
        landing = landing_zone()
        files = hour_files(landing, params["source"], datetime.fromisoformat(hour), start=start, end=end)
        sinks = [sink(name) for name in configured_sinks()]
        return {"hour": hour, **load_files(landing, sinks, params["source"], files, run_id=run_id)}

    @task
    def summarize(hours: list[dict]) -> dict:
        from include.pipeline import add_totals

        return add_totals(hours)

    summarize(load_hour.expand(hour=list_hours()))


sluice_backfill_fast()
