"""Idempotent provisioning of Grafana and Kibana objects, by uid/id, with drift detection.

Each function compares what the code defines with what the server holds and
writes only what differs. Results are plain dicts (they travel as XCom):
``{"kind", "id", "action", "diff"}`` where ``action`` is one of
``created``, ``updated``, ``unchanged``, ``drift`` (edited in the UI; left
alone and reported with what differs) or ``overwritten`` (drift replaced
because the caller passed ``overwrite=True``). See :mod:`include.dashboards.drift`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from include.dashboards import kibana_objects
from include.dashboards.datasources import GrafanaDatasource
from include.dashboards.drift import (
    CREATED,
    DRIFT,
    OVERWRITTEN,
    UNCHANGED,
    UPDATED,
    classify,
    diff,
    fingerprint,
    split_marker,
    with_marker,
)
from include.grafana import GrafanaClient
from include.kibana import KibanaClient, KibanaNotFound

log = logging.getLogger(__name__)

#: Keys Grafana sets on a saved dashboard that are not part of its definition.
GRAFANA_SERVER_KEYS = ("id", "version")


class DashboardDrift(RuntimeError):
    """Objects were edited outside Sluice and left as they are; the message lists what differs."""


def _result(kind: str, obj_id: str, action: str, differences: list[str] | None = None) -> dict[str, Any]:
    log.info("%s %s: %s", kind, obj_id, action)
    for line in differences or []:
        log.warning("%s %s differs: %s", kind, obj_id, line)
    return {"kind": kind, "id": obj_id, "action": action, "diff": differences or []}


# -- Grafana ----------------------------------------------------------------------------
def provision_grafana_folder(client: GrafanaClient, *, uid: str, title: str) -> dict[str, Any]:
    live = client.get_folder(uid)
    if live is None:
        client.create_folder(uid, title)
        return _result("grafana-folder", uid, CREATED)
    if live.get("title") == title:
        return _result("grafana-folder", uid, UNCHANGED)
    client.update_folder(uid, title, version=int(live.get("version", 0)))
    return _result("grafana-folder", uid, UPDATED, [f"$.title: {title!r} -> {live.get('title')!r}"])


def provision_grafana_datasources(
    client: GrafanaClient, datasources: list[GrafanaDatasource], *, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Create missing data sources, update those whose settings differ (data sources have no UI drift policy:
    Sluice owns them). Passwords cannot be read back: they are sent on creation, when Grafana reports none
    stored, and on every run with ``overwrite`` (to rotate them)."""
    results = []
    for ds in datasources:
        live = client.get_datasource(ds.uid)
        if live is None:
            client.create_datasource(ds.body())
            results.append(_result("grafana-datasource", ds.uid, CREATED))
            continue
        wanted = ds.managed()
        have = {k: live.get(k) for k in wanted}
        # Grafana may add defaults to jsonData; only the keys Sluice sets are compared.
        have["jsonData"] = {k: (live.get("jsonData") or {}).get(k) for k in wanted["jsonData"]}
        missing_secrets = [k for k in ds.secure_json_data if not (live.get("secureJsonFields") or {}).get(k)]
        differences = diff(wanted, have) + [f"$.secureJsonData.{k}: not stored in Grafana" for k in missing_secrets]
        if not differences and not (overwrite and ds.secure_json_data):
            results.append(_result("grafana-datasource", ds.uid, UNCHANGED))
            continue
        client.update_datasource(ds.uid, {**ds.body(), "version": live.get("version")})
        results.append(_result("grafana-datasource", ds.uid, UPDATED, differences or ["secrets re-sent (overwrite)"]))
    return results


def grafana_content(model: dict[str, Any], folder_uid: str | None) -> dict[str, Any]:
    """A dashboard model without server bookkeeping and fingerprint, plus the folder it lives in."""
    content = {k: v for k, v in model.items() if k not in GRAFANA_SERVER_KEYS}
    content["description"] = split_marker(content.get("description"))[0]
    content["_folderUid"] = folder_uid or ""
    return content


