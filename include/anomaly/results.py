"""Where the anomaly job's results go: Elasticsearch documents and OpenTSDB annotations.

The job writes one JSON result per source and window into the landing zone
(:func:`include.anomaly.job.result_key`); :func:`publish` sends it on:

* every anomaly as a document in ``{prefix}-anomaly-YYYY.MM.DD`` (UTC day of
  the reading), ``_id`` = :func:`anomaly_id` of the reading's identity, so a
  rerun overwrites; documents of the same source and window that the rerun no
  longer finds are deleted, so the window holds exactly the rerun's set;
* every anomaly as an OpenTSDB annotation on its series (``tsuid`` from
  ``/api/uid/assign``, which returns the existing UIDs or assigns them, so the
  series need not have been loaded yet) at the reading's second: OpenTSDB keys
  an annotation by (tsuid, start time), so posting it again replaces it. The
  annotation's ``custom.id`` is the document id;
* every daily aggregate as a document in ``{prefix}-daily-YYYY.MM.DD``, ``_id``
  = :func:`daily_id` of (day, source, device, metric, tags).

Index templates for both families are applied first (unchanged ones are not
rewritten). Elasticsearch failures raise as :mod:`include.elasticsearch` does;
OpenTSDB failures raise :class:`include.opentsdb.OpenTSDBError` subclasses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from include import elasticsearch as es_mod
from include.anomaly.detect import METHOD
from include.opentsdb import OpenTSDBRequestError, OpenTSDBResponseError, sanitise
from include.contract import (
    ES_INDEX_PREFIX,
    ES_TIME_FIELD,
    canonical_timestamp,
    format_tags,
    parse_tags,
    reading_id,
)
from include.schemas import HOST, SENSOR
from include.transform import document_datapoints

log = logging.getLogger(__name__)

ANOMALY = "anomaly"
DAILY = "daily"
_UID = re.compile(r"UID:\s*([0-9A-Fa-f]+)")


def anomaly_id(source: str, device: str, timestamp: str, metric: str, tags: str) -> str:
    """Id of the anomaly of one reading: the reading's own identity, under its own namespace."""
    return reading_id(f"{ANOMALY}:{source}", device, timestamp, metric, tags)


def daily_id(day: str, source: str, device: str, metric: str, tags: str) -> str:
    return reading_id(f"{DAILY}:{source}", device, day, metric, tags)


def index_templates(*, prefix: str = ES_INDEX_PREFIX) -> dict[str, dict[str, Any]]:
    """Composable index templates of ``{prefix}-anomaly-*`` and ``{prefix}-daily-*``."""
    keyword = {"type": "keyword"}
    double = {"type": "double"}
    series = {"source": keyword, "device": keyword, "metric": keyword, "series": keyword,
              "tags": {"type": "object", "dynamic": True}}
    anomaly = {ES_TIME_FIELD: {"type": "date"}, **series, "value": double, "expected": double, "low": double,
               "high": double, "score": double, "method": keyword, "bucket_points": {"type": "integer"},
               "window_start": {"type": "date"}, "window_end": {"type": "date"}}
    daily = {ES_TIME_FIELD: {"type": "date"}, "day": {"type": "date", "format": "yyyy-MM-dd"}, **series,
             "count": {"type": "long"}, "min": double, "max": double, "mean": double, "p95": double}

    def template(kind: str, properties: dict) -> dict:
        return {
            "index_patterns": [f"{prefix}-{kind}-*"],
            "priority": 200,
            "template": {
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "dynamic_templates": [
                        {"tags_as_keywords": {"path_match": "tags.*", "mapping": {"type": "keyword"}}},
                        {"strings_as_keywords": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}},
                    ],
                    "properties": properties,
                },
            },
        }

    return {f"{prefix}-{ANOMALY}": template(ANOMALY, anomaly), f"{prefix}-{DAILY}": template(DAILY, daily)}


def _series(source: str, device: str, metric: str, tags: str) -> dict:
    tag_map = parse_tags(tags) if tags else {}
    label = f"{metric}{{{','.join(f'{k}={v}' for k, v in sorted(tag_map.items()))}}}" if tag_map else metric
    return {"source": source, "device": device, "metric": metric, "tags": tag_map, "series": label}


def anomaly_documents(result: Mapping[str, Any]) -> list[tuple[str, str, bytes]]:
    """``(id, @timestamp, document)`` of every anomaly of one job result."""
    source, window, method = result["source"], result["window"], result["method"]
    out = []
    for a in result["anomalies"]:
        ts = canonical_timestamp(a["timestamp"])
        doc = {
            ES_TIME_FIELD: ts, **_series(source, a["device"], a["metric"], a["tags"]),
            "value": a["value"], "expected": a["expected"], "low": a["low"], "high": a["high"],
            "score": round(a["score"], 3), "method": method["name"], "method_params": method,
            "bucket_points": a["bucket_points"], "window_start": window["start"], "window_end": window["end"],
        }
        out.append((anomaly_id(source, a["device"], ts, a["metric"], a["tags"]), ts, orjson.dumps(doc)))
    return out


