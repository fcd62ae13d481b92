"""The Spark anomaly job on local Spark against simulated days with known spikes.

Data (generated offline by ``collectors.simulate_sensors --output``, the
collector's CSV format, one file per writer per minute): one UTC day,
2026-11-22, of two writers in the same minute folders:

* ``sim-spiked``: 3 devices, a reading of each type every 30 s, ``--anomaly-rate
  0.01`` with seed 7 (about 260 spikes in 25,920 readings, each one listed in
  the ground truth);
* ``sim-clean``: 3 other devices, same rate, no spikes (25,920 readings).

One job run over the day (2,880 files, 51,840 readings) serves every test of
the module: about 1.5–3 minutes on the shared 2-core machine, most of it Spark
opening the small files. The test asserts precision and recall ≥ 0.9 on the
spiked devices and a false-positive rate ≤ 0.1 % on the clean ones, and prints
the figures.
"""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from collectors.simulate_sensors import SimulatorConfig, write_offline
from include.anomaly import job
from include.anomaly.detect import Method
from include.landing import FileLanding
from include.contract import FileDeadLetter
from include.loads import LoadRecord, write_records
from include.schemas import SENSOR

DAY = datetime(2026, 11, 22, tzinfo=timezone.utc)
NEXT = DAY + timedelta(days=1)
RATE = 1 / 30
DEVICES = 3
REPO = Path(__file__).resolve().parents[2]


def simulate(root: Path, *, writer: str, prefix: str, anomaly_rate: float, truth: Path | None) -> dict:
    config = SimulatorConfig(
        devices=DEVICES, device_prefix=prefix, rate=RATE, duration=86400, anomaly_rate=anomaly_rate, seed=7,
        client_id=writer, output=root.as_uri(), start="2026-11-22T00:00:00Z",
        ground_truth=str(truth) if truth else "",
    )
    config.validate()
    sent = write_offline(config, landing=FileLanding(root))
    return {"readings": sent.readings, "anomalies": sent.anomalies}


@pytest.fixture(scope="module")
def spark():
    java = os.environ.get("SLUICE_SPARK_JAVA_HOME")
    if java:
        os.environ["JAVA_HOME"] = java
    session = job.start_spark("sluice anomaly tests", {
        "spark.master": "local[2]", "spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
    })
    yield session
    session.stop()


