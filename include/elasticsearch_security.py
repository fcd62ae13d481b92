"""Who may do what in Elasticsearch: Sluice's roles and the API keys made from them.

Every client of Sluice authenticates with an API key limited to one role, for
one index prefix (``SLUICE_ES_INDEX_PREFIX``, default ``sluice``); no client
gets a superuser. Only the set-up (the local stack after it starts
Elasticsearch; compose's ``elasticsearch-setup``) uses the ``elastic``
bootstrap user, to install the index templates and to make these keys.

========== ===================================================================
role       may
========== ===================================================================
loader     create the daily ``{p}-host-*``/``{p}-sensor-*`` indices and index
           documents into them (the minute DAGs' ``load_elasticsearch``, the
           stream loader). No delete, no read of other indices.
lag        the same on ``{p}-lag-*`` only (the Kafka lag DAG).
reconcile  read ``{p}-host-*``, ``{p}-sensor-*`` and ``{p}-lag-*``; read and
           write ``{p}-reconcile-*`` (the reconcile DAG, the Sluice UI page).
anomaly    read, write and delete documents of ``{p}-anomaly-*`` and
           ``{p}-daily-*`` (a window holds only its latest run's set), refresh
           them (the Spark anomaly DAG).
provision  write the ``{p}-*`` index templates (the provision_dashboards DAG).
dashboards read ``{p}-*`` (Grafana's datasource, Kibana's viewers).
kibana     read ``{p}-*`` and manage Kibana's saved objects (data views,
           dashboards): provision_dashboards' Kibana API calls (compose).
========== ===================================================================

Index templates: writers create the daily indices, and a template must be in
place before an index is created. Templates are cluster-wide objects and
Elasticsearch has no privilege for "the templates of these patterns", so a
writer allowed to install them could rewrite the mapping of every future
index. Instead the set-up installs every Sluice template as admin, and the
writers get only the read-only ``monitor`` cluster privilege, which lets the
loaders check that the stored template is current (:func:`include.elasticsearch.ensure_index_template`
and :func:`include.dashboards.index_templates.apply_index_templates` write only
when it is not). Re-provisioning after a template change is the provision
role's job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from include.anomaly.results import ANOMALY, DAILY
from include.contract import ES_INDEX_PREFIX, LAG, RECONCILE
from include.schemas import HOST, SENSOR

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

log = logging.getLogger(__name__)

LOADER, LAG_ROLE, RECONCILE_ROLE, ANOMALY_ROLE, PROVISION, DASHBOARDS, KIBANA = (
    "loader", "lag", "reconcile", "anomaly", "provision", "dashboards", "kibana")
ROLES = (LOADER, LAG_ROLE, RECONCILE_ROLE, ANOMALY_ROLE, PROVISION, DASHBOARDS, KIBANA)

#: The Airflow Connection of each role (the local stack and docker-compose define them; DAG tasks pick theirs).
CONNECTION_IDS = {
    LOADER: "elasticsearch_default",
    LAG_ROLE: "elasticsearch_lag",
    RECONCILE_ROLE: "elasticsearch_reconcile",
    ANOMALY_ROLE: "elasticsearch_anomaly",
    PROVISION: "elasticsearch_provision",
    DASHBOARDS: "elasticsearch_dashboards",
}

#: Index privileges of a writer: make the daily index, (re)index documents by id. ``index`` covers
#: create and overwrite but not delete; ``create_index`` only new indices, not their deletion.
_WRITE = ["create_index", "index"]
_READ = ["read", "view_index_metadata"]


def role_descriptors(prefix: str = ES_INDEX_PREFIX) -> dict[str, dict[str, Any]]:
    """Role name -> the ``role_descriptors`` body of an API key with only that role, for ``prefix``."""

    def pat(*kinds: str) -> list[str]:
        return [f"{prefix}-{k}-*" for k in kinds]

    def role(indices: list[dict[str, Any]], cluster: list[str] | None = None) -> dict[str, Any]:
        return {"cluster": cluster or [], "indices": indices}

    return {
        LOADER: {f"{prefix}_loader": role([{"names": pat(HOST, SENSOR), "privileges": _WRITE}], ["monitor"])},
        LAG_ROLE: {f"{prefix}_lag": role([{"names": pat(LAG), "privileges": _WRITE}], ["monitor"])},
        RECONCILE_ROLE: {f"{prefix}_reconcile": role([
            {"names": pat(HOST, SENSOR, LAG), "privileges": _READ},
            {"names": pat(RECONCILE), "privileges": [*_READ, *_WRITE]},
        ], ["monitor"])},
        ANOMALY_ROLE: {f"{prefix}_anomaly": role([
            {"names": pat(ANOMALY, DAILY), "privileges": [*_READ, *_WRITE, "delete", "maintenance"]},
        ], ["monitor"])},
        PROVISION: {f"{prefix}_provision": role([], ["manage_index_templates"])},
        DASHBOARDS: {f"{prefix}_dashboards": role([{"names": [f"{prefix}-*"], "privileges": _READ}])},
        # Kibana's saved objects (data views, dashboards) of every space: Kibana checks this application privilege.
        KIBANA: {f"{prefix}_kibana": {**role([{"names": [f"{prefix}-*"], "privileges": _READ}]),
                                      "applications": [{"application": "kibana-.kibana", "privileges": ["all"],
                                                        "resources": ["*"]}]}},
    }


def airflow_connections(host: str, port: int, ca_certs: str, keys: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, Any]]:
    """Connection id -> Airflow's JSON form of every role's connection: HTTPS to ``host:port``, trusting
    ``ca_certs``, with that role's key from ``keys`` (role -> ``{"encoded": ...}``) when there is one.

    The local stack (stack/connections.py) and compose's elasticsearch-setup both build them here. The
    elasticsearch provider passes the extra to ``elasticsearch.Elasticsearch()``; Airflow masks
    ``api_key`` in logs.
    """
    out = {}
    for role, conn_id in CONNECTION_IDS.items():
        extra: dict[str, str] = {"ca_certs": ca_certs}
        if role in keys:
            extra["api_key"] = keys[role]["encoded"]
        out[conn_id] = {"conn_type": "elasticsearch", "host": host, "port": port, "schema": "https", "extra": extra}
    return out


def key_name(role: str, prefix: str) -> str:
    return f"{prefix}-{role}"


def create_api_key(admin: Elasticsearch, role: str, *, prefix: str = ES_INDEX_PREFIX) -> dict[str, str]:
    """A new API key of ``role`` for ``prefix``: ``{"id", "name", "encoded"}`` (``encoded`` is the secret)."""
    descriptors = role_descriptors(prefix)
    if role not in descriptors:
        raise ValueError(f"Elasticsearch role {role!r} is not one of {', '.join(ROLES)}")
    resp = admin.security.create_api_key(
        name=key_name(role, prefix), role_descriptors=descriptors[role],
        metadata={"managed_by": "sluice", "role": role, "prefix": prefix},
    )
    log.info("Elasticsearch API key %s created (id %s)", key_name(role, prefix), resp["id"])
    return {"id": resp["id"], "name": resp["name"], "encoded": resp["encoded"]}


def key_is_valid(admin: Elasticsearch, key: Mapping[str, str]) -> bool:
    """Whether the cluster still knows ``key`` and it is neither invalidated nor expired."""
    found = admin.security.get_api_key(id=key["id"]).get("api_keys", [])
    return bool(found) and not found[0].get("invalidated") and not found[0].get("expired", False)


def invalidate_api_keys(admin: Elasticsearch, ids: list[str]) -> int:
    """Invalidate the keys ``ids`` (rotation removes the old ones); how many were invalidated."""
    if not ids:
        return 0
    resp = admin.security.invalidate_api_key(ids=ids)
    return len(resp.get("invalidated_api_keys", []))
