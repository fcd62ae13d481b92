"""``sluice_reconcile`` under Airflow: a minute loaded by the real minute DAG reconciles green; a fault fails the run.

The minute's file and manifest land as the collector writes them, ``airflow
dags test sluice_sensor_minute`` loads it (Elasticsearch and OpenTSDB), then
``airflow dags test sluice_reconcile`` checks it (``SLUICE_RECONCILE_LAG_MINUTES=0``:
the run of T checks the minute before T, the one just loaded).
"""

from __future__ import annotations

import resource
from datetime import datetime, timedelta

from include import reconcile
from include.contract import minute_key
from include.manifests import MinuteManifest, write_manifest

from test_minute_pipeline import run_date, sensor_csv

RECONCILE_ENV = {"SLUICE_RECONCILE_LAG_MINUTES": "0", "SLUICE_RECONCILE_KAFKA_SOURCES": ""}


def test_a_loaded_minute_reconciles_green_and_deleted_documents_fail_the_run_naming_the_hop(airflow, landing, es):
    m = datetime.fromisoformat("2020-09-03T08:21:00+00:00")
    landing.put(minute_key("sensor", m, "mqtt-e2e"), sensor_csv("ard-e2e", m))
    write_manifest(landing, MinuteManifest("sensor", "mqtt-e2e", m, rows={"ard-e2e": 60}, received=20))
    state, output = airflow.dags_test("sluice_sensor_minute", run_date(m))
    assert state == "success", output[-4000:]

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    state, output = airflow.dags_test("sluice_reconcile", run_date(m), env=RECONCILE_ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"airflow dags test sluice_reconcile: {after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime:.1f} "
          "CPU s for the whole process (Airflow start, DAG parse, five tasks)")
    assert state == "success", output[-4000:]
    prefix = airflow.env["SLUICE_ES_INDEX_PREFIX"]
    doc = reconcile.stored(es, prefix, [("sensor", m)])[reconcile.document_id("sensor", m)]
    assert doc["status"] == "green" and doc["hops"]["elasticsearch"] == doc["hops"]["opentsdb"] == 60, doc

    es.indices.refresh(index=f"{prefix}-sensor-*")
    hits = es.search(index=f"{prefix}-sensor-*", size=2, query={"range": {"@timestamp": {
        "gte": m.isoformat(), "lt": (m + timedelta(minutes=1)).isoformat()}}})["hits"]["hits"]
    for hit in hits:
        es.delete(index=hit["_index"], id=hit["_id"], refresh=True)
    state, output = airflow.dags_test("sluice_reconcile", run_date(m), env=RECONCILE_ENV)
    assert state == "failed"
    assert "ReconcileMismatch" in output and "elasticsearch holds 58, expected 60" in output, output[-4000:]
    doc = reconcile.stored(es, prefix, [("sensor", m)])[reconcile.document_id("sensor", m)]
    assert doc["status"] == "red" and [x["hop"] for x in doc["mismatches"]] == ["elasticsearch"]
