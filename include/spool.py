"""Merge-on-write minute files and the local spool of files waiting to land.

The restart rule of the landing zone (MERGE): there is exactly one file per
device per minute at ``{device}.csv``. A writer that finds a file already there
for that minute reads it, takes the union of its rows and the new ones, drops
duplicates by *row identity* (:func:`include.contract.row_identity`, the
identity documents are loaded under) and replaces the file. A
file therefore only ever grows: a collector restarted in the same minute, a
late reading for a closed minute, or a spooled upload retried after a crash all
end in the same file with every row once. Rows are written sorted by timestamp
and identity, so the same set of rows always gives the same bytes.

One writer per key is assumed (one host sampler per host, one MQTT collector
per client id): S3 has no compare-and-swap we rely on, so two writers racing on
the same key could lose the rows of one of them.

Every closed minute goes through the spool, a local directory of pending
files: :class:`Spool` stores an entry atomically (write, fsync, rename) and
:class:`Lander` lands them oldest first, merging with what is already in the
store, retrying with exponential backoff while the store is unavailable. The
collector never waits for the store; sampling goes on while files queue up.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from include.contract import RowIdentity, row_identity
from include.landing import LandingZone
from include.schemas import SCHEMAS, CsvSchema

log = logging.getLogger(__name__)

#: Object metadata every minute file carries (S3 user metadata, or the
#: ``.meta.json`` sidecar of the file store). S3 lower-cases metadata keys.
META_SCHEMA = "sluice-schema"
META_VERSION = "sluice-schema-version"
META_ROWS = "sluice-rows"

#: Dead-letter files: JSON lines, one rejected MQTT payload per line.
DEADLETTER = "deadletter"
DEADLETTER_VERSION = 1

def metadata(kind: str, rows: int) -> dict[str, str]:
    """Object metadata of a landed file of ``kind`` (a schema name or ``deadletter``)."""
    version = DEADLETTER_VERSION if kind == DEADLETTER else SCHEMAS[kind].version
    return {META_SCHEMA: kind, META_VERSION: str(version), META_ROWS: str(rows)}


def parse_csv(schema: CsvSchema, data: bytes) -> list[list[str]]:
    """Rows of a minute file (header checked and dropped).

    A file of an older schema version (fewer columns) is padded with empty
    fields, so its rows fit the current columns. Raises ValueError on a bad
    header or a row with the wrong number of fields.
    """
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    try:
        header = next(reader)
    except StopIteration:
        return []
    schema.check_header(header)
    width = len(schema.columns)
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"line {lineno} of a {schema.name} file has {len(row)} fields, header has {len(header)}")
        rows.append(row + [""] * (width - len(row)))
    return rows


def format_csv(schema: CsvSchema, rows: Iterable[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(schema.names)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def merge_csv(schema: CsvSchema, existing: bytes | None, new_rows: Iterable[list[str]]) -> tuple[bytes, int]:
    """Union of the rows of ``existing`` and ``new_rows`` by row identity.

    On equal identity the row already landed wins (a redelivered reading has
    the same value anyway). Returns the file bytes and the row count.
    """
    merged: dict[RowIdentity, list[str]] = {}
    for row in itertools.chain(parse_csv(schema, existing) if existing else (), new_rows):
        merged.setdefault(row_identity(schema.name, row), row)
    ordered = [merged[k] for k in sorted(merged)]
    return format_csv(schema, ordered), len(ordered)


def merge_lines(existing: bytes | None, new: bytes) -> tuple[bytes, int]:
    """Union of the lines of two JSON-lines files, a line being its own identity."""
    lines = dict.fromkeys(
        line for line in itertools.chain((existing or b"").splitlines(), new.splitlines()) if line.strip()
    )
    ordered = sorted(lines)
    return b"".join(line + b"\n" for line in ordered), len(ordered)


def merge_into(landing: LandingZone, key: str, kind: str, data: bytes) -> int:
    """Merge ``data`` (a CSV file with header, or JSON lines) into ``key``; return the row count.

    Reads the existing object, merges, writes the result with its metadata.
    Any error of the store propagates (the caller keeps the data and retries).
    """
    try:
        existing = landing.get(key)
    except KeyError:
        existing = None
    if kind == DEADLETTER:
        body, rows = merge_lines(existing, data)
    else:
        schema = SCHEMAS[kind]
        body, rows = merge_csv(schema, existing, parse_csv(schema, data))
    landing.put(key, body, metadata(kind, rows))
    return rows


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    key: str
    kind: str
    #: Wall-clock time the entry was spooled, seconds since the epoch.
    created: float

    def data(self) -> bytes:
        with self.path.open("rb") as fh:
            fh.readline()
            return fh.read()


class Spool:
    """A directory of files waiting to land, oldest first.

    Each entry is one file: a JSON header line (key, kind, creation time)
    followed by the data. Entries are written to a temporary name, fsynced and
    renamed, so an entry either exists whole or not at all, also after a crash.
    Names start with the creation time in nanoseconds and a sequence number,
    so sorting the names gives the order they were spooled in.
    """

    SUFFIX = ".spool"

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def add(self, key: str, kind: str, data: bytes) -> SpoolEntry:
        self.directory.mkdir(parents=True, exist_ok=True)
        created = self.clock()
        with self._lock:
            name = f"{int(created * 1e9):020d}-{os.getpid()}-{next(self._seq):09d}{self.SUFFIX}"
        path = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        header = json.dumps({"key": key, "kind": kind, "created": created}).encode() + b"\n"
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return SpoolEntry(path, key, kind, created)

    def entries(self) -> list[SpoolEntry]:
        """Every complete entry, oldest first (leftover temporary files are ignored)."""
        try:
            names = sorted(p for p in os.listdir(self.directory) if p.endswith(self.SUFFIX) and not p.startswith("."))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = self.directory / name
            try:
                with path.open("rb") as fh:
                    head = json.loads(fh.readline())
            except FileNotFoundError:
                continue
            found.append(SpoolEntry(path, head["key"], head["kind"], float(head["created"])))
        return found

    def oldest(self) -> SpoolEntry | None:
        entries = self.entries()
        return entries[0] if entries else None

    def remove(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)

    def depth(self) -> int:
        try:
            return sum(1 for p in os.listdir(self.directory) if p.endswith(self.SUFFIX) and not p.startswith("."))
        except FileNotFoundError:
            return 0


class LanderMetrics:
    """Hooks a Lander reports through; the default does nothing."""

    def landed(self, entry: SpoolEntry, rows: int) -> None: ...
    def failed(self, entry: SpoolEntry, exc: BaseException) -> None: ...


class Lander:
    """Lands spool entries oldest first, merging each into its key.

    ``run()`` is the loop of a background thread: it lands whatever is
    spooled, and when the store fails it waits ``retry_initial`` seconds,
    doubling up to ``retry_max``, before trying the same (oldest) entry again.
    ``kick()`` wakes it when a new entry was spooled; ``stop()`` ends it.
    ``wait`` is how it sleeps (an injected clock's wait, so tests can run the
    backoff fast); it must return early when the event is set.
    """

    def __init__(
        self,
        landing: LandingZone,
        spool: Spool,
        *,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        metrics: LanderMetrics | None = None,
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        if retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError(f"retry interval: need 0 < retry_initial ({retry_initial}) <= retry_max ({retry_max})")
        self.landing = landing
        self.spool = spool
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.metrics = metrics or LanderMetrics()
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.backoff = 0.0

    def land_one(self) -> bool | None:
        """Land the oldest entry. True: landed; False: the store failed; None: nothing spooled."""
        entry = self.spool.oldest()
        if entry is None:
            return None
        try:
            rows = merge_into(self.landing, entry.key, entry.kind, entry.data())
        except FileNotFoundError:
            return True  # another drain of this spool landed it meanwhile
        except Exception as exc:  # the store is down or refused: keep the entry, retry later
            log.warning("landing %s failed, %d file(s) spooled: %s", entry.key, self.spool.depth(), exc)
            self.metrics.failed(entry, exc)
            return False
        self.spool.remove(entry)
        self.metrics.landed(entry, rows)
        log.debug("landed %s (%d rows)", entry.key, rows)
        return True

    def drain(self) -> bool:
        """Land entries until the spool is empty (True) or the store fails once (False)."""
        while True:
            result = self.land_one()
            if result is None:
                return True
            if result is False:
                return False

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Thread body: land, back off on failure, sleep until kicked."""
        while not self._stop.is_set():
            self._wake.clear()
            if self.drain():
                self.backoff = 0.0
                # Poll now and then too: an entry spooled by a previous run needs no kick.
                self._wait(self._wake, 5.0)
            else:
                self.backoff = min(self.retry_max, self.backoff * 2 if self.backoff else self.retry_initial)
                # Only stop() cuts a backoff short; new entries wait their turn behind the oldest.
                self._wait(self._stop, self.backoff)
