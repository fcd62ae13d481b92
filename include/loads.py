"""Load and dead-letter records: what the DAGs loaded from each landed file, and what they refused.

Both live in the landing zone beside ``raw/``, one JSON object per landed file
version, under a key that mirrors the file's key plus its etag::

    raw/{source}/date=D/hour=H/minute=M/{device}.csv                 the landed file
    loaded/{source}/date=D/hour=H/minute=M/{device}.csv@{etag}.json  its load record
    deadletter/{source}/date=D/hour=H/minute=M/{device}.csv@{etag}.json  why rows/the file were refused
    staged/{source}/date=D/hour=H/minute=M/{device}.ndjson           its JSON documents (per-minute DAGs)

The etag in the key makes a record name one exact version of the file: a file
that grows after it was loaded (a collector restarted within the minute and
merged, a spooled upload replaced it) has no record for its new etag, which is
how the late-file sweep finds it with two listings and no reads. Rerunning a
minute rewrites the same record key, so records never multiply for one version.

A load record (:class:`LoadRecord`) is written after every configured sink has
taken the file's documents; a file whose load failed has no record and is
loaded again by the sweep. A quarantined file (bad header, no rows) gets a load
record with ``quarantined: true`` and its reason, plus a dead-letter record, so
it is never silently skipped and not retried until it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import orjson

from include.landing import LandingZone, ObjectInfo, floor_minute, minute_prefix, parse_key

log = logging.getLogger(__name__)

RAW = "raw/"
LOADED = "loaded/"
DEADLETTER = "deadletter/"
STAGED = "staged/"
#: At most this many rejected rows are kept per dead-letter record (the count is always exact).
MAX_ROWS_KEPT = 1000


def _mirror(kind: str, raw_key: str, suffix: str) -> str:
    if not raw_key.startswith(RAW):
        raise ValueError(f"{raw_key!r} is not a key under {RAW}")
    parse_key(raw_key)  # raises ValueError naming the key when it is not a minute file
    return kind + raw_key[len(RAW):] + suffix


def loaded_key(raw_key: str, etag: str) -> str:
    return _mirror(LOADED, raw_key, f"@{etag}.json")


def deadletter_key(raw_key: str, etag: str) -> str:
    return _mirror(DEADLETTER, raw_key, f"@{etag}.json")


def staged_key(raw_key: str) -> str:
    return _mirror(STAGED, raw_key.removesuffix(".csv"), ".ndjson")


def split_record_key(key: str) -> tuple[str, str]:
    """``(raw key, etag)`` of a ``loaded/`` or ``deadletter/`` record key."""
    for kind in (LOADED, DEADLETTER):
        if key.startswith(kind) and key.endswith(".json") and "@" in key:
            body, _, etag = key[len(kind):-len(".json")].rpartition("@")
            return RAW + body, etag
    raise ValueError(f"{key!r} is not a load or dead-letter record key")


@dataclass
class LoadRecord:
    """What was loaded from one version of one landed file.

    ``accepted`` counts documents every sink took; ``rejected`` counts rows the
    transform refused plus documents any sink refused; ``sinks`` has each
    sink's own ``{"accepted", "rejected"}``.
    """

    key: str
    etag: str
    size: int
    rows_read: int
    accepted: int
    rejected: int
    quarantined: bool = False
    reason: str | None = None
    sinks: dict[str, dict] = field(default_factory=dict)
    deadletter: str | None = None
    run_id: str = ""
    loaded_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> LoadRecord:
        return cls(**orjson.loads(data))


@dataclass
class DeadLetter:
    """Why a file, or some of its rows or documents, were refused."""

    key: str
    etag: str
    quarantined: bool
    reason: str | None
    rejected_rows: int
    rows: list[dict] = field(default_factory=list)  # {"line", "reason", "row"}
    documents: list[dict] = field(default_factory=list)  # {"id", "sink", "reason"}
    run_id: str = ""
    written_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        return cls(**orjson.loads(data))


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_records(landing: LandingZone, record: LoadRecord, deadletter: DeadLetter | None) -> None:
    """Write the dead-letter record (if any) first, then the load record that points at it."""
    if deadletter is not None:
        deadletter.rows = deadletter.rows[:MAX_ROWS_KEPT]
        key = deadletter_key(deadletter.key, deadletter.etag)
        landing.put(key, deadletter.to_json(), {"kind": "deadletter"})
        record.deadletter = key
    landing.put(loaded_key(record.key, record.etag), record.to_json(), {"kind": "loaded"})


def _day_prefixes(kind: str, source: str, start: datetime, end: datetime) -> Iterator[str]:
    day = floor_minute(start).replace(hour=0, minute=0)
    while day < end:
        yield kind + minute_prefix(source, day)[len(RAW):].split("hour=")[0]
        day += timedelta(days=1)


def _in_window(raw_key: str, start: datetime, end: datetime) -> bool:
    minute = parse_key(raw_key).minute
    return start <= minute < end


def list_landed(landing: LandingZone, source: str, start: datetime, end: datetime) -> list[ObjectInfo]:
    """Every ``.csv`` minute file of ``source`` whose minute is in [start, end), UTC."""
    out = []
    for prefix in _day_prefixes(RAW, source, start, end):
        for info in landing.list(prefix):
            if info.key.endswith(".csv") and _in_window(info.key, start, end):
                out.append(info)
    return out


def list_loaded(landing: LandingZone, source: str, start: datetime, end: datetime) -> set[tuple[str, str]]:
    """``(raw key, etag)`` of every load record of ``source`` for minutes in [start, end)."""
    out = set()
    for prefix in _day_prefixes(LOADED, source, start, end):
        for info in landing.list(prefix):
            raw_key, etag = split_record_key(info.key)
            if _in_window(raw_key, start, end):
                out.add((raw_key, etag))
    return out


def read_records(landing: LandingZone, keys: Iterable[str]) -> list[LoadRecord]:
    """The load records at ``keys`` (``loaded/…`` keys), in order."""
    return [LoadRecord.from_json(landing.get(k)) for k in keys]


def find_unloaded(landing: LandingZone, source: str, start: datetime, end: datetime) -> list[ObjectInfo]:
    """Files landed for minutes in [start, end) with no load record for their current etag.

    These are late files (landed after their minute's run finished), files that
    grew after they were loaded, and files whose load failed. Two listings per
    day and source; no object is read.
    """
    loaded = list_loaded(landing, source, start, end)
    return [f for f in list_landed(landing, source, start, end) if (f.key, f.etag) not in loaded]


def list_quarantined(landing: LandingZone, source: str, start: datetime, end: datetime) -> dict[tuple[str, str], str]:
    """``(raw key, etag) -> reason`` of every quarantined file of ``source`` for minutes in [start, end).

    A quarantined file always has a dead-letter record (see the module doc), so
    this lists ``deadletter/`` (far fewer objects than ``loaded/``) and reads
    only those records. Other objects there (a collector's ``.jsonl`` of refused
    payloads) are not file records and are passed over.
    """
    out: dict[tuple[str, str], str] = {}
    for prefix in _day_prefixes(DEADLETTER, source, start, end):
        for info in landing.list(prefix):
            try:
                raw_key, etag = split_record_key(info.key)
            except ValueError:
                continue
            if not _in_window(raw_key, start, end):
                continue
            record = DeadLetter.from_json(landing.get(info.key))
            if record.quarantined:
                out[(raw_key, etag)] = record.reason or "quarantined (no reason recorded)"
    return out
