"""The dashboard definitions: built by the SDK, pointing at provisioned data sources and at
metrics and fields the pipeline writes, with stable uids; Kibana objects importable as NDJSON."""

from __future__ import annotations

import json

import pytest

from include.dashboards import kibana_objects
from include.reconcile import reconcile_template
from include.dashboards.datasources import ES_UIDS, OPENTSDB_VERSION_2_4, sluice_datasources
from include.dashboards.drift import fingerprint
from include.dashboards.grafana_dashboards import dashboard_models, sluice_dashboards
from include.dashboards.index_templates import sluice_index_templates
from include.dashboards.opentsdb import InvalidOpenTSDBQuery, Query, check_no_blind_sum
from include.contract import ES_TIME_FIELD, LAG, RECONCILE, index_pattern
from include.schemas import (
    FRESHNESS_METRIC,
    HOST,
    HOST_METRICS,
    LAG_METRIC,
    LAG_STATUS_METRIC,
    LAG_TAGS,
    SENSOR,
    SENSOR_METRIC,
    SENSOR_TYPES,
)

DATASOURCES = sluice_datasources(opentsdb_url="http://opentsdb:4242", elasticsearch_url="http://elasticsearch:9200")
MODELS = dashboard_models()

#: OpenTSDB metric -> the tags the pipeline writes on it.
WRITTEN_METRICS = {
    **{m: {"host"} for m in HOST_METRICS.values()},
    SENSOR_METRIC: {"type", "device"},
    LAG_METRIC: set(LAG_TAGS),
    LAG_STATUS_METRIC: set(LAG_TAGS),
    FRESHNESS_METRIC: {"source"},
}


def _es_fields(source: str) -> set[str]:
    """Fields of a source's documents, from its index template (the loader builds it from the schemas)."""
    if source == RECONCILE:
        props = reconcile_template()["template"]["mappings"]["properties"]
        return set(props) | {f"hops.{h}" for h in props["hops"]["properties"]} | {ES_TIME_FIELD}
    templates = sluice_index_templates()
    props = templates[f"sluice-{source}"]["template"]["mappings"]["properties"]
    return set(props) | {ES_TIME_FIELD}


def _panels():
    for uid, model in MODELS.items():
        for panel in model["panels"]:
            yield uid, panel


def test_uids_are_stable_and_valid():
    assert list(MODELS) == ["sluice-hosts", "sluice-sensors", "sluice-kafka-lag", "sluice-freshness", "sluice-reconcile"]
    assert [d.uid for d in DATASOURCES] == ["sluice-opentsdb", *ES_UIDS.values()]
    for uid in [*MODELS, *(d.uid for d in DATASOURCES)]:
        assert len(uid) <= 40 and uid.replace("-", "").isalnum(), uid
    # Same code, same JSON: nothing random (no generated ids, no timestamps) goes in.
    assert fingerprint(dashboard_models()) == fingerprint(MODELS)


def test_panels_reference_provisioned_datasources():
    provisioned = {(d.type, d.uid) for d in DATASOURCES}
    for uid, panel in _panels():
        refs = [panel["datasource"]] + [t["datasource"] for t in panel["targets"] if "datasource" in t]
        for ref in refs:
            assert (ref["type"], ref["uid"]) in provisioned, f"{uid}/{panel['title']} uses {ref}"
        assert panel["targets"], f"{uid}/{panel['title']} has no query"


def test_panel_ids_are_unique_per_dashboard():
    for uid, model in MODELS.items():
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), uid


def test_every_opentsdb_query_names_a_written_metric_and_tag():
    seen = set()
    for uid, panel in _panels():
        for target in panel["targets"]:
            if panel["datasource"]["type"] != "opentsdb":
                continue
            metric = target["metric"]
            assert metric in WRITTEN_METRICS, f"{uid}/{panel['title']}: {metric} is not written by the pipeline"
            for f in target["filters"]:
                assert f["tagk"] in WRITTEN_METRICS[metric], f"{uid}/{panel['title']}: {metric} has no tag {f['tagk']}"
            seen.add(metric)
    for field in ("cpu_usage_percent", "mem_percent", "cpu_ctx_switches", "cpu_interrupts"):
        assert HOST_METRICS[field] in seen
    assert {SENSOR_METRIC, LAG_METRIC, LAG_STATUS_METRIC, FRESHNESS_METRIC} <= seen


