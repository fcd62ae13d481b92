"""The minute DAG's OpenTSDB sink end to end: exact series, reruns, an outage and its retry."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from include import contract, loads
from include.contract import minute_key
from include.opentsdb import OpenTSDBClient
from include.schemas import FRESHNESS_METRIC

SINKS = {"SLUICE_SINKS": "elasticsearch,opentsdb"}


def sensor_csv(device: str, m: datetime, metric: str) -> bytes:
    rows = [
        f"{m:%Y-%m-%dT%H:%M}:{s:02d}Z,{device},{metric},{value},loc=pcroom type={kind}"
        for s in range(0, 60, 10)
        for kind, value in (("temperature", 20 + s / 10), ("humidity", 40.5), ("dust", 10 + s))
    ]
    return ("\n".join(["timestamp,device,metric,value,tags", *rows]) + "\n").encode()


def series(tsdb: OpenTSDBClient, metric: str, m: datetime) -> dict[tuple, dict]:
    start = int(m.timestamp())
    return {
        (s["tags"]["device"], s["tags"]["type"]): s["dps"]
        for s in tsdb.query(metric, start=start, end=start + 59)
    }


def record(landing, m: datetime, device: str) -> loads.LoadRecord | None:
    info = landing.head(minute_key("sensor", m, device))
    try:
        return loads.LoadRecord.from_json(landing.get(contract.loaded_key(info.key, info.etag)))
    except KeyError:
        return None


@pytest.fixture
def tsdb(opentsdb):
    with OpenTSDBClient(opentsdb.config.url("opentsdb"), max_attempts=2, backoff=0.2) as client:
        yield client


def test_minute_loads_opentsdb_exactly_and_reruns_leave_the_same_series(airflow, landing, tsdb):
    metric = f"sluice.e2e.{uuid.uuid4().hex[:8]}"
    m = datetime.fromisoformat("2020-09-03T08:10:00+00:00")
    for device in ("arduino-1", "arduino-2"):
        landing.put(minute_key("sensor", m, device), sensor_csv(device, m, metric))
    run_date = (m + timedelta(minutes=1)).isoformat()

    state, output = airflow.dags_test("sluice_sensor_minute", run_date, env=SINKS)
    assert state == "success", output[-3000:]
    expected = {
        (device, kind): {str(int(m.timestamp()) + s): value for s in range(0, 60, 10)
                         for k, value in (("temperature", 20 + s / 10), ("humidity", 40.5), ("dust", 10 + s))
                         if k == kind}
        for device in ("arduino-1", "arduino-2")
        for kind in ("temperature", "humidity", "dust")
    }
    assert series(tsdb, metric, m) == expected
    rec = record(landing, m, "arduino-1")
    assert rec.sinks["opentsdb"] == {"accepted": 18, "rejected": 0}
    # The freshness point of the minute: at the minute, valued with it.
    epoch = int(m.timestamp())
    (fresh,) = tsdb.query(FRESHNESS_METRIC, start=epoch, end=epoch + 59, tags={"source": "sensor"})
    assert fresh["dps"] == {str(epoch): epoch}
    assert rec.sinks["elasticsearch"] == {"accepted": 18, "rejected": 0}

    state, output = airflow.dags_test("sluice_sensor_minute", run_date, env=SINKS)
    assert state == "success", output[-3000:]
    assert series(tsdb, metric, m) == expected


def test_opentsdb_down_fails_the_load_cleanly_and_the_retry_lands_everything(airflow, landing, tsdb, opentsdb):
    metric = f"sluice.e2e.{uuid.uuid4().hex[:8]}"
    m = datetime.fromisoformat("2020-09-03T08:20:00+00:00")
    landing.put(minute_key("sensor", m, "arduino-1"), sensor_csv("arduino-1", m, metric))
    run_date = (m + timedelta(minutes=1)).isoformat()

    opentsdb.stop()
    try:
        state, output = airflow.dags_test("sluice_sensor_minute", run_date, env=SINKS)
    finally:
        opentsdb.restore()
    assert state == "failed"
    assert "OpenTSDBUnavailable" in output
    assert record(landing, m, "arduino-1") is None  # not recorded as loaded: the sweep would retry it

    state, output = airflow.dags_test("sluice_sensor_minute", run_date, env=SINKS)
    assert state == "success", output[-3000:]
    assert sum(len(dps) for dps in series(tsdb, metric, m).values()) == 18
    assert record(landing, m, "arduino-1").sinks["opentsdb"] == {"accepted": 18, "rejected": 0}
