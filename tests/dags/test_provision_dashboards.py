"""provision_dashboards end to end with `airflow dags test`: index templates in the real
Elasticsearch of the local stack, Grafana and Kibana as contract servers (neither can run
here; the live check is the docker-compose path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.contract.grafana_api import GrafanaContract
from tests.contract.kibana_api import KibanaContract

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PREFIX = "sluicetestprovision"


def _conn(url: str, **fields) -> str:
    host, port = url.removeprefix("http://").split(":")
    return json.dumps({"conn_type": "http", "host": host, "port": int(port), "schema": "http", **fields})


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, elasticsearch, stack_config, es_connections):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        # Templates under a prefix of their own: the shared Elasticsearch keeps the real ones.
        "SLUICE_ES_INDEX_PREFIX": PREFIX,
        # elasticsearch_provision (the only role that may write templates) with a key for PREFIX.
        **es_connections(PREFIX),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=REPO, check=True, capture_output=True)
    yield env
    es = elasticsearch.admin()
    for source in ("host", "sensor", "lag"):
        es.options(ignore_status=404).indices.delete_index_template(name=f"{PREFIX}-{source}")


def _dags_test(env, grafana, kibana, conf=None) -> subprocess.CompletedProcess:
    env = {
        **env,
        "AIRFLOW_CONN_GRAFANA_DEFAULT": _conn(grafana.url, password="sa-admin-token"),
        "AIRFLOW_CONN_KIBANA_DEFAULT": _conn(kibana.url, login="elastic", password="s3cret-pw"),
    }
    cmd = [AIRFLOW, "dags", "test", "provision_dashboards"]
    if conf is not None:
        cmd += ["--conf", json.dumps(conf)]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _actions(out: str) -> dict[str, str]:
    """kind/id -> action, from the provisioning log lines of the tasks."""
    found = {}
    for line in out.splitlines():
        for kind in ("elasticsearch-index-template", "grafana-folder", "grafana-datasource", "grafana-dashboard", "kibana-data-view", "kibana-dashboard"):
            marker = f"{kind} "
            if marker in line and ": " in line.split(marker, 1)[1]:
                obj, _, rest = line.split(marker, 1)[1].partition(": ")
                action = rest.split()[0]
                if action in ("created", "updated", "unchanged", "drift", "overwritten"):
                    found[f"{kind}/{obj}"] = action
    return found


def test_provision_is_idempotent_detects_drift_and_overwrites_on_request(airflow_env):
    with GrafanaContract() as grafana, KibanaContract() as kibana:
        first = _dags_test(airflow_env, grafana, kibana)
        out = first.stdout + first.stderr
        assert "state=success" in out, out[-4000:]
        actions = _actions(out)
        # 5 index templates (host, sensor, lag, anomaly, daily), 5 data sources, 5 dashboards.
        assert len(actions) == 5 + 1 + 5 + 5 + 3 + 1, actions
        assert {a for k, a in actions.items() if not k.startswith("elasticsearch")} == {"created"}
        assert len(grafana.dashboards) == 5 and ("default", "dashboard", "sluice-overview") in kibana.objects
        tsdb = grafana.datasources["sluice-opentsdb"]
        assert tsdb["jsonData"]["tsdbVersion"] == 4 and tsdb["url"].startswith("http://")

        # Someone edits a dashboard in Grafana's UI; nothing else changes.
        grafana.edit_dashboard("sluice-hosts", lambda d: d["panels"][0].update(title="CPU (edited)"))
        writes = len(grafana.writes), len(kibana.writes)
        second = _dags_test(airflow_env, grafana, kibana)
        out = second.stdout + second.stderr
        actions = _actions(out)
        assert actions.pop("grafana-dashboard/sluice-hosts") == "drift"
        assert set(actions.values()) == {"unchanged"}, actions
        assert (len(grafana.writes), len(kibana.writes)) == writes, "nothing may be written"
        assert "state=failed" in out and "DashboardDrift" in out
        assert '$.panels[id=1].title: "CPU use" -> "CPU (edited)"' in out
        assert grafana.dashboards["sluice-hosts"]["dashboard"]["panels"][0]["title"] == "CPU (edited)"

        third = _dags_test(airflow_env, grafana, kibana, conf={"overwrite": True})
        out = third.stdout + third.stderr
        assert "state=success" in out, out[-4000:]
        assert _actions(out)["grafana-dashboard/sluice-hosts"] == "overwritten"
        assert grafana.dashboards["sluice-hosts"]["dashboard"]["panels"][0]["title"] == "CPU use"