def test_sensor_readings_are_separate_queries_never_their_sum():
    sensor_targets = [t for _, p in _panels() for t in p["targets"] if t.get("metric") == SENSOR_METRIC]
    types = []
    for t in sensor_targets:
        check_no_blind_sum(t, required_tags=("type", "device"))
        (type_filter,) = [f for f in t["filters"] if f["tagk"] == "type"]
        assert type_filter["type"] == "literal_or" and "|" not in type_filter["filter"] and not type_filter["groupBy"]
        (device,) = [f for f in t["filters"] if f["tagk"] == "device"]
        assert device["groupBy"], "one series per device"
        types.append(type_filter["filter"])
    assert sorted(types) == sorted(SENSOR_TYPES)


def test_lag_queries_split_by_group_topic_partition():
    for metric in (LAG_METRIC, LAG_STATUS_METRIC):
        (t,) = [t for _, p in _panels() for t in p["targets"] if t.get("metric") == metric]
        assert {f["tagk"] for f in t["filters"] if f["groupBy"]} == set(LAG_TAGS)


@pytest.mark.parametrize(
    "query, message",
    [
        pytest.param(Query(SENSOR_METRIC).where("type", "dust"), "device", id="sensor-without-device"),
        pytest.param(Query(SENSOR_METRIC), "type, device", id="seed-000-sum-of-everything"),
    ],
)
def test_blind_sum_is_caught(query, message):
    with pytest.raises(InvalidOpenTSDBQuery, match=message):
        check_no_blind_sum(query.build().to_json(), required_tags=("type", "device"))


def test_invalid_opentsdb_query_is_refused():
    with pytest.raises(InvalidOpenTSDBQuery, match="aggregator 'average'"):
        Query("host.mem_percent").aggregator("average").build()


def test_elasticsearch_queries_use_written_fields():
    by_uid = {uid: source for source, uid in ES_UIDS.items()}
    es_panels = [(u, p) for u, p in _panels() if p["datasource"]["type"] == "elasticsearch"]
    assert {by_uid[p["datasource"]["uid"]] for _, p in es_panels} == {HOST, SENSOR, LAG, RECONCILE}
    for uid, panel in es_panels:
        fields = _es_fields(by_uid[panel["datasource"]["uid"]])
        for t in panel["targets"]:
            assert t["timeField"] == ES_TIME_FIELD
            used = [a["field"] for a in t["bucketAggs"] if "field" in a] + [m["field"] for m in t["metrics"] if "field" in m]
            assert set(used) <= fields, f"{uid}/{panel['title']}: {used}"


def test_datasource_settings():
    tsdb, *es = DATASOURCES
    assert tsdb.type == "opentsdb" and tsdb.json_data["tsdbVersion"] == OPENTSDB_VERSION_2_4 == 4
    assert {d.json_data["index"] for d in es} == {index_pattern(s) for s in (HOST, SENSOR, LAG)} | {"sluice-reconcile-*"}
    assert all(d.json_data["timeField"] == ES_TIME_FIELD for d in es)
    # Passwords go in secureJsonData only, never in the compared fields.
    secret = sluice_datasources(opentsdb_url="x", elasticsearch_url="y", elasticsearch_user="u", elasticsearch_password="pw")[1]
    assert "pw" not in json.dumps(secret.managed()) and secret.body()["secureJsonData"] == {"basicAuthPassword": "pw"}
    # An API key (the dashboards role's) and a CA: header and PEM in secureJsonData, only their names compared.
    keyed = sluice_datasources(opentsdb_url="x", elasticsearch_url="https://es:9200", elasticsearch_api_key="k3y",
                               elasticsearch_ca_cert="-----BEGIN CERTIFICATE-----")[1]
    assert "k3y" not in json.dumps(keyed.managed()) and "BEGIN" not in json.dumps(keyed.managed())
    assert keyed.json_data["httpHeaderName1"] == "Authorization" and keyed.json_data["tlsAuthWithCACert"] is True
    assert keyed.body()["secureJsonData"] == {"httpHeaderValue1": "ApiKey k3y", "tlsCACert": "-----BEGIN CERTIFICATE-----"}
    assert "k3y" not in repr(keyed)


