"""Per-minute reconciliation: the count of one minute of one source at every hop, and a verdict.

For minute M and source S, :func:`count_hops` measures

``received``       payloads (MQTT) or samples (host) the collectors handled in M,
                   summed over the writers' manifests (:mod:`include.manifests`);
``collector``      rows the writers say they put in their files of M (manifest ``rows``);
``landed``         data rows in the ``raw/`` files of M, counted in the files themselves;
``kafka``          readings of M on the source's Kafka topic (see :func:`count_kafka`);
``loaded``         documents the minute DAG's load records of M accepted (newest record per file);
``elasticsearch``  documents of M in the source's daily indices (a ``count`` on the minute range);
``opentsdb``       points of M in OpenTSDB (see :func:`count_opentsdb`);

plus dead-lettered readings by reason code: the collectors' (manifest
``deadletters``, refused before any file) and the loads' (rows the transform
refused, quarantined files, documents a sink refused; from ``deadletter/``).

:func:`judge` compares every hop with the collectors' rows ``E`` (the landed
rows when no manifest is there): ``landed`` and ``kafka`` must hold ``E``;
``loaded`` and every sink must hold ``E`` minus what the loads dead-lettered.
``received`` is recorded, not compared: one MQTT payload carries several
readings. A hop that disagrees is a :class:`Mismatch` naming the hop, what it
should hold, what it holds and the difference; the minute is then ``red``.
A minute that could not be measured at some hop (a sink unreachable, no
manifest) is ``amber``; otherwise ``green``. A minute found red and later
green (a late file, a replay) is stored ``healed``.

Each result is one document ``{source}:{minute}`` in the daily index
``{prefix}-reconcile-YYYY.MM.DD`` (:func:`store_results`), so a re-check
overwrites it. Nothing here imports Airflow; clients are arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson

from include import loads
from include.contract import (
    ES_INDEX_PREFIX,
    ES_TIME_FIELD,
    LOADED,
    RAW,
    RECONCILE,
    FileDeadLetter,
    daily_index,
    floor_minute,
    index_pattern,
    minute_prefix,
    reason_code,
    template_name,
)
from include.landing import LandingZone
from include.manifests import read_manifests
from include.schemas import HOST, SENSOR, SENSOR_METRIC, SOURCES

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message
    from elasticsearch import Elasticsearch

    from include.opentsdb import OpenTSDBClient

log = logging.getLogger(__name__)

HOPS = ("received", "collector", "landed", "kafka", "loaded", "elasticsearch", "opentsdb")
GREEN, AMBER, RED = "green", "amber", "red"
#: OpenTSDB: host rows are counted by this metric (one point per row and host).
HOST_REFERENCE_METRIC = "host.cpu_usage_percent"
#: What makes one reading on Kafka: ``(epoch seconds, device, metric, tags)``.
ReadingIdentity = tuple[float, str, str, str]
#: Kafka: records whose timestamp is this far before or after the minute are still read,
#: because a reading's own time may differ from the time it was produced (seconds).
DEFAULT_KAFKA_MARGIN_S = 120.0


def reconcile_index(minute: datetime, prefix: str = ES_INDEX_PREFIX) -> str:
    """The daily reconcile index of a minute (its UTC day), named by the contract."""
    return daily_index(RECONCILE, _iso(floor_minute(minute)), prefix=prefix)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


# --- The hops ---------------------------------------------------------------------------------


@dataclass
class MinuteCounts:
    """What every hop holds for one minute of one source; ``None`` = not measured."""

    source: str
    minute: datetime
    hops: dict[str, int | None] = field(default_factory=dict)
    #: reason code -> readings, per stage (``collector``, ``load``).
    deadletters: dict[str, dict[str, int]] = field(default_factory=lambda: {"collector": {}, "load": {}})
    writers: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    #: Why a hop could not be measured: hop -> reason.
    unmeasured: dict[str, str] = field(default_factory=dict)
    #: The newest load record's time, for freshness.
    loaded_at: datetime | None = None

    @property
    def load_deadletters(self) -> int:
        return sum(self.deadletters["load"].values())


def count_landed(landing: LandingZone, source: str, minute: datetime) -> tuple[int, list[str], list[str]]:
    """``(data rows, file keys, devices)`` of the minute's ``raw/`` files (the header row is not counted).

    Devices (hosts) are read from the rows' second column: a file is one
    *writer*'s, and may hold many devices.
    """
    rows, keys, devices = 0, [], set()
    for info in landing.list(minute_prefix(source, minute)):
        if not info.key.endswith(".csv"):
            continue
        for line in landing.get(info.key).split(b"\n")[1:]:
            if line.strip():
                rows += 1
                parts = line.split(b",", 2)
                if len(parts) > 1:
                    devices.add(parts[1].decode("utf-8", "replace"))
        keys.append(info.key)
    return rows, keys, sorted(devices)


def count_loaded(landing: LandingZone, source: str, minute: datetime) -> tuple[int, dict[str, int], datetime | None]:
    """``(accepted, dead letters by reason, newest loaded_at)`` from the minute's load records.

    Per landed file the newest record counts (a file that grew and was loaded
    again has a record per version). Dead letters come from the record's
    dead-letter document: each kept row by its reason code, rows beyond the
    kept ones under ``rejected``, a quarantined file's rows under its reason
    code, sink refusals under ``sink:<name>``.
    """
    newest: dict[str, loads.LoadRecord] = {}
    prefix = LOADED + minute_prefix(source, minute)[len(RAW):]
    for info in landing.list(prefix):
        record = loads.LoadRecord.from_json(landing.get(info.key))
        if record.key not in newest or record.loaded_at >= newest[record.key].loaded_at:
            newest[record.key] = record
    accepted = 0
    reasons: dict[str, int] = {}
    loaded_at: datetime | None = None
    for record in newest.values():
        accepted += record.accepted
        when = _parse_time(record.loaded_at) if record.loaded_at else None
        if when and (loaded_at is None or when > loaded_at):
            loaded_at = when
        if record.rejected and record.deadletter:
            _add(reasons, _deadletter_reasons(FileDeadLetter.from_json(landing.get(record.deadletter)), record))
        elif record.rejected:
            _add(reasons, {"rejected": record.rejected})
    return accepted, reasons, loaded_at


def _deadletter_reasons(dl: FileDeadLetter, record: loads.LoadRecord) -> dict[str, int]:
    out: dict[str, int] = {}
    if dl.quarantined:
        return {reason_code(dl.reason or "quarantined"): record.rows_read}
    for row in dl.rows:
        code = reason_code(str(row.get("reason", "")))
        out[code] = out.get(code, 0) + 1
    if dl.rejected_rows > len(dl.rows):
        out["rejected"] = out.get("rejected", 0) + dl.rejected_rows - len(dl.rows)
    for doc in dl.documents:
        code = f"sink:{doc.get('sink', '?')}"
        out[code] = out.get(code, 0) + 1
    return out


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


def count_elasticsearch(client: Elasticsearch, source: str, minute: datetime, *, prefix: str = ES_INDEX_PREFIX) -> int:
    """Documents of the minute in ``{prefix}-{source}-*``: one ``count`` on ``@timestamp`` in [M, M+1min)."""
    start = floor_minute(minute)
    query = {"range": {ES_TIME_FIELD: {"gte": _iso(start), "lt": _iso(start + timedelta(minutes=1))}}}
    resp = client.count(index=f"{prefix}-{source}-*", query=query, allow_no_indices=True, ignore_unavailable=True)
    return int(resp["count"])


def count_opentsdb(client: OpenTSDBClient, source: str, minute: datetime, *, devices: Sequence[str],
                   metrics: Sequence[str] = ()) -> int:
    """Points of the minute in OpenTSDB, for the devices (hosts) that landed files.

    Host: the points of :data:`HOST_REFERENCE_METRIC` tagged ``host=`` one of
    ``devices`` (every host row carries it once). Sensor: the points of each
    of ``metrics`` (the metric names of the minute's rows) tagged ``device=``
    one of ``devices``, every series as stored (aggregator ``none``), so each
    reading is one point. ``client`` is an :class:`include.opentsdb.OpenTSDBClient`.
    """
    if not devices:
        return 0
    start = int(floor_minute(minute).timestamp())
    tag = "host" if source == HOST else "device"
    names = (HOST_REFERENCE_METRIC,) if source == HOST else (tuple(metrics) or (SENSOR_METRIC,))
    total = 0
    for name in names:
        # OpenTSDB's end is inclusive: stop one second before the next minute.
        for series in client.query(name, tags={tag: "|".join(sorted(devices))}, start=start, end=start + 59,
                                   aggregator="none"):
            total += sum(1 for ts in series.get("dps", {}) if start <= int(ts) < start + 60)
    return total


def _es_metrics(client: Elasticsearch, minute: datetime, *, prefix: str) -> list[str]:
    """Sensor metric names Elasticsearch holds for the minute (a terms aggregation; [] when unreachable)."""
    start = floor_minute(minute)
    try:
        resp = client.search(
            index=f"{prefix}-{SENSOR}-*", size=0, allow_no_indices=True, ignore_unavailable=True,
            query={"range": {ES_TIME_FIELD: {"gte": _iso(start), "lt": _iso(start + timedelta(minutes=1))}}},
            aggs={"metrics": {"terms": {"field": "metric", "size": 500}}},
        )
    except Exception as exc:  # the Elasticsearch hop reports its own failure
        log.warning("metric names of %s not read from Elasticsearch: %s", _iso(start), exc)
        return []
    return [b["key"] for b in resp.get("aggregations", {}).get("metrics", {}).get("buckets", [])]


def sensor_metrics(landing: LandingZone, keys: Iterable[str]) -> list[str]:
    """The distinct metric names in sensor files (third CSV column)."""
    names: set[str] = set()
    for key in keys:
        for line in landing.get(key).split(b"\n")[1:]:
            parts = line.split(b",", 3)
            if len(parts) >= 3:
                names.add(parts[2].decode("utf-8", "replace"))
    return sorted(names)


def count_kafka(consumer: Consumer, topic: str, source: str, minute: datetime, *, margin_s: float = DEFAULT_KAFKA_MARGIN_S,
                timeout_s: float = 10.0) -> int:
    """Readings of the minute on ``topic``, by the reading's own time.

    How: for every partition, ``offsets_for_times`` finds the first offset
    whose record timestamp is at or after ``M - margin_s`` and the first at or
    after ``M + 1 min + margin_s`` (the log end when none); the records in
    between are read (``assign`` + ``consume``, nothing committed) and each
    reading counted whose time falls in [M, M+1min): a host record is one
    reading at its ``timestamp`` field; a sensor record is an MQTT payload,
    parsed with :func:`include.sensors.parse_payload` at its ``received_at``
    header (the record timestamp when absent), each valid reading counted at
    its own time — exactly how the collector files it. Each reading counts
    once however often it is on the topic (see :func:`_readings`).
    Undecodable records are not readings (the collectors dead-letter them).

    ``consumer`` is a ``confluent_kafka.Consumer`` the caller closes.
    Raises RuntimeError when the topic does not exist or Kafka does not answer.
    """
    from confluent_kafka import OFFSET_END, TopicPartition

    start = floor_minute(minute)
    lo_ms = int((start.timestamp() - margin_s) * 1000)
    hi_ms = int((start.timestamp() + 60 + margin_s) * 1000)
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RuntimeError(f"Kafka topic {topic!r} does not exist or has no partitions: cannot count minute {_iso(start)}")
    parts = sorted(meta.partitions)
    los = consumer.offsets_for_times([TopicPartition(topic, p, lo_ms) for p in parts], timeout=timeout_s)
    his = consumer.offsets_for_times([TopicPartition(topic, p, hi_ms) for p in parts], timeout=timeout_s)
    ranges: dict[int, tuple[int, int]] = {}
    for lo, hi in zip(los, his, strict=True):
        _, end = consumer.get_watermark_offsets(TopicPartition(topic, lo.partition), timeout=timeout_s)
        first = end if lo.offset in (OFFSET_END, -1) else lo.offset
        last = end if hi.offset in (OFFSET_END, -1) else hi.offset
        if first < last:
            ranges[lo.partition] = (first, last)
    if not ranges:
        return 0
    consumer.assign([TopicPartition(topic, p, first) for p, (first, _) in ranges.items()])
    seen: set[ReadingIdentity] = set()
    lo_s, hi_s = start.timestamp(), start.timestamp() + 60
    try:
        open_parts = set(ranges)
        idle_since = time.monotonic()
        while open_parts:
            # consume() waits for num_messages or the timeout: short polls, so a small minute is quick.
            batch = consumer.consume(num_messages=1000, timeout=0.2)
            if not batch:
                if time.monotonic() - idle_since > timeout_s:
                    raise RuntimeError(f"Kafka gave no records of {topic} for {timeout_s} s while counting "
                                       f"{_iso(start)}; still reading partitions {sorted(open_parts)}")
                continue
            idle_since = time.monotonic()
            for msg in batch:
                if msg.error() is not None:
                    continue
                # A consumed record always has both; the client's types allow None for produced ones.
                part, offset = msg.partition(), msg.offset()
                if part is None or offset is None or part not in open_parts or offset >= ranges[part][1]:
                    continue
                seen.update(r for r in _readings(source, msg) if lo_s <= r[0] < hi_s)
                if offset >= ranges[part][1] - 1:
                    open_parts.discard(part)
    finally:
        consumer.unassign()
    return len(seen)


def _readings(source: str, msg: Message) -> list[ReadingIdentity]:
    """The identity ``(epoch, device, metric, tags)`` of each reading in one record (none when undecodable).

    Counting identities, not records, makes a record delivered twice (the
    collectors' Kafka backlog is at-least-once) count once, as the sinks store it once.
    """
    try:
        key = (msg.key() or b"").decode("utf-8", "replace")
        value = msg.value()
        if value is None:  # a tombstone carries no reading
            return []
        if source == HOST:
            doc = orjson.loads(value)
            return [(_parse_time(doc["timestamp"]).timestamp(), doc.get("host") or key, "", "")]
        from include.sensors import parse_payload

        received = None
        headers = msg.headers() or []
        for name, header in headers.items() if isinstance(headers, dict) else headers:
            if name == "received_at" and header:
                text = header.decode() if isinstance(header, bytes) else header
                received = _parse_time(text).timestamp()
        if received is None:
            received = msg.timestamp()[1] / 1000
        return [(r.epoch, key, r.metric, r.tags) for r in parse_payload(value, received).readings]
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
        return []


def count_hops(
    landing: LandingZone,
    source: str,
    minute: datetime,
    *,
    elasticsearch: Elasticsearch | None = None,
    es_prefix: str = ES_INDEX_PREFIX,
    opentsdb: OpenTSDBClient | None = None,
    kafka: Callable[[], Consumer] | None = None,
    kafka_topic: str | None = None,
) -> MinuteCounts:
    """Measure every configured hop of one minute (sinks and Kafka that are ``None`` are not measured).

    ``kafka`` is a factory of ``confluent_kafka.Consumer`` (closed here). A hop
    whose system fails is recorded in ``unmeasured`` with the error, and the
    other hops are still measured.
    """
    minute = floor_minute(minute)
    counts = MinuteCounts(source, minute)
    manifests, unreadable = read_manifests(landing, source, minute)
    if unreadable:
        counts.unmeasured["collector"] = "; ".join(unreadable)[:500]
    counts.writers = sorted(m.writer for m in manifests)
    if manifests:
        counts.hops["received"] = sum(m.received for m in manifests)
        counts.hops["collector"] = sum(m.total_rows for m in manifests)
        for m in manifests:
            _add(counts.deadletters["collector"], m.deadletters)
    else:
        counts.hops["received"] = counts.hops["collector"] = None
        counts.unmeasured.setdefault("collector", "no collector manifest for this minute")
    counts.hops["landed"], counts.files, counts.devices = count_landed(landing, source, minute)
    accepted, reasons, counts.loaded_at = count_loaded(landing, source, minute)
    counts.hops["loaded"] = accepted if (counts.files or accepted) else 0
    counts.deadletters["load"] = reasons

    def measure(hop: str, fn: Callable[[], int]) -> None:
        try:
            counts.hops[hop] = fn()
        except Exception as exc:  # a system down must not hide the other hops
            counts.hops[hop] = None
            counts.unmeasured[hop] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("%s %s: %s not measured: %s", source, _iso(minute), hop, exc)

    if kafka is not None and kafka_topic:
        def kafka_count() -> int:
            consumer = kafka()
            try:
                return count_kafka(consumer, kafka_topic, source, minute)
            finally:
                consumer.close()

        measure("kafka", kafka_count)
    if elasticsearch is not None:
        measure("elasticsearch", lambda: count_elasticsearch(elasticsearch, source, minute, prefix=es_prefix))
    if opentsdb is not None:
        # Whoever says a device had readings this minute: a deleted file must not hide its points.
        devices = sorted({*counts.devices, *(d for m in manifests for d in m.rows)})
        metrics: list[str] = []
        if source == SENSOR:
            metrics = sensor_metrics(landing, counts.files)
            if elasticsearch is not None:
                metrics = sorted({*metrics, *_es_metrics(elasticsearch, minute, prefix=es_prefix)})
        measure("opentsdb", lambda: count_opentsdb(opentsdb, source, minute, devices=devices, metrics=metrics))
    return counts


# --- The verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    hop: str
    expected: int
    found: int
    #: What ``expected`` was derived from.
    basis: str

    @property
    def difference(self) -> int:
        return self.found - self.expected

    def describe(self) -> str:
        return f"{self.hop} holds {self.found}, expected {self.expected} from {self.basis} ({self.difference:+d})"


@dataclass
class Verdict:
    source: str
    minute: datetime
    status: str
    mismatches: list[Mismatch]
    counts: MinuteCounts
    healed: bool = False

    def describe(self) -> str:
        head = f"{self.source} {_iso(self.minute)} is {self.status}"
        if self.mismatches:
            return head + ": " + "; ".join(m.describe() for m in self.mismatches)
        if self.counts.unmeasured:
            return head + ": not measured " + "; ".join(f"{k}: {v}" for k, v in self.counts.unmeasured.items())
        return head


def judge(counts: MinuteCounts) -> Verdict:
    """Compare every measured hop with the collectors' rows (see the module docstring)."""
    hops = counts.hops
    collector = hops.get("collector")
    if collector is not None:
        base, basis = collector, "the collectors' manifests"
    else:
        base, basis = hops["landed"] or 0, "the landed files"
    mismatches = []
    # With no manifest the landed files are the basis, so they cannot disagree with it.
    checked = ("landed", "kafka") if collector is not None else ("kafka",)
    for hop in checked:
        found = hops.get(hop)
        if found is not None and found != base:
            mismatches.append(Mismatch(hop, base, found, basis))
    after_load = base - counts.load_deadletters
    basis_load = f"{basis} less {counts.load_deadletters} dead-lettered" if counts.load_deadletters else basis
    for hop in ("loaded", "elasticsearch", "opentsdb"):
        found = hops.get(hop)
        if found is not None and found != after_load:
            mismatches.append(Mismatch(hop, after_load, found, basis_load))
    status = RED if mismatches else (AMBER if counts.unmeasured else GREEN)
    return Verdict(counts.source, counts.minute, status, mismatches, counts)


class ReconcileMismatch(RuntimeError):
    """Some minute's hops disagree; the message names each hop and difference."""


# --- Storage ----------------------------------------------------------------------------------


def result_document(verdict: Verdict, *, checked_at: datetime, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``sluice-reconcile-*`` document of one verdict (``previous``: the stored one, for healing)."""
    c = verdict.counts
    doc: dict[str, Any] = {
        ES_TIME_FIELD: _iso(verdict.minute),
        "kind": "reconcile",
        "source": verdict.source,
        "status": verdict.status,
        "healed": False,
        "hops": {h: c.hops.get(h) for h in HOPS},
        "deadletters": c.deadletters,
        "deadlettered": c.load_deadletters + sum(c.deadletters["collector"].values()),
        "mismatches": [{**asdict(m), "difference": m.difference, "text": m.describe()} for m in verdict.mismatches],
        "summary": verdict.describe(),
        "unmeasured": c.unmeasured,
        "writers": c.writers,
        "devices": c.devices,
        "files": c.files,
        "loaded_at": _iso(c.loaded_at) if c.loaded_at else None,
        "checked_at": _iso(checked_at),
        "first_red_at": None,
        "healed_at": None,
    }
    if previous:
        doc["first_red_at"] = previous.get("first_red_at")
        if previous.get("status") == RED and verdict.status != RED:
            doc["healed"], doc["healed_at"] = True, _iso(checked_at)
            verdict.healed = True
        elif previous.get("healed") and verdict.status != RED:
            doc["healed"], doc["healed_at"] = True, previous.get("healed_at")
            verdict.healed = True
    if verdict.status == RED and not doc["first_red_at"]:
        doc["first_red_at"] = _iso(checked_at)
    return doc


def document_id(source: str, minute: datetime) -> str:
    return f"{source}:{_iso(floor_minute(minute))}"


def reconcile_template(prefix: str = ES_INDEX_PREFIX) -> dict[str, Any]:
    """Index template of the reconcile indices: names are keywords, counts longs."""
    counts = {"type": "long"}
    return {
        "index_patterns": [index_pattern(RECONCILE, prefix=prefix)],
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic_templates": [{"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}],
                "properties": {
                    ES_TIME_FIELD: {"type": "date"},
                    "checked_at": {"type": "date"}, "loaded_at": {"type": "date"},
                    "first_red_at": {"type": "date"}, "healed_at": {"type": "date"},
                    "kind": {"type": "keyword"}, "source": {"type": "keyword"}, "status": {"type": "keyword"},
                    "healed": {"type": "boolean"}, "deadlettered": counts,
                    "hops": {"properties": {h: counts for h in HOPS}},
                    "deadletters": {"type": "flattened"}, "unmeasured": {"type": "flattened"},
                    "summary": {"type": "text"}, "freshness_s": {"type": "double"}, "sla_s": {"type": "double"},
                    "lateness_s": {"type": "double"},
                    "mismatches": {"properties": {"text": {"type": "text"}, "expected": counts, "found": counts,
                                                  "difference": counts}},
                },
            },
        },
        "priority": 200,
        "_meta": {"managed_by": "sluice"},
    }


def ensure_template(client: Elasticsearch, prefix: str = ES_INDEX_PREFIX) -> None:
    """Write the reconcile template only when the stored one differs: the reconcile role may read
    templates but not write them (the set-up installs them; see include/elasticsearch_security.py)."""
    from include.dashboards.index_templates import apply_index_templates

    apply_index_templates(client, {template_name(RECONCILE, prefix=prefix): reconcile_template(prefix)})


def stored(client: Elasticsearch, prefix: str, ids: Sequence[tuple[str, datetime]]) -> dict[str, dict[str, Any]]:
    """The stored reconcile documents of ``(source, minute)`` pairs, by document id."""
    if not ids:
        return {}
    resp = client.options(ignore_status=404).search(
        index=index_pattern(RECONCILE, prefix=prefix), size=len(ids), allow_no_indices=True, ignore_unavailable=True,
        query={"ids": {"values": [document_id(s, m) for s, m in ids]}},
    )
    return {hit["_id"]: hit["_source"] for hit in resp.get("hits", {}).get("hits", [])}


def store_results(client: Elasticsearch, verdicts: Sequence[Verdict], *, prefix: str = ES_INDEX_PREFIX,
                  checked_at: datetime | None = None) -> list[dict[str, Any]]:
    """Index one document per verdict (healing against what is stored); returns the documents."""
    checked_at = checked_at or datetime.now(timezone.utc)
    ensure_template(client, prefix)
    previous = stored(client, prefix, [(v.source, v.minute) for v in verdicts])
    docs = []
    for v in verdicts:
        doc = result_document(v, checked_at=checked_at, previous=previous.get(document_id(v.source, v.minute)))
        client.index(index=reconcile_index(v.minute, prefix), id=document_id(v.source, v.minute), document=doc,
                     refresh="wait_for")
        docs.append(doc)
    return docs


def red_minutes(client: Elasticsearch, *, prefix: str = ES_INDEX_PREFIX, limit: int = 30) -> list[tuple[str, datetime]]:
    """The newest ``limit`` minutes stored red (source, minute), to re-check every run."""
    resp = client.options(ignore_status=404).search(
        index=index_pattern(RECONCILE, prefix=prefix), size=limit, allow_no_indices=True, ignore_unavailable=True,
        query={"bool": {"filter": [{"term": {"kind": "reconcile"}}, {"term": {"status": RED}}]}},
        sort=[{ES_TIME_FIELD: "desc"}], source_includes=["source", ES_TIME_FIELD],
    )
    return [(h["_source"]["source"], _parse_time(h["_source"][ES_TIME_FIELD]))
            for h in resp.get("hits", {}).get("hits", [])]


def reconcile_minutes(
    landing: LandingZone,
    pairs: Iterable[tuple[str, datetime]],
    *,
    elasticsearch: Elasticsearch,
    es_prefix: str = ES_INDEX_PREFIX,
    opentsdb: OpenTSDBClient | None = None,
    kafka: Callable[[], Consumer] | None = None,
    kafka_topics: Mapping[str, str] | None = None,
    measure_elasticsearch: bool = True,
    checked_at: datetime | None = None,
) -> list[Verdict]:
    """Count, judge and store each ``(source, minute)``; returns the verdicts (``healed`` set when healed).

    ``elasticsearch`` stores the results; it is also the counted sink unless
    ``measure_elasticsearch`` is false (Elasticsearch not among the sinks).
    """
    verdicts = []
    for source, minute in dict.fromkeys((s, floor_minute(m)) for s, m in pairs):
        if source not in SOURCES:
            raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
        counts = count_hops(
            landing, source, minute,
            elasticsearch=elasticsearch if measure_elasticsearch else None, es_prefix=es_prefix,
            opentsdb=opentsdb, kafka=kafka, kafka_topic=(kafka_topics or {}).get(source),
        )
        verdicts.append(judge(counts))
    store_results(elasticsearch, verdicts, prefix=es_prefix, checked_at=checked_at)
    for v in verdicts:
        (log.error if v.status == RED else log.info)("%s%s", v.describe(), " (healed)" if v.healed else "")
    return verdicts


# --- Freshness ---------------------------------------------------------------------------------

#: Seconds after a minute ends by which it must be queryable in every configured sink.
DEFAULT_SLA_S = 30.0


@dataclass(frozen=True)
class Freshness:
    """When minute M of a source became queryable, against the SLA."""

    source: str
    minute: datetime
    sla_s: float
    #: Seconds from the minute's end to its newest load record; None when not loaded yet.
    freshness_s: float | None
    breach: bool

    def describe(self) -> str:
        if self.freshness_s is None:
            return (f"{self.source} {_iso(self.minute)} is not queryable {self.sla_s:g} s after the minute "
                    "(no load record yet)")
        return (f"{self.source} {_iso(self.minute)} became queryable {self.freshness_s:.0f} s after the minute "
                f"(SLA {self.sla_s:g} s)")

    def to_document(self, *, checked_at: datetime) -> dict[str, Any]:
        lateness = None if self.freshness_s is None else self.freshness_s - self.sla_s
        return {ES_TIME_FIELD: _iso(self.minute), "kind": "sla", "source": self.source, "sla_s": self.sla_s,
                "freshness_s": self.freshness_s, "lateness_s": lateness, "breach": self.breach,
                "summary": self.describe(), "checked_at": _iso(checked_at)}


def check_freshness(landing: LandingZone, source: str, minute: datetime, *, now: datetime,
                    sla_s: float = DEFAULT_SLA_S) -> Freshness | None:
    """The freshness of one minute, or None when the minute has nothing to load or its deadline is ahead.

    The minute is queryable when its load records are written: the minute DAG
    writes them after every configured sink took the documents. A minute with
    landed files or a manifest and no load record at ``minute end + sla_s`` is
    a breach; so is one whose newest load record came after that.
    """
    minute = floor_minute(minute)
    end = minute + timedelta(minutes=1)
    deadline = end + timedelta(seconds=sla_s)
    if now < deadline:
        return None
    _, _, loaded_at = count_loaded(landing, source, minute)
    if loaded_at is None:
        manifests, _ = read_manifests(landing, source, minute)
        has_data = bool(manifests) or any(i.key.endswith(".csv") for i in landing.list(minute_prefix(source, minute)))
        if not has_data:
            return None
        return Freshness(source, minute, sla_s, None, True)
    freshness = (loaded_at - end).total_seconds()
    return Freshness(source, minute, sla_s, freshness, freshness > sla_s)


def store_freshness(client: Elasticsearch, results: Sequence[Freshness], *, prefix: str = ES_INDEX_PREFIX,
                    checked_at: datetime | None = None) -> None:
    """Index each freshness result as ``sla:{source}:{minute}`` beside the reconcile documents."""
    checked_at = checked_at or datetime.now(timezone.utc)
    ensure_template(client, prefix)
    for r in results:
        client.index(index=reconcile_index(r.minute, prefix), id="sla:" + document_id(r.source, r.minute),
                     document=r.to_document(checked_at=checked_at), refresh="wait_for")
