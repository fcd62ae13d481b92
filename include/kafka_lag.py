"""Kafka consumer-group lag, judged over a sliding window the way Burrow does.

A single lag number says little: a busy consumer is always a little behind,
and an idle topic has no lag because nothing arrives. Burrow's insight is to
judge a partition by how its committed offset and lag *move* over the last N
checks. Sluice keeps that window per partition in a small JSON state document
(so it survives across Airflow runs) and applies these rules, first match wins:

``REWIND``  the committed offset went backwards inside the window.
``OK``      the lag was zero at some check in the window (an idle topic at
            zero lag is OK, never STOP).
``STOP``    a full window in which the committed offset never moved while lag
            stayed above zero, and the group has no active member: nobody
            commits any more.
``STALL``   the same, but the group still has members: a consumer is alive
            and stuck.
``WARN``    a full window in which the offset advanced but the lag never
            shrank: the consumer is falling behind.
``OK``      otherwise.

The group is ``ERR`` when any partition is STOP or STALL, ``WARN`` when any is
WARN or REWIND, otherwise ``OK``.

Kafka exposes no commit timestamps through its admin API (Burrow reads them
from ``__consumer_offsets``), so STOP and STALL are told apart by the group's
membership, which the admin API does report: a group with members that does not
move is stalled, one without members has stopped.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from include.contract import ES_INDEX_PREFIX, LAG, daily_index, format_timestamp, state_key, template_name
from include.schemas import LAG_METRIC, LAG_STATUS_CODES, LAG_STATUS_METRIC

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient
    from elasticsearch import Elasticsearch

    from include.landing import LandingZone
    from include.opentsdb import OpenTSDBClient

log = logging.getLogger(__name__)


class LagError(Exception):
    """Lag could not be measured."""


class GroupNotFound(LagError):
    def __init__(self, group: str, known: Iterable[str]) -> None:
        known = sorted(known)
        listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        super().__init__(
            f"consumer group {group!r} does not exist on the cluster "
            f"(known groups: {listed or 'none'}); check the configured group names"
        )
        self.group = group


class TopicNotFound(LagError):
    def __init__(self, topic: str, group: str) -> None:
        super().__init__(f"topic {topic!r} configured for consumer group {group!r} does not exist on the cluster")
        self.topic = topic


class Status(str, enum.Enum):
    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"
    ERR = "ERR"

    @property
    def code(self) -> int:
        """Numeric code for time-series sinks (dashboards plot it)."""
        return LAG_STATUS_CODES[self.value]


@dataclass(frozen=True)
class PartitionOffsets:
    """One check of one partition: offsets as Kafka reported them."""

    topic: str
    partition: int
    #: Next offset the group will read (Kafka's committed offset); None if never committed.
    committed: int | None
    #: High watermark: offset of the next record to be written.
    log_end: int
    #: Low watermark: the first offset still stored.
    log_start: int

    @property
    def lag(self) -> int:
        """Records the group has yet to read (from the log start if it never committed)."""
        position = self.committed if self.committed is not None else self.log_start
        return max(self.log_end - position, 0)


@dataclass(frozen=True)
class Observation:
    at: float  # seconds since the epoch
    committed: int | None
    lag: int


@dataclass
class PartitionWindow:
    """The last ``size`` observations of one partition, oldest first."""

    observations: list[Observation] = field(default_factory=list)

    def add(self, obs: Observation, size: int) -> None:
        self.observations = (self.observations + [obs])[-size:]


def evaluate(window: PartitionWindow, *, size: int, group_active: bool = True) -> Status:
    """Status of one partition from its window (rules in the module docstring).

    ``size`` is the number of checks a full window holds; ``group_active`` says
    whether the group had at least one member at the latest check.
    """
    obs = window.observations
    if not obs:
        return Status.OK
    committed = [o.committed if o.committed is not None else -1 for o in obs]
    if any(b < a for a, b in zip(committed, committed[1:], strict=False)):
        return Status.REWIND
    if any(o.lag == 0 for o in obs):
        return Status.OK
    if len(obs) < size:
        return Status.OK
    if len(set(committed)) == 1:
        return Status.STALL if group_active else Status.STOP
    lags = [o.lag for o in obs]
    if all(b >= a for a, b in zip(lags, lags[1:], strict=False)):
        return Status.WARN
    return Status.OK


def group_status(statuses: Iterable[Status]) -> Status:
    statuses = set(statuses)
    if statuses & {Status.STOP, Status.STALL}:
        return Status.ERR
    if statuses & {Status.WARN, Status.REWIND}:
        return Status.WARN
    return Status.OK


@dataclass(frozen=True)
class PartitionReport:
    group: str
    topic: str
    partition: int
    committed: int | None
    log_end: int
    lag: int
    status: Status


@dataclass(frozen=True)
class GroupReport:
    group: str
    checked_at: float
    status: Status
    partitions: tuple[PartitionReport, ...]
    active_members: int = 0

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def problems(self, *, lag_threshold: int | None = None) -> list[str]:
        """Human-readable alarms: STOP/STALL partitions and lag above the threshold."""
        out = []
        for status in (Status.STOP, Status.STALL):
            bad = [p for p in self.partitions if p.status is status]
            if bad:
                out.append(f"group {self.group}: {status.value} on " + _partitions(bad))
        if lag_threshold is not None:
            high = [p for p in self.partitions if p.lag > lag_threshold]
            if high:
                out.append(
                    f"group {self.group}: lag above {lag_threshold} on "
                    + ", ".join(f"{p.topic}[{p.partition}]={p.lag}" for p in high)
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        for p in d["partitions"]:
            p["status"] = p["status"].value
        return d


def report_from_dict(d: dict[str, Any]) -> GroupReport:
    """Inverse of :meth:`GroupReport.to_dict` (reports travel between tasks as JSON)."""
    parts = tuple(PartitionReport(**{**p, "status": Status(p["status"])}) for p in d["partitions"])
    return GroupReport(d["group"], d["checked_at"], Status(d["status"]), parts, d.get("active_members", 0))


def _partitions(parts: Sequence[PartitionReport]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}] (lag {p.lag}, committed {p.committed})" for p in parts)


class LagState:
    """Windows of every partition of every watched group, as one JSON document."""

    def __init__(self, windows: dict[str, dict[str, PartitionWindow]] | None = None) -> None:
        self.windows = windows or {}

    @classmethod
    def from_json(cls, text: str | bytes | None) -> LagState:
        if not text:
            return cls()
        raw = json.loads(text)
        windows = {
            group: {
                key: PartitionWindow([Observation(**o) for o in w["observations"]])
                for key, w in parts.items()
            }
            for group, parts in raw.get("groups", {}).items()
        }
        return cls(windows)

    def to_json(self) -> str:
        return json.dumps(
            {"version": 1, "groups": {g: {k: asdict(w) for k, w in parts.items()} for g, parts in self.windows.items()}},
            sort_keys=True,
        )

    def observe(
        self, group: str, offsets: Sequence[PartitionOffsets], *, at: float, size: int, active_members: int
    ) -> GroupReport:
        """Add one check of a group to its windows and judge every partition."""
        windows = self.windows.setdefault(group, {})
        current = {f"{po.topic}/{po.partition}" for po in offsets}
        for gone in set(windows) - current:  # a deleted topic or a group that moved on
            del windows[gone]
        reports = []
        for po in sorted(offsets, key=lambda o: (o.topic, o.partition)):
            window = windows.setdefault(f"{po.topic}/{po.partition}", PartitionWindow())
            window.add(Observation(at, po.committed, po.lag), size)
            status = evaluate(window, size=size, group_active=active_members > 0)
            reports.append(PartitionReport(group, po.topic, po.partition, po.committed, po.log_end, po.lag, status))
        return GroupReport(group, at, group_status(r.status for r in reports), tuple(reports), active_members)


def fetch_offsets(admin: AdminClient, group: str, *, topics: Sequence[str] | None = None, timeout: float = 15.0) -> list[PartitionOffsets]:
    """Committed, log-end and log-start offsets of a group's partitions.

    ``admin`` is a confluent-kafka AdminClient (e.g. from the Kafka provider's
    KafkaAdminClientHook). Without ``topics`` the partitions are those the group
    has committed offsets for; with ``topics`` every partition of those topics
    is reported (never-committed ones with ``committed=None``). Raises
    GroupNotFound or TopicNotFound naming what is missing.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]  # not in its __all__

    known = {g.group_id for g in admin.list_consumer_groups(request_timeout=timeout).result().valid}
    if group not in known:
        raise GroupNotFound(group, known)
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
    committed = {
        (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
        for tp in result[group].result().topic_partitions
    }
    if topics:
        metadata = admin.list_topics(timeout=timeout).topics
        wanted: set[tuple[str, int]] = set()
        for topic in topics:
            if topic not in metadata or metadata[topic].error is not None:
                raise TopicNotFound(topic, group)
            wanted |= {(topic, p) for p in metadata[topic].partitions}
        committed = {tp: committed.get(tp) for tp in wanted}
    if not committed:
        return []
    tps = [TopicPartition(t, p) for t, p in committed]
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)  # type: ignore[no-untyped-call]
    starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout)  # type: ignore[no-untyped-call]
    out = []
    for tp in tps:
        out.append(
            PartitionOffsets(
                topic=tp.topic,
                partition=tp.partition,
                committed=committed[(tp.topic, tp.partition)],
                log_end=ends[tp].result().offset,
                log_start=starts[tp].result().offset,
            )
        )
    return out


