"""Load and dead-letter records: what the DAGs loaded from each landed file, and what they refused.

Both live in the landing zone beside ``raw/``, one JSON object per landed file
version, under a key that mirrors the file's key plus its etag (the keys and
the dead-letter record's layout are in :mod:`include.contract`)::

    raw/{source}/date=D/hour=H/minute=M/{writer}.csv                       the landed file
    loaded/{source}/date=D/hour=H/minute=M/{writer}.csv@{etag}.json        its load record
    deadletter/file/{source}/date=D/hour=H/minute=M/{writer}.csv@{etag}.json  why rows/the file were refused
    staged/{source}/date=D/hour=H/minute=M/{writer}.ndjson                 its JSON documents (per-minute DAGs)

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
from datetime import datetime, timedelta

import orjson

from include.contract import (
    FILE,
    LOADED,
    RAW,
    ContractError,
    FileDeadLetter,
    day_prefix,
    deadletter_prefix,
    file_deadletter_key,
    floor_minute,
    loaded_key,
    parse_key,
    split_record_key,
)
from include.landing import LandingZone, ObjectInfo

log = logging.getLogger(__name__)

#: At most this many rejected rows are kept per dead-letter record (the count is always exact).
MAX_ROWS_KEPT = 1000


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
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)
    deadletter: str | None = None
    run_id: str = ""
    loaded_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> LoadRecord:
        return cls(**orjson.loads(data))


def write_records(landing: LandingZone, record: LoadRecord, deadletter: FileDeadLetter | None) -> None:
    """Write the dead-letter record (if any) first, then the load record that points at it."""
    if deadletter is not None:
        deadletter.rows = deadletter.rows[:MAX_ROWS_KEPT]
        key = file_deadletter_key(deadletter.key, deadletter.etag)
        landing.put(key, deadletter.to_json(), {"kind": "deadletter"})
        record.deadletter = key
    landing.put(loaded_key(record.key, record.etag), record.to_json(), {"kind": "loaded"})


def _day_prefixes(kind: str, source: str, start: datetime, end: datetime) -> Iterator[str]:
    day = floor_minute(start).replace(hour=0, minute=0)
    while day < end:
        yield day_prefix(kind, source, day)
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
    this lists ``deadletter/file/`` (far fewer objects than ``loaded/``) and
    reads only those records; anything else there is not a file record and is
    passed over.
    """
    out: dict[tuple[str, str], str] = {}
    for prefix in _day_prefixes(deadletter_prefix(FILE), source, start, end):
        for info in landing.list(prefix):
            try:
                raw_key, etag = split_record_key(info.key)
            except ContractError:
                continue
            if not _in_window(raw_key, start, end):
                continue
            record = FileDeadLetter.from_json(landing.get(info.key))
            if record.quarantined:
                out[(raw_key, etag)] = record.reason or "quarantined (no reason recorded)"
    return out
