"""OpenTSDB is the real server on real HBase: version, settings, write and read back."""

from __future__ import annotations

import uuid

import requests


def test_version_settings_put_and_query(opentsdb):
    url = opentsdb.config.url("opentsdb")
    version = requests.get(f"{url}/api/version", timeout=10).json()
    # The Maven Central jar of 2.4.1 was built from this revision (it reports "BuildData" as version).
    assert version["short_revision"] == "eb125a342"
    config = requests.get(f"{url}/api/config", timeout=10).json()
    assert config["tsd.core.auto_create_metrics"] == "true"
    assert config["tsd.storage.fix_duplicates"] == "true"
    assert config["tsd.storage.hbase.data_table"] == "tsdb"
    assert config["tsd.storage.hbase.uid_table"] == "tsdb-uid"

    metric = f"sluice.smoke.{uuid.uuid4().hex[:8]}"
    points = [{"metric": metric, "timestamp": 1_700_000_000 + i, "value": i * 1.5, "tags": {"host": "smoke"}}
              for i in range(10)]
    put = requests.post(f"{url}/api/put?details&sync", json=points, timeout=60)
    assert put.status_code == 200, put.text
    answer = put.json()
    assert (answer["success"], answer["failed"], answer["errors"]) == (10, 0, [])

    got = requests.get(f"{url}/api/query", params={"start": 1_700_000_000, "end": 1_700_000_009,
                                                    "m": f"none:{metric}"}, timeout=30).json()
    assert [(s["metric"], s["tags"]) for s in got] == [(metric, {"host": "smoke"})]
    assert got[0]["dps"] == {str(1_700_000_000 + i): i * 1.5 for i in range(10)}
