"""Bad input in a minute: the bad file (or row) is dead-lettered with its reason, the other files load.

Each case runs the pipeline's steps (the same functions the DAG tasks call) on
the real MinIO and Elasticsearch, with one good file and one bad file in the minute.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from include import loads, pipeline
from include.contract import FileDeadLetter, file_deadletter_key, minute_key

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)
MINUTE = datetime(2020, 9, 3, 8, 0, tzinfo=timezone.utc)


def host_csv(host: str, seconds=range(60), header: str = HOST_HEADER) -> bytes:
    rows = [
        f"2020-09-03T08:00:{s:02d}Z,{host},{s + 0.5},{1000 + s},2000,0,0,17084211200,4082380800,76.1,13001830400,4082380800"
        for s in seconds
    ]
    return ("\n".join([header, *rows]) + "\n").encode()




QUARANTINED = [
    pytest.param(host_csv("bad", header=HOST_HEADER.replace(",mem_free", "")), "must start with", id="missing-column"),
    pytest.param(host_csv("bad", header=HOST_HEADER + ",gpu_temp").replace(b"4082380800\n", b"4082380800,1\n"),
                 "unknown column(s) gpu_temp", id="extra-unknown-column"),
    pytest.param(host_csv("bad", header="time,host,cpu"), "must start with timestamp,host", id="wrong-header"),
    pytest.param(host_csv("bad", seconds=range(0)), "no data rows", id="no-rows"),
]


def run_minute(landing, sink):
    ready = pipeline.minute_files_ready(landing, "host", MINUTE, now=MINUTE + timedelta(hours=1))
    summaries = pipeline.stage_files(landing, "host", [pipeline.file_ref(f) for f in ready.files])
    results = {sink.name: pipeline.load_staged(landing, sink, "host", summaries)}
    totals = pipeline.record_loads(landing, summaries, results, run_id="bad-input")
    keys = [i.key for i in landing.list("loaded/")]
    return totals, {r.key.rsplit("/", 1)[1]: r for r in loads.read_records(landing, keys)}


def es_count(sink) -> int:
    sink.client.indices.refresh(index=f"{sink.prefix}-*")
    return sink.client.count(index=f"{sink.prefix}-host-*")["count"]


@pytest.mark.parametrize(("data", "reason"), QUARANTINED)
def test_a_bad_file_is_quarantined_and_the_minutes_other_files_load(landing, sink, data, reason, caplog):
    landing.put(minute_key("host", MINUTE, "good"), host_csv("good"))
    landing.put(minute_key("host", MINUTE, "bad"), data)
    with caplog.at_level(logging.INFO, logger="include.pipeline"):
        totals, recorded = run_minute(landing, sink)

    assert es_count(sink) == 60
    assert totals["quarantined"] == 1 and totals["accepted"] == 60
    assert "1 files quarantined" in caplog.text and reason in caplog.text
    assert recorded["good.csv"].accepted == 60 and not recorded["good.csv"].quarantined
    bad = recorded["bad.csv"]
    assert bad.quarantined and reason in bad.reason and bad.accepted == 0
    dead = FileDeadLetter.from_json(landing.get(bad.deadletter))
    assert dead.quarantined and reason in dead.reason
    assert bad.deadletter == file_deadletter_key(minute_key("host", MINUTE, "bad"), bad.etag)


def test_an_unparsable_number_rejects_its_row_with_the_reason_and_loads_the_rest(landing, sink, caplog):
    landing.put(minute_key("host", MINUTE, "good"), host_csv("good"))
    landing.put(minute_key("host", MINUTE, "bad"), host_csv("bad").replace(b",1007,", b",1O07,"))
    with caplog.at_level(logging.INFO, logger="include.pipeline"):
        totals, recorded = run_minute(landing, sink)

    assert es_count(sink) == 119
    assert (totals["accepted"], totals["rejected"], totals["quarantined"]) == (119, 1, 0)
    assert "1 rows rejected" in caplog.text
    bad = recorded["bad.csv"]
    assert (bad.rows_read, bad.accepted, bad.rejected, bad.quarantined) == (60, 59, 1, False)
    dead = FileDeadLetter.from_json(landing.get(bad.deadletter))
    assert dead.rows == [{"line": 9, "reason": "column cpu_ctx_switches: '1O07' is not an integer",
                          "row": host_csv("bad").decode().splitlines()[8].replace(",1007,", ",1O07,")}]
