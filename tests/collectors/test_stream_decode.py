"""The stream loader's decode is total: every record becomes documents or a reject with a reason.

Table-driven per kind of bad input (what happens to each), then hypothesis
properties over generated Kafka records: any bytes, any JSON shape (nesting to
5,000 levels), names with any Unicode including control characters and
trailing newlines, numbers including NaN, infinities, 1e999 and huge
integers, timestamps in s, ms and µs.
"""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.stream.batch import Batch
from collectors.stream.deadletter import record_of
from collectors.stream.decode import INTERNAL, DecodeRules, Decoded, Rejected, decode_record
from include.kafka import HEADER_RECEIVED_AT
from include.schemas import HOST, HOST_SCHEMA, SENSOR
from include.contract import timestamp_text
from include.transform import document_id

RAW, HOSTS = "t.raw", "t.host"
RULES = DecodeRules(RAW, HOSTS)
NOW = 1770000000.0
HEADERS = [(HEADER_RECEIVED_AT, timestamp_text(NOW).encode())]


def seed(**fields) -> bytes:
    reading = {"metric": "mqtt.home.pcroom", "timestamp": int(NOW * 1000), "value": 21.5, "tags": {"type": "temperature"}}
    reading.update(fields)
    return orjson.dumps([reading])


def host_row(**fields) -> dict:
    row = {"timestamp": timestamp_text(NOW), "host": "h1"}
    row.update({c.name: (7 if c.kind == "int" else 1.5) for c in HOST_SCHEMA.columns[2:]})
    row.update(fields)
    return row


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


class Record:
    """The fields of a Kafka record that the loader reads, for the pure batch tests."""

    def __init__(self, topic: str, key: bytes | None, value: bytes | None, headers=None, offset: int = 0,
                 timestamp_ms: int | None = None) -> None:
        self._t, self._k, self._v, self._h, self._o, self._ts = topic, key, value, headers, offset, timestamp_ms

    def topic(self): return self._t
    def partition(self): return 0
    def offset(self): return self._o
    def key(self): return self._k
    def value(self): return self._v
    def headers(self): return self._h
    def timestamp(self): return (0, -1) if self._ts is None else (1, self._ts)


# -- each kind of bad input, and what happens to it -------------------------------------
BAD_SENSOR = [
    # (record key, value, reason code of the dead letter)
    pytest.param(b"dev1", nested(1025), "not_json", id="deep-array-1025"),
    pytest.param(b"dev1", nested(5000, b'{"a":', b"}").replace(b'{"a":}', b'{"a":1}'), "not_json", id="deep-object-5000"),
    pytest.param(b"dev1", seed(metric="mqtt.home\n"), "bad_name", id="metric-trailing-newline"),
    pytest.param(b"dev1", seed(tags={"type\n": "t"}), "bad_name", id="tag-key-trailing-newline"),
    pytest.param(b"dev1", seed(tags={"type": "t\n"}), "bad_name", id="tag-value-trailing-newline"),
    pytest.param(b"dev1", b'{"temperature\\n": 21.5}', "bad_name", id="flat-key-trailing-newline"),
    pytest.param(b"dev1", seed(metric="m\x01x"), "bad_name", id="metric-control-character"),
    pytest.param(b"dev1\n", seed(), "bad_device", id="device-key-trailing-newline"),
    pytest.param(b"\xff\xfe", seed(), "bad_device", id="device-key-not-utf8"),
    pytest.param(None, seed(), "bad_device", id="no-key"),
    pytest.param(b"dev1", b"\xff\xfe\x00{", "not_json", id="value-not-utf8"),
    pytest.param(b"dev1", b"", "not_json", id="empty-value"),
    pytest.param(b"dev1", None, "not_json", id="null-value"),
    pytest.param(b"dev1", b"[" + b",".join([seed()[1:-1]] * 30000) + b"]", "oversized", id="huge-2mb"),
    pytest.param(b"dev1", b'"21.5"', "wrong_type", id="json-string"),
    pytest.param(b"dev1", seed(value="hot"), "wrong_type", id="value-wrong-type"),
    pytest.param(b"dev1", seed(tags=["type"]), "wrong_type", id="tags-wrong-type"),
    pytest.param(b"dev1", b'[{"metric": "m", "value": NaN}]', "not_json", id="nan"),
    pytest.param(b"dev1", b'[{"metric": "m", "value": -Infinity}]', "not_json", id="minus-infinity"),
    pytest.param(b"dev1", b'[{"metric": "m", "value": 1e999}]', "not_json", id="1e999"),
    pytest.param(b"dev1", seed(timestamp=int(NOW - 8 * 86400)), "timestamp_out_of_range", id="timestamp-8-days-old"),
    pytest.param(b"dev1", b"[]", "no_readings", id="empty-array"),
]


