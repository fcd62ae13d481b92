"""The CSV -> JSON transforms: values, ids, row and file rejections, both engines agree."""

from __future__ import annotations

import orjson
import pytest

from include.contract import ContractError, canonical_timestamp, reading_id
from include.schemas import HOST_METRICS
from include.transform import (
    FileRejected,
    document_datapoints,
    document_id,
    parse_float,
    parse_int,
    transform_file,
    transform_file_rows,
    transform_files,
)

ENGINES = [pytest.param(transform_file, id="polars"), pytest.param(transform_file_rows, id="rows")]

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)
# The reading of seeds/003's Lambda output, as the host collector writes it.
SEED_ROW = "2020-09-03T07:11:41Z,pc-1,14.4,555991280,2798016401,0,1867281113,17084211200,4082380800,76.1,13001830400,4082380800"
SEED_DOC = {
    "@timestamp": "2020-09-03T07:11:41Z",
    "host": "pc-1",
    "cpu_usage_percent": 14.4,
    "cpu_ctx_switches": 555991280,
    "cpu_interrupts": 2798016401,
    "cpu_soft_interrupts": 0,
    "cpu_syscalls": 1867281113,
    "mem_total": 17084211200,
    "mem_available": 4082380800,
    "mem_percent": 76.1,
    "mem_used": 13001830400,
    "mem_free": 4082380800,
}
SENSOR_HEADER = "timestamp,device,metric,value,tags"


def host_file(*rows: str, header: str = HOST_HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def sensor_file(*rows: str, header: str = SENSOR_HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-05-01T00:00:00Z", "2026-05-01T00:00:00Z", id="whole-second"),
        pytest.param("2026-05-01T00:00:00.5Z", "2026-05-01T00:00:00.500Z", id="tenths-to-millis"),
        pytest.param("2026-05-01T00:00:00.000Z", "2026-05-01T00:00:00Z", id="zero-fraction-dropped"),
        pytest.param("2026-05-01T00:00:00.1234Z", "2026-05-01T00:00:00.123400Z", id="micros"),
        pytest.param("2026-05-01T00:00:00.123456789Z", "2026-05-01T00:00:00.123456Z", id="nanos-truncated"),
    ],
)
def test_canonical_timestamp(text, expected):
    assert canonical_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-05-01 00:00:00Z", id="space"),
        pytest.param("2026-05-01T00:00:00+00:00", id="offset-not-z"),
        pytest.param("2026-05-01T00:00:00", id="naive"),
        pytest.param("2026-02-30T00:00:00Z", id="no-such-day"),
        pytest.param("1599117101", id="epoch"),
    ],
)
def test_canonical_timestamp_refuses(text):
    with pytest.raises(ContractError, match="timestamp"):
        canonical_timestamp(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param("12", 12, id="plain"), pytest.param("+5", 5, id="plus"), pytest.param("-3", -3, id="minus")],
)
def test_parse_int(text, expected):
    assert parse_int("c", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("1.0", id="decimal"),
        pytest.param("1_000", id="underscore"),
        pytest.param(" 5", id="space"),
        pytest.param("9223372036854775808", id="too-big"),
    ],
)
def test_parse_int_refuses(text):
    with pytest.raises(ContractError, match="column c"):
        parse_int("c", text)


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1_0", "0x10", "", " 1"])
def test_parse_float_refuses(text):
    with pytest.raises(ContractError, match="column v"):
        parse_float("v", text)


@pytest.mark.parametrize("engine", ENGINES)
def test_host_seed_row_becomes_typed_document(engine):
    out = engine("host", host_file(SEED_ROW))
    assert out.rows_read == 1 and out.rejected == 0
    doc = orjson.loads(out.documents[0])
    assert doc == SEED_DOC
    assert list(doc) == list(SEED_DOC)  # @timestamp first, then the header's order
    assert isinstance(doc["cpu_ctx_switches"], int) and isinstance(doc["mem_percent"], float)
    assert out.ids == [reading_id("host", "pc-1", "2020-09-03T07:11:41Z", "host", "")]
    assert out.ids[0] == document_id("host", doc)
    assert out.timestamps == ["2020-09-03T07:11:41Z"]


@pytest.mark.parametrize("engine", ENGINES)
def test_appended_host_columns_are_typed(engine):
    out = engine("host", host_file(SEED_ROW + ",0.5,0.25", header=HOST_HEADER + ",load_1m,load_5m"))
    doc = orjson.loads(out.documents[0])
    assert doc["load_1m"] == 0.5 and doc["load_5m"] == 0.25


