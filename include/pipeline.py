"""The batch pipeline's steps, as plain functions the Airflow tasks call.

Per minute (``dags/sluice_minute.py``)::

    minute_files_ready  ->  stage_files (CSV -> JSON)  ->  load_staged per sink  ->  record_loads

Late files (``dags/sluice_sweep.py``): :func:`include.loads.find_unloaded`
over the last hours, then the same three steps. Large ranges
(``dags/sluice_backfill_fast.py``): :func:`load_files` does everything for one
hour's files in one process, without staging.

Sinks are pluggable: a sink is an object with a ``name`` and a
``load(source, batches)`` method (:class:`Sink`), given ``(raw key,
FileDocuments)`` pairs and returning a :class:`SinkFileResult` per key. The
Elasticsearch sink is :class:`ElasticsearchSink`; :class:`OpenTSDBSink` puts
the datapoints of :func:`include.transform.document_datapoints`. Which sinks run
is configuration (:func:`configured_sinks`, ``SLUICE_SINKS``).

Every function takes its landing zone and clients as arguments; nothing here
imports Airflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

import orjson

from include import loads
from include.contract import (
    ES_INDEX_PREFIX,
    FileDeadLetter,
    check_source,
    hour_prefix,
    minute_prefix,
    now_text,
    parse_key,
    staged_key,
)
from include.landing import LandingZone, ObjectInfo
from include.transform import FileDocuments, FileRejected, document_id, transform_file, transform_files

log = logging.getLogger(__name__)

ELASTICSEARCH = "elasticsearch"
OPENTSDB = "opentsdb"
KNOWN_SINKS = (ELASTICSEARCH, OPENTSDB)
DEFAULT_SINKS = (ELASTICSEARCH,)
#: Seconds after a minute ends that its run waits for stragglers before going on without them.
DEFAULT_GRACE_SECONDS = 45
#: Threads for object-store reads and writes (I/O bound; the store does the work).
IO_THREADS = 8


class UnknownSink(ValueError):
    """A sink name in the configuration that Sluice does not have."""


def configured_sinks(value: str | None = None) -> tuple[str, ...]:
    """The sink names to load, from ``value`` or ``SLUICE_SINKS`` (``elasticsearch,opentsdb``).

    Unset or empty means :data:`DEFAULT_SINKS`. Raises UnknownSink naming the
    first name that is not in :data:`KNOWN_SINKS`.
    """
    text = value if value is not None else os.environ.get("SLUICE_SINKS", "")
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in KNOWN_SINKS:
            raise UnknownSink(f"sink {name!r} in SLUICE_SINKS is not one of {', '.join(KNOWN_SINKS)}")
    return names or DEFAULT_SINKS


# --- Sinks -----------------------------------------------------------------------------------


@dataclass
class SinkFileResult:
    """What one sink did with one file's documents; ``failed`` maps document id -> reason."""

    accepted: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "rejected": len(self.failed), "failed": self.failed}

    @classmethod
    def from_dict(cls, data: dict) -> SinkFileResult:
        return cls(accepted=data["accepted"], failed=dict(data.get("failed") or {}))


class Sink(Protocol):
    name: str

    def load(self, source: str, batches: Sequence[tuple[str, FileDocuments]]) -> dict[str, SinkFileResult]:
        """Load every batch; raise when the sink is unreachable or refuses retryably."""
        ...

    def close(self) -> None:
        """Release the sink's client (connections); the sink is not used afterwards."""
        ...