@pytest.mark.parametrize("key,value,code", BAD_SENSOR)
def test_each_bad_sensor_record_is_rejected_with_its_reason(key, value, code):
    result = decode_record(RULES, RAW, key, value, HEADERS, None)
    assert isinstance(result, Rejected), result
    assert result.code == code and result.reason


@pytest.mark.parametrize("depth", [1025, 2000, 5000])
def test_deep_nesting_is_refused_with_its_depth(depth):
    for value in (nested(depth), nested(depth, b'{"a":', b"}").replace(b'{"a":}', b'{"a":1}')):
        result = decode_record(RULES, RAW, b"dev1", value, HEADERS, None)
        assert isinstance(result, Rejected) and f"nested {depth} levels deep" in result.reason, result


def test_an_unforeseen_failure_is_an_internal_reject_and_a_dead_letter():
    # Rules without limits make parse_payload itself fail: no input can, which is what the property below checks.
    broken = DecodeRules(RAW, HOSTS, limits=None)  # type: ignore[arg-type]
    result = decode_record(broken, RAW, b"dev1", seed(), HEADERS, None)
    assert isinstance(result, Rejected) and result.code == INTERNAL
    assert result.reason.startswith("internal: AttributeError: ")
    batch = Batch.of([Record(RAW, b"dev1", seed(), HEADERS, offset=3)], broken)
    assert [d.code for d in batch.internal] == [INTERNAL] and batch.deadletters == batch.internal


BAD_HOST = [
    pytest.param({k: v for k, v in host_row().items() if k != "host"}, "missing_column", "host", id="no-host"),
    pytest.param(host_row(host=None), "bad_device", "host", id="host-null"),
    pytest.param(host_row(host="h1\n"), "bad_device", "not usable in a file name", id="host-trailing-newline"),
    pytest.param(host_row(cpu_usage_percent=None), "bad_row", "cpu_usage_percent", id="value-null"),
    pytest.param(host_row(mem_total=2**64 - 1), "bad_row", "64 bits", id="counter-over-int64"),
    pytest.param(host_row(mem_total=1.5), "bad_row", "mem_total", id="float-in-int-column"),
    pytest.param(host_row(cpu_usage_percent=[1]), "wrong_type", "cpu_usage_percent", id="list-value"),
    pytest.param(host_row(bogus=1), "unknown_column", "bogus", id="unknown-column"),
    pytest.param(host_row(timestamp="2026-02-30T00:00:00Z"), "bad_row", "timestamp", id="impossible-date"),
]


@pytest.mark.parametrize("row,code,needle", BAD_HOST)
def test_each_bad_host_record_is_rejected_with_its_reason(row, code, needle):
    result = decode_record(RULES, HOSTS, b"h1", orjson.dumps(row), None, None)
    assert isinstance(result, Rejected), result
    assert result.code == code and needle in result.reason


def test_host_record_of_the_wrong_shape():
    for value, code in ((b"[1]", "wrong_type"), (b"", "not_json"), (nested(5000), "not_json"),
                        (b'{"timestamp": 1e999}', "not_json"), (b"x" * 70000, "oversized")):
        result = decode_record(RULES, HOSTS, b"h1", value, None, None)
        assert isinstance(result, Rejected) and result.code == code, (value[:20], result)