def provision_grafana_dashboards(
    client: GrafanaClient, models: dict[str, dict[str, Any]], *, folder_uid: str, overwrite: bool = False
) -> list[dict[str, Any]]:
    results = []
    for uid, model in models.items():
        desired = grafana_content(model, folder_uid)
        fp = fingerprint(desired)
        to_send = copy.deepcopy(model)
        to_send["description"] = with_marker(model.get("description"), fp)
        live = client.get_dashboard(uid)
        if live is None:
            client.save_dashboard(to_send, folder_uid=folder_uid, message=f"sluice: created {fp[:12]}")
            results.append(_result("grafana-dashboard", uid, CREATED))
            continue
        live_model = live["dashboard"]
        live_content = grafana_content(live_model, live.get("meta", {}).get("folderUid"))
        action = classify(desired, live_content, split_marker(live_model.get("description"))[1])
        differences = diff(desired, live_content) if action != UNCHANGED else []
        if action == UNCHANGED:
            results.append(_result("grafana-dashboard", uid, UNCHANGED))
            continue
        if action == DRIFT and not overwrite:
            results.append(_result("grafana-dashboard", uid, DRIFT, differences))
            continue
        # Optimistic concurrency: saving with the version just read makes Grafana refuse (412) a
        # dashboard that someone saved in between; overwrite=True replaces whatever is there.
        to_send["version"] = live_model.get("version")
        client.save_dashboard(
            to_send, folder_uid=folder_uid, overwrite=(action == DRIFT), message=f"sluice: {action} {fp[:12]}"
        )
        results.append(_result("grafana-dashboard", uid, OVERWRITTEN if action == DRIFT else UPDATED, differences))
    return results


# -- Kibana -----------------------------------------------------------------------------
def provision_kibana_data_views(client: KibanaClient, views: list[kibana_objects.DataView]) -> list[dict[str, Any]]:
    results = []
    for view in views:
        spec = view.spec()
        live = client.get_data_view(view.id)
        if live is None:
            client.create_data_view(spec)
            results.append(_result("kibana-data-view", view.id, CREATED))
            continue
        have = {k: live.get(k) for k in spec}
        differences = diff(spec, have)
        if not differences:
            results.append(_result("kibana-data-view", view.id, UNCHANGED))
            continue
        client.update_data_view(view.id, spec)
        results.append(_result("kibana-data-view", view.id, UPDATED, differences))
    return results


def provision_kibana_dashboard(client: KibanaClient, *, overwrite: bool = False) -> dict[str, Any]:
    """Import the dashboard and its visualizations unless Kibana already has them as defined.

    The fingerprint of the set's content goes in the dashboard's description;
    data views must exist first (the import checks references).
    """
    plain = kibana_objects.saved_objects()
    desired = kibana_objects.content(plain)
    fp = fingerprint(desired)
    board = kibana_objects.dashboard_object()
    objects = kibana_objects.saved_objects(with_marker(board["attributes"]["description"], fp))
    dash_id = kibana_objects.DASHBOARD_ID
    try:
        live_objects = client.export_objects([{"type": "dashboard", "id": dash_id}], include_references_deep=True)
    except KibanaNotFound:
        live_objects = []
    if not live_objects:
        client.import_objects(kibana_objects.to_ndjson(objects), overwrite=True)
        return _result("kibana-dashboard", dash_id, CREATED)
    live = kibana_objects.content(live_objects)
    live_desc = next(
        (o.get("attributes", {}).get("description") for o in live_objects if o.get("type") == "dashboard" and o.get("id") == dash_id),
        None,
    )
    action = classify(desired, live, split_marker(live_desc)[1])
    if action == UNCHANGED:
        return _result("kibana-dashboard", dash_id, UNCHANGED)
    differences = diff(desired, live)
    if action == DRIFT and not overwrite:
        return _result("kibana-dashboard", dash_id, DRIFT, differences)
    client.import_objects(kibana_objects.to_ndjson(objects), overwrite=True)
    return _result("kibana-dashboard", dash_id, OVERWRITTEN if action == DRIFT else UPDATED, differences)


# -- Report -----------------------------------------------------------------------------
def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per action and the drifted objects; raises DashboardDrift when anything drifted.

    Drift is not an error of provisioning (everything else was written), but
    it must not pass silently: the message lists each object and what differs,
    and says how to replace them.
    """
    counts: dict[str, int] = {}
    for r in results:
        counts[r["action"]] = counts.get(r["action"], 0) + 1
    drifted = [r for r in results if r["action"] == DRIFT]
    log.info("provisioning: %s", ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    if drifted:
        lines = [f"{r['kind']} {r['id']}:\n    " + "\n    ".join(r["diff"] or ["(content differs)"]) for r in drifted]
        raise DashboardDrift(
            f"{len(drifted)} object(s) were edited outside Sluice and left unchanged (ours -> theirs):\n"
            + "\n".join(lines)
            + "\nKeep the edits by copying them into include/dashboards/, or re-run the DAG with overwrite=true to replace them."
        )
    return {"counts": counts, "results": results}