class ElasticsearchSink:
    """Bulk-loads documents into the daily indices, creating the index template when missing."""

    name = ELASTICSEARCH

    def __init__(self, client, *, prefix: str = ES_INDEX_PREFIX, chunk_size: int = 2000) -> None:
        self.client = client
        self.prefix = prefix
        self.chunk_size = chunk_size

    def close(self) -> None:
        self.client.close()

    def load(self, source: str, batches: Sequence[tuple[str, FileDocuments]]) -> dict[str, SinkFileResult]:
        from include import elasticsearch as es

        results = {key: SinkFileResult() for key, _ in batches}
        if not any(docs.documents for _, docs in batches):
            return results
        es.ensure_index_template(self.client, source, prefix=self.prefix)
        owner: dict[str, str] = {}
        for key, docs in batches:
            owner.update(dict.fromkeys(docs.ids, key))

        def actions():
            for _, docs in batches:
                yield from es.bulk_actions(source, docs.ids, docs.timestamps, docs.documents, prefix=self.prefix)

        outcome = es.bulk_index(self.client, actions(), chunk_size=self.chunk_size)
        for doc_id, reason in outcome.failed.items():
            results[owner.get(doc_id, batches[0][0])].failed[doc_id] = reason
        for key, docs in batches:
            # A row repeated within a file (same id) is accepted twice and stored once.
            results[key].accepted = len(docs.ids) - len(results[key].failed)
        return results


class OpenTSDBSink:
    """Puts each document's datapoints (:func:`include.transform.document_datapoints`).

    ``client`` is an :class:`include.opentsdb.OpenTSDBClient`. A document is
    accepted when every one of its datapoints was stored; otherwise it is
    failed with OpenTSDB's reasons (metric named). An unreachable TSD raises
    :class:`include.opentsdb.OpenTSDBUnavailable` so the task fails and its
    retry puts everything again (duplicates are resolved on read).
    """

    name = OPENTSDB

    def __init__(self, client) -> None:
        self.client = client

    def close(self) -> None:
        self.client.close()

    def load(self, source: str, batches: Sequence[tuple[str, FileDocuments]]) -> dict[str, SinkFileResult]:
        from include.transform import document_datapoints

        results = {key: SinkFileResult() for key, _ in batches}
        owners: list[tuple[str, str]] = []  # (file key, document id) of each datapoint, in put order

        def datapoints():
            for key, docs in batches:
                for doc_id, raw in zip(docs.ids, docs.documents, strict=True):
                    for point in document_datapoints(source, orjson.loads(raw)):
                        owners.append((key, doc_id))
                        yield point

        outcome = self.client.put(datapoints())
        for failure in outcome.failed:
            if failure.index is None:  # an error OpenTSDB could not pin on a datapoint
                key, doc_id = batches[0][0], "?"
            else:
                key, doc_id = owners[failure.index]
            metric = failure.datapoint.get("metric", "?") if isinstance(failure.datapoint, dict) else "?"
            previous = results[key].failed.get(doc_id)
            reason = f"{metric}: {failure.reason}"
            results[key].failed[doc_id] = f"{previous}; {reason}" if previous else reason
        for key, docs in batches:
            results[key].accepted = len(docs.ids) - len(results[key].failed)
        return results


# --- Per minute ------------------------------------------------------------------------------


def minute_files(landing: LandingZone, source: str, minute: datetime) -> list[ObjectInfo]:
    """The ``.csv`` files landed for ``minute`` (UTC)."""
    return [f for f in landing.list(minute_prefix(source, minute)) if f.key.endswith(".csv")]


@dataclass
class Readiness:
    done: bool
    files: list[ObjectInfo]
    missing: list[str]


