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

from include.schemas import LAG_STATUS_CODES

log = logging.getLogger(__name__)


class LagError(Exception):
    """Lag could not be measured."""


class GroupNotFound(LagError):
    def __init__(self, group: str, known: Iterable[str]) -> None:
        known = sorted(known)
        super().__init__(
            f"consumer group {group!r} does not exist on the cluster "
            f"(known groups: {', '.join(known) or 'none'}); check the configured group names"
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
    if any(b < a for a, b in zip(committed, committed[1:])):
        return Status.REWIND
    if any(o.lag == 0 for o in obs):
        return Status.OK
    if len(obs) < size:
        return Status.OK
    if len(set(committed)) == 1:
        return Status.STALL if group_active else Status.STOP
    lags = [o.lag for o in obs]
    if all(b >= a for a, b in zip(lags, lags[1:])):
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        for p in d["partitions"]:
            p["status"] = p["status"].value
        return d


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


def fetch_offsets(admin, group: str, *, topics: Sequence[str] | None = None, timeout: float = 15.0) -> list[PartitionOffsets]:
    """Committed, log-end and log-start offsets of a group's partitions.

    ``admin`` is a confluent-kafka AdminClient (e.g. from the Kafka provider's
    KafkaAdminClientHook). Without ``topics`` the partitions are those the group
    has committed offsets for; with ``topics`` every partition of those topics
    is reported (never-committed ones with ``committed=None``). Raises
    GroupNotFound or TopicNotFound naming what is missing.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

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
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout)
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


def active_members(admin, group: str, *, timeout: float = 15.0) -> int:
    """Number of members the group has right now (0 when nobody consumes)."""
    (future,) = admin.describe_consumer_groups([group], request_timeout=timeout).values()
    return len(future.result().members)
