"""Load and dead-letter records, the late-file finder and the pipeline steps on real MinIO and Elasticsearch."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from include import contract, loads, pipeline, sinks
from include.contract import minute_key

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)
MINUTE = datetime(2020, 9, 3, 7, 11, tzinfo=timezone.utc)


def host_csv(host: str, minute: datetime, seconds=range(60), header: str = HOST_HEADER) -> bytes:
    rows = [
        f"{minute:%Y-%m-%dT%H:%M}:{s:02d}Z,{host},{s / 2},{555991280 + s},2798016401,0,0,17084211200,4082380800,76.1,13001830400,4082380800"
        for s in seconds
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.mark.parametrize(
    ("raw", "etag", "loaded", "deadletter", "staged"),
    [
        pytest.param(
            "raw/host/date=2020-09-03/hour=07/minute=11/web-1.csv", "abc",
            "loaded/host/date=2020-09-03/hour=07/minute=11/web-1.csv@abc.json",
            "deadletter/file/host/date=2020-09-03/hour=07/minute=11/web-1.csv@abc.json",
            "staged/host/date=2020-09-03/hour=07/minute=11/web-1.ndjson",
            id="host",
        ),
        pytest.param(
            "raw/sensor/date=2020-09-03/hour=00/minute=00/ard.v2-1.csv", "d41d8cd98f00b204e9800998ecf8427e-2",
            "loaded/sensor/date=2020-09-03/hour=00/minute=00/ard.v2-1.csv@d41d8cd98f00b204e9800998ecf8427e-2.json",
            "deadletter/file/sensor/date=2020-09-03/hour=00/minute=00/ard.v2-1.csv@d41d8cd98f00b204e9800998ecf8427e-2.json",
            "staged/sensor/date=2020-09-03/hour=00/minute=00/ard.v2-1.ndjson",
            id="dotted-device-multipart-etag",
        ),
    ],
)
def test_record_keys_mirror_the_raw_key(raw, etag, loaded, deadletter, staged):
    assert contract.loaded_key(raw, etag) == loaded
    assert contract.file_deadletter_key(raw, etag) == deadletter
    assert contract.staged_key(raw) == staged
    assert contract.split_record_key(loaded) == (raw, etag)
    assert contract.split_record_key(deadletter) == (raw, etag)


@pytest.mark.parametrize("key", ["raw/host/web-1.csv", "loaded/host/x.json", "other/host/date=2020-09-03/hour=07/minute=11/a.csv"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="not"):
        contract.loaded_key(key, "e") if key.startswith(("raw", "other")) else contract.split_record_key(key)




def run_minute(landing, sink, source, minute, run_id="test"):
    ready = pipeline.minute_files_ready(landing, source, minute, now=minute + timedelta(hours=1))
    summaries = pipeline.stage_files(landing, source, [pipeline.file_ref(f) for f in ready.files])
    results = {sink.name: pipeline.load_staged(landing, sink, source, summaries)}
    return pipeline.record_loads(landing, summaries, results, run_id=run_id)


def count(sink, source="host"):
    sink.client.indices.refresh(index=f"{sink.prefix}-*")
    return sink.client.count(index=f"{sink.prefix}-{source}-*")["count"]


def test_a_minute_loads_records_and_quarantines(landing, sink):
    landing.put(minute_key("host", MINUTE, "web-1"), host_csv("web-1", MINUTE))
    bad_row = host_csv("web-2", MINUTE, range(3)).replace(b",1.0,", b",one,")
    landing.put(minute_key("host", MINUTE, "web-2"), bad_row)
    landing.put(minute_key("host", MINUTE, "web-3"), host_csv("web-3", MINUTE, header=HOST_HEADER + ",gpu_temp"))

    totals = run_minute(landing, sink, "host", MINUTE)

    assert totals == {"files": 3, "rows_read": 123, "accepted": 62, "rejected": 61, "quarantined": 1}
    assert count(sink) == 62
    records = {r.key.rsplit("/", 1)[1]: r for r in loads.read_records(landing, [i.key for i in landing.list("loaded/")])}
    assert (records["web-1.csv"].rows_read, records["web-1.csv"].accepted, records["web-1.csv"].rejected) == (60, 60, 0)
    assert records["web-1.csv"].sinks == {"elasticsearch": {"accepted": 60, "rejected": 0}}
    assert records["web-1.csv"].deadletter is None
    assert records["web-1.csv"].etag == landing.head(minute_key("host", MINUTE, "web-1")).etag
    assert (records["web-2.csv"].accepted, records["web-2.csv"].rejected) == (2, 1)
    assert records["web-3.csv"].quarantined and "unknown column(s) gpu_temp" in records["web-3.csv"].reason
    dead = contract.FileDeadLetter.from_json(landing.get(records["web-2.csv"].deadletter))
    assert dead.rows == [{"line": 4, "reason": "column cpu_usage_percent: 'one' is not a number", "row": dead.rows[0]["row"]}]
    dead3 = contract.FileDeadLetter.from_json(landing.get(records["web-3.csv"].deadletter))
    assert dead3.quarantined and "gpu_temp" in dead3.reason
    staged = landing.get(contract.staged_key(minute_key("host", MINUTE, "web-1"))).splitlines()
    assert len(staged) == 60 and orjson.loads(staged[2])["cpu_usage_percent"] == 1.0


def test_late_and_grown_files_are_found_until_loaded(landing, sink):
    start, end = MINUTE - timedelta(hours=1), MINUTE + timedelta(minutes=5)
    landing.put(minute_key("host", MINUTE, "web-1"), host_csv("web-1", MINUTE, range(30)))
    run_minute(landing, sink, "host", MINUTE)
    assert loads.find_unloaded(landing, "host", start, end) == []

    # A spooled upload for the same minute arrives after the run, and web-1's file grows (a merge).
    landing.put(minute_key("host", MINUTE, "web-late"), host_csv("web-late", MINUTE))
    landing.put(minute_key("host", MINUTE, "web-1"), host_csv("web-1", MINUTE, range(60)))
    found = loads.find_unloaded(landing, "host", start, end)
    assert sorted(f.key.rsplit("/", 1)[1] for f in found) == ["web-1.csv", "web-late.csv"]

    files = pipeline.find_late_files(landing, "host", end=end + timedelta(minutes=3), hours=2)
    totals = pipeline.load_files(landing, [sink], "host", files, run_id="sweep")
    assert totals["accepted"] == 120
    assert loads.find_unloaded(landing, "host", start, end) == []
    assert count(sink) == 120  # web-1's 30 first seconds were overwritten, not doubled


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, ("elasticsearch",), id="default"),
        pytest.param("elasticsearch, OpenTSDB", ("elasticsearch", "opentsdb"), id="list"),
        pytest.param("opentsdb,opentsdb", ("opentsdb",), id="deduplicated"),
    ],
)
def test_configured_sinks(value, expected, monkeypatch):
    monkeypatch.delenv("SLUICE_SINKS", raising=False)
    assert sinks.configured_sinks(value) == expected


def test_an_unknown_sink_is_named():
    with pytest.raises(sinks.UnknownSink, match="'kinesis'"):
        sinks.configured_sinks("elasticsearch,kinesis")