def test_good_records_decode_and_odd_but_valid_tag_keys_pass():
    # "type.x" is a valid tag key: decoding keeps it (whether Elasticsearch can map it is the sink's answer).
    result = decode_record(RULES, RAW, b"dev1", seed(tags={"type.x": "1"}), HEADERS, None)
    assert isinstance(result, Decoded) and result.docs[0][1]["tags"] == {"type.x": "1"}
    # Seconds, milliseconds and microseconds are the same reading.
    ids = {decode_record(RULES, RAW, b"dev1", seed(timestamp=ts), HEADERS, None).docs[0][0]
           for ts in (int(NOW), int(NOW * 1000), int(NOW * 1_000_000))}
    assert len(ids) == 1
    host = decode_record(RULES, HOSTS, b"h1", orjson.dumps(host_row()), None, None)
    assert isinstance(host, Decoded) and host.docs[0][0] == document_id(HOST, host.docs[0][1])


def test_one_bad_reading_leaves_the_others():
    value = orjson.dumps([{"metric": "m", "value": 1}, {"metric": "m\n", "value": 2}, {"metric": "m", "value": "x"}])
    result = decode_record(RULES, RAW, b"dev1", value, HEADERS, None)
    assert isinstance(result, Decoded) and [d["value"] for _, d in result.docs] == [1.0]
    assert result.rejected == {"bad_name": 1, "wrong_type": 1}


def test_unknown_topic_and_missing_receive_time():
    assert decode_record(RULES, "other", b"k", seed(), HEADERS, None).code == "unknown_topic"
    assert decode_record(RULES, RAW, b"dev1", seed(), [(HEADER_RECEIVED_AT, b"not a time")], None).code == "no_receive_time"


def test_an_oversized_record_sends_only_its_metadata():
    big = b"[" + b" " * 2_000_000 + b"]"
    batch = Batch.of([Record(RAW, b"dev1", big, HEADERS, offset=7)], RULES)
    (dl,) = batch.deadletters
    key, value, headers = record_of(dl, max_value_bytes=65536)
    named = dict(headers)
    assert key == b"dev1" and value is None
    assert named["reason_code"] == b"oversized" and named["source_value_bytes"] == b"2000002"
    assert named["source_offset"] == b"7" and named[HEADER_RECEIVED_AT] == HEADERS[0][1]
    assert record_of(dl, max_value_bytes=3_000_000)[1] == big