def active_members(admin: AdminClient, group: str, *, timeout: float = 15.0) -> int:
    """Number of members the group has right now (0 when nobody consumes)."""
    (future,) = admin.describe_consumer_groups([group], request_timeout=timeout).values()
    return len(future.result().members)


#: Where the lag windows live in the landing zone (one JSON document for all groups).
STATE_KEY = state_key("kafka-lag/windows")


def check_groups(
    admin: AdminClient,
    landing: LandingZone,
    groups: dict[str, Sequence[str] | None],
    *,
    window: int,
    now: float,
    timeout: float = 15.0,
) -> list[GroupReport]:
    """One lag check of every configured group, window state loaded and saved.

    ``groups`` maps a group id to the topics to watch (None: whatever the group
    committed). ``landing`` is a landing zone (include.landing), which keeps the
    windows between runs under :data:`STATE_KEY`. A missing group or topic
    raises after the other groups were checked and the state saved, so one bad
    name does not blind the check to the rest.
    """
    if window < 2:
        raise ValueError(f"window={window}: a lag window needs at least 2 checks")
    try:
        state = LagState.from_json(landing.get(STATE_KEY))
    except KeyError:
        state = LagState()
    reports, errors = [], []
    for group, topics in groups.items():
        try:
            offsets = fetch_offsets(admin, group, topics=topics, timeout=timeout)
            members = active_members(admin, group, timeout=timeout)
        except LagError as exc:
            errors.append(exc)
            continue
        reports.append(state.observe(group, offsets, at=now, size=window, active_members=members))
    landing.put(STATE_KEY, state.to_json().encode(), {"schema": "kafka-lag-windows", "version": "1"})
    if errors:
        raise errors[0] if len(errors) == 1 else LagError("; ".join(str(e) for e in errors))
    return reports


