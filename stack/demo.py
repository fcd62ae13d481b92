"""A check over the running platform: what the scheduler loaded, minute by minute.

``python -m stack demo --minutes N`` (``make demo``), after ``make run``:

1. checks that the platform runs (``python -m stack status`` in short);
2. waits for the next N whole minutes to pass and for the scheduler's runs of
   ``sluice_host_minute`` and ``sluice_sensor_minute`` over them to finish,
   reading their states through Airflow's REST API (no ``airflow dags test``);
3. prints per minute and source the run's state and how long after the
   minute's end it succeeded, the readings landed in the landing zone, the
   documents the DAG recorded as loaded, the documents in Elasticsearch and
   the datapoints in OpenTSDB.

Both paths load the same readings: the stream loader continuously, the DAGs
per minute, with the same document ids, so every reading is stored once and
the counts match. The counting functions here are also what the end-to-end
tests and the soak benchmark count with.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from stack import api
from stack.airflow_api import MINUTE_DAGS, AirflowClient
from stack.config import LANDING_BUCKET, StackConfig, StackError
from stack.service import State
from stack.services.elasticsearch import Elasticsearch
from stack.services.minio import MinIO

#: Run states after which a run no longer changes.
FINISHED = ("success", "failed")


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


# -- counting (the e2e tests and tests/benchmarks/soak.py use these too) -------------------------
def landed_rows(landing, source: str, minute: datetime) -> tuple[int, int]:
    """(files, data rows) landed for the minute."""
    from include.pipeline import minute_files

    files = minute_files(landing, source, minute)
    rows = sum(max(landing.get(f.key).count(b"\n") - 1, 0) for f in files)
    return len(files), rows


def batch_loaded(landing, source: str, minute: datetime) -> int:
    """Documents the minute DAG recorded as loaded for the current version of each file."""
    from include import contract, loads
    from include.pipeline import minute_files

    total = 0
    for f in minute_files(landing, source, minute):
        try:
            total += loads.LoadRecord.from_json(landing.get(contract.loaded_key(f.key, f.etag))).accepted
        except KeyError:  # no load record: the DAG did not load this version
            pass
    return total


def es_docs(es, source: str, minute: datetime) -> int:
    from include import contract

    end = minute + timedelta(minutes=1)
    query = {"range": {"@timestamp": {"gte": minute.isoformat(), "lt": end.isoformat()}}}
    return es.count(index=contract.index_pattern(source, prefix=contract.index_prefix()), query=query,
                    ignore_unavailable=True)["count"]


def tsdb_points(tsdb, source: str, minute: datetime) -> int:
    """Datapoints of one metric a reading has (CPU usage for hosts, the sensor metric for sensors)."""
    from include.schemas import SENSOR_METRIC

    start = int(minute.timestamp())
    metric = "host.cpu_usage_percent" if source == "host" else SENSOR_METRIC
    series = tsdb.query(metric, start=start, end=start + 59)
    return sum(len(s["dps"]) for s in series)


def minute_runs(client: AirflowClient, dag_id: str, minutes: list[datetime]) -> dict[datetime, dict]:
    """The scheduled runs of ``dag_id`` whose data interval starts at one of ``minutes``."""
    since = min(minutes) - timedelta(minutes=2)
    wanted = set(minutes)
    runs = {}
    for r in client.dag_runs(dag_id, since=since, run_type="scheduled", limit=200):
        start = parse_time(r.get("data_interval_start"))
        if start in wanted:
            runs[start] = r
    return runs


def skipped_minutes(client: AirflowClient, minutes: list[datetime], runs: dict) -> list[str]:
    """``"dag HH:MM"`` of each of ``minutes`` without a run while a later scheduled run of that DAG exists."""
    out = []
    for dag in MINUTE_DAGS:
        missing = [m for m in minutes if (dag, m) not in runs]
        if not missing:
            continue
        newest = client.dag_runs(dag, run_type="scheduled", limit=1)
        latest = parse_time(newest[0]["data_interval_start"]) if newest else None
        out += [f"{dag} {m:%H:%M}" for m in missing if latest is not None and latest > m]
    return out


def wait_for_runs(client: AirflowClient, minutes: list[datetime], *, timeout: float, out=print) -> dict:
    """(dag_id, minute) -> run, once every minute DAG's run over ``minutes`` has finished."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        runs = {(dag, m): r for dag in MINUTE_DAGS for m, r in minute_runs(client, dag, minutes).items()}
        done = sum(1 for r in runs.values() if r["state"] in FINISHED)
        total = len(MINUTE_DAGS) * len(minutes)
        line = f"  {done}/{total} scheduled runs finished"
        if line != shown:
            out(line)
            shown = line
        if done == total:
            return runs
        skipped = skipped_minutes(client, minutes, runs)
        if skipped:
            # The running platform does not catch up (SLUICE_CATCHUP=false): a scheduler with
            # max_active_runs runs in flight when a minute ends never runs that minute; waiting is pointless.
            raise TimeoutError(f"the scheduler skipped {', '.join(skipped)} (runs in flight at the minute's end: "
                               f"the machine is too slow for a run a minute; the late-file sweep loads them)")
        if time.monotonic() > deadline:
            missing = [f"{d} {m:%H:%M}" for d in MINUTE_DAGS for m in minutes
                       if runs.get((d, m), {}).get("state") not in FINISHED]
            raise TimeoutError(f"after {timeout:.0f} s these scheduled runs have not finished: {', '.join(missing)}")
        time.sleep(5)


