"""Elasticsearch index templates for the daily Sluice indices.

``sluice-host-*``, ``sluice-sensor-*`` and ``sluice-lag-*`` get explicit
mappings so that Kibana and Grafana see numbers as numbers and names as
keywords from the first document on (dynamic mapping would make ``host`` a
text field that cannot be aggregated).

Written here because the Elasticsearch loader (``include/elasticsearch.py``)
did not exist yet when provisioning was built; :func:`sluice_index_templates`
prefers that module's templates when it provides ``index_templates()``.

Each template carries ``_meta.sluice_fingerprint`` so that provisioning can
tell "unchanged" from "changed" without comparing the server's normalised
copy of mappings and settings field by field.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from include.dashboards.drift import CREATED, UNCHANGED, UPDATED, fingerprint
from include.schemas import ES_TIME_FIELD, HOST, HOST_SCHEMA, LAG, SENSOR, es_index_pattern

log = logging.getLogger(__name__)

_NUMERIC = {"int": "long", "float": "double"}


def _template(source: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    mappings: dict[str, Any] = {"dynamic": True, "properties": {ES_TIME_FIELD: {"type": "date"}, **properties}}
    mappings.update(extra)
    return {
        "index_patterns": [es_index_pattern(source)],
        "priority": 200,
        # One node in both the local stack and docker-compose: replicas would stay unassigned.
        "template": {"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": mappings},
    }


def own_index_templates() -> dict[str, dict[str, Any]]:
    """Template name -> body, as defined in this module."""
    host = {c.name: {"type": _NUMERIC[c.kind]} for c in HOST_SCHEMA.numeric}
    host["host"] = {"type": "keyword"}
    sensor = {
        "device": {"type": "keyword"},
        "metric": {"type": "keyword"},
        "value": {"type": "double"},
        "tags": {"type": "object", "dynamic": True},
    }
    lag = {
        "group": {"type": "keyword"},
        "topic": {"type": "keyword"},
        "partition": {"type": "integer"},
        "committed": {"type": "long"},
        "log_end": {"type": "long"},
        "lag": {"type": "long"},
        "status": {"type": "keyword"},
        "status_code": {"type": "integer"},
        "group_status": {"type": "keyword"},
    }
    strings_as_keywords = [{"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}]
    return {
        f"sluice-{HOST}": _template(HOST, host, dynamic_templates=strings_as_keywords),
        f"sluice-{SENSOR}": _template(SENSOR, sensor, dynamic_templates=strings_as_keywords),
        f"sluice-{LAG}": _template(LAG, lag, dynamic_templates=strings_as_keywords),
    }


def sluice_index_templates() -> dict[str, dict[str, Any]]:
    """The loader's templates when ``include.elasticsearch.index_templates`` exists, else ours."""
    try:
        loader = importlib.import_module("include.elasticsearch")
    except ImportError:
        return own_index_templates()
    fn = getattr(loader, "index_templates", None)
    if callable(fn):
        templates = dict(fn())
        # Lag documents are written by the lag DAG; keep their template if the loader has none.
        for name, body in own_index_templates().items():
            templates.setdefault(name, body)
        return templates
    return own_index_templates()


def apply_index_templates(es: Any, templates: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Create or update each composable index template; unchanged ones are not written.

    ``es`` is an ``elasticsearch.Elasticsearch`` client. Returns one result
    ``{"kind", "id", "action"}`` per template. Errors of the client (unreachable,
    401/403, a rejected mapping) propagate with Elasticsearch's own message.
    """
    results = []
    for name, body in (templates or sluice_index_templates()).items():
        fp = fingerprint(body)
        wanted = {**body, "_meta": {**body.get("_meta", {}), "sluice_fingerprint": fp}}
        live = es.options(ignore_status=404).indices.get_index_template(name=name)
        found = live.body.get("index_templates") if live.meta.status == 200 else None
        existing = found[0]["index_template"] if found else None
        if existing and existing.get("_meta", {}).get("sluice_fingerprint") == fp:
            action = UNCHANGED
        else:
            es.indices.put_index_template(name=name, **wanted)
            action = UPDATED if existing else CREATED
        log.info("index template %s: %s", name, action)
        results.append({"kind": "elasticsearch-index-template", "id": name, "action": action})
    return results