def daily_documents(result: Mapping[str, Any]) -> list[tuple[str, str, bytes]]:
    """``(id, @timestamp, document)`` of every daily aggregate of one job result (``@timestamp`` = the day, 00:00Z)."""
    source = result["source"]
    out = []
    for d in result["daily"]:
        ts = f"{d['day']}T00:00:00Z"
        doc = {ES_TIME_FIELD: ts, "day": d["day"], **_series(source, d["device"], d["metric"], d["tags"]),
               **{k: d[k] for k in ("count", "min", "max", "mean", "p95")}}
        out.append((daily_id(d["day"], source, d["device"], d["metric"], d["tags"]), ts, orjson.dumps(doc)))
    return out


def opentsdb_series(source: str, device: str, metric: str, tags: str) -> tuple[str, dict[str, str]]:
    """The OpenTSDB metric and tags a series is loaded under (the loader's own mapping)."""
    if source == HOST:
        doc = {ES_TIME_FIELD: "1970-01-01T00:00:00Z", "host": device, metric.removeprefix("host."): 0}
    elif source == SENSOR:
        doc = {ES_TIME_FIELD: "1970-01-01T00:00:00Z", "device": device, "metric": metric, "value": 0,
               "tags": parse_tags(tags) if tags else {}}
    else:
        raise ValueError(f"source {source!r} has no OpenTSDB series")
    (dp,) = document_datapoints(source, doc)
    return sanitise(dp["metric"]), {k: sanitise(v) for k, v in dp["tags"].items()}


def _call(client, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None):
    resp = client.session.request(method, f"{client.url}{path}", json=body, params=params, auth=client.auth,
                                  verify=client.verify, timeout=client.timeout)
    return resp


