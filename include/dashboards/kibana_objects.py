"""Kibana data views and the Sluice dashboard, as saved objects.

Data views (one per index family, id ``sluice-<source>``) are provisioned
through Kibana's data views API; the dashboard and its aggregation-based
visualizations are saved objects written through the import API as NDJSON.
Each visualization refers to its data view by id through ``references``, the
form Kibana's export writes, so an import into a Kibana without the data view
fails with ``missing_references`` instead of producing empty panels.

Kibana has no maintained Python SDK for dashboards; the JSON here is the
documented saved-object shape (``type``, ``id``, ``attributes``,
``references``). Fields named in queries come from :mod:`include.schemas`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from include.contract import ES_INDEX_PREFIX, ES_TIME_FIELD, LAG, index_pattern
from include.schemas import HOST, SENSOR, SENSOR_METRIC, SENSOR_TYPES

DASHBOARD_ID = "sluice-overview"
SEARCH_INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"


@dataclass(frozen=True)
class DataView:
    id: str
    title: str
    name: str
    time_field: str = ES_TIME_FIELD

    def spec(self) -> dict[str, Any]:
        """The ``data_view`` object of the data views API."""
        return {"id": self.id, "title": self.title, "name": self.name, "timeFieldName": self.time_field}


#: Data view ids are stable whatever the index prefix: the saved visualizations refer to them.
DATA_VIEW_IDS = {source: f"sluice-{source}" for source in (HOST, SENSOR, LAG)}


def data_views(prefix: str = ES_INDEX_PREFIX) -> dict[str, DataView]:
    """Source -> its data view over ``{prefix}-{source}-*`` (:func:`include.contract.index_pattern`)."""
    return {
        source: DataView(id=view_id, title=index_pattern(source, prefix=prefix), name=f"Sluice {source}")
        for source, view_id in DATA_VIEW_IDS.items()
    }


@dataclass(frozen=True)
class Visualization:
    """A line chart: ``metric`` (avg/max) of ``field`` over time, one line per ``split`` term."""

    id: str
    title: str
    source: str
    agg: str
    field: str
    split: str
    query: str = ""

    def saved_object(self) -> dict[str, Any]:
        aggs = [
            {"id": "1", "enabled": True, "type": self.agg, "schema": "metric", "params": {"field": self.field}},
            {
                "id": "2",
                "enabled": True,
                "type": "date_histogram",
                "schema": "segment",
                "params": {"field": ES_TIME_FIELD, "interval": "auto", "min_doc_count": 1, "extended_bounds": {}},
            },
            {
                "id": "3",
                "enabled": True,
                "type": "terms",
                "schema": "group",
                "params": {"field": self.split, "size": 20, "order": "desc", "orderBy": "1"},
            },
        ]
        vis_state = {
            "title": self.title,
            "type": "line",
            "aggs": aggs,
            "params": {
                "type": "line",
                "addTooltip": True,
                "addLegend": True,
                "legendPosition": "right",
                "categoryAxes": [
                    {"id": "CategoryAxis-1", "type": "category", "position": "bottom", "show": True, "labels": {"show": True}}
                ],
                "valueAxes": [
                    {
                        "id": "ValueAxis-1",
                        "name": "LeftAxis-1",
                        "type": "value",
                        "position": "left",
                        "show": True,
                        "scale": {"type": "linear", "mode": "normal"},
                        "labels": {"show": True},
                        "title": {"text": f"{self.agg} {self.field}"},
                    }
                ],
                "seriesParams": [
                    {
                        "show": True,
                        "type": "line",
                        "mode": "normal",
                        "data": {"id": "1", "label": f"{self.agg} {self.field}"},
                        "valueAxis": "ValueAxis-1",
                        "drawLinesBetweenPoints": True,
                        "showCircles": False,
                    }
                ],
            },
        }
        search_source = {"query": {"query": self.query, "language": "kuery"}, "filter": [], "indexRefName": SEARCH_INDEX_REF}
        return {
            "type": "visualization",
            "id": self.id,
            "attributes": {
                "title": self.title,
                "description": "",
                "visState": json.dumps(vis_state, sort_keys=True),
                "uiStateJSON": "{}",
                "version": 1,
                "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(search_source, sort_keys=True)},
            },
            "references": [{"name": SEARCH_INDEX_REF, "type": "index-pattern", "id": DATA_VIEW_IDS[self.source]}],
        }


VISUALIZATIONS = [
    Visualization("sluice-host-cpu", "CPU use per host (%)", HOST, "avg", "cpu_usage_percent", "host"),
    Visualization("sluice-host-memory", "Memory used per host (%)", HOST, "avg", "mem_percent", "host"),
    *[
        Visualization(
            f"sluice-sensor-{t}",
            f"{t.capitalize()} per device",
            SENSOR,
            "avg",
            "value",
            "device",
            query=f'metric : "{SENSOR_METRIC}" and tags.type : "{t}"',
        )
        for t in SENSOR_TYPES
    ],
    Visualization("sluice-kafka-lag", "Kafka consumer lag per group (messages)", LAG, "max", "lag", "group"),
]


#: Kibana's dashboard grid is 48 columns wide: hosts side by side, three sensors, lag.
_LAYOUT = [(0, 0, 24, 15), (24, 0, 24, 15), (0, 15, 16, 15), (16, 15, 16, 15), (32, 15, 16, 15), (0, 30, 48, 15)]


def dashboard_object(description: str = "Sluice: host metrics, sensor readings and Kafka consumer lag.") -> dict[str, Any]:
    """The dashboard saved object; panels refer to :data:`VISUALIZATIONS` by reference name."""
    panels, references = [], []
    for i, (vis, (x, y, w, h)) in enumerate(zip(VISUALIZATIONS, _LAYOUT, strict=True)):
        panels.append(
            {
                "panelIndex": str(i + 1),
                "gridData": {"x": x, "y": y, "w": w, "h": h, "i": str(i + 1)},
                "embeddableConfig": {},
                "panelRefName": f"panel_{i}",
            }
        )
        references.append({"name": f"panel_{i}", "type": "visualization", "id": vis.id})
    return {
        "type": "dashboard",
        "id": DASHBOARD_ID,
        "attributes": {
            "title": "Sluice overview",
            "description": description,
            "panelsJSON": json.dumps(panels, sort_keys=True),
            "optionsJSON": json.dumps({"useMargins": True, "hidePanelTitles": False}, sort_keys=True),
            "timeRestore": True,
            "timeFrom": "now-6h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 60000},
            "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"}, "filter": []})},
        },
        "references": references,
    }


def saved_objects(description: str | None = None) -> list[dict[str, Any]]:
    """Visualizations first, then the dashboard that refers to them."""
    board = dashboard_object() if description is None else dashboard_object(description)
    return [v.saved_object() for v in VISUALIZATIONS] + [board]


def to_ndjson(objects: list[dict[str, Any]]) -> str:
    """One JSON object per line, as the saved-objects import API reads it."""
    return "".join(json.dumps(o, sort_keys=True, ensure_ascii=False) + "\n" for o in objects)


def _loads(text: Any, default: Any) -> Any:
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return default if text is None else text


def content(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """What provisioning owns of a set of saved objects, normalised for comparison.

    Kibana adds bookkeeping (``updated_at``, ``version``, migration versions,
    ``managed``, per-panel ``version``/``title``) and may re-serialise the JSON
    strings, so only the parts Sluice defines are kept: titles, descriptions
    (without the fingerprint), parsed visualization state and search source,
    panel placement and references.
    """
    from include.dashboards.drift import split_marker

    out: dict[str, Any] = {}
    for o in objects:
        if o.get("type") not in ("dashboard", "visualization"):
            continue
        a = o.get("attributes", {})
        refs = sorted((r["name"], r["type"], r["id"]) for r in o.get("references", []))
        item: dict[str, Any] = {
            "title": a.get("title"),
            "description": split_marker(a.get("description"))[0],
            "references": [list(r) for r in refs],
        }
        if o["type"] == "visualization":
            item["visState"] = _loads(a.get("visState"), {})
            item["searchSource"] = _loads(a.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON"), {})
        else:
            panels = _loads(a.get("panelsJSON"), [])
            item["panels"] = [
                {"panelRefName": p.get("panelRefName"), "gridData": {k: p.get("gridData", {}).get(k) for k in ("x", "y", "w", "h")}}
                for p in (panels if isinstance(panels, list) else [])
            ]
            item["time"] = [a.get("timeRestore"), a.get("timeFrom"), a.get("timeTo")]
        out[f"{o['type']}:{o['id']}"] = item
    return out
