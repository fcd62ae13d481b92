"""End to end on the real stack: landing zone -> Airflow DAG runs -> Elasticsearch.

``airflow dags test DAG T`` runs the minute *before* T (Airflow 3 infers a manual
run's data interval as the last complete one), so minute 07:11 is run as 07:12.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from include import loads
from include.contract import FileDeadLetter, minute_key, reading_id

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)


def minute(hh_mm: str) -> datetime:
    return datetime.fromisoformat(f"2020-09-03T{hh_mm}:00+00:00")


def run_date(m: datetime) -> str:
    return (m + timedelta(minutes=1)).isoformat()


def host_csv(host: str, m: datetime, seconds=range(60), header: str = HOST_HEADER) -> bytes:
    rows = [
        f"{m:%Y-%m-%dT%H:%M}:{s:02d}Z,{host},{s + 0.25},{555991280 + s},2798016401,0,0,17084211200,"
        f"{4082380800 - s},76.1,13001830400,4082380800"
        for s in seconds
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


def sensor_csv(device: str, m: datetime, seconds=range(20)) -> bytes:
    rows = []
    for s in seconds:
        for kind, value in (("dust", 12 + s), ("humidity", 40.5), ("temperature", 24.25)):
            rows.append(f"{m:%Y-%m-%dT%H:%M}:{s:02d}Z,{device},mqtt.home.pcroom,{value},type={kind}")
    return ("\n".join(["timestamp,device,metric,value,tags", *rows]) + "\n").encode()


def count(es, airflow, source: str, m: datetime | None = None) -> int:
    prefix = airflow.env["SLUICE_ES_INDEX_PREFIX"]
    es.indices.refresh(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
    query = None
    if m is not None:
        query = {"range": {"@timestamp": {"gte": m.isoformat(), "lt": (m + timedelta(minutes=1)).isoformat()}}}
    return es.count(index=f"{prefix}-{source}-*", query=query, allow_no_indices=True)["count"]


def snapshot(es, airflow, source: str, m: datetime) -> list[tuple[str, dict]]:
    prefix = airflow.env["SLUICE_ES_INDEX_PREFIX"]
    es.indices.refresh(index=f"{prefix}-*")
    hits = es.search(
        index=f"{prefix}-{source}-*",
        query={"range": {"@timestamp": {"gte": m.isoformat(), "lt": (m + timedelta(minutes=1)).isoformat()}}},
        sort=[{"@timestamp": "asc"}, {"host" if source == "host" else "device": "asc"}],
        size=1000,
    )["hits"]["hits"]
    return sorted((h["_id"], h["_source"]) for h in hits)


def records(landing, source: str, m: datetime) -> dict[str, loads.LoadRecord]:
    prefix = "loaded/" + minute_key(source, m, "x")[len("raw/"):].rsplit("/", 1)[0] + "/"
    keys = [i.key for i in landing.list(prefix)]
    return {r.key.rsplit("/", 1)[1]: r for r in loads.read_records(landing, keys)}


def test_a_minute_loads_exactly_and_three_runs_leave_the_same_documents(airflow, landing, es):
    m = minute("07:11")
    landing.put(minute_key("host", m, "web-1"), host_csv("web-1", m))
    landing.put(minute_key("host", m, "web-2"), host_csv("web-2", m).replace(b",10.25,", b",ten,"))
    landing.put(minute_key("host", m, "web-3"), host_csv("web-3", m, header=HOST_HEADER + ",gpu_temp"))
    landing.put(minute_key("sensor", m, "arduino-1"), sensor_csv("arduino-1", m))

    state, output = airflow.dags_test("sluice_host_minute", run_date(m))
    assert state == "success", output[-3000:]
    assert "3 files, 180 rows read, 119 documents, 1 rows rejected, 1 files quarantined" in output
    state, output = airflow.dags_test("sluice_sensor_minute", run_date(m))
    assert state == "success", output[-3000:]

    assert count(es, airflow, "host", m) == 119
    assert count(es, airflow, "sensor", m) == 60
    prefix = airflow.env["SLUICE_ES_INDEX_PREFIX"]
    doc = es.get(index=f"{prefix}-host-2020.09.03", id=reading_id("host", "web-1", "2020-09-03T07:11:30Z", "host"))["_source"]
    assert doc["@timestamp"] == "2020-09-03T07:11:30Z"
    assert doc["cpu_usage_percent"] == 30.25 and doc["cpu_ctx_switches"] == 555991310
    assert doc["mem_available"] == 4082380770 and doc["mem_percent"] == 76.1
    dust = es.get(
        index=f"{prefix}-sensor-2020.09.03",
        id=reading_id("sensor", "arduino-1", "2020-09-03T07:11:05Z", "mqtt.home.pcroom", "type=dust"),
    )["_source"]
    assert dust == {"@timestamp": "2020-09-03T07:11:05Z", "device": "arduino-1", "metric": "mqtt.home.pcroom",
                    "value": 17.0, "tags": {"type": "dust"}}

    recorded = records(landing, "host", m)
    assert sorted(recorded) == ["web-1.csv", "web-2.csv", "web-3.csv"]
    assert (recorded["web-1.csv"].rows_read, recorded["web-1.csv"].accepted, recorded["web-1.csv"].rejected) == (60, 60, 0)
    assert (recorded["web-2.csv"].accepted, recorded["web-2.csv"].rejected) == (59, 1)
    assert recorded["web-3.csv"].quarantined and "gpu_temp" in recorded["web-3.csv"].reason
    dead = FileDeadLetter.from_json(landing.get(recorded["web-2.csv"].deadletter))
    assert dead.rows[0]["reason"] == "column cpu_usage_percent: 'ten' is not a number"
    assert records(landing, "sensor", m)["arduino-1.csv"].accepted == 60

    before = snapshot(es, airflow, "host", m)
    for _ in range(2):
        state, output = airflow.dags_test("sluice_host_minute", run_date(m))
        assert state == "success", output[-3000:]
        assert count(es, airflow, "host", m) == 119
        assert snapshot(es, airflow, "host", m) == before


def test_backfill_create_over_minutes_runs_every_minute_and_reloads_idempotently(airflow, landing, es):
    first = minute("07:30")
    span = [first + timedelta(minutes=i) for i in range(3)]
    for m in span:
        for host in ("web-1", "web-2"):
            landing.put(minute_key("host", m, host), host_csv(host, m))
    # Load the last minute once first (its manual run's logical date, 07:33, is outside the
    # backfill's 07:30-07:32, so the backfill makes a run of its own for it).
    state, output = airflow.dags_test("sluice_host_minute", run_date(span[-1]))
    assert state == "success", output[-3000:]
    before = snapshot(es, airflow, "host", span[-1])
    assert len(before) == 120

    # Create the backfill before the scheduler starts: one writer at a time on SQLite.
    airflow.run("dags", "reserialize")
    airflow.run("dags", "unpause", "sluice_host_minute")
    airflow.run(
        "backfill", "create", "--dag-id", "sluice_host_minute",
        "--from-date", span[0].isoformat(), "--to-date", span[-1].isoformat(),
        "--reprocess-behavior", "completed",
    )
    backfill: list[dict] = []
    try:
        with airflow.services():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(5)
                backfill = [r for r in airflow.runs("sluice_host_minute") if r["run_id"].startswith("backfill__")]
                if len(backfill) == 3 and all(r["state"] in ("success", "failed") for r in backfill):
                    break
    finally:
        airflow.run("dags", "pause", "sluice_host_minute")
    assert sorted((r["logical_date"][:16], r["state"]) for r in backfill) == [
        (m.isoformat()[:16], "success") for m in span
    ], backfill
    for m in span:
        assert count(es, airflow, "host", m) == 120
        assert sorted(records(landing, "host", m)) == ["web-1.csv", "web-2.csv"]
    assert snapshot(es, airflow, "host", span[-1]) == before


def test_a_late_file_is_loaded_by_the_sweep(airflow, landing, es):
    m = minute("07:40")
    landing.put(minute_key("host", m, "web-1"), host_csv("web-1", m))
    state, output = airflow.dags_test("sluice_host_minute", run_date(m))
    assert state == "success", output[-3000:]
    assert count(es, airflow, "host", m) == 60

    # A spooled upload for 07:40 lands after that minute's run has finished.
    landing.put(minute_key("host", m, "web-late"), host_csv("web-late", m))
    window = (m - timedelta(hours=1), m + timedelta(minutes=5))
    assert [f.key for f in loads.find_unloaded(landing, "host", *window)] == [minute_key("host", m, "web-late")]

    state, output = airflow.dags_test("sluice_sweep_late_files", (m + timedelta(minutes=10)).isoformat(), conf={"hours": 1})
    assert state == "success", output[-3000:]
    assert count(es, airflow, "host", m) == 120
    assert loads.find_unloaded(landing, "host", *window) == []
    assert records(landing, "host", m)["web-late.csv"].accepted == 60


def test_elasticsearch_down_fails_the_load_cleanly_and_a_retry_loads_once(airflow, landing, es, elasticsearch):
    m = minute("07:50")
    for host in ("web-1", "web-2"):
        landing.put(minute_key("host", m, host), host_csv(host, m))
    elasticsearch.stop()
    try:
        state, output = airflow.dags_test("sluice_host_minute", run_date(m))
    finally:
        elasticsearch.restore()
    assert state == "failed"
    assert "ElasticsearchUnavailable" in output and "is not reachable" in output
    assert records(landing, "host", m) == {}  # nothing recorded as loaded

    state, output = airflow.dags_test("sluice_host_minute", run_date(m))
    assert state == "success", output[-3000:]
    assert count(es, airflow, "host", m) == 120
    assert {k: r.accepted for k, r in records(landing, "host", m).items()} == {"web-1.csv": 60, "web-2.csv": 60}
