"""Anomaly job results -> Elasticsearch documents and OpenTSDB annotations (pure parts), and the offline simulator."""

from __future__ import annotations

import orjson
import pytest

from collectors.simulate_sensors import SimulatorConfig, write_offline
from include.anomaly import results
from include.anomaly.job import resolve_window, result_key, s3a_conf, spark_path
from include.landing import FileLanding
from include.schemas import HOST, SENSOR

RESULT = {
    "source": SENSOR,
    "window": {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:15:00Z"},
    "method": {"name": "bucket-median-mad", "bucket_seconds": 900, "threshold": 6.0, "min_points": 10},
    "files": 15, "skipped": [], "rows": 100, "series": 3,
    "anomalies": [{"device": "room-0001", "metric": "mqtt.home.pcroom", "tags": "loc=room-0001 type=dust",
                   "timestamp": "2026-11-22T10:03:50.000Z", "epoch": 1795860230.0, "value": 118.8, "expected": 20.1,
                   "low": 8.1, "high": 32.1, "score": 49.35, "bucket_points": 90}],
    "daily_days": ["2026-11-22"],
    "daily": [{"day": "2026-11-22", "device": "room-0001", "metric": "mqtt.home.pcroom",
               "tags": "loc=room-0001 type=dust", "count": 10, "min": 1.0, "max": 9.0, "mean": 5.0, "p95": 9.0}],
}


def test_anomaly_documents_have_the_readings_identity_and_everything_a_reader_needs():
    ((doc_id, ts, body),) = results.anomaly_documents(RESULT)
    doc = orjson.loads(body)
    assert ts == "2026-11-22T10:03:50Z"  # canonical: whole seconds drop the fraction, as reading ids do
    assert doc_id == results.anomaly_id(SENSOR, "room-0001", ts, "mqtt.home.pcroom", "loc=room-0001 type=dust")
    assert doc == {
        "@timestamp": ts, "source": SENSOR, "device": "room-0001", "metric": "mqtt.home.pcroom",
        "tags": {"loc": "room-0001", "type": "dust"}, "series": "mqtt.home.pcroom{loc=room-0001,type=dust}",
        "value": 118.8, "expected": 20.1, "low": 8.1, "high": 32.1, "score": 49.35, "method": "bucket-median-mad",
        "method_params": RESULT["method"], "bucket_points": 90,
        "window_start": "2026-11-22T10:00:00Z", "window_end": "2026-11-22T10:15:00Z",
    }


def test_ids_are_stable_and_tell_anomalies_daily_and_sources_apart():
    a = results.anomaly_id(SENSOR, "d", "2026-11-22T10:00:00Z", "m", "")
    assert a == results.anomaly_id(SENSOR, "d", "2026-11-22T10:00:00Z", "m", "")
    assert a != results.anomaly_id(HOST, "d", "2026-11-22T10:00:00Z", "m", "")
    assert a != results.daily_id("2026-11-22T10:00:00Z", SENSOR, "d", "m", "")


def test_daily_documents_are_keyed_by_day_and_series():
    ((doc_id, ts, body),) = results.daily_documents(RESULT)
    assert ts == "2026-11-22T00:00:00Z"
    assert doc_id == results.daily_id("2026-11-22", SENSOR, "room-0001", "mqtt.home.pcroom", "loc=room-0001 type=dust")
    assert orjson.loads(body)["p95"] == 9.0


@pytest.mark.parametrize(
    ("source", "device", "metric", "tags", "expected"),
    [
        pytest.param(SENSOR, "room-1", "mqtt.home.pcroom", "loc=kitchen type=dust",
                     ("mqtt.home.pcroom", {"loc": "kitchen", "type": "dust", "device": "room-1"}), id="sensor"),
        pytest.param(HOST, "web-1", "host.cpu_usage_percent", "", ("host.cpu_usage_percent", {"host": "web-1"}), id="host"),
    ],
)
def test_annotations_go_on_the_series_the_loader_writes(source, device, metric, tags, expected):
    assert results.opentsdb_series(source, device, metric, tags) == expected


def test_tsuid_orders_tag_pairs_by_tagk_uid():
    uids = {"metric": {"m": "000001"}, "tagk": {"type": "000002", "device": "000001"},
            "tagv": {"dust": "00000A", "room-1": "00000B"}}
    assert results.tsuid(uids, "m", {"type": "dust", "device": "room-1"}) == "000001" "000001" "00000B" "000002" "00000A"


def test_index_templates_cover_both_families():
    t = results.index_templates(prefix="sluicex")
    assert t["sluicex-anomaly"]["index_patterns"] == ["sluicex-anomaly-*"]
    assert t["sluicex-daily"]["template"]["mappings"]["properties"]["p95"] == {"type": "double"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({}, {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:15:00Z"}, id="data-interval"),
        pytest.param({"start": "2026-11-21T00:00:00Z", "end": "2026-11-22T00:00:00+00:00"},
                     {"start": "2026-11-21T00:00:00Z", "end": "2026-11-22T00:00:00Z"}, id="range-params"),
    ],
)
def test_window_of_a_run(params, expected):
    from datetime import datetime, timezone

    start = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    end = datetime(2026, 11, 22, 10, 15, tzinfo=timezone.utc)
    assert resolve_window(params, start, end) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({"start": "2026-11-22T00:00:00Z"}, "give both params start and end", id="only-start"),
        pytest.param({"start": "yesterday", "end": "2026-11-22T00:00:00Z"}, "'yesterday' is not an ISO-8601 time", id="not-a-time"),
        pytest.param({"start": "2026-11-22T00:00:00", "end": "2026-11-23T00:00:00Z"}, "has no time zone", id="no-zone"),
        pytest.param({"start": "2026-11-23T00:00:00Z", "end": "2026-11-22T00:00:00Z"}, "is not after start", id="backwards"),
    ],
)
def test_bad_range_params_fail_naming_the_problem(params, message):
    with pytest.raises(ValueError, match=message):
        resolve_window(params, None, None)