# -- properties -------------------------------------------------------------------------
names = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8).map(lambda s: s + "\n"),
    st.sampled_from(["mqtt.home.pcroom", "type", "type.x", "loc", "temperature", "m\r", "a\x00b", "ünïcode", "²"]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([int(NOW), int(NOW * 1000), int(NOW * 1_000_000), 2**62, 0, -1]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | names,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=20,
)
readings = st.fixed_dictionaries(
    {"metric": names, "value": numbers | names | st.none()},
    optional={"timestamp": numbers | names, "tags": st.dictionaries(names, names | numbers, max_size=3) | json_values},
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.lists(readings, max_size=5).map(orjson.dumps),
    readings.map(orjson.dumps),
    st.dictionaries(names, numbers | names, max_size=5).map(orjson.dumps),
    st.integers(min_value=1, max_value=5000).map(nested),
    st.sampled_from([b'[{"metric":"m","value":NaN}]', b'{"v":Infinity}', b'{"v":1e999}',
                     b'{"v":123456789012345678901234567890}']),
)
keys = st.none() | st.binary(max_size=20) | names.map(str.encode)
headers = st.none() | st.just(HEADERS) | st.lists(st.tuples(st.just(HEADER_RECEIVED_AT), st.binary(max_size=30)), max_size=2)
timestamps = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(result, topic: str, value) -> None:
    assert isinstance(result, (Decoded, Rejected))
    if isinstance(result, Rejected):
        assert result.code and result.reason
        return
    assert result.source == (SENSOR if topic == RAW else HOST) and result.docs
    for doc_id, doc in result.docs:
        assert doc_id == document_id(result.source, doc)
        assert all(str(v).isprintable() for v in doc.values() if not isinstance(v, dict))
        if result.source == SENSOR:
            assert math.isfinite(doc["value"]) and all(k.isprintable() and v.isprintable() for k, v in doc["tags"].items())


@PROPERTY
@given(topic=st.sampled_from([RAW, HOSTS, "elsewhere"]), key=keys, value=payloads, hdrs=headers, ts=timestamps)
def test_any_record_decodes_or_is_rejected_never_raises(topic, key, value, hdrs, ts):
    check(decode_record(RULES, topic, key, value, hdrs, ts), topic, value)


@PROPERTY
@given(value=json_values.map(orjson.dumps) | st.lists(readings, max_size=5).map(orjson.dumps), key=keys)
def test_shallow_json_never_takes_the_internal_path(value, key):
    # Only what nobody foresaw is "internal"; ordinary bad JSON of any shape has its own reason.
    for topic in (RAW, HOSTS):
        result = decode_record(RULES, topic, key, value, HEADERS, None)
        assert not (isinstance(result, Rejected) and result.code == INTERNAL), result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.tuples(st.sampled_from([RAW, HOSTS]), keys, payloads), max_size=8))
def test_every_record_of_a_batch_is_a_document_owner_or_a_dead_letter(records):
    batch = Batch.of([Record(t, k, v, HEADERS, offset=i) for i, (t, k, v) in enumerate(records)], RULES)
    owners = {i for indexes in batch.owners.values() for i in indexes}
    dead = {d.message.offset() for d in batch.deadletters}
    assert owners | dead == set(range(len(records))) and not owners & dead
    expected = {}
    for i, (topic, _, _) in enumerate(records):
        expected[(topic, 0)] = i + 1
    assert batch.offsets() == expected


plain_names = st.from_regex(r"[A-Za-z0-9._/-]{1,12}", fullmatch=True) | names
near_now = st.one_of(st.floats(min_value=NOW - 3600, max_value=NOW + 60), st.integers(int(NOW - 3600), int(NOW + 60)),
                     st.integers(int((NOW - 3600) * 1000), int((NOW + 60) * 1000)),
                     st.integers(int((NOW - 3600) * 1e6), int((NOW + 60) * 1e6)))
good_readings = st.fixed_dictionaries(
    {"metric": plain_names, "value": numbers},
    optional={"timestamp": near_now, "tags": st.dictionaries(plain_names, plain_names | numbers, max_size=3)},
)


@PROPERTY
@given(value=st.lists(good_readings, min_size=1, max_size=5).map(orjson.dumps)
       | st.dictionaries(plain_names, numbers | plain_names, min_size=1, max_size=5).map(orjson.dumps))
def test_a_streamed_reading_is_the_document_and_id_of_its_csv_row(value):
    # The loader builds documents straight from the readings (no CSV text in between): they must be
    # what the minute DAG makes of the collector's file of the same payload, byte for byte and id for id.
    from include.sensors import csv_line, parse_payload
    from include.schemas import SENSOR_SCHEMA
    from include.transform import transform_file

    result = decode_record(RULES, RAW, b"dev-1", value, HEADERS, None)
    parsed = parse_payload(value, NOW)
    if not parsed.readings:
        assert isinstance(result, Rejected)
        return
    data = (",".join(SENSOR_SCHEMA.names) + "\n" + "".join(csv_line("dev-1", r) for r in parsed.readings)).encode()
    batch = transform_file(SENSOR, data)
    assert isinstance(result, Decoded)
    assert [orjson.dumps(doc) for _, doc in result.docs] == batch.documents
    assert [doc_id for doc_id, _ in result.docs] == batch.ids
