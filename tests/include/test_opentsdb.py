"""Pure logic of include/opentsdb.py: the sanitising rule, batching, the details answer.

Plus the retry path against a real closed port (a real connection refusal,
nothing stands in for OpenTSDB).
"""

from __future__ import annotations

import math
import socket

import pytest

from include.opentsdb import (
    OpenTSDBClient,
    OpenTSDBResponseError,
    OpenTSDBUnavailable,
    batched,
    parse_details,
    prepare,
    sanitise,
)

SEED = [  # the Arduino payload of seeds/000, one minute of it
    {"metric": "mqtt.home.pcroom", "timestamp": 1346846400, "value": 22.5, "tags": {"type": "temperature", "loc": "pcroom"}},
    {"metric": "mqtt.home.pcroom", "timestamp": 1346846400, "value": 18.2, "tags": {"type": "humidity", "loc": "pcroom"}},
    {"metric": "mqtt.home.pcroom", "timestamp": 1346846400, "value": 22.3, "tags": {"type": "dust", "loc": "pcroom"}},
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("mqtt.home.pcroom", "mqtt.home.pcroom", id="seed-metric-unchanged"),
        pytest.param("host.cpu_usage_percent", "host.cpu_usage_percent", id="host-metric-unchanged"),
        pytest.param("a-b_c.d/e", "a-b_c.d/e", id="all-ascii-specials-kept"),
        pytest.param("pc room", "pc_room", id="space"),
        pytest.param("temp:°C", "temp__C", id="colon-and-degree-sign"),
        pytest.param("a=b,c", "a_b_c", id="opentsdb-separators"),
        pytest.param("거실", "거실", id="hangul-letters-kept"),
        pytest.param("Wohnzimmer-Süd", "Wohnzimmer-Süd", id="latin-letters-kept"),
        pytest.param("\U0001d400x", "_x", id="letter-outside-bmp-refused-by-java"),
        pytest.param("٣", "_", id="non-ascii-digit"),
        pytest.param("", "", id="empty-stays-empty"),
    ],
)
def test_sanitise_rule(name, expected):
    assert sanitise(name) == expected
    assert sanitise(expected) == expected  # idempotent


def test_batched_is_lazy_and_keeps_order():
    consumed = []

    def source():
        for i in range(7):
            consumed.append(i)
            yield i

    it = batched(source(), 3)
    assert next(it) == [0, 1, 2]
    assert consumed == [0, 1, 2]
    assert list(it) == [[3, 4, 5], [6]]
    with pytest.raises(ValueError, match="at least 1, got 0"):
        next(batched([], 0))


@pytest.mark.parametrize(
    ("datapoint", "reason"),
    [
        pytest.param(5, "not sent: a datapoint must be a mapping, got int", id="not-a-mapping"),
        pytest.param({"metric": None, "timestamp": 1, "value": 1, "tags": {"a": "b"}},
                     "not sent: metric must be a string, got None", id="metric-none"),
        pytest.param({"metric": "m", "timestamp": 1, "value": 1, "tags": {"a": 3}},
                     "not sent: tag 'a'=3 is not a pair of strings", id="tag-value-int"),
        pytest.param({"metric": "m", "timestamp": 1, "value": [1], "tags": {"a": "b"}},
                     "not sent: value [1] is not a number or string", id="value-list"),
        pytest.param({"metric": "m", "timestamp": True, "value": 1, "tags": {"a": "b"}},
                     "not sent: timestamp True is not a number or string", id="timestamp-bool"),
    ],
)
def test_prepare_refuses_only_what_cannot_be_sent(datapoint, reason):
    entry, refusal, renames = prepare(0, datapoint)
    assert (entry, refusal, renames) == (None, reason, {})


def test_prepare_sends_nan_and_empty_tags_for_opentsdb_to_judge_and_renames_values_not_keys():
    entry, refusal, _ = prepare(3, {"metric": "m", "timestamp": 1, "value": math.nan, "tags": {}})
    assert refusal is None and entry.index == 3 and math.isnan(entry.wire["value"]) and entry.wire["tags"] == {}
    original = {"metric": "mqtt home", "timestamp": 1, "value": 1, "tags": {"room name": "pc room"}}
    entry, refusal, renames = prepare(0, original)
    assert refusal is None
    assert entry.wire == {"metric": "mqtt_home", "timestamp": 1, "value": 1, "tags": {"room name": "pc_room"}}
    assert renames == {"mqtt home": "mqtt_home", "pc room": "pc_room"}
    assert entry.original is original  # failures report what the caller gave


