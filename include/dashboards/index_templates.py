"""Elasticsearch index templates for the daily Sluice indices, applied idempotently.

``{prefix}-host-*`` and ``{prefix}-sensor-*`` use the loader's templates
(:func:`include.elasticsearch.index_template`); ``{prefix}-lag-*`` (documents
of the Kafka lag DAG, which the loader does not define) gets its template
here. Explicit mappings make Kibana and Grafana see numbers as numbers and
names as keywords from the first document on.

Each template is written with ``_meta.sluice_fingerprint`` so provisioning can
tell "unchanged" from "changed" without comparing the server's normalised
copy of mappings and settings field by field.
"""

from __future__ import annotations

import logging
from typing import Any

from include import elasticsearch as es_loader
from include.dashboards.drift import CREATED, UNCHANGED, UPDATED, fingerprint
from include.contract import ES_INDEX_PREFIX, ES_TIME_FIELD, LAG, index_pattern, template_name
from include.schemas import SOURCES

log = logging.getLogger(__name__)


def lag_index_template(*, prefix: str = ES_INDEX_PREFIX) -> dict[str, Any]:
    """Template of ``{prefix}-lag-*``: the fields of :func:`include.kafka_lag.lag_documents`."""
    properties = {
        ES_TIME_FIELD: {"type": "date"},
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
    return {
        "index_patterns": [index_pattern(LAG, prefix=prefix)],
        "priority": 200,
        # One node in the local stack and in docker-compose: replicas would stay unassigned.
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic_templates": [{"strings_as_keywords": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}],
                "properties": properties,
            },
        },
    }


def sluice_index_templates(*, prefix: str = ES_INDEX_PREFIX) -> dict[str, dict[str, Any]]:
    """Template name -> body for every Sluice index family."""
    templates = {template_name(s, prefix=prefix): es_loader.index_template(s, prefix=prefix) for s in SOURCES}
    templates[template_name(LAG, prefix=prefix)] = lag_index_template(prefix=prefix)
    # sluice-anomaly-* and sluice-daily-*: documents of the Spark anomaly job.
    from include.anomaly.results import index_templates as anomaly_index_templates

    templates.update(anomaly_index_templates(prefix=prefix))
    return templates


def apply_index_templates(
    es: Any, templates: dict[str, dict[str, Any]] | None = None, *, prefix: str = ES_INDEX_PREFIX
) -> list[dict[str, Any]]:
    """Create or update each composable index template; unchanged ones are not written.

    ``es`` is an ``elasticsearch.Elasticsearch`` client. Returns one result
    ``{"kind", "id", "action"}`` per template. Errors of the client (unreachable,
    401/403, a rejected mapping) propagate with Elasticsearch's own message.
    """
    results = []
    for name, body in (templates or sluice_index_templates(prefix=prefix)).items():
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
        log.info("elasticsearch-index-template %s: %s", name, action)
        results.append({"kind": "elasticsearch-index-template", "id": name, "action": action})
    return results
