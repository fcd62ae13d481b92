"""Payload parsing, table-driven, from the Arduino payload of seeds/000."""

from __future__ import annotations

import orjson
import pytest

from include.contract import timestamp_text
from include.sensors import DeviceError, Limits, csv_line, device_from_topic, parse_payload

NOW = 1_700_000_000.0  # receive time of every case
TS = 1_699_999_990

#: seeds/000: three readings of one meter, one metric, told apart by the type tag.
SEED = [
    {"type": "Metric", "metric": "mqtt.home.pcroom", "timestamp": TS, "value": 22.5,
     "tags": {"type": "temperature", "loc": "pcroom"}},
    {"type": "Metric", "metric": "mqtt.home.pcroom", "timestamp": TS, "value": 18.2,
     "tags": {"type": "humidity", "loc": "pcroom"}},
    {"type": "Metric", "metric": "mqtt.home.pcroom", "timestamp": TS, "value": 22.3,
     "tags": {"type": "dust", "loc": "pcroom"}},
]


def with_(i: int, **changes) -> bytes:
    items = [dict(x) for x in SEED]
    for k, v in changes.items():
        if v is ...:
            items[i].pop(k)
        else:
            items[i][k] = v
    return orjson.dumps(items)


@pytest.mark.parametrize(
    "payload, readings, codes",
    [
        pytest.param(orjson.dumps(SEED), 3, [], id="seed-array"),
        pytest.param(orjson.dumps(SEED[0]), 1, [], id="seed-single-object"),
        pytest.param(b'{"temperature": 21.5, "humidity": 40, "dust": 12.0, "loc": "lab"}', 3, [], id="flat-object"),
        pytest.param(b'{"timestamp": 1699999990000, "temperature": 21.5}', 1, [], id="flat-millis"),
        pytest.param(b"{not json", 0, ["not_json"], id="not-json"),
        pytest.param(b"", 0, ["not_json"], id="empty"),
        pytest.param(b"[]", 0, ["no_readings"], id="empty-array"),
        pytest.param(b"42", 0, ["wrong_type"], id="scalar"),
        pytest.param(with_(1, value="18.2"), 2, ["wrong_type"], id="value-string"),
        pytest.param(with_(1, value=True), 2, ["wrong_type"], id="value-bool"),
        pytest.param(with_(2, value=...), 2, ["missing_value"], id="missing-value"),
        pytest.param(with_(0, value=None), 2, ["missing_value"], id="null-value"),
        pytest.param(with_(0, metric=...), 2, ["missing_metric"], id="missing-metric"),
        pytest.param(with_(0, metric="a b"), 2, ["bad_name"], id="metric-with-space"),
        pytest.param(with_(0, tags={"type": "a,b"}), 2, ["bad_name"], id="tag-with-comma"),
        pytest.param(with_(0, tags=["x"]), 2, ["wrong_type"], id="tags-not-object"),
        pytest.param(orjson.dumps(SEED).replace(b"22.5", b"NaN"), 0, ["not_json"], id="nan"),
        pytest.param(with_(0, timestamp=4102444800), 2, ["timestamp_out_of_range"], id="year-2100"),
        pytest.param(with_(0, timestamp=0), 2, ["timestamp_out_of_range"], id="epoch-zero"),
        pytest.param(with_(0, timestamp="2023-11-14T22:13:10Z"), 2, ["wrong_type"], id="timestamp-string"),
        pytest.param(b"[" + b"1," * 40000 + b"1]", 0, ["oversized"], id="oversized"),
        pytest.param(b'{"temperature": [1]}', 0, ["wrong_type"], id="flat-list-value"),
        pytest.param(b'{"loc": "lab"}', 0, ["no_readings"], id="flat-no-numbers"),
    ],
)
def test_parse_payload(payload, readings, codes):
    parsed = parse_payload(payload, NOW, Limits())
    assert len(parsed.readings) == readings
    assert [r.code for r in parsed.rejects] == codes
    if codes:
        assert parsed.reason


def test_nan_reason_names_nan():
    parsed = parse_payload(orjson.dumps(SEED).replace(b"22.5", b"NaN"), NOW)
    assert "NaN" in parsed.reason


def test_seed_rows_are_long_format_with_sorted_tags():
    parsed = parse_payload(orjson.dumps(SEED), NOW)
    lines = [csv_line("pcroom", r) for r in parsed.readings]
    assert lines[0] == "2023-11-14T22:13:10Z,pcroom,mqtt.home.pcroom,22.5,loc=pcroom type=temperature\n"
    assert {line.split(",")[4].strip() for line in lines} == {
        "loc=pcroom type=temperature", "loc=pcroom type=humidity", "loc=pcroom type=dust"}


def test_missing_timestamp_is_receive_time_and_millis_are_kept():
    parsed = parse_payload(b'{"metric": "m", "value": 1}', NOW)
    assert parsed.readings[0].epoch == NOW
    parsed = parse_payload(b'{"metric": "m", "value": 1, "timestamp": 1699999990123}', NOW)
    assert timestamp_text(parsed.readings[0].epoch) == "2023-11-14T22:13:10.123Z"


@pytest.mark.parametrize(
    "topic, level, device",
    [
        pytest.param("sluice/sensors/pcroom", -1, "pcroom", id="last-level"),
        pytest.param("home/pcroom/data", 1, "pcroom", id="middle-level"),
    ],
)
def test_device_from_topic(topic, level, device):
    assert device_from_topic(topic, level) == device


@pytest.mark.parametrize("topic, level", [pytest.param("a/b", 5, id="no-such-level"),
                                          pytest.param("a/b c", -1, id="space")])
def test_device_from_topic_rejects(topic, level):
    with pytest.raises(DeviceError):
        device_from_topic(topic, level)