def lag_datapoints(report: GroupReport) -> list[dict[str, Any]]:
    """OpenTSDB datapoints: lag and status code per partition, tagged group/topic/partition."""
    points = []
    for p in report.partitions:
        tags = {"group": p.group, "topic": p.topic, "partition": str(p.partition)}
        ts = int(report.checked_at)
        points.append({"metric": LAG_METRIC, "timestamp": ts, "value": p.lag, "tags": tags})
        points.append({"metric": LAG_STATUS_METRIC, "timestamp": ts, "value": p.status.code, "tags": tags})
    return points


def lag_documents(report: GroupReport, *, prefix: str = ES_INDEX_PREFIX) -> list[dict[str, Any]]:
    """Elasticsearch documents (one per partition and check) for ``{prefix}-lag-*``."""
    from datetime import datetime, timezone

    stamp = format_timestamp(datetime.fromtimestamp(int(report.checked_at), timezone.utc))
    return [
        {
            "_index": daily_index(LAG, stamp, prefix=prefix),
            "_id": f"{p.group}/{p.topic}/{p.partition}/{int(report.checked_at)}",
            "@timestamp": stamp,
            "group": p.group,
            "topic": p.topic,
            "partition": p.partition,
            "committed": p.committed,
            "log_end": p.log_end,
            "lag": p.lag,
            "status": p.status.value,
            "status_code": p.status.code,
            "group_status": report.status.value,
        }
        for p in report.partitions
    ]


