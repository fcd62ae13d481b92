"""include/opentsdb.py against the real OpenTSDB (on real HBase) of the local stack.

Every test writes its own metric (a fresh name per run), so runs never see
each other's data.
"""

from __future__ import annotations

import math
import uuid

import pytest

from include.opentsdb import OpenTSDBClient, OpenTSDBUnavailable

T0 = 1_700_000_000  # a fixed minute, so queries have an exact window
READINGS = {"temperature": [22.5, 22.7, 23.1], "humidity": [18.2, 18.0, 17.5], "dust": [22.3, 40.0, 31.25]}


def _metric(name: str) -> str:
    return f"sluice.test.{name}.{uuid.uuid4().hex[:8]}"


def _seed_minute(metric: str) -> list[dict]:
    """The seed's Arduino payload shape: one metric, the quantity in ``type=``, 3 readings each."""
    return [
        {"metric": metric, "timestamp": T0 + 20 * i, "value": value, "tags": {"type": kind, "loc": "pcroom"}}
        for kind, values in READINGS.items()
        for i, value in enumerate(values)
    ]


def _series(client: OpenTSDBClient, metric: str, **kw) -> dict[tuple, dict[str, float]]:
    got = client.query(metric, start=T0, end=T0 + 59, **kw)
    return {tuple(sorted(s["tags"].items())): s["dps"] for s in got}


def _expected(metric: str) -> dict[tuple, dict[str, float]]:
    return {
        (("loc", "pcroom"), ("type", kind)): {str(T0 + 20 * i): v for i, v in enumerate(values)}
        for kind, values in READINGS.items()
    }


@pytest.fixture
def client(opentsdb):
    with OpenTSDBClient(opentsdb.config.url("opentsdb"), batch_size=4) as c:
        yield c


def test_datapoints_read_back_exactly_and_per_tag_aggregation_is_one_series(client):
    metric = _metric("pcroom")
    result = client.put(_seed_minute(metric))
    assert (result.accepted, result.failed, result.renamed, result.batches) == (9, [], 0, 3)

    assert _series(client, metric) == _expected(metric)
    # The seed's mistake was a sum over the metric: temperature + humidity + dust.
    (temperature,) = client.query(metric, start=T0, end=T0 + 59, aggregator="sum", tags={"type": "temperature"})
    assert temperature["tags"] == {"type": "temperature", "loc": "pcroom"}
    assert temperature["dps"] == {str(T0 + 20 * i): v for i, v in enumerate(READINGS["temperature"])}
    (everything,) = client.query(metric, start=T0, end=T0 + 59, aggregator="sum")
    assert everything["aggregateTags"] == ["type"]
    assert everything["dps"][str(T0)] == pytest.approx(22.5 + 18.2 + 22.3)


def test_rewriting_the_same_datapoints_leaves_the_same_series_and_values(client):
    metric = _metric("rewrite")
    points = _seed_minute(metric)
    assert client.put(points).accepted == 9
    again = client.put(list(reversed(points)))
    assert (again.accepted, again.failed) == (9, [])
    assert _series(client, metric) == _expected(metric)


def test_invalid_datapoints_are_reported_with_opentsdb_reasons_and_the_valid_ones_land(client):
    metric = _metric("mixed")
    good = _seed_minute(metric)[:3]
    batch = [
        good[0],
        {"metric": metric, "timestamp": T0 + 1, "value": math.nan, "tags": {"type": "temperature"}},
        good[1],
        # A tag key is schema: never renamed, so OpenTSDB's refusal is what the caller sees.
        {"metric": metric, "timestamp": T0 + 2, "value": 1.0, "tags": {"room name": "pc"}},
        {"metric": metric, "timestamp": T0 + 3, "value": 2.0, "tags": {}},
        # A tag value is sanitised: it lands under the renamed value.
        {"metric": metric, "timestamp": T0 + 4, "value": 3.0, "tags": {"type": "temperature", "loc": "pc room"}},
        good[2],
    ]
    result = client.put(batch)
    assert result.accepted == 4
    assert [(f.index, f.datapoint, f.reason) for f in result.failed] == [
        (1, batch[1], "Unable to parse value to a number"),
        (3, batch[3], 'Invalid tag name with value [pc] ("room name"): illegal character:  '),
        (4, batch[4], "Missing tags"),
    ]
    assert (result.renamed, result.renames) == (1, {"pc room": "pc_room"})
    series = _series(client, metric)
    assert series == {
        (("loc", "pcroom"), ("type", "temperature")): {str(T0): 22.5, str(T0 + 20): 22.7, str(T0 + 40): 23.1},
        (("loc", "pc_room"), ("type", "temperature")): {str(T0 + 4): 3.0},
    }


