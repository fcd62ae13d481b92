"""The Grafana dashboards of Sluice, built with grafana-foundation-sdk.

Four dashboards, each with a stable uid (links and provisioning depend on it):

- ``sluice-hosts``: CPU use, memory, context switches and interrupts per host
  (the psutil fields of seeds/003, as OpenTSDB metrics ``host.<field>``);
- ``sluice-sensors``: temperature, humidity and dust per device, each its own
  query filtered by the ``type`` tag and split by ``device`` - never the sum
  of all three that seeds/000 first drew;
- ``sluice-kafka-lag``: consumer lag and lag status per group, topic and partition;
- ``sluice-freshness``: the last minute loaded per source, and documents
  indexed per minute in Elasticsearch;
- ``sluice-reconcile``: the reconciliation index (``include/reconcile.py``):
  minutes per verdict, the count at every hop, freshness against the SLA and
  its breaches (the same documents the Sluice page of the Airflow UI draws).

Metric names, tags and fields come from :mod:`include.schemas`, and every
panel's data source reference from :mod:`include.dashboards.datasources`, so a
renamed metric or data source breaks the tests instead of a dashboard.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import elasticsearch as es_b
from grafana_foundation_sdk.builders import stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from include.dashboards.datasources import REFS
from include.dashboards.opentsdb import Query
from include.contract import ES_TIME_FIELD, LAG
from include.schemas import (
    FRESHNESS_METRIC,
    HOST,
    HOST_METRICS,
    LAG_METRIC,
    LAG_STATUS_CODES,
    LAG_STATUS_METRIC,
    SENSOR,
    SENSOR_METRIC,
)

FOLDER_UID = "sluice"
FOLDER_TITLE = "Sluice"
TAGS = ["sluice"]

HOSTS_UID = "sluice-hosts"
SENSORS_UID = "sluice-sensors"
KAFKA_LAG_UID = "sluice-kafka-lag"
FRESHNESS_UID = "sluice-freshness"
RECONCILE_UID = "sluice-reconcile"

#: Display unit of each sensor ``type`` tag (Grafana unit ids; dust as a suffix).
SENSOR_UNITS = {"temperature": "celsius", "humidity": "humidity", "dust": "suffix: µg/m³"}
_STATUS_COLORS = {"OK": "green", "WARN": "yellow", "REWIND": "blue", "STALL": "orange", "STOP": "red", "ERR": "purple"}


def _legend() -> common_b.VizLegendOptions:
    return (
        common_b.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def _series(title: str, *, unit: str, description: str = "") -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(REFS["opentsdb"])
        .unit(unit)
        .legend(_legend())
        .height(8)
        .span(12)
    )


def _base(uid: str, title: str, description: str) -> dashboard_b.Dashboard:
    return (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("utc")
    )


def hosts_dashboard() -> dashboard_b.Dashboard:
    m = HOST_METRICS
    return (
        _base(HOSTS_UID, "Sluice / Hosts", "psutil metrics per host, one point per minute (average of the second samples).")
        .with_panel(
            _series("CPU use", unit="percent", description="All cores, per host.")
            .min(0)
            .max(100)
            .with_target(Query(m["cpu_usage_percent"]).group_by("host").alias("$tag_host"))
        )
        .with_panel(
            _series("Memory used", unit="percent")
            .min(0)
            .max(100)
            .with_target(Query(m["mem_percent"]).group_by("host").alias("$tag_host"))
        )
        .with_panel(
            _series("Memory available", unit="bytes")
            .min(0)
            .with_target(Query(m["mem_available"]).group_by("host").alias("$tag_host available"))
            .with_target(Query(m["mem_total"]).ref_id("B").group_by("host").alias("$tag_host total"))
        )
        .with_panel(
            _series("Context switches", unit="cps", description="Per second: rate of the since-boot counter.")
            .min(0)
            .with_target(Query(m["cpu_ctx_switches"]).group_by("host").rate(counter=True).alias("$tag_host"))
        )
        .with_panel(
            _series("Interrupts", unit="cps", description="Per second: hardware and soft interrupts.")
            .min(0)
            .with_target(Query(m["cpu_interrupts"]).group_by("host").rate(counter=True).alias("$tag_host interrupts"))
            .with_target(
                Query(m["cpu_soft_interrupts"])
                .ref_id("B")
                .group_by("host")
                .rate(counter=True)
                .alias("$tag_host soft interrupts")
            )
        )
    )


def sensors_dashboard() -> dashboard_b.Dashboard:
    board = _base(
        SENSORS_UID,
        "Sluice / Sensors",
        f"Readings of the Arduino meters under {SENSOR_METRIC}, told apart by the type tag, one line per device.",
    )
    for sensor_type, unit in SENSOR_UNITS.items():
        board = board.with_panel(
            _series(sensor_type.capitalize(), unit=unit, description=f"{SENSOR_METRIC} where type={sensor_type}, per device.")
            .span(8)
            .with_target(Query(SENSOR_METRIC).where("type", sensor_type).group_by("device").alias("$tag_device"))
        )
    return board


def _status_mappings() -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                str(code): dm.ValueMappingResult(text=name, color=_STATUS_COLORS.get(name, "blue"), index=i)
                for i, (name, code) in enumerate(sorted(LAG_STATUS_CODES.items(), key=lambda kv: kv[1]))
            }
        )
    ]


def kafka_lag_dashboard() -> dashboard_b.Dashboard:
    alias = "$tag_group $tag_topic[$tag_partition]"
    return (
        _base(KAFKA_LAG_UID, "Sluice / Kafka consumer lag", "Lag in messages and lag status per consumer group, topic and partition.")
        .with_panel(
            _series("Consumer lag", unit="short", description="Messages behind the log end offset.")
            .span(24)
            .min(0)
            .with_target(
                Query(LAG_METRIC)
                .aggregator("max")
                .downsample("1m", aggregator="max")
                .group_by("group")
                .group_by("topic")
                .group_by("partition")
                .alias(alias)
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Lag status")
            .description(f"Status code per partition ({', '.join(LAG_STATUS_CODES)}), mapped to names.")
            .datasource(REFS["opentsdb"])
            .mappings(_status_mappings())
            .height(8)
            .span(24)
            .with_target(
                Query(LAG_STATUS_METRIC)
                .aggregator("max")
                .downsample("1m", aggregator="max")
                .group_by("group")
                .group_by("topic")
                .group_by("partition")
                .alias(alias)
            )
        )
    )


def _documents_per_minute(source: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(f"Documents per minute: {source}")
        .datasource(REFS[f"es-{source}"])
        .unit("short")
        .height(7)
        .span(8)
        .with_target(
            es_b.Dataquery()
            .ref_id("A")
            .datasource(REFS[f"es-{source}"])
            .query("*")
            .time_field(ES_TIME_FIELD)
            .metrics([es_b.Count().id("1")])
            .bucket_aggs(
                [
                    es_b.DateHistogram()
                    .id("2")
                    .field(ES_TIME_FIELD)
                    .settings(es_b.ElasticsearchDateHistogramSettings().interval("1m").min_doc_count("0"))
                ]
            )
        )
    )


def freshness_dashboard() -> dashboard_b.Dashboard:
    return (
        _base(FRESHNESS_UID, "Sluice / Pipeline freshness", "How far behind the pipeline is, per source.")
        .with_panel(
            stat.Panel()
            .title("Last minute loaded")
            .description(
                f"{FRESHNESS_METRIC} per source: the time of its newest point, which the loader writes "
                "at the minute it loaded."
            )
            .datasource(REFS["opentsdb"])
            .unit("dateTimeFromNow")
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).fields("/^Time$/").values(False))
            .height(6)
            .span(12)
            .with_target(
                Query(FRESHNESS_METRIC).aggregator("max").downsample("1m", aggregator="max").group_by("source").alias("$tag_source")
            )
        )
        .with_panel(
            _series("Last loaded minute over time", unit="dateTimeAsIso", description="Epoch seconds of the last minute loaded.")
            .with_target(
                Query(FRESHNESS_METRIC).aggregator("max").downsample("1m", aggregator="max").group_by("source").alias("$tag_source")
            )
        )
        .with_panel(_documents_per_minute(HOST))
        .with_panel(_documents_per_minute(SENSOR))
        .with_panel(_documents_per_minute(LAG))
    )


def _reconcile_query(ref_id: str, query: str, metric: Any, *, split: str | None = None) -> es_b.Dataquery:
    buckets = [] if split is None else [es_b.Terms().id("3").field(split)]
    return (
        es_b.Dataquery()
        .ref_id(ref_id)
        .datasource(REFS["es-reconcile"])
        .query(query)
        .time_field(ES_TIME_FIELD)
        .metrics([metric])
        .bucket_aggs([*buckets, es_b.DateHistogram().id("2").field(ES_TIME_FIELD)
                      .settings(es_b.ElasticsearchDateHistogramSettings().interval("1m").min_doc_count("0"))])
    )


def _reconcile_panel(title: str, *, unit: str, description: str) -> timeseries.Panel:
    return (timeseries.Panel().title(title).description(description).datasource(REFS["es-reconcile"])
            .unit(unit).height(8).span(12).legend(_legend()))


def reconcile_dashboard() -> dashboard_b.Dashboard:
    from include.reconcile import HOPS

    hops = _reconcile_panel("Count at every hop", unit="short",
                            description="Per minute and source, summed over sources: where the lines part, a hop lost or "
                                        "gained readings.")
    for n, hop in enumerate(HOPS):
        hops = hops.with_target(_reconcile_query(chr(ord("A") + n), "kind:reconcile",
                                                 es_b.Sum().id("1").field(f"hops.{hop}")).alias(hop))
    return (
        _base(RECONCILE_UID, "Sluice / Reconciliation", "Every minute, every hop: the sluice-reconcile-* documents.")
        .with_panel(
            _reconcile_panel("Minutes per verdict", unit="short",
                             description="Reconciled minutes by status (green, amber, red) per minute.")
            .with_target(_reconcile_query("A", "kind:reconcile", es_b.Count().id("1"), split="status"))
        )
        .with_panel(hops)
        .with_panel(
            _reconcile_panel("Freshness per source", unit="s",
                             description="Seconds from a minute's end until it was queryable in every sink.")
            .with_target(_reconcile_query("A", "kind:sla", es_b.Max().id("1").field("freshness_s"), split="source"))
        )
        .with_panel(
            _reconcile_panel("SLA breaches", unit="short", description="Minutes not queryable within the SLA, per source.")
            .with_target(_reconcile_query("A", "kind:sla AND breach:true", es_b.Count().id("1"), split="source"))
        )
    )


def sluice_dashboards() -> list[dashboard_b.Dashboard]:
    return [hosts_dashboard(), sensors_dashboard(), kafka_lag_dashboard(), freshness_dashboard(), reconcile_dashboard()]


def to_json(board: dashboard_b.Dashboard) -> dict[str, Any]:
    """The dashboard model as Grafana's API takes it (plain JSON types only).

    Panels get stable ids (1, 2, ... in order) so that Grafana's UI does not
    assign its own on the first save and drift reports name panels by id.
    """
    model = board.build()
    for n, panel in enumerate(model.panels or [], 1):
        if panel.id_val is None:
            panel.id_val = n
    built: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return built


def anomaly_annotations(metrics: list[str]) -> dict[str, Any]:
    """Grafana annotation queries showing the Spark anomaly job's OpenTSDB annotations on ``metrics``.

    The job (include/anomaly/results.py) annotates each anomalous reading's own
    series; Grafana's OpenTSDB annotation query asks for a metric's series
    annotations (``isGlobal`` false). The SDK's AnnotationQuery has no field for
    OpenTSDB's ``target``/``isGlobal``, so these are plain JSON.
    """
    ref = REFS["opentsdb"]
    return {"list": [
        {"name": f"Anomalies: {metric}", "datasource": {"type": ref.type_val, "uid": ref.uid}, "enable": True,
         "iconColor": "red", "target": metric, "isGlobal": False}
        for metric in metrics
    ]}


#: Dashboards that show anomalies: each queries the annotations of every metric its panels show.
ANOMALY_ANNOTATED = (HOSTS_UID, SENSORS_UID)


def dashboard_models() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON of every Sluice dashboard."""
    models = {m["uid"]: m for m in (to_json(b) for b in sluice_dashboards())}
    for uid in ANOMALY_ANNOTATED:
        metrics = sorted({t["metric"] for p in models[uid]["panels"] for t in p.get("targets", []) if "metric" in t})
        models[uid]["annotations"] = anomaly_annotations(metrics)
    return models