@pytest.mark.parametrize("engine", ENGINES)
def test_sensor_rows_of_one_arduino_payload_get_distinct_ids(engine):
    # seeds/000: one payload sends temperature, humidity and dust under one metric and time.
    data = sensor_file(
        "2020-06-01T12:00:00Z,arduino-1,mqtt.home.pcroom,24.5,type=temperature",
        "2020-06-01T12:00:00Z,arduino-1,mqtt.home.pcroom,40,type=humidity",
        "2020-06-01T12:00:00Z,arduino-1,mqtt.home.pcroom,12.25,room=pc type=dust",
        "2020-06-01T12:00:00.250Z,arduino-1,other.metric,1,",
    )
    out = engine("sensor", data)
    docs = [orjson.loads(d) for d in out.documents]
    assert docs[0] == {
        "@timestamp": "2020-06-01T12:00:00Z",
        "device": "arduino-1",
        "metric": "mqtt.home.pcroom",
        "value": 24.5,
        "tags": {"type": "temperature"},
    }
    assert docs[1]["value"] == 40.0 and isinstance(docs[1]["value"], float)
    assert docs[2]["tags"] == {"room": "pc", "type": "dust"}
    assert docs[3]["tags"] == {} and docs[3]["@timestamp"] == "2020-06-01T12:00:00.250Z"
    assert len(set(out.ids)) == 4
    assert out.ids == [document_id("sensor", d) for d in docs]


BAD_ROWS = [
    pytest.param("host", SEED_ROW.replace(",14.4,", ",14.4%,"), "cpu_usage_percent: '14.4%' is not a number", id="unparsable-float"),
    pytest.param("host", SEED_ROW.replace(",555991280,", ",5.5e8,"), "cpu_ctx_switches: '5.5e8' is not an integer", id="float-in-int"),
    pytest.param("host", SEED_ROW.replace(",76.1,", ",nan,"), "mem_percent: 'nan' is not a finite number", id="nan"),
    pytest.param("host", SEED_ROW.replace(",76.1,", ",,"), "mem_percent: no value", id="empty-value"),
    pytest.param("host", SEED_ROW.replace(",76.1,", ", 76.1,"), "mem_percent: ' 76.1' is not a number", id="space-in-float"),
    pytest.param("host", SEED_ROW.replace(",0,", ",0 ,", 1), "cpu_soft_interrupts: '0 ' is not an integer", id="space-in-int"),
    pytest.param("host", SEED_ROW.replace(",76.1,", ",inf,"), "mem_percent: 'inf' is not a finite number", id="inf"),
    pytest.param("host", SEED_ROW.replace("2020-09-03T07:11:41Z", "2020-09-03 07:11:41"), "timestamp '2020-09-03 07:11:41'", id="bad-timestamp"),
    pytest.param("host", SEED_ROW.rsplit(",", 1)[0], "row has 11 fields, the header has 12", id="short-row"),
    pytest.param("host", SEED_ROW + ",7", "row has 13 fields, the header has 12", id="long-row"),
    pytest.param("sensor", "2020-06-01T12:00:00Z,arduino-1,m,warm,type=temperature", "value: 'warm' is not a number", id="sensor-value"),
    pytest.param("sensor", "2020-06-01T12:00:00Z,arduino-1,m,1,type", "tag 'type' is not of the form key=value", id="sensor-tags"),
    pytest.param("sensor", "2020-06-01T12:00:00Z,,m,1,", "device: no value", id="sensor-no-device"),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("source", "bad", "reason"), BAD_ROWS)
def test_a_bad_row_is_rejected_with_its_reason_and_the_rest_loads(engine, source, bad, reason):
    if source == "host":
        good = [SEED_ROW, SEED_ROW.replace("07:11:41", "07:11:43")]
        data = host_file(good[0], bad, good[1])
    else:
        good = ["2020-06-01T12:00:00Z,arduino-1,m,1,type=a", "2020-06-01T12:00:02Z,arduino-1,m,2,type=a"]
        data = sensor_file(good[0], bad, good[1])
    out = engine(source, data)
    assert out.rows_read == 3 and out.accepted == 2 and out.rejected == 1
    (error,) = out.row_errors
    assert error.line == 3 and reason in error.reason and error.row == bad


BAD_FILES = [
    pytest.param("host", host_file(SEED_ROW, header=HOST_HEADER.replace("mem_used,", "")), "must start with", id="missing-column"),
    pytest.param("host", host_file(SEED_ROW + ",1", header=HOST_HEADER + ",gpu_temp"), "unknown column(s) gpu_temp", id="unknown-column"),
    pytest.param("host", host_file(SEED_ROW, header=SENSOR_HEADER), "must start with", id="wrong-header"),
    pytest.param("host", host_file(SEED_ROW, header=HOST_HEADER + ",load_5m"), "out of order", id="columns-out-of-order"),
    pytest.param("host", host_file(), "no data rows", id="header-only"),
    pytest.param("sensor", b"", "empty file", id="empty-file"),
    pytest.param("sensor", sensor_file(header="device,timestamp,metric,value,tags"), "must start with", id="sensor-swapped-columns"),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("source", "data", "reason"), BAD_FILES)
