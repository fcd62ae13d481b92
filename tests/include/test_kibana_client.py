"""include.kibana and the Kibana half of provisioning, against the Kibana API contract double."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from include.dashboards import kibana_objects, provision
from include.kibana import (
    KibanaAuthError,
    KibanaClient,
    KibanaImportError,
    KibanaNotFound,
    KibanaPermissionError,
    KibanaUnreachable,
    KibanaVersionMismatch,
)
from tests.contract.kibana_api import KibanaContract

API_KEY = "c2x1aWNlOmtleQ=="


@pytest.fixture
def kibana():
    server = KibanaContract(api_keys={API_KEY: "all", "cmVhZDpvbmx5": "read"}, spaces=("default", "ops"))
    with server:
        yield server


@pytest.fixture
def client(kibana):
    return KibanaClient(kibana.url, api_key=API_KEY)


def _provision(client, *, overwrite=False):
    views = provision.provision_kibana_data_views(client, list(kibana_objects.data_views().values()))
    return views + [provision.provision_kibana_dashboard(client, overwrite=overwrite)]


def test_contract_requires_xsrf_header(kibana):
    resp = requests.post(
        f"{kibana.url}/api/data_views/data_view",
        json={"data_view": {"title": "x"}},
        headers={"Authorization": f"ApiKey {API_KEY}"},
        timeout=5,
    )
    assert resp.status_code == 400 and "kbn-xsrf" in resp.json()["message"]


def test_api_key_and_basic_auth_and_xsrf_sent(kibana):
    assert KibanaClient(kibana.url, api_key=API_KEY).create_data_view({"id": "a", "title": "a-*"})["id"] == "a"
    assert KibanaClient(kibana.url, username="elastic", password="s3cret-pw").get_data_view("a")["title"] == "a-*"
    first, second = kibana.requests
    assert first.headers["authorization"] == f"ApiKey {API_KEY}" and first.headers["kbn-xsrf"]
    assert second.headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({}, "no credentials", id="none"),
        pytest.param({"api_key": "bm9wZQ=="}, "API key", id="bad-key"),
        pytest.param({"username": "elastic", "password": "not-the-password"}, "user 'elastic'", id="bad-password"),
    ],
)
def test_401_says_how_to_fix_credentials(kibana, kwargs, match):
    with pytest.raises(KibanaAuthError, match=match) as err:
        KibanaClient(kibana.url, **kwargs).status()
    assert "connection kibana_default" in str(err.value)


def test_403_for_a_read_only_key(kibana):
    reader = KibanaClient(kibana.url, api_key="cmVhZDpvbmx5")
    assert reader.get_data_view("nope") is None
    with pytest.raises(KibanaPermissionError, match="'all' privilege"):
        reader.create_data_view({"id": "x", "title": "x-*"})


def test_spaces_prefix_paths_and_unknown_space_is_404(kibana):
    ops = KibanaClient(kibana.url, api_key=API_KEY, space="ops")
    ops.create_data_view({"id": "v", "title": "v-*"})
    assert kibana.requests[-1].path == "/s/ops/api/data_views/data_view"
    assert KibanaClient(kibana.url, api_key=API_KEY).get_data_view("v") is None  # other space
    with pytest.raises(KibanaNotFound, match="space 'nope' does not exist"):
        KibanaClient(kibana.url, api_key=API_KEY, space="nope").status()


def test_server_too_old_is_a_version_mismatch(kibana, client):
    assert client.check_version() == "9.1.0"
    kibana.version = "7.17.9"
    with pytest.raises(KibanaVersionMismatch, match="version 7.17.9; Sluice needs 8.0"):
        client.check_version()


def test_unreachable_host_says_what_to_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(KibanaUnreachable, match=f"cannot reach Kibana at http://127.0.0.1:{port}.*kibana_default"):
            KibanaClient(f"http://127.0.0.1:{port}", api_key="k", timeout=2).status()


def test_import_without_data_views_fails_with_missing_references(client):
    ndjson = kibana_objects.to_ndjson(kibana_objects.saved_objects())
    with pytest.raises(KibanaImportError, match="missing_references") as err:
        client.import_objects(ndjson, overwrite=True)
    assert {e["id"] for e in err.value.errors} == {v.id for v in kibana_objects.VISUALIZATIONS}


def test_import_conflict_without_overwrite(client):
    _provision(client)
    with pytest.raises(KibanaImportError, match="conflict"):
        client.import_objects(kibana_objects.to_ndjson(kibana_objects.saved_objects()), overwrite=False)


def test_export_of_missing_objects_is_not_found(client):
    with pytest.raises(KibanaNotFound, match="dashboard/nope"):
        client.export_objects([{"type": "dashboard", "id": "nope"}])


# -- provisioning ---------------------------------------------------------------------
def test_first_run_creates_second_changes_nothing(client, kibana):
    assert [r["action"] for r in _provision(client)] == ["created"] * 4
    stored = {(t, i) for _, t, i in kibana.objects}
    assert ("dashboard", kibana_objects.DASHBOARD_ID) in stored
    assert {("index-pattern", v.id) for v in kibana_objects.data_views().values()} <= stored
    writes = len(kibana.writes)
    assert [r["action"] for r in _provision(client)] == ["unchanged"] * 4
    assert len(kibana.writes) == writes, "an unchanged run must not write"


def test_changed_data_view_is_updated(client, kibana):
    _provision(client)
    kibana.objects[("default", "index-pattern", "sluice-host")]["attributes"]["timeFieldName"] = "ts"
    results = {r["id"]: r for r in _provision(client)}
    assert results["sluice-host"]["action"] == "updated"
    assert results["sluice-host"]["diff"] == ['$.timeFieldName: "@timestamp" -> "ts"']
    assert kibana.objects[("default", "index-pattern", "sluice-host")]["attributes"]["timeFieldName"] == "@timestamp"


def test_ui_edit_is_drift_until_overwrite(client, kibana):
    _provision(client)

    def move_panel(attrs):
        panels = json.loads(attrs["panelsJSON"])
        panels[0]["gridData"]["w"] = 12
        attrs["panelsJSON"] = json.dumps(panels)

    kibana.edit("dashboard", kibana_objects.DASHBOARD_ID, move_panel)
    result = provision.provision_kibana_dashboard(client)
    assert result["action"] == "drift"
    assert result["diff"] == ['$.dashboard:sluice-overview.panels[0].gridData.w: 24 -> 12']
    assert json.loads(kibana.objects[("default", "dashboard", kibana_objects.DASHBOARD_ID)]["attributes"]["panelsJSON"])[0]["gridData"]["w"] == 12
    assert provision.provision_kibana_dashboard(client, overwrite=True)["action"] == "overwritten"
    assert provision.provision_kibana_dashboard(client)["action"] == "unchanged"


def test_changed_definition_updates_in_place(client, kibana, monkeypatch):
    _provision(client)
    vis = kibana_objects.VISUALIZATIONS[0]
    monkeypatch.setattr(kibana_objects, "VISUALIZATIONS", [vis.__class__(**{**vis.__dict__, "title": "CPU"}), *kibana_objects.VISUALIZATIONS[1:]])
    result = provision.provision_kibana_dashboard(client)
    assert result["action"] == "updated"
    assert '$.visualization:sluice-host-cpu.title: "CPU" -> "CPU use per host (%)"' in result["diff"]
    assert kibana.objects[("default", "visualization", "sluice-host-cpu")]["attributes"]["title"] == "CPU"
