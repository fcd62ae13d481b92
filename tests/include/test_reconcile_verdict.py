"""The reconciliation verdict and the Sluice page's pictures, on plain counts (no services)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from include import sluice_page
from include.reconcile import MinuteCounts, judge, result_document

MINUTE = datetime(2026, 12, 1, 9, 45, tzinfo=timezone.utc)
WHOLE = {"received": 20, "collector": 60, "landed": 60, "kafka": 60, "loaded": 60, "elasticsearch": 60, "opentsdb": 60}


def counts(deadletters: int = 0, unmeasured: dict | None = None, **hops) -> MinuteCounts:
    c = MinuteCounts("sensor", MINUTE, hops={**WHOLE, **hops}, unmeasured=dict(unmeasured or {}))
    if deadletters:
        c.deadletters["load"] = {"column value": deadletters}
    return c


@pytest.mark.parametrize(
    ("c", "status", "mismatches"),
    [
        pytest.param(counts(), "green", [], id="whole"),
        pytest.param(counts(landed=0), "red", [("landed", 60, 0)], id="file-deleted"),
        pytest.param(counts(elasticsearch=55), "red", [("elasticsearch", 60, 55)], id="documents-deleted"),
        pytest.param(counts(opentsdb=59), "red", [("opentsdb", 60, 59)], id="point-missing"),
        pytest.param(counts(kafka=61), "red", [("kafka", 60, 61)], id="reading-only-on-kafka"),
        pytest.param(counts(deadletters=2, loaded=58, elasticsearch=58, opentsdb=58), "green", [],
                     id="dead-letters-explain-the-difference"),
        pytest.param(counts(deadletters=2), "red",
                     [("loaded", 58, 60), ("elasticsearch", 58, 60), ("opentsdb", 58, 60)], id="dead-letters-also-loaded"),
        pytest.param(counts(opentsdb=None, unmeasured={"opentsdb": "ConnectionError"}), "amber", [], id="sink-down"),
        pytest.param(counts(kafka=None, opentsdb=None), "green", [], id="hops-not-configured"),
        pytest.param(counts(received=None, collector=None, unmeasured={"collector": "no manifest"}, landed=60),
                     "amber", [], id="no-manifest-judged-on-landed-files"),
        pytest.param(counts(received=None, collector=None, unmeasured={"collector": "no manifest"}, elasticsearch=1),
                     "red", [("elasticsearch", 60, 1)], id="no-manifest-still-finds-a-sink-short"),
    ],
)
def test_verdicts(c, status, mismatches):
    v = judge(c)
    assert (v.status, [(m.hop, m.expected, m.found) for m in v.mismatches]) == (status, mismatches)


def test_a_red_minute_found_whole_again_is_healed_and_stays_healed():
    checked = MINUTE + timedelta(minutes=3)
    red = result_document(judge(counts(landed=0)), checked_at=checked)
    assert (red["status"], red["first_red_at"], red["healed"]) == ("red", "2026-12-01T09:48:00Z", False)
    healed = result_document(judge(counts()), checked_at=checked + timedelta(minutes=1), previous=red)
    assert (healed["status"], healed["healed"], healed["healed_at"]) == ("green", True, "2026-12-01T09:49:00Z")
    again = result_document(judge(counts()), checked_at=checked + timedelta(minutes=2), previous=healed)
    assert (again["healed"], again["healed_at"]) == (True, "2026-12-01T09:49:00Z")
    assert result_document(judge(counts()), checked_at=checked)["healed"] is False


def test_the_grid_marks_every_minute_and_escapes_what_it_shows():
    minutes = [MINUTE + timedelta(minutes=i) for i in range(3)]
    cells = {("sensor", "2026-12-01T09:46:00Z"): {"status": "red", "summary": "<script>x</script>"}}
    svg = sluice_page.grid_svg(cells, minutes, ("host", "sensor"), lambda s, m: f"/m/{s}/{m:%H%M}")
    assert svg.count("class='cell'") == 6 and svg.count("data-status='red'") == 1
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "href='/m/sensor/0946'" in svg


def test_the_freshness_chart_pins_an_unloaded_minute_to_the_top_as_a_breach():
    docs = {"sensor": [{"@timestamp": "2026-12-01T09:45:00Z", "freshness_s": None, "breach": True, "summary": "held"},
                       {"@timestamp": "2026-12-01T09:46:00Z", "freshness_s": 12.0, "breach": False, "summary": "ok"}]}
    svg = sluice_page.freshness_svg(docs, MINUTE, MINUTE + timedelta(minutes=5), 30)
    assert svg.count("class='freshness-point'") == 2 and svg.count("class='breach'") == 1 and "SLA 30 s" in svg


def test_lag_tiles_show_each_partitions_status_and_lag():
    parts = [{"group": "sluice-stream-loader", "topic": "sluice.sensors.raw", "partition": p, "status": s, "lag": lag,
              "@timestamp": "2026-12-01T09:45:00Z"} for p, s, lag in ((0, "OK", 0), (1, "STOP", 1200))]
    svg = sluice_page.lag_svg(parts)
    assert svg.count("class='lag-tile'") == 2 and "data-status='STOP'" in svg and "STOP lag 1200" in svg
    assert "no consumer-lag check" in sluice_page.lag_svg([])
