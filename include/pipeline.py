"""The batch pipeline's steps, as plain functions the Airflow tasks call.

Per minute (``dags/sluice_minute.py``)::

    minute_files_ready  ->  stage_files (CSV -> JSON)  ->  load_staged per sink  ->  record_loads

Late files (``dags/sluice_sweep.py``): :func:`include.loads.find_unloaded`
over the last hours, then the same three steps. Large ranges
(``dags/sluice_backfill_fast.py``): :func:`load_files` does everything for one
hour's files in one process, without staging.

Sinks are pluggable (:mod:`include.sinks`: the protocol, the Elasticsearch
and OpenTSDB sinks, ``SLUICE_SINKS``). Each step's per-file result is a
:class:`FileSummary`.

Every function takes its landing zone and clients as arguments; nothing here
imports Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import orjson

from include import loads
from include.contract import (
    ES_TIME_FIELD,
    FileDeadLetter,
    hour_prefix,
    minute_prefix,
    now_text,
    parse_key,
    staged_key,
)
from include.landing import LandingZone, ObjectInfo
from include.sinks import Sink
from include.manifests import live_writers, read_heartbeats, read_manifests
from include.transform import FileDocuments, FileRejected, document_id, transform_file, transform_files

if TYPE_CHECKING:
    from include.opentsdb import OpenTSDBClient

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

#: Seconds after a minute ends that its run waits for stragglers before going on without them.
DEFAULT_GRACE_SECONDS = 45
#: Threads for object-store reads and writes (I/O bound; the store does the work).
IO_THREADS = 8


# --- Per minute ------------------------------------------------------------------------------


def minute_files(landing: LandingZone, source: str, minute: datetime) -> list[ObjectInfo]:
    """The ``.csv`` files landed for ``minute`` (UTC)."""
    return [f for f in landing.list(minute_prefix(source, minute)) if f.key.endswith(".csv")]


#: Why a minute's sensor was done (:attr:`Readiness.reason`).
READY_MANIFESTS, READY_GRACE = "manifests", "grace"


@dataclass
class Readiness:
    done: bool
    files: list[ObjectInfo]
    #: Live writers whose manifest of the minute is not there yet.
    missing: list[str]
    #: Writers whose heartbeat stopped: they no longer hold the minute.
    stopped: list[str] = field(default_factory=list)
    #: Writers that were live (beating, started before the minute ended) when this was decided.
    live: list[str] = field(default_factory=list)
    #: :data:`READY_MANIFESTS` (every live writer's manifest is there), :data:`READY_GRACE`
    #: (the grace ended first), "" while not done.
    reason: str = ""
    #: When this was decided, and when the grace ends.
    now: datetime | None = None
    deadline: datetime | None = None

    def evidence(self, minute: datetime) -> dict[str, Any]:
        """What the sensor decided, JSON-able (the minute DAG keeps it as the XCom ``readiness``):
        the reason, the writers, and the seconds after the minute's end it was decided and the grace ends."""
        end = minute + timedelta(minutes=1)
        return {
            "done": self.done, "reason": self.reason, "live": self.live, "missing": self.missing,
            "stopped": self.stopped, "files": len(self.files),
            "decided_at": self.now.isoformat() if self.now else None,
            "decided_after_minute_s": round((self.now - end).total_seconds(), 1) if self.now else None,
            "grace_after_minute_s": round((self.deadline - end).total_seconds(), 1) if self.deadline else None,
        }