def _entries(datapoints):
    return [prepare(i, dp)[0] for i, dp in enumerate(datapoints)]


def test_details_errors_are_matched_to_their_datapoints_including_repeats():
    sent = [*SEED, dict(SEED[0], value=math.nan), dict(SEED[0], value=math.nan)]
    echo = {"metric": "mqtt.home.pcroom", "timestamp": 1346846400, "value": "NaN",
            "tags": {"loc": "pcroom", "type": "temperature"}}  # tags in another order
    body = {"success": 3, "failed": 2, "timeouts": 0, "errors": [
        {"datapoint": echo, "error": "Unable to parse value to a number"},
        {"datapoint": echo, "error": "Unable to parse value to a number"},
    ]}
    outcome = parse_details(_entries(sent), body)
    assert outcome.accepted == 3 and outcome.unconfirmed == []
    assert [(f.index, f.reason) for f in outcome.failures] == [
        (3, "Unable to parse value to a number"), (4, "Unable to parse value to a number"),
    ]


def test_details_with_timeouts_leaves_all_unrefused_datapoints_unconfirmed():
    sent = [*SEED, dict(SEED[0], tags={})]
    body = {"success": 1, "failed": 1, "timeouts": 2, "errors": [
        {"datapoint": dict(SEED[0], tags={}), "error": "Missing tags"},
    ]}
    outcome = parse_details(_entries(sent), body)
    assert outcome.accepted == 0
    assert [f.reason for f in outcome.failures] == ["Missing tags"]
    assert [e.index for e in outcome.unconfirmed] == [0, 1, 2]


def test_details_whose_counts_do_not_add_up_is_an_error():
    with pytest.raises(OpenTSDBResponseError, match="success=2 failed=0 timeouts=0 for a batch of 3"):
        parse_details(_entries(SEED), {"success": 2, "failed": 0, "timeouts": 0, "errors": []})
    with pytest.raises(OpenTSDBResponseError, match="not a details answer"):
        parse_details(_entries(SEED), {"error": {"code": 400}})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_server_is_retried_with_backoff_then_fails_with_the_batch_in_flight():
    delays = []
    client = OpenTSDBClient(f"http://127.0.0.1:{_closed_port()}", batch_size=2, concurrency=1, max_attempts=4,
                            backoff=0.5, backoff_max=1.5, timeout=5, sleep=delays.append)
    with pytest.raises(OpenTSDBUnavailable) as err:
        client.put(SEED)
    assert delays == [0.5, 1.0, 1.5]
    assert "failed 4 attempts to store a batch of 2 datapoints (from index 0)" in str(err.value)
    assert "ConnectionError" in str(err.value)
    assert err.value.pending == [(0, SEED[0]), (1, SEED[1])]
    assert err.value.result.accepted == 0 and err.value.result.retries == 3


def test_unreachable_server_with_batches_in_flight_reports_every_one_of_them_pending():
    # Three batches in flight at once, all refused: nothing is lost, nothing more is read.
    read = []

    def points():
        for i in range(20):
            read.append(i)
            yield {**SEED[i % 3], "timestamp": 1346846400 + i}

    client = OpenTSDBClient(f"http://127.0.0.1:{_closed_port()}", batch_size=2, concurrency=3, max_attempts=2,
                            backoff=0.01, timeout=5, sleep=lambda _: None)
    with pytest.raises(OpenTSDBUnavailable) as err:
        client.put(points())
    client.close()
    assert "failed 2 attempts to store a batch of 2 datapoints (from index 0)" in str(err.value)
    assert "2 other batches in flight failed too" in str(err.value)
    assert [i for i, _ in err.value.pending] == list(range(6)) == read
    assert err.value.result.accepted == 0 and err.value.result.batches == 3 and err.value.result.retries == 3


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"concurrency": 0}, {"max_attempts": 0}])
def test_client_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be at least 1, got 0"):
        OpenTSDBClient("http://127.0.0.1:4242", **kwargs)
