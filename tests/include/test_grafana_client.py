"""include.grafana and the Grafana half of provisioning, against the Grafana API contract double."""

from __future__ import annotations

import copy
import socket

import pytest

from include.dashboards import provision
from include.dashboards.datasources import sluice_datasources
from include.dashboards.grafana_dashboards import FOLDER_TITLE, FOLDER_UID, dashboard_models
from include.grafana import (
    GrafanaAuthError,
    GrafanaClient,
    GrafanaConflict,
    GrafanaNotFound,
    GrafanaPermissionError,
    GrafanaUnreachable,
    GrafanaVersionMismatch,
)
from tests.contract.grafana_api import GrafanaContract

TOKEN = "sa-admin-token"


@pytest.fixture
def grafana():
    server = GrafanaContract(tokens={TOKEN: "Admin", "editor-token": "Editor", "viewer-token": "Viewer"})
    with server:
        yield server


@pytest.fixture
def client(grafana):
    return GrafanaClient(grafana.url, token=TOKEN)


def _datasources():
    return sluice_datasources(
        opentsdb_url="http://opentsdb:4242",
        elasticsearch_url="http://elasticsearch:9200",
        elasticsearch_user="elastic",
        elasticsearch_password="pw",
    )


def _provision_all(client, *, overwrite=False, models=None):
    results = [provision.provision_grafana_folder(client, uid=FOLDER_UID, title=FOLDER_TITLE)]
    results += provision.provision_grafana_datasources(client, _datasources(), overwrite=overwrite)
    results += provision.provision_grafana_dashboards(
        client, models or dashboard_models(), folder_uid=FOLDER_UID, overwrite=overwrite
    )
    return results


def test_no_io_in_constructor():
    GrafanaClient("http://127.0.0.1:1", token="x")  # nothing listens on port 1: must not raise


def test_token_and_basic_auth(grafana):
    assert GrafanaClient(grafana.url, token=TOKEN).get_folder("nope") is None
    assert GrafanaClient(grafana.url, username="sluice", password="s3cret-pw").get_folder("nope") is None
    assert grafana.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert grafana.requests[1].headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({}, "no credentials", id="none"),
        pytest.param({"token": "wrong"}, "token", id="bad-token"),
        pytest.param({"username": "sluice", "password": "not-the-password"}, "user 'sluice'", id="bad-password"),
    ],
)
def test_401_says_how_to_fix_credentials(grafana, kwargs, match):
    with pytest.raises(GrafanaAuthError, match=match) as err:
        GrafanaClient(grafana.url, **kwargs).get_dashboard("x")
    assert "connection grafana_default" in str(err.value) and err.value.status == 401


def test_403_names_the_role_needed(grafana):
    editor = GrafanaClient(grafana.url, token="editor-token")
    editor.create_folder("f", "F")  # an Editor may write folders ...
    with pytest.raises(GrafanaPermissionError, match="Admin role for data sources"):
        editor.create_datasource(_datasources()[0].body())  # ... but not data sources
    with pytest.raises(GrafanaPermissionError):
        GrafanaClient(grafana.url, token="viewer-token").save_dashboard({"title": "x"}, folder_uid=None)


def test_404_on_a_wrong_path(client):
    with pytest.raises(GrafanaNotFound, match="Check the URL of connection grafana_default"):
        client.request("GET", "/grafana/api/folders")


def test_412_version_mismatch_and_name_exists(client, grafana):
    client.create_folder("f", "F")
    saved = client.save_dashboard({"uid": "a", "title": "A"}, folder_uid="f")
    assert saved["status"] == "success" and saved["version"] == 1
    client.save_dashboard({"uid": "a", "title": "A", "version": 1}, folder_uid="f")
    with pytest.raises(GrafanaVersionMismatch, match="version mismatch"):
        client.save_dashboard({"uid": "a", "title": "A", "version": 1}, folder_uid="f")
    with pytest.raises(GrafanaConflict, match="same name"):
        client.save_dashboard({"uid": "b", "title": "A"}, folder_uid="f")
    assert client.save_dashboard({"uid": "a", "title": "A", "version": 1}, folder_uid="f", overwrite=True)["version"] == 3


def test_server_too_old_is_a_version_mismatch(grafana, client):
    assert client.check_version() == "11.3.0"
    grafana.version = "9.5.2"
    with pytest.raises(GrafanaVersionMismatch, match="Grafana at .* is version 9.5.2; .* need 10.0"):
        client.check_version()


def test_unreachable_host_says_what_to_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(GrafanaUnreachable, match=f"cannot reach Grafana at http://127.0.0.1:{port}.*grafana_default"):
            GrafanaClient(f"http://127.0.0.1:{port}", token="t", timeout=2).health()