class LagAlarm(Exception):
    """Raised by the lag check when a group is STOP/STALL or lag is above the threshold."""


def raise_on_problems(reports: Sequence[GroupReport], *, lag_threshold: int | None) -> None:
    problems = [line for r in reports for line in r.problems(lag_threshold=lag_threshold)]
    if problems:
        raise LagAlarm("; ".join(problems))


def parse_groups(spec: dict[str, Any] | str) -> dict[str, list[str] | None]:
    """Groups to watch from a JSON object ``{"group": ["topic", ...] | null}``.

    Raises ValueError naming the offending entry.
    """
    raw = json.loads(spec) if isinstance(spec, str) else spec
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"lag groups must be a non-empty JSON object of group -> [topics] or null; got {spec!r}")
    out: dict[str, list[str] | None] = {}
    for group, topics in raw.items():
        if topics is not None and (not isinstance(topics, list) or not all(isinstance(t, str) for t in topics)):
            raise ValueError(f"lag groups: topics of {group!r} must be a list of names or null; got {topics!r}")
        out[group] = topics
    return out


class LagMetricsRefused(LagError):
    """A sink refused some lag metrics (the reasons are in the message)."""


def record_metrics(
    reports: Sequence[GroupReport],
    *,
    elasticsearch: Elasticsearch | None = None,
    opentsdb: OpenTSDBClient | None = None,
    index_prefix: str = ES_INDEX_PREFIX,
) -> dict[str, int]:
    """Write lag and status per partition into the sinks that are given.

    ``elasticsearch`` is an ``elasticsearch.Elasticsearch`` client (documents
    into ``{index_prefix}-lag-YYYY.MM.DD``, template ensured first), ``opentsdb`` an
    :class:`include.opentsdb.OpenTSDBClient`. Returns the counts per sink;
    raises LagMetricsRefused when a sink refused anything.
    """
    import orjson

    counts: dict[str, int] = {}
    refused: list[str] = []
    if elasticsearch is not None:
        from include import elasticsearch as es
        from include.dashboards.index_templates import apply_index_templates, lag_index_template

        docs = [d for r in reports for d in lag_documents(r, prefix=index_prefix)]
        apply_index_templates(elasticsearch, {template_name(LAG, prefix=index_prefix): lag_index_template(prefix=index_prefix)})
        actions = (
            (orjson.dumps({"index": {"_index": d.pop("_index"), "_id": d.pop("_id")}}), orjson.dumps(d)) for d in docs
        )
        bulk = es.bulk_index(elasticsearch, actions)
        counts["elasticsearch"] = bulk.accepted
        refused += [f"elasticsearch {i}: {why}" for i, why in list(bulk.failed.items())[:5]]
    if opentsdb is not None:
        put = opentsdb.put([p for r in reports for p in lag_datapoints(r)])
        counts["opentsdb"] = put.accepted
        refused += [f"opentsdb: {f.reason}" for f in put.failed[:5]]
    if refused:
        raise LagMetricsRefused("lag metrics refused: " + "; ".join(refused))
    return counts
