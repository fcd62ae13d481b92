"""Manifests and heartbeats: the keys, a round trip through a real file landing zone, and bad bytes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from include.contract import heartbeat_key, manifest_key, reason_code
from include.landing import FileLanding
from include.manifests import (
    Heartbeat,
    ManifestError,
    MinuteManifest,
    live_writers,
    read_heartbeats,
    read_manifests,
    write_heartbeat,
    write_manifest,
)

MINUTE = datetime(2026, 11, 22, 5, 38, 41, tzinfo=timezone.utc)


def test_keys():
    assert manifest_key("sensor", MINUTE, "mqtt-a") == "manifests/sensor/date=2026-11-22/hour=05/minute=38/mqtt-a.json"
    assert heartbeat_key("host", "web-1") == "heartbeats/host/web-1.json"
    with pytest.raises(ValueError, match="not usable in a file name"):
        manifest_key("sensor", MINUTE, "a/b")
    with pytest.raises(ValueError, match="source 'x'"):
        heartbeat_key("x", "w")


def test_round_trip_through_the_store(tmp_path):
    landing = FileLanding(tmp_path)
    manifest = MinuteManifest("sensor", "mqtt-a", MINUTE, {"d2": 3, "d1": 57}, 21, {"invalid-json": 1})
    write_manifest(landing, manifest)
    (back,), bad = read_manifests(landing, "sensor", MINUTE)
    assert bad == []
    assert back.rows == {"d1": 57, "d2": 3} and back.total_rows == 60 and back.received == 21
    assert back.minute == MINUTE.replace(second=0) and back.deadletters == {"invalid-json": 1}

    beat = Heartbeat("sensor", "mqtt-a", MINUTE, 5.0, MINUTE - timedelta(hours=1))
    write_heartbeat(landing, beat)
    (hb,), bad = read_heartbeats(landing, "sensor")
    assert bad == [] and hb == beat
    assert live_writers([hb], MINUTE + timedelta(seconds=15)) == [hb]
    assert live_writers([hb], MINUTE + timedelta(seconds=15.1)) == []


@pytest.mark.parametrize(
    "data, reason",
    [
        pytest.param(b"{", "not JSON", id="truncated"),
        pytest.param(b"[]", "expected a JSON object", id="array"),
        pytest.param(b'{"source": "x"}', "source 'x'", id="unknown-source"),
        pytest.param(b'{"source": "host", "writer": "w", "received": -1}', "received must be", id="negative"),
        pytest.param(
            b'{"source": "host", "writer": "w", "received": 1, "minute": "yesterday"}', "is not an ISO", id="bad-time"
        ),
        pytest.param(
            b'{"source": "host", "writer": "w", "received": 1, "minute": "2026-11-22T05:38:00Z", "rows": {"d": 1.5}}',
            "rows must map",
            id="fractional-rows",
        ),
    ],
)
def test_bad_manifest_is_a_reason_not_a_crash(tmp_path, data, reason):
    landing = FileLanding(tmp_path)
    landing.put(manifest_key("host", MINUTE, "w"), data)
    good, bad = read_manifests(landing, "host", MINUTE)
    assert good == []
    assert len(bad) == 1 and reason in bad[0] and "manifests/host/" in bad[0]


def test_bad_heartbeat_is_a_reason():
    with pytest.raises(ManifestError, match="interval_s must be"):
        Heartbeat.from_json(b'{"source": "host", "writer": "w", "interval_s": 0}', "k")


def test_reason_code():
    assert reason_code("invalid-json: expecting value") == "invalid-json"
    assert reason_code("internal: RecursionError") == "internal"
    assert reason_code("") == "unknown"