def assign_uids(client, metrics: Iterable[str], tagks: Iterable[str], tagvs: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{"metric"|"tagk"|"tagv": {name: uid}}`` through ``/api/uid/assign`` (existing UIDs are reported, not changed)."""
    body = {"metric": sorted(set(metrics)), "tagk": sorted(set(tagks)), "tagv": sorted(set(tagvs))}
    resp = _call(client, "POST", "/api/uid/assign", body)
    if resp.status_code not in (200, 400):
        raise OpenTSDBRequestError(f"POST /api/uid/assign answered {resp.status_code}: {resp.text[:300]}")
    try:
        answer = resp.json()
    except ValueError:
        raise OpenTSDBResponseError(f"POST /api/uid/assign answered {resp.status_code} without JSON: {resp.text[:300]}") from None
    out: dict[str, dict[str, str]] = {}
    for kind in ("metric", "tagk", "tagv"):
        uids = dict(answer.get(kind) or {})
        for name, error in (answer.get(f"{kind}_errors") or {}).items():
            match = _UID.search(error)
            if not match:
                raise OpenTSDBRequestError(f"OpenTSDB refused {kind} {name!r}: {error}")
            uids[name] = match.group(1)
        missing = set(body[kind]) - set(uids)
        if missing:
            raise OpenTSDBResponseError(f"/api/uid/assign returned no UID for {kind} {sorted(missing)[:3]}")
        out[kind] = uids
    return out


def tsuid(uids: Mapping[str, Mapping[str, str]], metric: str, tags: Mapping[str, str]) -> str:
    """OpenTSDB's TSUID: metric UID, then tagk+tagv UID pairs in the order of the tagk UIDs."""
    pairs = sorted((uids["tagk"][k], uids["tagv"][v]) for k, v in tags.items())
    return uids["metric"][metric] + "".join(k + v for k, v in pairs)


def annotations(client, result: Mapping[str, Any]) -> list[dict]:
    """OpenTSDB annotations of every anomaly of one job result (resolves UIDs through ``client``)."""
    source = result["source"]
    rows = []
    for a in result["anomalies"]:
        metric, tags = opentsdb_series(source, a["device"], a["metric"], a["tags"])
        rows.append((a, metric, tags))
    if not rows:
        return []
    uids = assign_uids(client, (m for _, m, _ in rows), (k for _, _, t in rows for k in t),
                       (v for _, _, t in rows for v in t.values()))
    out = []
    for a, metric, tags in rows:
        ts = canonical_timestamp(a["timestamp"])
        doc_id = anomaly_id(source, a["device"], ts, a["metric"], a["tags"])
        out.append({
            "tsuid": tsuid(uids, metric, tags),
            "startTime": int(a["epoch"]),
            "description": f"anomaly: {a['value']:.6g} (expected {a['expected']:.6g}, score {a['score']:.1f})",
            "notes": f"{metric} {format_tags(tags)}: outside [{a['low']:.6g}, {a['high']:.6g}] by {METHOD}",
            "custom": {"id": doc_id, "source": source, "method": result["method"]["name"],
                       "score": f"{a['score']:.3f}", "expected": f"{a['expected']:.6g}",
                       "low": f"{a['low']:.6g}", "high": f"{a['high']:.6g}"},
        })
    return out


def post_annotations(client, items: Sequence[dict], *, batch: int = 500) -> int:
    """POST ``/api/annotation/bulk`` in batches; the number stored."""
    stored = 0
    for i in range(0, len(items), batch):
        chunk = list(items[i:i + batch])
        resp = _call(client, "POST", "/api/annotation/bulk", chunk)
        if resp.status_code != 200:
            raise OpenTSDBRequestError(f"POST /api/annotation/bulk answered {resp.status_code}: {resp.text[:300]}")
        stored += len(chunk)
    return stored


def get_annotation(client, tsuid_: str, start_time: int) -> dict | None:
    """The annotation of a series at one second, None when there is none."""
    resp = _call(client, "GET", "/api/annotation", params={"tsuid": tsuid_, "start_time": start_time})
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise OpenTSDBRequestError(f"GET /api/annotation answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def delete_stale(es, prefix: str, source: str, window: Mapping[str, str], *, keep: set[str]) -> int:
    """Delete the window's anomaly documents of ``source`` not in ``keep``; how many.

    What an earlier run of the window found and this one did not goes, so a
    window holds exactly its latest run's set. Search (scroll) and bulk delete,
    not ``_delete_by_query``: that lives in the reindex module, which a minimal
    Elasticsearch (the local stack's) does not have.
    """
    from elasticsearch.helpers import bulk, scan

    query = {"bool": {"filter": [{"term": {"source": source}},
                                 {"range": {ES_TIME_FIELD: {"gte": window["start"], "lt": window["end"]}}}]}}
    stale = [{"_op_type": "delete", "_index": hit["_index"], "_id": hit["_id"]}
             for hit in scan(es, index=f"{prefix}-{ANOMALY}-*", query={"query": query}, _source=False,
                             ignore_unavailable=True, allow_no_indices=True)
             if hit["_id"] not in keep]
    if stale:
        bulk(es, stale, refresh=True)
    return len(stale)


def publish(es, tsdb, result: Mapping[str, Any], *, prefix: str = ES_INDEX_PREFIX) -> dict[str, Any]:
    """Send one job result to Elasticsearch (``es``) and OpenTSDB (``tsdb``, may be None); counts per output."""
    from include.dashboards.index_templates import apply_index_templates

    apply_index_templates(es, index_templates(prefix=prefix))
    source, window = result["source"], result["window"]
    docs = anomaly_documents(result)
    loaded = es_mod.bulk_index(es, es_mod.bulk_actions(ANOMALY, [d[0] for d in docs], [d[1] for d in docs],
                                                       [d[2] for d in docs], prefix=prefix))
    stale = delete_stale(es, prefix, source, window, keep={d[0] for d in docs})
    daily = daily_documents(result)
    daily_loaded = es_mod.bulk_index(es, es_mod.bulk_actions(DAILY, [d[0] for d in daily], [d[1] for d in daily],
                                                             [d[2] for d in daily], prefix=prefix))
    es.options(ignore_status=404).indices.refresh(index=f"{prefix}-{ANOMALY}-*,{prefix}-{DAILY}-*")
    annotated = post_annotations(tsdb, annotations(tsdb, result)) if tsdb is not None else 0
    summary = {
        "source": source, "window": window, "files": result["files"], "skipped": result["skipped"],
        "rows": result["rows"], "anomalies": loaded.accepted, "anomalies_refused": loaded.failed,
        "stale_deleted": stale,
        "annotations": annotated, "daily": daily_loaded.accepted, "daily_refused": daily_loaded.failed,
    }
    if not result["files"]:
        log.info("%s [%s, %s): no files in the window: zero anomalies", source, window["start"], window["end"])
    for skipped in result["skipped"]:
        log.warning("%s: skipped quarantined file %s: %s", source, skipped["key"], skipped["reason"])
    log.info("%s [%s, %s): %d rows, %d anomalies indexed, %d annotations, %d daily aggregates, %d stale deleted",
             source, window["start"], window["end"], result["rows"], loaded.accepted, annotated,
             daily_loaded.accepted, summary["stale_deleted"])
    return summary


def publish_window(landing, es, tsdb, window: Mapping[str, str], *, prefix: str = ES_INDEX_PREFIX,
                   sources: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Publish the job's results of ``window`` (``{"start", "end"}``) for every source; one summary each.

    A missing result means the job did not run for this window: KeyError naming it.
    """
    from include.anomaly.job import parse_time, result_key
    from include.schemas import SOURCES

    start, end = parse_time(window["start"]), parse_time(window["end"])
    return [publish(es, tsdb, orjson.loads(landing.get(result_key(s, start, end))), prefix=prefix)
            for s in (sources or SOURCES)]
