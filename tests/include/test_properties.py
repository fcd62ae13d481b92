"""Property-based tests of the input chain: generated payloads, CSV minute files and Kafka values.

Every boundary returns readings or rejects and never raises; an accepted
reading's CSV line reads back as the same reading; the row engine and the
columnar engine give identical documents and ids on any file.

The budget is fixed (:data:`BUDGET`: a bounded number of examples, no
deadline, derandomized) so the suite takes the same inputs, and about the same
time, on every run and in CI. ``SLUICE_HYPOTHESIS_EXAMPLES`` raises it for a
longer hunt (``SLUICE_HYPOTHESIS_EXAMPLES=5000 pytest tests/include/test_properties.py``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.contract import parse_tags, timestamp_text
from include.schemas import HOST_SCHEMA, REQUIRED, SENSOR_SCHEMA
from include.sensors import Limits, Parsed, csv_line, parse_payload
from include.transform import (
    FileDocuments,
    FileRejected,
    document_id,
    host_document,
    sensor_document,
    transform_file_rows,
    transform_files,
)

NOW = 1_700_000_000.0
EXAMPLES = int(os.environ.get("SLUICE_HYPOTHESIS_EXAMPLES", "150"))
BUDGET = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- MQTT payloads -----------------------------------------------------------------------------


class Raw:
    """A JSON number token written as is (``NaN``, ``Infinity``, ``1e999``, a 400-digit integer)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dump(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` tokens, NaN and infinities spelled as JavaScript does."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


#: Names of every kind: valid ones, the seed's, and any Unicode with control characters and newlines.
names = st.one_of(
    st.sampled_from(["mqtt.home.pcroom", "temperature", "type", "loc", "type.x", "a/b", "x-y_z", "été", "٣"]),
    st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True),
    st.text(min_size=0, max_size=12),
    st.text(min_size=1, max_size=8).map(lambda t: t + "\n"),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), min_size=1, max_size=4),
    st.text(alphabet="ab", min_size=199, max_size=202),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"), Raw("-1e999"), Raw("9" * 400),
                     Raw("1E-400"), Raw("-0"), Raw("0.1e1")]),
)
#: Timestamps in seconds, milliseconds and microseconds around the receive time, and wild ones.
timestamps = st.one_of(
    st.floats(min_value=NOW - 3 * 86400, max_value=NOW + 200).map(round),
    st.floats(min_value=NOW - 3 * 86400, max_value=NOW + 200).map(lambda s: round(s * 1000)),
    st.floats(min_value=NOW - 3 * 86400, max_value=NOW + 200).map(lambda s: round(s * 1_000_000)),
    st.floats(min_value=NOW - 3 * 86400, max_value=NOW + 200),
    numbers,
    st.text(max_size=5),
    st.none(),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, names)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)
tags = st.one_of(st.dictionaries(names, st.one_of(names, numbers, st.booleans()), max_size=4), json_values)
seed_reading = st.fixed_dictionaries(
    {"metric": st.one_of(names, json_values), "value": st.one_of(numbers, json_values)},
    optional={"timestamp": timestamps, "tags": tags, "type": st.just("Metric")},
)
flat_object = st.dictionaries(
    st.one_of(names, st.sampled_from(["timestamp", "ts"])), st.one_of(numbers, names, timestamps), max_size=8
)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """A document nested up to 5,000 levels, as arrays, objects or both, sometimes unclosed."""
    depth = draw(st.integers(min_value=1, max_value=5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"metric":', "}]")]))
    core = draw(st.sampled_from(["1", "[]", "{}", '"x"', "NaN"]))
    tail = closer * depth if draw(st.booleans()) else closer * (depth // 2)
    return opener * depth + core + tail


payloads = st.one_of(
    st.lists(seed_reading, max_size=6).map(dump),
    seed_reading.map(dump),
    flat_object.map(dump),
    json_values.map(dump),
    deep(),
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=64)


def _assert_total(parsed: Parsed) -> None:
    assert isinstance(parsed, Parsed)
    assert not [r for r in parsed.rejects if r.code == "internal"], parsed.reason
    for reject in parsed.rejects:
        assert reject.code and reject.reason


def _read_back(device: str, line: str) -> dict[str, Any]:
    (row,) = list(csv.reader(io.StringIO(line)))
    return sensor_document(dict(zip(SENSOR_SCHEMA.names, row, strict=True)))


@BUDGET
@given(payload=payloads, limits=st.sampled_from([Limits(), Limits(max_bytes=300, max_readings=3)]))
def test_a_payload_gives_readings_or_rejects_and_lines_read_back(payload: bytes, limits: Limits) -> None:
    parsed = parse_payload(payload, NOW, limits)
    _assert_total(parsed)
    assert len(parsed.readings) <= limits.max_readings
    for reading in parsed.readings:
        line = csv_line("dev-1", reading)
        assert line.endswith("\n") and line.count("\n") == 1, line
        doc = _read_back("dev-1", line)
        assert doc["@timestamp"] == timestamp_text(reading.epoch)
        assert (doc["device"], doc["metric"]) == ("dev-1", reading.metric)
        assert doc["value"] == float(reading.value) and math.isfinite(doc["value"])
        assert doc["tags"] == parse_tags(reading.tags)


@BUDGET
@given(payload=payloads)
def test_the_stdlib_decoder_is_total_too(payload: bytes) -> None:
    _assert_total(parse_payload(payload, NOW, loads=json.loads))


# --- CSV minute files --------------------------------------------------------------------------

ODD_NUMBERS = [
    "1", "-2", "+3", "007", "1.5", "-0.0", ".5", "1.", "1e3", "1E-3", "+1e+3", "1e999", "-1e999", "NaN", "nan", "inf",
    "-Infinity", "١٢", "１２", "1_0", "0x10", " 1", "1 ", "", "9" * 19, "9" * 20, "-9223372036854775808",
    "9223372036854775808", "1e", "e1", "--1", "1.2.3", "٣.٥",
]
ODD_TIMESTAMPS = [
    "2023-11-14T22:13:10Z", "2023-11-14T22:13:10.5Z", "2023-11-14T22:13:10.500Z", "2023-11-14T22:13:10.123456Z",
    "2023-11-14T22:13:10.123456789Z", "2023-11-14T22:13:10.000Z", "2023-02-30T00:00:00Z", "2023-11-14T24:00:00Z",
    "2023-11-14 22:13:10Z", "2023-11-14T22:13:10", "2023-11-14T22:13:10+00:00", "٢٠٢٣-11-14T22:13:10Z",
    "2023-11-14T22:13:10Z\n", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "", "x",
]
ODD_NAMES = ["pc-1", "web.1", "a_b", "mqtt.home.pcroom", "été", "a b", "a,b", 'a"b', "a\nb", "", "-x", "a.meta.json",
             "x" * 129, "\x00", "ok\n"]
ODD_TAGS = ["", "type=dust", "loc=pcroom type=dust", "type=dust loc=pcroom", "a=1 a=2", "a", "a=", "=b",
            "a=b  c=d", "type.x=1", "a=b\n", "a=b,c"]

text_fields = st.one_of(st.sampled_from(ODD_NAMES), st.text(max_size=6))
number_fields = st.one_of(st.sampled_from(ODD_NUMBERS), st.integers().map(str),
                          st.floats(allow_nan=False, allow_infinity=False).map(repr), st.text(max_size=4))
stamp_fields = st.one_of(st.sampled_from(ODD_TIMESTAMPS),
                         st.floats(min_value=0, max_value=4e9).map(timestamp_text))


def _field_for(kind: str) -> st.SearchStrategy[str]:
    if kind == "timestamp":
        return stamp_fields
    if kind in ("int", "float"):
        return number_fields
    if kind == "tags":
        return st.one_of(st.sampled_from(ODD_TAGS), st.text(max_size=8))
    return text_fields


@st.composite
def csv_files(draw: st.DrawFn, source: str) -> bytes:
    """A minute file of ``source``: a usable or broken header, rows good, bad, ragged, quoted or blank."""
    schema = HOST_SCHEMA if source == "host" else SENSOR_SCHEMA
    required = len(REQUIRED[source])
    width = draw(st.integers(min_value=required - 1, max_value=len(schema.names)))
    header = list(schema.names[:width])
    if draw(st.integers(0, 9)) == 0:
        header.append(draw(st.sampled_from(["gpu_temp", "timestamp", ""])))
    kinds = {c.name: c.kind for c in schema.columns}
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        row = [draw(_field_for(kinds.get(name, "str"))) for name in header]
        shape = draw(st.integers(0, 19))
        if shape == 0:
            row = row[:-1]
        elif shape == 1:
            row = [*row, "extra"]
        rows.append(row)
    out = io.StringIO()
    if draw(st.booleans()):  # the way a collector writes: no quoting needed, plain joins
        out.write(",".join(header) + "\n")
        for row in rows:
            out.write(",".join(row) + "\n")
    else:  # the csv module, which quotes commas, quotes and newlines
        writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
        writer.writerow(header)
        writer.writerows(rows)
    data = out.getvalue()
    if draw(st.integers(0, 9)) == 0:
        data = data.replace("\n", "\n\n", 1)
    if draw(st.integers(0, 19)) == 0:
        data = data.rstrip("\n")
    return data.encode("utf-8", "surrogatepass")


def _same(rows: FileDocuments | FileRejected, columnar: FileDocuments | FileRejected, data: bytes) -> None:
    if isinstance(rows, FileRejected) or isinstance(columnar, FileRejected):
        assert isinstance(rows, FileRejected) and isinstance(columnar, FileRejected), (data, rows, columnar)
        assert rows.reason == columnar.reason
        return
    assert columnar.documents == rows.documents, data
    assert columnar.ids == rows.ids, data
    assert columnar.timestamps == rows.timestamps, data
    assert columnar.rows_read == rows.rows_read, data
    assert [(e.line, e.reason) for e in columnar.row_errors] == [(e.line, e.reason) for e in rows.row_errors], data


def _row_engine(source: str, data: bytes) -> FileDocuments | FileRejected:
    try:
        return transform_file_rows(source, data)
    except FileRejected as exc:
        return exc


@BUDGET
@given(source=st.sampled_from(["host", "sensor"]), data=st.data())
def test_the_two_engines_give_identical_documents_and_ids(source: str, data: st.DataObject) -> None:
    file = data.draw(csv_files(source))
    (columnar,) = transform_files(source, [file])
    _same(_row_engine(source, file), columnar, file)


# Each example is 2-4 files through three engine runs: a third of the budget keeps the suite near 40 s.
@settings(BUDGET, max_examples=max(EXAMPLES // 3, 1))
@given(source=st.sampled_from(["host", "sensor"]), data=st.data())
def test_a_batch_of_files_gives_what_each_file_gives_alone(source: str, data: st.DataObject) -> None:
    files = data.draw(st.lists(csv_files(source), min_size=2, max_size=4))
    for file, batched in zip(files, transform_files(source, files), strict=True):
        _same(_row_engine(source, file), batched, file)


# --- Kafka record values -----------------------------------------------------------------------

host_values = st.dictionaries(
    st.one_of(st.sampled_from(HOST_SCHEMA.names), names),
    st.one_of(st.none(), numbers, names, st.sampled_from(ODD_TIMESTAMPS), json_values),
    max_size=len(HOST_SCHEMA.names) + 2,
)


def _host_row(obj: dict[str, Any]) -> dict[str, str | None]:
    """A host record's object as the CSV row it stands for (None for null, text otherwise)."""
    return {k: None if v is None else v if isinstance(v, str) else dump(v) for k, v in obj.items()}


@BUDGET
@given(obj=host_values)
def test_a_host_record_gives_a_document_with_an_id_or_a_contract_error(obj: dict[str, Any]) -> None:
    from include.contract import ContractError

    try:
        doc = host_document(_host_row(obj))
    except ContractError as exc:
        assert str(exc)
        return
    assert document_id("host", doc)
    orjson.dumps(doc)  # every value is JSON: no NaN, no infinity, no 65-bit integer


@BUDGET
@given(payload=payloads, received=st.sampled_from([NOW, NOW + 0.0004, NOW + 59.9996]))
def test_a_sensor_record_gives_the_same_documents_and_ids_as_its_csv_line(payload: bytes, received: float) -> None:
    """The stream decode (payload -> readings -> documents) and the file path agree on every reading."""
    parsed = parse_payload(payload, received)
    _assert_total(parsed)
    if not parsed.readings:
        return
    lines = "".join(csv_line("dev-1", r) for r in parsed.readings)
    file = (",".join(SENSOR_SCHEMA.names) + "\n" + lines).encode()
    from_file = transform_file_rows("sensor", file)
    (columnar,) = transform_files("sensor", [file])
    _same(from_file, columnar, file)
    stream_ids = [document_id("sensor", _read_back("dev-1", csv_line("dev-1", r))) for r in parsed.readings]
    assert stream_ids == from_file.ids