def test_datasource_name_taken_by_another_uid(client):
    body = {**_datasources()[0].body(), "uid": "someone-elses"}
    client.create_datasource(body)
    with pytest.raises(GrafanaConflict, match="same name"):
        provision.provision_grafana_datasources(client, _datasources())


# -- provisioning ---------------------------------------------------------------------
def test_first_run_creates_second_changes_nothing(client, grafana):
    first = _provision_all(client)
    assert {r["action"] for r in first} == {"created"}
    assert len(grafana.dashboards) == 5 and len(grafana.datasources) == 5
    assert grafana.datasources["sluice-opentsdb"]["jsonData"]["tsdbVersion"] == 4
    assert all(d["folderUid"] == FOLDER_UID for d in grafana.dashboards.values())
    writes = len(grafana.writes)
    second = _provision_all(client)
    assert {r["action"] for r in second} == {"unchanged"}
    assert len(grafana.writes) == writes, "an unchanged run must not write"


def test_changed_definition_updates_in_place(client, grafana):
    _provision_all(client)
    models = dashboard_models()
    models["sluice-hosts"]["panels"][0]["title"] = "CPU use (all cores)"
    results = {r["id"]: r for r in _provision_all(client, models=models)}
    assert results["sluice-hosts"]["action"] == "updated"
    assert results["sluice-hosts"]["diff"] == ["$.panels[id=1].title: \"CPU use (all cores)\" -> \"CPU use\""]
    assert results["sluice-sensors"]["action"] == "unchanged"
    live = grafana.dashboards["sluice-hosts"]
    assert live["version"] == 2 and live["dashboard"]["panels"][0]["title"] == "CPU use (all cores)"
    assert {r["action"] for r in _provision_all(client, models=models)} == {"unchanged"}


def test_ui_edit_is_drift_reported_and_kept_unless_overwrite(client, grafana):
    _provision_all(client)
    grafana.edit_dashboard("sluice-sensors", lambda d: d["panels"][1]["targets"][0].update(aggregator="sum"))
    results = {r["id"]: r for r in _provision_all(client)}
    drift = results["sluice-sensors"]
    assert drift["action"] == "drift"
    assert drift["diff"] == ["$.panels[id=2].targets[refId=\"A\"].aggregator: \"avg\" -> \"sum\""]
    assert grafana.dashboards["sluice-sensors"]["dashboard"]["panels"][1]["targets"][0]["aggregator"] == "sum"
    with pytest.raises(provision.DashboardDrift, match="(?s)sluice-sensors.*aggregator.*overwrite=true"):
        provision.summarize(list(results.values()))
    # A changed definition does not hide the drift: the edit still wins until overwrite.
    assert {r["id"]: r["action"] for r in _provision_all(client)}["sluice-sensors"] == "drift"
    over = {r["id"]: r for r in _provision_all(client, overwrite=True)}
    assert over["sluice-sensors"]["action"] == "overwritten"
    assert grafana.dashboards["sluice-sensors"]["dashboard"]["panels"][1]["targets"][0]["aggregator"] == "avg"
    assert {r["id"]: r["action"] for r in _provision_all(client)}["sluice-sensors"] == "unchanged"


def test_removed_fingerprint_counts_as_drift(client, grafana):
    _provision_all(client)
    grafana.edit_dashboard("sluice-hosts", lambda d: d.update(description="mine now", refresh="5s"))
    result = {r["id"]: r for r in _provision_all(client)}["sluice-hosts"]
    assert result["action"] == "drift" and "$.refresh: \"1m\" -> \"5s\"" in result["diff"]


def test_datasource_changes_are_updated(client, grafana):
    _provision_all(client)
    grafana.datasources["sluice-opentsdb"]["jsonData"]["tsdbVersion"] = 3
    grafana.datasources["sluice-es-host"].pop("secureJsonData")
    results = {r["id"]: r for r in provision.provision_grafana_datasources(client, _datasources())}
    assert results["sluice-opentsdb"] == {
        "kind": "grafana-datasource",
        "id": "sluice-opentsdb",
        "action": "updated",
        "diff": ["$.jsonData.tsdbVersion: 4 -> 3"],
    }
    assert results["sluice-es-host"]["action"] == "updated"
    assert grafana.datasources["sluice-es-host"]["secureJsonData"] == {"basicAuthPassword": "pw"}
    assert results["sluice-es-sensor"]["action"] == "unchanged"


def test_folder_title_fixed(client, grafana):
    client.create_folder(FOLDER_UID, "Renamed")
    assert provision.provision_grafana_folder(client, uid=FOLDER_UID, title=FOLDER_TITLE)["action"] == "updated"
    assert grafana.folders[FOLDER_UID]["title"] == FOLDER_TITLE


def test_models_sent_are_not_mutated(client):
    models = dashboard_models()
    before = copy.deepcopy(models)
    _provision_all(client, models=models)
    assert models == before