def minute_files_ready(
    landing: LandingZone, source: str, minute: datetime, *, now: datetime, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> Readiness:
    """Whether the minute's files are complete enough to go on.

    Done early when every *live* writer (:mod:`include.manifests`: heartbeat
    within its misses, started before the minute ended) has written its
    manifest for the minute, so a device that published in one minute only
    holds back nothing. A writer whose heartbeat stopped is named in
    ``stopped`` and waited for no longer. Otherwise done at ``minute + 1 min +
    grace_seconds`` with whatever is there (the writers still missing are
    named, and the late-file sweep loads their files if they arrive). With no
    live writer at all the run waits for the grace: nothing says the minute is
    whole.
    """
    files = minute_files(landing, source, minute)
    heartbeats, unreadable = read_heartbeats(landing, source)
    manifests, unreadable_manifests = read_manifests(landing, source, minute)
    for reason in unreadable + unreadable_manifests:
        log.warning("%s %s: %s", source, minute.isoformat(), reason)
    end = minute + timedelta(minutes=1)
    # A writer started after the minute ended has nothing to say about it.
    writers = [hb for hb in heartbeats if hb.started_at < end]
    live = {hb.writer for hb in live_writers(writers, now)}
    stopped = sorted({hb.writer for hb in writers} - live)
    missing = sorted(live - {m.writer for m in manifests})
    deadline = end + timedelta(seconds=grace_seconds)
    # The manifests first: a minute whose live writers all reported is done for that reason even
    # when the poke that sees it comes after the grace.
    reason = READY_MANIFESTS if live and not missing else READY_GRACE if now >= deadline else ""
    done = bool(reason)
    if stopped:
        log.warning("%s %s: writer(s) %s stopped heartbeating; not waiting for them", source, minute.isoformat(),
                    ", ".join(stopped))
    if reason == READY_MANIFESTS:
        log.info("%s %s: complete: every live writer's manifest is there (%s), %.1f s after the minute",
                 source, minute.isoformat(), ", ".join(sorted(live)), (now - end).total_seconds())
    elif done and missing:
        log.warning("%s %s: going on without the manifests of %s (%ss after the minute)", source, minute.isoformat(),
                    ", ".join(missing), grace_seconds)
    elif not done:
        log.info("%s %s: waiting for the manifests of %s until %s", source, minute.isoformat(),
                 ", ".join(missing) or "a live writer", deadline.isoformat())
    return Readiness(done, files, missing, stopped, sorted(live), reason, now, deadline)


class FileRef(TypedDict):
    """The XCom-sized identity of a landed file."""

    key: str
    etag: str
    size: int


#: One sink's results of a load: raw key -> :meth:`include.sinks.SinkFileResult.to_dict`.
SinkResults = dict[str, dict[str, Any]]


def file_ref(info: ObjectInfo) -> FileRef:
    """The XCom-sized identity of a landed file."""
    return {"key": info.key, "etag": info.etag, "size": info.size}


@dataclass
class FileSummary:
    """What the transform made of one landed file, and where its documents were staged.

    ``rows_read`` counts data rows (accepted or not; for a quarantined file the
    lines after the header), ``documents`` the accepted ones, ``rejected`` the
    refused rows; ``rows`` keeps the first :data:`include.loads.MAX_ROWS_KEPT`
    of those (``{"line", "reason", "row"}``). A quarantined file has its
    ``reason`` and no ``staged_key``. :meth:`to_dict` / :meth:`from_dict` carry
    it through XCom.
    """

    key: str
    etag: str
    size: int
    rows_read: int = 0
    documents: int = 0
    rejected: int = 0
    quarantined: bool = False
    reason: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    staged_key: str | None = None

    @classmethod
    def of(cls, ref: FileRef, data: bytes, result: FileDocuments | FileRejected) -> FileSummary:
        """The summary of one file's transform; logs rejections."""
        summary = cls(key=ref["key"], etag=ref["etag"], size=ref["size"])
        if isinstance(result, FileRejected):
            summary.quarantined, summary.reason = True, result.reason
            summary.rows_read = max(data.count(b"\n") - 1, 0)
            log.warning("quarantined %s: %s", summary.key, result.reason)
            return summary
        summary.rows_read, summary.documents, summary.rejected = result.rows_read, result.accepted, result.rejected
        summary.rows = [e.to_dict() for e in result.row_errors[: loads.MAX_ROWS_KEPT]]
        if result.row_errors:
            first = result.row_errors[0]
            log.warning("%s: %d of %d rows rejected, e.g. line %d: %s", summary.key, result.rejected,
                        result.rows_read, first.line, first.reason)
        return summary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileSummary:
        return cls(**data)


def transform_landed(landing: LandingZone, source: str, ref: FileRef) -> tuple[FileSummary, FileDocuments | None]:
    """Read and transform one landed file: ``(summary, documents or None when quarantined)``."""
    data = landing.get(ref["key"])
    try:
        result: FileDocuments | FileRejected = transform_file(source, data)
    except FileRejected as exc:
        result = exc
    return FileSummary.of(ref, data, result), None if isinstance(result, FileRejected) else result


def stage_files(landing: LandingZone, source: str, refs: Sequence[FileRef]) -> list[FileSummary]:
    """CSV -> JSON for a minute's files: write each file's documents to ``staged/`` (NDJSON).

    Returns one :class:`FileSummary` per file with its ``staged_key``; a
    quarantined file has none. Logs how many files were quarantined and rows rejected.
    """

    def one(ref: FileRef) -> FileSummary:
        summary, docs = transform_landed(landing, source, ref)
        if docs is not None:
            key = staged_key(ref["key"])
            landing.put(key, b"\n".join(docs.documents) + b"\n" if docs.documents else b"",
                        {"source-etag": ref["etag"], "documents": str(docs.accepted)})
            summary.staged_key = key
        return summary

    summaries = _map(one, refs)
    log.info(
        "%s: %d files, %d rows read, %d documents, %d rows rejected, %d files quarantined",
        source, len(summaries), sum(s.rows_read for s in summaries), sum(s.documents for s in summaries),
        sum(s.rejected for s in summaries), sum(s.quarantined for s in summaries),
    )
    return summaries


def read_staged(landing: LandingZone, source: str, summary: FileSummary) -> FileDocuments:
    """The documents :func:`stage_files` wrote for one file, with their ids and timestamps."""
    docs = FileDocuments(source, rows_read=summary.rows_read)
    if not summary.staged_key:
        return docs
    for line in landing.get(summary.staged_key).splitlines():
        if line:
            doc = orjson.loads(line)
            docs.documents.append(line)
            docs.ids.append(document_id(source, doc))
            docs.timestamps.append(doc[ES_TIME_FIELD])
    return docs


def load_staged(landing: LandingZone, sink: Sink, source: str, summaries: Sequence[FileSummary]) -> SinkResults:
    """Load the staged documents of a minute's files into one sink: raw key -> result dict."""
    staged = [s for s in summaries if s.staged_key]
    batches = list(zip([s.key for s in staged], _map(lambda s: read_staged(landing, source, s), staged), strict=True))
    results = sink.load(source, batches)
    total = sum(r.accepted for r in results.values())
    refused = sum(len(r.failed) for r in results.values())
    log.info("%s: %s accepted %d documents from %d files, refused %d", source, sink.name, total, len(batches), refused)
    return {key: r.to_dict() for key, r in results.items()}


def record_freshness(client: OpenTSDBClient, source: str, minute: datetime) -> None:
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
    landing: LandingZone, summaries: Sequence[FileSummary], sink_results: dict[str, SinkResults], *, run_id: str
) -> dict[str, int]:
    """Write a load record (and a dead-letter record when something was refused) per file.

    ``sink_results`` is sink name -> :func:`load_staged`'s result. Returns and
    logs the totals: files, rows_read, accepted, rejected, quarantined.
    """

    def one(summary: FileSummary) -> loads.LoadRecord:
        refused: dict[str, tuple[str, str]] = {}
        sinks = {}
        for name, by_key in sink_results.items():
            result = by_key.get(summary.key, {"accepted": 0, "rejected": 0, "failed": {}})
            sinks[name] = {"accepted": result["accepted"], "rejected": result["rejected"]}
            for doc_id, reason in (result.get("failed") or {}).items():
                refused.setdefault(doc_id, (name, reason))
        accepted = 0 if summary.quarantined else max(summary.documents - len(refused), 0)
        rejected = summary.rejected + len(refused) + (summary.rows_read if summary.quarantined else 0)
        record = loads.LoadRecord(
            key=summary.key, etag=summary.etag, size=summary.size, rows_read=summary.rows_read,
            accepted=accepted, rejected=rejected, quarantined=summary.quarantined, reason=summary.reason,
            sinks=sinks, run_id=run_id, loaded_at=now_text(),
        )
        deadletter = None
        if summary.quarantined or summary.rejected or refused:
            deadletter = FileDeadLetter(
                key=summary.key, etag=summary.etag, quarantined=summary.quarantined,
                reason=summary.reason, rejected_rows=summary.rejected, rows=list(summary.rows),
                documents=[{"id": i, "sink": s, "reason": r} for i, (s, r) in refused.items()],
                run_id=run_id, written_at=record.loaded_at,
            )
        loads.write_records(landing, record, deadletter)
        return record

    records = _map(one, summaries)
    totals = {
        "files": len(records),
        "rows_read": sum(r.rows_read for r in records),
        "accepted": sum(r.accepted for r in records),
        "rejected": sum(r.rejected for r in records),
        "quarantined": sum(int(r.quarantined) for r in records),
    }
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
) -> dict[str, int]:
    """Transform and load ``files`` in one process (no staging), then record them.

    The fast path for large ranges: reads run on :data:`IO_THREADS` threads,
    each sink gets every document of ``files`` in one streaming bulk load,
    the sinks at the same time (one thread each).
    Returns the totals of :func:`record_loads`.
    """
    refs = [file_ref(f) for f in files]
    datas = _map(lambda ref: landing.get(ref["key"]), refs)
    # One columnar pass over all files of the same header (transform_files batches them).
    results = transform_files(source, datas)
    summaries = [FileSummary.of(ref, data, result) for ref, data, result in zip(refs, datas, results, strict=True)]
    batches = [(s.key, r) for s, r in zip(summaries, results, strict=True) if not isinstance(r, FileRejected)]
    # The sinks load side by side: Elasticsearch's bulk requests and OpenTSDB's
    # puts wait on different servers, so a host-day costs the slower of the two, not their sum.
    loaded = _map(lambda sink: sink.load(source, batches), sinks)
    sink_results: dict[str, SinkResults] = {
        sink.name: {k: r.to_dict() for k, r in got.items()} for sink, got in zip(sinks, loaded, strict=True)
    }
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


def _map(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``[fn(i) for i in items]`` on :data:`IO_THREADS` threads (object-store calls wait on the network)."""
    todo = list(items)
    if len(todo) <= 1:
        return [fn(i) for i in todo]
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(todo))) as pool:
        return list(pool.map(fn, todo))


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


def add_totals(parts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Sum the numeric totals of several :func:`record_loads` results."""
    totals: dict[str, int] = {}
    for part in parts:
        for name, value in part.items():
            if isinstance(value, int):
                totals[name] = totals.get(name, 0) + value
    log.info("total %s", totals)
    return totals