def test_s3_landing_is_read_through_s3a_with_settings_from_the_environment():
    assert spark_path("s3://sluice-landing/e2e-1", "raw/x.csv") == "s3a://sluice-landing/e2e-1/raw/x.csv"
    assert spark_path("file:///data/landing", "raw/x.csv") == "file:///data/landing/raw/x.csv"
    conf = s3a_conf({"SLUICE_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k",
                     "AWS_SECRET_ACCESS_KEY": "s"})
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "k"
    assert s3a_conf({}) == {}  # AWS itself: hadoop-aws's default credential chain
    with pytest.raises(ValueError, match="scheme must be s3:// or file://"):
        spark_path("hdfs://nn/landing", "raw/x.csv")
    assert result_key(SENSOR, *[__import__("datetime").datetime(2026, 11, 22, h, tzinfo=__import__("datetime").timezone.utc)
                                for h in (10, 11)]) == "anomaly/sensor/2026-11-22T1000_2026-11-22T1100.json"


def test_offline_simulator_writes_one_file_per_writer_minute_and_the_same_files_for_the_same_seed(tmp_path):
    def run(root):
        config = SimulatorConfig(devices=2, rate=0.5, duration=120, anomaly_rate=0.05, seed=3, client_id="sim-a",
                                 output=root.as_uri(), start="2026-11-22T00:00:30Z",
                                 ground_truth=str(root.parent / f"{root.name}.jsonl"))
        config.validate()
        return write_offline(config, landing=FileLanding(root))

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    keys = [i.key for i in FileLanding(tmp_path / "a").list("raw/")]
    assert keys == [f"raw/sensor/date=2026-11-22/hour=00/minute={m:02d}/sim-a.csv" for m in range(3)]
    for key in keys:
        assert (tmp_path / "a" / key).read_bytes() == (tmp_path / "b" / key).read_bytes()
    assert a.injected == b.injected and a.anomalies == len(a.injected) > 0
    truth = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert truth == a.injected
    first = (tmp_path / "a" / keys[0]).read_text().splitlines()
    assert first[0] == "timestamp,device,metric,value,tags"
    assert first[1] == "2026-11-22T00:00:30Z,room-0000,mqtt.home.pcroom," + first[1].split(",")[3] + ",loc=room-0000 type=temperature"


def test_offline_simulator_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="malformed payloads are never landed"):
        SimulatorConfig(output="file:///tmp/x", malformed_rate=0.1).validate()
    with pytest.raises(ValueError, match="has no time zone"):
        SimulatorConfig(output="file:///tmp/x", start="2026-11-22T00:00:00").validate()


def test_sensor_and_host_dashboards_query_the_anomaly_annotations():
    from include.dashboards.grafana_dashboards import HOSTS_UID, SENSORS_UID, dashboard_models
    from include.dashboards.index_templates import sluice_index_templates

    models = dashboard_models()
    (sensor,) = models[SENSORS_UID]["annotations"]["list"]
    assert sensor == {"name": "Anomalies: mqtt.home.pcroom", "datasource": {"type": "opentsdb", "uid": "sluice-opentsdb"},
                      "enable": True, "iconColor": "red", "target": "mqtt.home.pcroom", "isGlobal": False}
    host_targets = {a["target"] for a in models[HOSTS_UID]["annotations"]["list"]}
    panel_metrics = {t["metric"] for p in models[HOSTS_UID]["panels"] for t in p.get("targets", [])}
    assert host_targets == panel_metrics
    assert {"sluice-anomaly", "sluice-daily"} <= set(sluice_index_templates())
