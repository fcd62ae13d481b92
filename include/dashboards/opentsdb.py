"""An OpenTSDB query (panel target) for grafana-foundation-sdk panels.

The SDK ships query builders for many data sources but none for OpenTSDB, so
this module adds the smallest piece that fits its panels: a ``Dataquery``
model whose ``to_json`` is the target Grafana's OpenTSDB data source reads
(metric, aggregator, downsampling, tag filters, rate), and a builder for it.

Filters are the OpenTSDB 2.2+ form (``literal_or``/``wildcard`` with
``groupBy``), which the data source uses when its version setting is 2.2 or
newer; the Sluice data source is provisioned as 2.4. A filter with
``group_by=True`` draws one series per tag value; a filter without it narrows
the query. Without any filter OpenTSDB aggregates every series of the metric
into one, which is how seeds/000 ended up plotting temperature + humidity +
dust as a single line: :func:`check_no_blind_sum` is there to catch that.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

#: Aggregators and fill policies OpenTSDB 2.4 accepts.
AGGREGATORS = frozenset({"avg", "sum", "min", "max", "count", "dev", "last", "first", "none", "zimsum", "mimmin", "mimmax"})
FILL_POLICIES = frozenset({"none", "nan", "null", "zero"})
FILTER_TYPES = frozenset({"literal_or", "iliteral_or", "not_literal_or", "wildcard", "iwildcard", "regexp"})


class InvalidOpenTSDBQuery(ValueError):
    """A query that OpenTSDB or the Grafana data source would reject or misread."""


@dataclass(frozen=True)
class TagFilter:
    tagk: str
    filter: str
    type: str = "literal_or"
    group_by: bool = False

    def to_json(self) -> dict[str, object]:
        return {"type": self.type, "tagk": self.tagk, "filter": self.filter, "groupBy": self.group_by}


@dataclass
class OpenTSDBQuery(cogvariants.Dataquery):
    """One OpenTSDB target of a panel (the JSON Grafana's OpenTSDB data source stores)."""

    metric: str = ""
    ref_id: str = "A"
    aggregator: str = "avg"
    alias: str = ""
    downsample_aggregator: str = "avg"
    downsample_interval: str = "1m"
    downsample_fill_policy: str = "none"
    filters: list[TagFilter] = field(default_factory=list)
    rate: bool = False
    counter: bool = False
    datasource: dashboard.DataSourceRef | None = None
    hide: bool | None = None

    def to_json(self) -> dict[str, object]:
        target: dict[str, object] = {
            "refId": self.ref_id,
            "metric": self.metric,
            "aggregator": self.aggregator,
            "downsampleAggregator": self.downsample_aggregator,
            "downsampleInterval": self.downsample_interval,
            "downsampleFillPolicy": self.downsample_fill_policy,
            "disableDownsampling": False,
            "filters": [f.to_json() for f in self.filters],
            "shouldComputeRate": self.rate,
            "isCounter": self.counter,
        }
        if self.alias:
            target["alias"] = self.alias
        if self.datasource is not None:
            target["datasource"] = self.datasource.to_json()
        if self.hide is not None:
            target["hide"] = self.hide
        return target

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> OpenTSDBQuery:
        ds = data.get("datasource")
        return cls(
            metric=data.get("metric", ""),
            ref_id=data.get("refId", "A"),
            aggregator=data.get("aggregator", "avg"),
            alias=data.get("alias", ""),
            downsample_aggregator=data.get("downsampleAggregator", "avg"),
            downsample_interval=data.get("downsampleInterval", "1m"),
            downsample_fill_policy=data.get("downsampleFillPolicy", "none"),
            filters=[
                TagFilter(f["tagk"], f["filter"], f.get("type", "literal_or"), bool(f.get("groupBy")))
                for f in data.get("filters", [])
            ],
            rate=bool(data.get("shouldComputeRate")),
            counter=bool(data.get("isCounter")),
            datasource=dashboard.DataSourceRef.from_json(ds) if ds else None,
            hide=data.get("hide"),
        )


class Query(cogbuilder.Builder[OpenTSDBQuery]):
    """Builder in the SDK's style: ``Query("host.cpu_usage_percent").group_by("host")``."""

    def __init__(self, metric: str) -> None:
        self._internal = OpenTSDBQuery(metric=metric)

    def build(self) -> OpenTSDBQuery:
        q = self._internal
        if not q.metric:
            raise InvalidOpenTSDBQuery("an OpenTSDB query needs a metric name")
        if q.aggregator not in AGGREGATORS or q.downsample_aggregator not in AGGREGATORS:
            raise InvalidOpenTSDBQuery(
                f"aggregator {q.aggregator!r}/{q.downsample_aggregator!r} of {q.metric} is not one of {sorted(AGGREGATORS)}"
            )
        if q.downsample_fill_policy not in FILL_POLICIES:
            raise InvalidOpenTSDBQuery(f"fill policy {q.downsample_fill_policy!r} of {q.metric} is not one of {sorted(FILL_POLICIES)}")
        for f in q.filters:
            if f.type not in FILTER_TYPES:
                raise InvalidOpenTSDBQuery(f"filter type {f.type!r} on {f.tagk} of {q.metric} is not one of {sorted(FILTER_TYPES)}")
        return q

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def datasource(self, ref: dashboard.DataSourceRef) -> typing.Self:
        self._internal.datasource = ref
        return self

    def aggregator(self, name: str) -> typing.Self:
        self._internal.aggregator = name
        return self

    def downsample(self, interval: str, *, aggregator: str = "avg", fill: str = "none") -> typing.Self:
        self._internal.downsample_interval = interval
        self._internal.downsample_aggregator = aggregator
        self._internal.downsample_fill_policy = fill
        return self

    def where(self, tagk: str, value: str) -> typing.Self:
        """Keep only series whose tag ``tagk`` is ``value`` (``literal_or``, not grouped)."""
        self._internal.filters.append(TagFilter(tagk, value, "literal_or", False))
        return self

    def group_by(self, tagk: str, pattern: str = "*") -> typing.Self:
        """One series per value of ``tagk`` (``wildcard`` filter with groupBy)."""
        self._internal.filters.append(TagFilter(tagk, pattern, "wildcard", True))
        return self

    def alias(self, alias: str) -> typing.Self:
        """Legend text; ``$tag_<k>`` expands to a tag's value."""
        self._internal.alias = alias
        return self

    def rate(self, *, counter: bool = False) -> typing.Self:
        """Plot the per-second rate; ``counter`` for monotonically increasing counters."""
        self._internal.rate = True
        self._internal.counter = counter
        return self


def check_no_blind_sum(target: dict[str, object], *, required_tags: typing.Iterable[str]) -> None:
    """Raise InvalidOpenTSDBQuery unless every tag in ``required_tags`` is filtered or grouped.

    A query on a metric that carries several kinds of readings (the sensor
    metric carries temperature, humidity and dust) must pin or split each of
    them; otherwise OpenTSDB returns their aggregate.
    """
    tagks = {f["tagk"] for f in typing.cast(list[dict[str, typing.Any]], target.get("filters", []))}
    missing = [t for t in required_tags if t not in tagks]
    if missing:
        raise InvalidOpenTSDBQuery(
            f"query on {target.get('metric')} does not filter or group by {', '.join(missing)}: "
            "OpenTSDB would aggregate those series into one"
        )