def test_opentsdb_stopped_during_a_write_fails_cleanly_and_a_retry_after_recovery_lands_everything(opentsdb):
    metric = _metric("outage")
    points = [
        {"metric": metric, "timestamp": T0 + i, "value": float(i), "tags": {"type": "temperature", "loc": "pcroom"}}
        for i in range(60)
    ]
    # One request at a time, so which batches were stored is exact (the concurrent case is below).
    client = OpenTSDBClient(opentsdb.config.url("opentsdb"), batch_size=10, concurrency=1, max_attempts=3,
                            backoff=0.2)

    def stopping_midway():
        for i, point in enumerate(points):
            if i == 25:  # two batches stored, the third being read
                opentsdb.stop()
            yield point

    try:
        with pytest.raises(OpenTSDBUnavailable) as err:
            client.put(stopping_midway())
        assert "failed 3 attempts to store a batch of 10 datapoints (from index 20)" in str(err.value)
        assert err.value.result.accepted == 20
        assert [i for i, _ in err.value.pending] == list(range(20, 30))
    finally:
        opentsdb.restore()

    result = client.put(points)
    assert (result.accepted, result.failed) == (60, [])
    (series,) = client.query(metric, start=T0, end=T0 + 59)
    assert series["dps"] == {str(T0 + i): float(i) for i in range(60)}


def test_concurrent_puts_account_for_every_point_of_a_mixed_batch(opentsdb):
    """Bad points spread over many requests in flight: each one is failed with OpenTSDB's reason at its index."""
    metric = _metric("concurrent")
    points: list[dict] = []
    bad: dict[int, str] = {}
    for i in range(2000):
        point = {"metric": metric, "timestamp": T0 + i, "value": float(i), "tags": {"type": "temperature"}}
        if i % 97 == 5:
            point["value"] = math.nan
            bad[i] = "Unable to parse value to a number"
        elif i % 89 == 7:
            point["tags"] = {}
            bad[i] = "Missing tags"
        elif i % 83 == 11:
            point["tags"] = {"type": "temperature", "loc": "pc room"}  # renamed, lands
        elif i == 1999:
            point = "not a datapoint"
            bad[i] = "not sent: a datapoint must be a mapping, got str"
        points.append(point)
    with OpenTSDBClient(opentsdb.config.url("opentsdb"), batch_size=50, concurrency=4) as client:
        result = client.put(points)
        assert result.batches == 40
        assert [(f.index, f.reason) for f in result.failed] == sorted(bad.items())
        assert all(f.datapoint is points[f.index] for f in result.failed)
        assert result.accepted == 2000 - len(bad)
        assert result.renamed == sum(1 for i in range(2000) if i % 83 == 11 and i not in bad and i % 97 != 5)
        stored = {
            int(ts): v
            for series in client.query(metric, start=T0, end=T0 + 1999)
            for ts, v in series["dps"].items()
        }
    assert stored == {T0 + i: float(i) for i in range(2000) if i not in bad}


def test_opentsdb_stopped_under_concurrent_puts_loses_nothing(opentsdb):
    """Stored, or pending in the error: every point read is one or the other, and a retry lands them all."""
    metric = _metric("outage-concurrent")
    points = [{"metric": metric, "timestamp": T0 + i, "value": float(i), "tags": {"type": "t"}} for i in range(400)]
    client = OpenTSDBClient(opentsdb.config.url("opentsdb"), batch_size=20, concurrency=4, max_attempts=2,
                            backoff=0.2)
    read: list[int] = []

    def stopping_midway():
        for i, point in enumerate(points):
            if i == 200:
                opentsdb.stop()
            read.append(i)
            yield point

    try:
        with pytest.raises(OpenTSDBUnavailable) as err:
            client.put(stopping_midway())
        pending = [i for i, _ in err.value.pending]
        assert pending and pending == sorted(pending)
        assert err.value.result.accepted + len(pending) == len(read) and len(read) < len(points)
        assert err.value.result.failed == []
    finally:
        opentsdb.restore()
    result = client.put(points)
    client.close()
    assert (result.accepted, result.failed) == (400, [])
