"""The minute sensor's readiness from the collectors' manifests and heartbeats, on the real MinIO.

Manifests and heartbeats are written through :mod:`include.manifests`, exactly
as the collectors write them (that module is the contract between the two).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from include import pipeline
from include.contract import minute_key
from include.manifests import Heartbeat, MinuteManifest, write_heartbeat, write_manifest

from test_loads import host_csv

MINUTE = datetime(2020, 9, 3, 8, 44, tzinfo=timezone.utc)
END = MINUTE + timedelta(minutes=1)
STARTED = MINUTE - timedelta(hours=1)


def beat(landing, writer: str, at: datetime, *, source: str = "host", started: datetime = STARTED) -> None:
    write_heartbeat(landing, Heartbeat(source, writer, at, interval_s=5.0, started_at=started))


def close_minute(landing, writer: str, minute: datetime, devices: dict[str, int], *, source: str = "host") -> None:
    """What a collector does when it closes a minute: its files land, then its manifest."""
    for device, rows in devices.items():
        landing.put(minute_key(source, minute, device), host_csv(device, minute, range(rows)))
    write_manifest(landing, MinuteManifest(source, writer, minute, rows=devices, received=sum(devices.values())))


def test_a_device_that_published_in_one_minute_only_does_not_hold_back_the_next(landing):
    now = END + timedelta(seconds=3)
    beat(landing, "collector-a", now)
    # 08:43 had an intermittent device (web-once); 08:44 has only web-1.
    close_minute(landing, "collector-a", MINUTE - timedelta(minutes=1), {"web-1": 60, "web-once": 1})
    close_minute(landing, "collector-a", MINUTE, {"web-1": 60})
    ready = pipeline.minute_files_ready(landing, "host", MINUTE, now=now, grace_seconds=45)
    assert (ready.done, ready.reason, ready.missing, ready.stopped) == (True, "manifests", [], [])
    assert [f.key.rsplit("/", 1)[1] for f in ready.files] == ["web-1.csv"]
    evidence = ready.evidence(MINUTE)
    assert (evidence["live"], evidence["decided_after_minute_s"], evidence["grace_after_minute_s"]) == (
        ["collector-a"], 3.0, 45.0)


def test_the_minute_waits_for_every_live_writer_then_goes_on_after_the_grace(landing):
    now = END + timedelta(seconds=3)
    for writer in ("collector-a", "collector-b"):
        beat(landing, writer, now)
    close_minute(landing, "collector-a", MINUTE, {"web-1": 60})
    early = pipeline.minute_files_ready(landing, "host", MINUTE, now=now, grace_seconds=45)
    assert (early.done, early.reason, early.missing) == (False, "", ["collector-b"])
    later = END + timedelta(seconds=45)
    for writer in ("collector-a", "collector-b"):
        beat(landing, writer, later)  # still alive, still without its manifest
    late = pipeline.minute_files_ready(landing, "host", MINUTE, now=later, grace_seconds=45)
    assert (late.done, late.reason, late.missing) == (True, "grace", ["collector-b"])
    close_minute(landing, "collector-b", MINUTE, {"web-2": 60})
    whole = pipeline.minute_files_ready(landing, "host", MINUTE, now=later, grace_seconds=3600)
    assert (whole.done, whole.reason, whole.missing, len(whole.files)) == (True, "manifests", [], 2)


def test_a_writer_that_stopped_heartbeating_is_reported_and_holds_nothing(landing):
    now = END + timedelta(seconds=3)
    beat(landing, "collector-a", now)
    beat(landing, "collector-gone", now - timedelta(seconds=16))  # 3 missed 5 s beats
    close_minute(landing, "collector-a", MINUTE, {"web-1": 60})
    ready = pipeline.minute_files_ready(landing, "host", MINUTE, now=now, grace_seconds=45)
    assert (ready.done, ready.reason, ready.missing, ready.stopped) == (True, "manifests", [], ["collector-gone"])
    assert ready.live == ["collector-a"]


def test_a_stopped_writer_that_was_the_only_one_holds_the_minute_until_the_grace(landing):
    # Its manifest of the partial minute is there (a collector flushes it when stopped), but
    # with no live writer nothing says the minute is whole.
    close_minute(landing, "collector-gone", MINUTE, {"web-1": 30})
    beat(landing, "collector-gone", MINUTE + timedelta(seconds=30))
    early = pipeline.minute_files_ready(landing, "host", MINUTE, now=END + timedelta(seconds=5), grace_seconds=45)
    late = pipeline.minute_files_ready(landing, "host", MINUTE, now=END + timedelta(seconds=45), grace_seconds=45)
    assert (early.done, early.stopped, early.live) == (False, ["collector-gone"], [])
    assert (late.done, late.reason, late.stopped, len(late.files)) == (True, "grace", ["collector-gone"], 1)


def test_a_writer_started_after_the_minute_is_not_waited_for(landing):
    now = END + timedelta(seconds=3)
    beat(landing, "collector-a", now)
    beat(landing, "collector-new", now, started=END + timedelta(seconds=1))
    close_minute(landing, "collector-a", MINUTE, {"web-1": 60})
    assert pipeline.minute_files_ready(landing, "host", MINUTE, now=now, grace_seconds=45).done


def test_no_heartbeat_at_all_waits_for_the_grace(landing):
    landing.put(minute_key("host", MINUTE, "web-1"), host_csv("web-1", MINUTE, range(1)))
    early = pipeline.minute_files_ready(landing, "host", MINUTE, now=END + timedelta(seconds=5), grace_seconds=45)
    late = pipeline.minute_files_ready(landing, "host", MINUTE, now=END + timedelta(seconds=45), grace_seconds=45)
    assert (early.done, late.done, late.reason, len(late.files)) == (False, True, "grace", 1)


def test_an_unreadable_manifest_or_heartbeat_is_logged_and_counts_as_absent(landing, caplog):
    now = END + timedelta(seconds=3)
    beat(landing, "collector-a", now)
    landing.put("heartbeats/host/broken.json", b"{not json")
    landing.put("manifests/host/date=2020-09-03/hour=08/minute=44/collector-a.json", b"[]")
    ready = pipeline.minute_files_ready(landing, "host", MINUTE, now=now, grace_seconds=45)
    assert (ready.done, ready.missing) == (False, ["collector-a"])
    assert "broken.json: not JSON" in caplog.text and "expected a JSON object" in caplog.text