def test_a_bad_file_is_refused_as_a_whole_with_its_reason(engine, source, data, reason):
    with pytest.raises(FileRejected) as info:
        engine(source, data)
    assert reason in info.value.reason


def test_engines_agree_on_a_mixed_file():
    rows = [SEED_ROW.replace("07:11:41", f"07:11:{s:02d}") for s in range(60)]
    rows[7] = rows[7].replace(",14.4,", ",oops,")
    rows[30] = rows[30].replace("2020-09-03T07:11:30Z", "2020-09-03T07:11:30.5Z")
    data = host_file(*rows)
    fast, slow = transform_file("host", data), transform_file_rows("host", data)
    assert [orjson.loads(d) for d in fast.documents] == [orjson.loads(d) for d in slow.documents]
    assert (fast.ids, fast.timestamps, fast.row_errors) == (slow.ids, slow.timestamps, slow.row_errors)
    assert fast.accepted == 59


def test_a_batch_of_files_gives_each_file_what_it_gives_alone():
    rows = [SEED_ROW.replace("07:11:41", f"07:11:{s:02d}") for s in range(5)]
    files = [
        host_file(*rows),
        host_file(*rows[:2], rows[2].replace(",14.4,", ",x,"), *rows[3:]),
        host_file(),  # no rows
        host_file(*[r + ",0.5" for r in rows], header=HOST_HEADER + ",load_1m"),  # another header
        host_file(rows[0], rows[1].replace(",76.1,", ",nan,")),
        host_file(*rows, header=HOST_HEADER + ",gpu_temp"),  # refused
        host_file(rows[0], rows[1] + ",7", rows[2]),  # ragged: polars cannot split it
        host_file(*[r.replace("pc-1", "pc-2") for r in rows]),
    ]
    batch = transform_files("host", files)
    assert len(batch) == len(files)
    for data, got in zip(files, batch, strict=True):
        try:
            alone = transform_file_rows("host", data)
        except FileRejected as exc:
            assert isinstance(got, FileRejected) and got.reason == exc.reason
            continue
        assert [orjson.loads(d) for d in got.documents] == [orjson.loads(d) for d in alone.documents]
        assert (got.rows_read, got.ids, got.timestamps, got.row_errors) == (
            alone.rows_read, alone.ids, alone.timestamps, alone.row_errors
        )
    assert [getattr(r, "accepted", None) for r in batch] == [5, 4, None, 5, 1, None, 2, 5]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("host", ["pc\\1", "pc 1", "pc\x01", "-pc", "pc.meta.json", "x" * 129])
def test_a_host_name_outside_the_writer_alphabet_rejects_its_row(engine, host):
    out = engine("host", host_file(SEED_ROW, SEED_ROW.replace("pc-1", host)))
    assert out.accepted == 1 and [e.line for e in out.row_errors] == [3]
    assert out.row_errors[0].reason.startswith("column host: writer id")


def test_blank_lines_are_no_rows():
    out = transform_file("host", host_file(SEED_ROW, "", SEED_ROW.replace("41Z", "42Z")))
    assert (out.rows_read, out.accepted, out.rejected) == (2, 2, 0)


@pytest.mark.parametrize(
    ("source", "doc", "expected"),
    [
        pytest.param(
            "sensor",
            {"@timestamp": "2020-06-01T12:00:00Z", "device": "arduino-1", "metric": "mqtt.home.pcroom",
             "value": 24.5, "tags": {"type": "temperature"}},
            [{"metric": "mqtt.home.pcroom", "timestamp": 1591012800, "value": 24.5,
              "tags": {"type": "temperature", "device": "arduino-1"}}],
            id="sensor-keeps-metric-and-tags-plus-device",
        ),
        pytest.param(
            "sensor",
            {"@timestamp": "2020-06-01T12:00:00.250Z", "device": "d", "metric": "m", "value": 1.0, "tags": {}},
            [{"metric": "m", "timestamp": 1591012800250, "value": 1.0, "tags": {"device": "d"}}],
            id="fraction-in-milliseconds",
        ),
    ],
)
def test_document_datapoints(source, doc, expected):
    assert document_datapoints(source, doc) == expected


def test_host_document_gives_one_datapoint_per_numeric_field():
    points = document_datapoints("host", SEED_DOC)
    assert {p["metric"] for p in points} == {HOST_METRICS[k] for k in SEED_DOC if k in HOST_METRICS}
    assert len(points) == 10
    assert all(p["tags"] == {"host": "pc-1"} and p["timestamp"] == 1599117101 for p in points)
    assert {"metric": "host.mem_percent", "timestamp": 1599117101, "value": 76.1, "tags": {"host": "pc-1"}} in points