@pytest.fixture(scope="module")
def day(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("landing")
    truth = root.parent / "truth.jsonl"
    spiked = simulate(root, writer="sim-spiked", prefix="spiked", anomaly_rate=0.01, truth=truth)
    clean = simulate(root, writer="sim-clean", prefix="clean", anomaly_rate=0.0, truth=None)
    landing = FileLanding(root)
    summary = job.run(spark, landing, job.JobConfig(root.as_uri(), DAY, NEXT, (SENSOR,)))
    result = orjson.loads(landing.get(job.result_key(SENSOR, DAY, NEXT)))
    injected = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    return {"root": root, "landing": landing, "result": result, "summary": summary, "injected": injected,
            "spiked": spiked, "clean": clean}


def test_finds_the_injected_spikes(day):
    truth = {(i["device"], i["timestamp"], i["type"]) for i in day["injected"]}
    found = {
        (a["device"], int(a["epoch"]), dict(p.split("=") for p in a["tags"].split())["type"])
        for a in day["result"]["anomalies"] if a["device"].startswith("spiked")
    }
    hits = len(truth & found)
    precision, recall = hits / len(found), hits / len(truth)
    print(f"\nspiked devices: {len(truth)} injected, {len(found)} flagged, precision {precision:.4f}, recall {recall:.4f}")
    assert len(truth) == day["spiked"]["anomalies"] > 100
    assert precision >= 0.9
    assert recall >= 0.9


def test_a_clean_day_yields_almost_no_anomalies(day):
    flagged = [a for a in day["result"]["anomalies"] if a["device"].startswith("clean")]
    readings = day["clean"]["readings"]
    fpr = len(flagged) / readings
    print(f"\nclean devices: {readings} readings, {len(flagged)} flagged, false-positive rate {fpr:.5%}")
    assert readings == DEVICES * 3 * 86400 * RATE
    assert fpr <= 0.001


def test_every_anomaly_carries_score_expected_range_and_method(day):
    result = day["result"]
    assert result["method"] == Method().describe()
    a = result["anomalies"][0]
    assert a["low"] < a["expected"] < a["high"]
    assert not a["low"] <= a["value"] <= a["high"]
    assert a["score"] > result["method"]["threshold"]
    assert a["bucket_points"] >= result["method"]["min_points"]


def _plain_python_daily(root: Path) -> dict[tuple, dict]:
    """count, min, max, mean and nearest-rank p95 per (device, metric, tags), straight from the CSV files."""
    values: dict[tuple, list[float]] = {}
    for path in sorted(root.glob("raw/sensor/date=2026-11-22/hour=*/minute=*/*.csv")):
        for row in csv.DictReader(io.StringIO(path.read_text())):
            values.setdefault((row["device"], row["metric"], row["tags"]), []).append(float(row["value"]))
    out = {}
    for key, vs in values.items():
        s = sorted(vs)
        out[key] = {"count": len(s), "min": s[0], "max": s[-1], "mean": math.fsum(s) / len(s),
                    "p95": s[math.ceil(0.95 * len(s)) - 1]}
    return out


def test_daily_aggregates_match_a_plain_python_computation(day):
    expected = _plain_python_daily(day["root"])
    got = {(d["device"], d["metric"], d["tags"]): d for d in day["result"]["daily"]}
    assert day["result"]["daily_days"] == ["2026-11-22"]
    assert set(got) == set(expected) and len(got) == 2 * DEVICES * 3
    for key, want in expected.items():
        d = got[key]
        assert d["day"] == "2026-11-22"
        assert (d["count"], d["min"], d["max"]) == (want["count"], want["min"], want["max"]), key
        assert d["mean"] == pytest.approx(want["mean"], rel=1e-12), key
        # 2,880 readings per series: below percentile_approx's accuracy (10,000), so the rank is exact.
        assert d["p95"] == want["p95"], key


def test_a_window_with_no_files_finishes_with_zero_anomalies_and_says_so(day, spark, caplog):
    start = DAY + timedelta(days=3)
    with caplog.at_level("INFO", logger="include.anomaly.job"):
        summary = job.run(spark, day["landing"], job.JobConfig(day["root"].as_uri(), start, start + timedelta(minutes=15)))
    for source in ("host", "sensor"):
        assert summary["sources"][source] | {"seconds": 0} == {
            "result": job.result_key(source, start, start + timedelta(minutes=15)), "files": 0, "skipped": 0,
            "rows": 0, "anomalies": 0, "daily": 0, "seconds": 0}
    assert "sensor: no files for [2026-11-25T00:00:00Z, 2026-11-25T00:15:00Z): zero anomalies" in caplog.text


def test_a_quarantined_file_is_skipped_with_its_reason(day, spark):
    landing = day["landing"]
    start = DAY + timedelta(hours=10)
    end = start + timedelta(minutes=15)
    bad_key = f"raw/sensor/date=2026-11-22/hour=10/minute=05/sim-clean.csv"
    info = landing.head(bad_key)
    reason = "header of a sensor file must start with timestamp,device,metric,value,tags"
    write_records(
        landing,
        LoadRecord(key=bad_key, etag=info.etag, size=info.size, rows_read=0, accepted=0, rejected=0,
                   quarantined=True, reason=reason),
        FileDeadLetter(key=bad_key, etag=info.etag, quarantined=True, reason=reason, rejected_rows=0),
    )
    job.run(spark, landing, job.JobConfig(day["root"].as_uri(), start, end, (SENSOR,)))
    result = orjson.loads(landing.get(job.result_key(SENSOR, start, end)))
    assert result["skipped"] == [{"key": bad_key, "etag": info.etag, "reason": reason}]
    assert result["files"] == 2 * 15 - 1
    # Two readings of each of the 3 clean devices' 3 types were in that minute's file.
    assert result["rows"] == 2 * 15 * DEVICES * 3 * 2 - DEVICES * 3 * 2


def test_covering_folders_use_whole_days_and_hours_only_when_the_window_covers_them():
    keys = [f"raw/sensor/date=2026-11-22/hour={h:02d}/minute={m:02d}/w.csv" for h in range(24) for m in range(60)]
    assert job.covering_folders(keys, DAY, NEXT) == ["raw/sensor/date=2026-11-22/"]
    start = DAY + timedelta(hours=22, minutes=45)
    inside = [k for k in keys if "hour=22/minute=4" in k and k >= "raw/sensor/date=2026-11-22/hour=22/minute=45"]
    inside += [k for k in keys if "hour=22/minute=5" in k] + [k for k in keys if "hour=23" in k]
    assert job.covering_folders(inside, start, NEXT) == [
        *(f"raw/sensor/date=2026-11-22/hour=22/minute={m}/" for m in range(45, 60)),
        "raw/sensor/date=2026-11-22/hour=23/",
    ]


def test_spark_that_cannot_start_fails_with_one_line_naming_the_reason(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "nowhere"), "PYTHONPATH": str(REPO)}
    env.pop("SPARK_HOME", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "include" / "anomaly" / "job.py"), "--landing", tmp_path.as_uri(),
         "--start", "2026-11-22T00:00:00Z", "--end", "2026-11-22T00:15:00Z"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sluice anomaly job: Spark did not start:"), proc.stderr
    assert "Traceback" not in proc.stderr
