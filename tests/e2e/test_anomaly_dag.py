"""``sluice_anomaly`` end to end under ``airflow dags test``: real MinIO (s3a://), Elasticsearch, OpenTSDB.

One 15-minute window (2026-11-22 10:00–10:15) of 3 simulated devices, a
reading of each type every 10 s with seed 11 and ``--anomaly-rate 0.02``, lands
in the session's MinIO prefix as the collector writes it (one file per writer
per minute). The DAG's Spark job reads it through hadoop-aws; the test checks
the anomaly documents and the OpenTSDB annotations by their expected ids, runs
the window again (triggered as a range with params) and checks that the same
set is there, and that a JDK that is not there fails ``check_spark`` with one
line naming it.
"""

from __future__ import annotations

import orjson
import pytest

from collectors.simulate_sensors import SimulatorConfig, write_offline
from include.anomaly.results import anomaly_id, assign_uids, get_annotation, opentsdb_series, tsuid
from include.opentsdb import OpenTSDBClient
from include.schemas import SENSOR, SENSOR_METRIC
from include.contract import timestamp_text

pytestmark = pytest.mark.timeout(1500)

# A manual run (dags test) covers the last whole interval before its logical date: [10:00, 10:15).
LOGICAL = "2026-11-22T10:15:00+00:00"
WINDOW = {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:15:00Z"}


@pytest.fixture(scope="module")
def window(landing):
    config = SimulatorConfig(devices=3, device_prefix="e2e", rate=0.1, duration=900, anomaly_rate=0.02, seed=11,
                             client_id="sim-e2e", output=landing.url, start=WINDOW["start"])
    sent = write_offline(config, landing=landing)
    assert sent.anomalies > 5
    return sent


def _expected_ids(sent) -> set[str]:
    return {
        anomaly_id(SENSOR, i["device"], timestamp_text(i["timestamp"]),
                   SENSOR_METRIC, f"loc={i['device']} type={i['type']}")
        for i in sent.injected
    }


def _anomaly_docs(es, airflow) -> dict[str, dict]:
    index = f"{airflow.env['SLUICE_ES_INDEX_PREFIX']}-anomaly-*"
    es.indices.refresh(index=index, ignore_unavailable=True, allow_no_indices=True)
    hits = es.search(index=index, size=1000, query={"range": {"@timestamp": {"gte": WINDOW["start"], "lt": WINDOW["end"]}}},
                     ignore_unavailable=True, allow_no_indices=True)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def _annotations(opentsdb, docs: dict[str, dict]) -> dict[str, dict]:
    from datetime import datetime

    client = OpenTSDBClient(opentsdb.config.url("opentsdb"))
    series = {d["series"]: opentsdb_series(SENSOR, d["device"], d["metric"],
                                           " ".join(f"{k}={v}" for k, v in sorted(d["tags"].items())))
              for d in docs.values()}
    uids = assign_uids(client, (m for m, _ in series.values()), (k for _, t in series.values() for k in t),
                       (v for _, t in series.values() for v in t.values()))
    out = {}
    for doc_id, d in docs.items():
        metric, tags = series[d["series"]]
        start = int(datetime.fromisoformat(d["@timestamp"].replace("Z", "+00:00")).timestamp())
        found = get_annotation(client, tsuid(uids, metric, tags), start)
        if found is not None:
            out[doc_id] = found
    return out


def test_anomalies_land_in_elasticsearch_and_opentsdb_and_a_rerun_leaves_the_same_set(
    airflow, landing, es, opentsdb, window
):
    state, output = airflow.dags_test("sluice_anomaly", LOGICAL)
    assert state == "success", output[-6000:]
    result = orjson.loads(landing.get("anomaly/sensor/2026-11-22T1000_2026-11-22T1015.json"))
    assert result["window"] == WINDOW and result["files"] == 15
    assert orjson.loads(landing.get("anomaly/host/2026-11-22T1000_2026-11-22T1015.json"))["files"] == 0
    assert "host [2026-11-22T10:00:00Z, 2026-11-22T10:15:00Z): no files in the window: zero anomalies" in output

    docs = _anomaly_docs(es, airflow)
    expected = _expected_ids(window)
    assert expected <= set(docs), f"missed {len(expected - set(docs))} of {len(expected)} injected spikes"
    assert len(set(docs) - expected) <= 1, "more than one false positive in 13,500 readings"
    doc = docs[sorted(expected)[0]]
    assert doc["method"] == "bucket-median-mad" and doc["low"] < doc["expected"] < doc["high"]
    assert doc["score"] > 6 and doc["tags"]["type"] in ("temperature", "humidity", "dust")

    annotations = _annotations(opentsdb, docs)
    assert set(annotations) == set(docs)
    assert all(a["custom"]["id"] == doc_id for doc_id, a in annotations.items())

    # Again, as a range trigger of the same window: the same documents and annotations, nothing more.
    state, output = airflow.dags_test("sluice_anomaly", "2026-11-22T12:00:00+00:00", conf=WINDOW)
    assert state == "success", output[-6000:]
    again = _anomaly_docs(es, airflow)
    assert set(again) == set(docs)
    assert set(_annotations(opentsdb, again)) == set(annotations)


def test_spark_without_java_fails_check_spark_with_the_reason(airflow, window):
    state, output = airflow.dags_test("sluice_anomaly", "2026-11-22T13:00:00+00:00",
                                      env={"SLUICE_SPARK_JAVA_HOME": "/nowhere/jdk"})
    assert state == "failed"
    assert "SLUICE_SPARK_JAVA_HOME=/nowhere/jdk has no bin/java: point it at an installed JDK" in output