def minute_files_ready(
    landing: LandingZone, source: str, minute: datetime, *, now: datetime, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> Readiness:
    """Whether the minute's files are complete enough to go on.

    Done early when every device that landed a file for the previous minute has
    landed one for this minute; otherwise done at ``minute + 1 min +
    grace_seconds`` with whatever is there (the devices still missing are
    named, and the late-file sweep loads them if they arrive).
    """
    files = minute_files(landing, source, minute)
    present = {f.key.rsplit("/", 1)[1] for f in files}
    expected = {f.key.rsplit("/", 1)[1] for f in minute_files(landing, source, minute - timedelta(minutes=1))}
    missing = sorted(n.removesuffix(".csv") for n in expected - present)
    deadline = minute + timedelta(minutes=1, seconds=grace_seconds)
    done = now >= deadline or (bool(present) and not missing)
    if done and missing:
        log.warning("%s %s: going on without %s (no file %ss after the minute)", source, minute.isoformat(),
                    ", ".join(missing), grace_seconds)
    elif not done:
        log.info("%s %s: waiting for %s until %s", source, minute.isoformat(), ", ".join(missing) or "a first file",
                 deadline.isoformat())
    return Readiness(done, files, missing)


def file_ref(info: ObjectInfo) -> dict:
    """The XCom-sized identity of a landed file."""
    return {"key": info.key, "etag": info.etag, "size": info.size}


def transform_landed(landing: LandingZone, source: str, ref: dict) -> tuple[dict, FileDocuments | None]:
    """Read and transform one landed file: ``(summary, documents or None when quarantined)``.

    The summary is JSON-able: key, etag, size, rows_read, documents, rejected,
    quarantined, reason and the rejected rows (``{"line", "reason", "row"}``).
    """
    data = landing.get(ref["key"])
    try:
        result: FileDocuments | FileRejected = transform_file(source, data)
    except FileRejected as exc:
        result = exc
    return summarize_file(ref, data, result)


def summarize_file(ref: dict, data: bytes, result: FileDocuments | FileRejected) -> tuple[dict, FileDocuments | None]:
    """The summary of one file's transform (see :func:`transform_landed`); logs rejections."""
    summary = {**ref, "rows_read": 0, "documents": 0, "rejected": 0, "quarantined": False, "reason": None, "rows": []}
    if isinstance(result, FileRejected):
        summary.update(quarantined=True, reason=result.reason, rows_read=max(data.count(b"\n") - 1, 0))
        log.warning("quarantined %s: %s", ref["key"], result.reason)
        return summary, None
    docs = result
    summary.update(
        rows_read=docs.rows_read,
        documents=docs.accepted,
        rejected=docs.rejected,
        rows=[e.to_dict() for e in docs.row_errors[: loads.MAX_ROWS_KEPT]],
    )
    if docs.row_errors:
        log.warning("%s: %d of %d rows rejected, e.g. line %d: %s", ref["key"], docs.rejected, docs.rows_read,
                    docs.row_errors[0].line, docs.row_errors[0].reason)
    return summary, docs


def stage_files(landing: LandingZone, source: str, refs: Sequence[dict]) -> list[dict]:
    """CSV -> JSON for a minute's files: write each file's documents to ``staged/`` (NDJSON).

    Returns one summary per file (see :func:`transform_landed`) with
    ``staged_key``; a quarantined file has none. Logs how many files were
    quarantined and rows rejected.
    """

    def one(ref: dict) -> dict:
        summary, docs = transform_landed(landing, source, ref)
        summary["staged_key"] = None
        if docs is not None:
            key = staged_key(ref["key"])
            landing.put(key, b"\n".join(docs.documents) + b"\n" if docs.documents else b"",
                        {"source-etag": ref["etag"], "documents": str(docs.accepted)})
            summary["staged_key"] = key
        return summary

    summaries = _map(one, refs)
    quarantined = sum(s["quarantined"] for s in summaries)
    log.info(
        "%s: %d files, %d rows read, %d documents, %d rows rejected, %d files quarantined",
        source, len(summaries), sum(s["rows_read"] for s in summaries), sum(s["documents"] for s in summaries),
        sum(s["rejected"] for s in summaries), quarantined,
    )
    return summaries


def read_staged(landing: LandingZone, source: str, summary: dict) -> FileDocuments:
    """The documents :func:`stage_files` wrote for one file, with their ids and timestamps."""
    docs = FileDocuments(source, rows_read=summary["rows_read"])
    if not summary.get("staged_key"):
        return docs
    for line in landing.get(summary["staged_key"]).splitlines():
        if line:
            doc = orjson.loads(line)
            docs.documents.append(line)
            docs.ids.append(document_id(source, doc))
            docs.timestamps.append(doc["@timestamp"])
    return docs


def load_staged(landing: LandingZone, sink: Sink, source: str, summaries: Sequence[dict]) -> dict[str, dict]:
    """Load the staged documents of a minute's files into one sink: raw key -> result dict."""
    staged = [s for s in summaries if s.get("staged_key")]
    batches = list(zip([s["key"] for s in staged], _map(lambda s: read_staged(landing, source, s), staged)))
    results = sink.load(source, batches)
    total = sum(r.accepted for r in results.values())
    refused = sum(len(r.failed) for r in results.values())
    log.info("%s: %s accepted %d documents from %d files, refused %d", source, sink.name, total, len(batches), refused)
    return {key: r.to_dict() for key, r in results.items()}


def record_freshness(client, source: str, minute: datetime) -> None:
    """Tell OpenTSDB that ``minute`` of ``source`` is loaded (:data:`FRESHNESS_METRIC`).

    The datapoint stands at the minute itself with the minute's epoch seconds as
    value, so the freshness dashboard's "time of the newest point" is the last
    minute loaded. ``client`` is an :class:`include.opentsdb.OpenTSDBClient`;
    a refusal raises RuntimeError with OpenTSDB's reason.
    """
    from include.schemas import FRESHNESS_METRIC

    epoch = int(minute.timestamp())
    result = client.put([{"metric": FRESHNESS_METRIC, "timestamp": epoch, "value": epoch, "tags": {"source": source}}])
    if result.failed:
        raise RuntimeError(f"OpenTSDB refused the freshness point of {source} {minute.isoformat()}: "
                           f"{result.failed[0].reason}")


def record_loads(
    landing: LandingZone, summaries: Sequence[dict], sink_results: dict[str, dict[str, dict]], *, run_id: str
) -> dict:
    """Write a load record (and a dead-letter record when something was refused) per file.

    ``sink_results`` is sink name -> raw key -> :meth:`SinkFileResult.to_dict`.
    Returns and logs the totals: files, rows_read, accepted, rejected, quarantined.
    """

    def one(summary: dict) -> dict:
        refused: dict[str, tuple[str, str]] = {}
        sinks = {}
        for name, by_key in sink_results.items():
            result = by_key.get(summary["key"], {"accepted": 0, "rejected": 0, "failed": {}})
            sinks[name] = {"accepted": result["accepted"], "rejected": result["rejected"]}
            for doc_id, reason in (result.get("failed") or {}).items():
                refused.setdefault(doc_id, (name, reason))
        accepted = 0 if summary["quarantined"] else max(summary["documents"] - len(refused), 0)
        record = loads.LoadRecord(
            key=summary["key"], etag=summary["etag"], size=summary["size"], rows_read=summary["rows_read"],
            accepted=accepted, rejected=summary["rejected"] + len(refused) + (summary["rows_read"] if summary["quarantined"] else 0),
            quarantined=summary["quarantined"], reason=summary["reason"], sinks=sinks, run_id=run_id,
            loaded_at=now_text(),
        )
        deadletter = None
        if summary["quarantined"] or summary["rejected"] or refused:
            deadletter = FileDeadLetter(
                key=summary["key"], etag=summary["etag"], quarantined=summary["quarantined"],
                reason=summary["reason"], rejected_rows=summary["rejected"], rows=list(summary["rows"]),
                documents=[{"id": i, "sink": s, "reason": r} for i, (s, r) in refused.items()],
                run_id=run_id, written_at=record.loaded_at,
            )
        loads.write_records(landing, record, deadletter)
        return {"rows_read": record.rows_read, "accepted": record.accepted, "rejected": record.rejected,
                "quarantined": int(record.quarantined)}

    rows = _map(one, summaries)
    totals = {"files": len(rows)}
    for name in ("rows_read", "accepted", "rejected", "quarantined"):
        totals[name] = sum(r[name] for r in rows)
    log.info("recorded %s", totals)
    return totals


# --- Late files and large ranges -------------------------------------------------------------


def find_late_files(
    landing: LandingZone, source: str, *, end: datetime, hours: float, settle_minutes: int = 3
) -> list[ObjectInfo]:
    """Files of the ``hours`` before ``end`` with no load record for their current etag.

    The last ``settle_minutes`` before ``end`` are left to their own minute runs.
    """
    stop = end - timedelta(minutes=settle_minutes)
    found = loads.find_unloaded(landing, source, stop - timedelta(hours=hours), stop)
    if found:
        log.warning("%s: %d landed files have no load record, e.g. %s", source, len(found), found[0].key)
    return found


def load_files(
    landing: LandingZone, sinks: Sequence[Sink], source: str, files: Sequence[ObjectInfo], *, run_id: str
) -> dict:
    """Transform and load ``files`` in one process (no staging), then record them.

    The fast path for large ranges: reads run on :data:`IO_THREADS` threads,
    each sink gets every document of ``files`` in one streaming bulk load,
    the sinks at the same time (one thread each).
    Returns the totals of :func:`record_loads`.
    """
    refs = [file_ref(f) for f in files]
    datas = _map(lambda ref: landing.get(ref["key"]), refs)
    # One columnar pass over all files of the same header (transform_files batches them).
    pairs = [summarize_file(ref, data, result) for ref, data, result in zip(refs, datas, transform_files(source, datas))]
    summaries = [s for s, _ in pairs]
    batches = [(s["key"], docs) for s, docs in pairs if docs is not None]
    # The sinks load side by side: Elasticsearch's bulk requests and OpenTSDB's
    # puts wait on different servers, so a host-day costs the slower of the two, not their sum.
    loaded = _map(lambda sink: sink.load(source, batches), sinks)
    sink_results = {sink.name: {k: r.to_dict() for k, r in got.items()} for sink, got in zip(sinks, loaded, strict=True)}
    return record_loads(landing, summaries, sink_results, run_id=run_id)


def hours_between(start: datetime, end: datetime) -> list[str]:
    """ISO hours (``YYYY-MM-DDTHH:00:00+00:00``) covering [start, end)."""
    hour = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while hour < end:
        out.append(hour.isoformat())
        hour += timedelta(hours=1)
    return out


def hour_files(landing: LandingZone, source: str, hour: datetime, *, start: datetime, end: datetime) -> list[ObjectInfo]:
    """The ``.csv`` files of one hour (one listing), limited to minutes in [start, end)."""
    lo, hi = max(hour, start), min(hour + timedelta(hours=1), end)
    prefix = hour_prefix(source, hour)
    return [
        f for f in landing.list(prefix) if f.key.endswith(".csv") and lo <= parse_key(f.key).minute < hi
    ]


def _map(fn, items: Iterable) -> list:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


class BadRange(ValueError):
    """A backfill range that is not two ordered ISO-8601 UTC times."""


def parse_range(start_text: str, end_text: str) -> tuple[datetime, datetime]:
    """``(start, end)`` of a backfill's ``from``/``to`` params, UTC, whole minutes.

    Raises BadRange naming the value when it is not ISO-8601 with a zone, or
    when ``to`` is not after ``from``.
    """
    out = []
    for name, text in (("from", start_text), ("to", end_text)):
        try:
            value = datetime.fromisoformat(str(text))
        except ValueError:
            raise BadRange(f"{name}={text!r} is not an ISO-8601 time such as 2026-11-21T00:00:00Z") from None
        if value.tzinfo is None:
            raise BadRange(f"{name}={text!r} has no time zone; give UTC with Z")
        out.append(value.astimezone(timezone.utc).replace(second=0, microsecond=0))
    if out[1] <= out[0]:
        raise BadRange(f"to={end_text!r} is not after from={start_text!r}")
    return out[0], out[1]


def add_totals(parts: Iterable[dict]) -> dict:
    """Sum the numeric totals of several :func:`record_loads` results."""
    totals: dict[str, int] = {}
    for part in parts:
        for name, value in part.items():
            if isinstance(value, int):
                totals[name] = totals.get(name, 0) + value
    log.info("total %s", totals)
    return totals