def test_sdk_builds_every_dashboard():
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert all(isinstance(b.build(), Dashboard) for b in sluice_dashboards())


# -- Kibana -------------------------------------------------------------------------------
def test_kibana_objects_are_valid_ndjson_for_the_import_api():
    text = kibana_objects.to_ndjson(kibana_objects.saved_objects())
    assert text.endswith("\n")
    lines = text.splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(lines) == len(kibana_objects.VISUALIZATIONS) + 1
    for o in objects:
        assert {"type", "id", "attributes", "references"} <= o.keys()
        assert o["type"] in ("visualization", "dashboard")
        assert o["attributes"]["title"]
    ids = [(o["type"], o["id"]) for o in objects]
    assert len(ids) == len(set(ids))


def test_kibana_objects_reference_the_data_views_they_need():
    objects = kibana_objects.saved_objects()
    available = {(o["type"], o["id"]) for o in objects} | {("index-pattern", v.id) for v in kibana_objects.data_views().values()}
    for o in objects:
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in available, f"{o['id']} refers to missing {ref}"
    (board,) = [o for o in objects if o["type"] == "dashboard"]
    panel_refs = {p["panelRefName"] for p in json.loads(board["attributes"]["panelsJSON"])}
    assert panel_refs == {r["name"] for r in board["references"]}
    for vis in (o for o in objects if o["type"] == "visualization"):
        search = json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        (ref,) = [r for r in vis["references"] if r["name"] == search["indexRefName"]]
        assert ref["type"] == "index-pattern"


def test_kibana_visualizations_use_written_fields():
    by_view = {v.id: s for s, v in kibana_objects.data_views().items()}
    for vis in kibana_objects.saved_objects()[:-1]:
        source = by_view[vis["references"][0]["id"]]
        fields = _es_fields(source)
        state = json.loads(vis["attributes"]["visState"])
        used = {a["params"]["field"] for a in state["aggs"]}
        assert used <= fields, f"{vis['id']}: {used - fields}"
        query = json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
        if source == SENSOR:
            assert "tags.type" in query and "metric" in query


def test_data_views_match_index_patterns():
    for source, view in kibana_objects.data_views().items():
        assert view.title == index_pattern(source) and view.time_field == ES_TIME_FIELD


def test_data_sources_and_data_views_follow_the_index_prefix():
    """SLUICE_ES_INDEX_PREFIX moves the loaders' indices; Grafana and Kibana must look there too."""
    sources = sluice_datasources(opentsdb_url="x", elasticsearch_url="y", index_prefix="t42")
    patterns = {d.json_data["index"] for d in sources if d.type == "elasticsearch"}
    assert patterns >= {index_pattern(s, prefix="t42") for s in (HOST, SENSOR, LAG)}
    assert all(p.startswith("t42-") for p in patterns)
    views = kibana_objects.data_views("t42")
    assert {v.title for v in views.values()} == {index_pattern(s, prefix="t42") for s in views}
    assert all(v.title.startswith("t42-") for v in views.values())
    # Saved visualizations refer to data views by id: ids stay put whatever the prefix.
    assert {v.id for v in views.values()} == {v.id for v in kibana_objects.data_views().values()}
    templates = sluice_index_templates(prefix="t42")
    assert {"t42-host", "t42-lag", "t42-sensor"} <= set(templates) and all(n.startswith("t42-") for n in templates)
    assert all(t["index_patterns"] == [f"{name}-*"] for name, t in templates.items())