def run(config: StackConfig, *, minutes: int = 3) -> int:
    from include import contract
    from include.landing import open_landing
    from include.opentsdb import OpenTSDBClient
    from include.schemas import SENSOR
    from stack.connections import landing_url

    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one INFO line per request otherwise
    down = [st.service for st in api.status(config) if st.state is not State.RUNNING]
    if down:
        raise StackError("demo", f"the platform is not fully up ({', '.join(down)}); run `make run` first")
    client = AirflowClient(config)
    now = datetime.now(timezone.utc)
    first = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    minute_list = [first + timedelta(minutes=i) for i in range(minutes)]
    last_end = minute_list[-1] + timedelta(minutes=1)
    print(f"1/2 waiting for the scheduler's runs of {', '.join(MINUTE_DAGS)} over {minutes} minutes "
          f"({first:%H:%M}-{last_end:%H:%M} UTC; the last can finish from {last_end:%H:%M:%S}) ...", flush=True)
    runs = wait_for_runs(client, minute_list, timeout=(last_end - now).total_seconds() + 300,
                         out=lambda s: print(s, flush=True))

    landing = open_landing(landing_url(config), s3_client=MinIO(config).client("airflow"))  # reads only
    # The read-only dashboards key: no refresh (that is a write-side right); the runs finished
    # seconds ago and Elasticsearch refreshes every second, or on the first search of an idle shard.
    es_service = Elasticsearch(config)
    es = es_service.client("dashboards")
    prefix = contract.index_prefix()
    print("2/2 per minute and source, from the scheduler's runs (state and seconds after the minute's end)\n")
    print(f"{'minute (UTC)':<17} {'source':<7} {'run':<8} {'after':>6} {'files':>5} {'landed rows':>11} "
          f"{'DAG loaded':>10} {'ES docs':>8} {'OpenTSDB':>9}  match")
    all_ok = True
    with OpenTSDBClient(config.url("opentsdb")) as tsdb:
        for minute in minute_list:
            for dag in MINUTE_DAGS:
                source = dag.removeprefix("sluice_").removesuffix("_minute")
                r = runs[(dag, minute)]
                end = parse_time(r.get("end_date"))
                after = f"{(end - minute - timedelta(minutes=1)).total_seconds():.0f}s" if end else "-"
                files, rows = landed_rows(landing, source, minute)
                loaded = batch_loaded(landing, source, minute)
                docs = es_docs(es, source, minute)
                points = tsdb_points(tsdb, source, minute)
                ok = r["state"] == "success" and rows > 0 and rows == loaded == docs == points
                all_ok &= ok
                print(f"{minute:%Y-%m-%d %H:%M} {source:<7} {r['state']:<8} {after:>6} {files:>5} {rows:>11} "
                      f"{loaded:>10} {docs:>8} {points:>9}  {'yes' if ok else 'NO'}")
    es_url = es_service.url
    print(f"""
Where to look:
  Airflow UI     {config.url('airflow_api')} (admin; password in runtime/airflow/simple_auth_manager_passwords.json)
  Elasticsearch  curl -s --cacert {es_service.ca_certs} -H "Authorization: ApiKey $KEY" '{es_url}/{contract.index_pattern(SENSOR, prefix=prefix)}/_search?size=3&sort=@timestamp:desc' | python3 -m json.tool
                 (KEY: the "dashboards" key's "encoded" in {es_service.keys_file(prefix)}, read-only)
  OpenTSDB       {config.url('opentsdb')}/api/query?start=1h-ago&m=none:mqtt.home.pcroom{{type=temperature}}
  Landing zone   MinIO {MinIO(config).endpoint_url} bucket {LANDING_BUCKET} (raw/, loaded/, deadletter/)
  Health         python -m stack status
""")
    print("every minute matches: landed = loaded by the scheduled DAG run = in Elasticsearch = in OpenTSDB"
          if all_ok else "some minutes differ or their runs failed: see the table, `python -m stack status` "
                          "and the run's task logs in the Airflow UI")
    return 0 if all_ok else 1
