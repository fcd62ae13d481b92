"""Merge-on-write minute files and the local spool of files waiting to land.

The restart rule of the landing zone (MERGE): there is exactly one file per
*writer* per minute: ``raw/sensor/…/minute=MM/{collector_id}.csv`` holds the
rows of every device one MQTT collector instance received for that minute (the
sensor CSV is long format with a device column), ``raw/host/…/{host}.csv`` the
rows of one host sampler. A writer that finds its file already there for that
minute reads it, takes the union of its rows and the new ones, drops
duplicates by *row identity* (:func:`include.contract.row_identity`, the
identity documents are loaded under) and replaces the file. A
file therefore only ever grows: a collector restarted in the same minute, a
late reading for a closed minute, or a spooled upload retried after a crash all
end in the same file with every row once. Rows are written sorted by timestamp
and identity, so the same set of rows always gives the same bytes.

One writer per key, by construction: the key is named after the writer (a
fixed MQTT client id, a host name), so two collectors never write the same
key, and readings of one device that reach two collectors land in two files
whose union is the minute (readers list the minute prefix).

Every closed minute goes through the spool, a local directory of pending
files: :class:`Spool` stores an entry atomically (write, fsync, rename) and
:class:`Lander` lands them oldest first, merging with what is already in the
store, retrying with exponential backoff while the store is unavailable. The
collector never waits for the store; sampling goes on while files queue up.

The lander tells a *bad entry* from a *store outage*. An entry whose header
or data cannot be parsed, or whose key holds an object that is not a file of
its kind, can never land: it is moved to ``spool/quarantine/`` with a
``.reason`` file, counted, and the entries behind it land. Only a failing call
to the store (get, head, put) is an outage: the same entry is retried with
backoff. A *manifest* entry (kind ``manifest``) lands after the data file of
its minute and writes that minute's :class:`include.manifests.MinuteManifest`
with the rows per device of the merged file.
"""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import json
import logging
import operator
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path

from include.contract import internal_reason, row_identity
from include.landing import LandingZone
from include.manifests import ManifestError, MinuteManifest
from include.schemas import SCHEMAS, SENSOR, SENSOR_SCHEMA, CsvSchema

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Object metadata every minute file carries (S3 user metadata, or the
#: ``.meta.json`` sidecar of the file store). S3 lower-cases metadata keys.
META_SCHEMA = "sluice-schema"
META_VERSION = "sluice-schema-version"
META_ROWS = "sluice-rows"

#: Dead-letter files: JSON lines, one rejected MQTT payload per line.
DEADLETTER = "deadletter"
DEADLETTER_VERSION = 1
#: A spool entry that writes a minute manifest once the minute's data file landed.
MANIFEST = "manifest"
#: Object metadata of a manifest: the spool entries whose tallies it already holds
#: (so an entry landed twice, after a crash between put and remove, counts once).
META_TALLIES = "sluice-tallies"
_TALLIES_KEPT = 32
QUARANTINE = "quarantine"

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
    ordered = merge_rows(schema, parse_csv(schema, existing) if existing else (), new_rows)
    return format_csv(schema, ordered), len(ordered)


def merge_rows(schema: CsvSchema, existing: Iterable[list[str]], new_rows: Iterable[list[str]]) -> list[list[str]]:
    """Union by row identity (the first row of an identity wins), sorted by identity."""
    rows = list(itertools.chain(existing, new_rows))
    if schema.name == SENSOR and _canonical_sensor_rows(rows):
        # Identity is then the row's own (timestamp, device, metric, tags): keyed and
        # sorted in C; reversed so that, as below, the first row of an identity wins.
        merged = dict(zip(map(_SENSOR_KEY, reversed(rows)), reversed(rows), strict=True))
        return [merged[k] for k in sorted(merged)]
    keyed: dict[tuple[str, ...], list[str]] = {}
    for row in rows:
        keyed.setdefault(row_identity(schema.name, row), row)
    return [keyed[k] for k in sorted(keyed)]


def canonical_file(schema: CsvSchema, rows: Iterable[list[str]]) -> tuple[bytes, Counter[str]]:
    """A minute file of ``rows`` as the merge writes it (deduplicated, sorted), and its rows per device.

    For rows whose fields need no CSV quoting (the journal split checked
    them), so the fast join writes the same bytes as the csv module.
    """
    ordered = merge_rows(schema, (), rows)
    column = schema.names.index("device" if schema.name == SENSOR else "host")
    lines = "\n".join(map(",".join, ordered))
    body = (",".join(schema.names) + "\n" + lines + ("\n" if ordered else "")).encode()
    return body, Counter(map(operator.itemgetter(column), ordered))


_DEVICE, _METRIC = SENSOR_SCHEMA.names.index("device"), SENSOR_SCHEMA.names.index("metric")
_TS, _TAGS = SENSOR_SCHEMA.names.index("timestamp"), SENSOR_SCHEMA.names.index("tags")


_SENSOR_KEY = operator.itemgetter(_TS, _DEVICE, _METRIC, _TAGS)


def _canonical_sensor_rows(rows: list[list[str]]) -> bool:
    """Whether every row's timestamp and tags are already in the contract's form (see below)."""
    return canonical_sensor_fields(set(map(operator.itemgetter(_TS), rows)), set(map(operator.itemgetter(_TAGS), rows)))


def canonical_sensor_fields(timestamps: Iterable[str], tagsets: Iterable[str]) -> bool:
    """Whether each distinct timestamp and tag text of some sensor rows is already in the contract's form.

    Then :func:`include.contract.row_identity` of a row is its own
    (timestamp, device, metric, tags): the identity normalises only those two
    fields, each on its own, so the merge asks the contract once per distinct
    timestamp (some 60 a minute) and once per distinct tag set instead of
    once per row (900,000 rows a minute at 5,000 devices).
    """
    blank = [""] * len(SENSOR_SCHEMA.names)

    def with_field(index: int, text: str) -> list[str]:
        row = list(blank)
        row[index] = text
        return row

    for ts in timestamps:
        if row_identity(SENSOR, with_field(_TS, ts)).timestamp != ts:
            return False
    for tags in tagsets:
        if row_identity(SENSOR, with_field(_TAGS, tags)).tags != tags:
            return False
    return True


def merge_lines(existing: bytes | None, new: bytes) -> tuple[bytes, int]:
    """Union of the lines of two JSON-lines files, a line being its own identity."""
    lines = dict.fromkeys(
        line for line in itertools.chain((existing or b"").splitlines(), new.splitlines()) if line.strip()
    )
    ordered = sorted(lines)
    return b"".join(line + b"\n" for line in ordered), len(ordered)


class BadEntry(ValueError):
    """A spool entry that can never land as it is; the message says why."""


def _prepare(kind: str, data: bytes, *, canonical: bool = False) -> Any:
    """Parse an entry's data before the store is touched; BadEntry when it cannot be used.

    A *canonical* entry (written by a collector's split: checked, deduplicated,
    sorted) is only checked for its header here; its rows are parsed only
    when there is a landed file to merge with.
    """
    try:
        if canonical and kind in SCHEMAS:
            header = (",".join(SCHEMAS[kind].names) + "\n").encode()
            if not data.startswith(header) or not data.endswith(b"\n"):
                raise ValueError("a canonical entry must start with the schema header and end with a newline")
            return _Canonical(data)
        if kind == DEADLETTER:
            return data
        if kind == MANIFEST:
            spec = json.loads(data)
            if not isinstance(spec, dict) or not isinstance(spec.get("data_key"), str):
                raise ValueError("a manifest entry must be a JSON object with data_key")
            return spec
        if kind not in SCHEMAS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join([*SCHEMAS, DEADLETTER, MANIFEST])}")
        return parse_csv(SCHEMAS[kind], data)
    except Exception as exc:  # any parse failure means this entry cannot land, whatever it was
        raise BadEntry(f"the spooled {kind} file cannot be read: {type(exc).__name__}: {exc}") from None


def _get(landing: LandingZone, key: str) -> bytes | None:
    """The object at ``key``, None when there is none; store errors propagate (an outage)."""
    try:
        return landing.get(key)
    except KeyError:
        return None


def merge_into(landing: LandingZone, key: str, kind: str, data: bytes) -> int:
    """Merge ``data`` (a CSV file with header, or JSON lines) into ``key``; return the row count.

    Raises :class:`BadEntry` when ``data`` or the landed object cannot be
    parsed; any error of the store propagates (the caller keeps the data and
    retries).
    """
    prepared = _prepare(kind, data)
    existing = _get(landing, key)
    body, rows, _ = _merge(kind, key, prepared, existing)
    landing.put(key, body, metadata(kind, rows))
    return rows


class _Canonical(bytes):
    """Data of a canonical spool entry (see :func:`_prepare`)."""


def _merge(kind: str, key: str, prepared: Any, existing: bytes | None) -> tuple[bytes, int, Counter[str] | None]:
    """(file bytes, rows, rows per device or None) of the union; BadEntry when ``existing`` is not of ``kind``."""
    if isinstance(prepared, _Canonical):
        if existing is None:  # the usual case: the minute's first landing goes as it is
            return bytes(prepared), prepared.count(b"\n") - 1, None
        try:
            prepared = parse_csv(SCHEMAS[kind], prepared)
        except Exception as exc:
            raise BadEntry(f"the spooled {kind} file cannot be read: {type(exc).__name__}: {exc}") from None
    if kind == DEADLETTER:
        body, rows = merge_lines(existing, prepared)
        return body, rows, None
    schema = SCHEMAS[kind]
    try:
        landed = parse_csv(schema, existing) if existing else []
    except Exception as exc:
        raise BadEntry(f"the object already at {key} is not a {kind} file ({exc}); "
                       "move it away and the entry lands at the next start") from None
    ordered = merge_rows(schema, landed, prepared)
    column = schema.names.index("device" if kind == SENSOR else "host")
    return format_csv(schema, ordered), len(ordered), Counter(row[column] for row in ordered)


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    key: str
    kind: str
    #: Wall-clock time the entry was spooled, seconds since the epoch.
    created: float
    #: Written by a collector's split: checked, deduplicated and sorted (see ``_prepare``).
    canonical: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    def data(self) -> bytes:
        with self.path.open("rb") as fh:
            fh.readline()
            return fh.read()


class Spool:
    """A directory of files waiting to land, oldest first.

    Each entry is one file: a JSON header line (key, kind, creation time)
    followed by the data. Entries are written to a temporary name, fsynced and
    renamed, so an entry either exists whole or not at all, also after a crash
    (a failed write, ENOSPC included, removes the temporary file). Names start
    with the creation time in nanoseconds and a sequence number, so sorting the
    names gives the order they were spooled in.

    The directory is listed once; after that an in-memory index of names and
    sizes follows :meth:`add` and :meth:`remove`, so :meth:`oldest`,
    :meth:`depth` and :meth:`size` cost no directory scan however deep the
    spool is. One process owns a spool directory.
    """

    SUFFIX = ".spool"

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._names: list[str] | None = None
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._head: tuple[str, SpoolEntry] | None = None

    def _index(self) -> list[str]:
        # Called with the lock held.
        if self._names is None:
            try:
                found = [p for p in os.listdir(self.directory) if p.endswith(self.SUFFIX) and not p.startswith(".")]
            except FileNotFoundError:
                found = []
            for name in found:
                try:
                    self._sizes[name] = (self.directory / name).stat().st_size
                except FileNotFoundError:
                    continue
            self._names = sorted(self._sizes)
            self._bytes = sum(self._sizes.values())
        return self._names

    def add(self, key: str, kind: str, data: bytes, *, canonical: bool = False) -> SpoolEntry:
        self.directory.mkdir(parents=True, exist_ok=True)
        created = self.clock()
        with self._lock:
            name = f"{int(created * 1e9):020d}-{os.getpid()}-{next(self._seq):09d}{self.SUFFIX}"
        path = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        head = {"key": key, "kind": kind, "created": created}
        if canonical:
            head["canonical"] = True
        header = json.dumps(head).encode() + b"\n"
        try:
            with open(tmp, "wb") as fh:
                fh.write(header)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave half an entry behind (ENOSPC, a short write)
            raise
        with self._lock:
            names = self._index()
            if name not in self._sizes:
                self._sizes[name] = len(header) + len(data)
                self._bytes += self._sizes[name]
                if not names or name > names[-1]:
                    names.append(name)
                else:  # the wall clock stepped back: keep the index sorted
                    bisect.insort(names, name)
        return SpoolEntry(path, key, kind, created, canonical)

    def _read_head(self, name: str) -> SpoolEntry:
        path = self.directory / name
        with path.open("rb") as fh:
            line = fh.readline()
        try:
            head = json.loads(line)
            return SpoolEntry(path, str(head["key"]), str(head["kind"]), float(head["created"]),
                              bool(head.get("canonical", False)))
        except Exception as exc:
            raise BadEntry(f"spool entry header {line[:200]!r} is not valid: {type(exc).__name__}: {exc}") from None

    def entries(self) -> list[SpoolEntry]:
        """Every complete entry, oldest first (leftover temporary files and bad headers are skipped)."""
        with self._lock:
            names = list(self._index())
        found = []
        for name in names:
            try:
                found.append(self._read_head(name))
            except (FileNotFoundError, BadEntry):
                continue
        return found

    def oldest(self) -> SpoolEntry | None:
        """The oldest entry; one whose header is unreadable is quarantined on the way."""
        while True:
            with self._lock:
                names = self._index()
                if not names:
                    return None
                name = names[0]
                if self._head is not None and self._head[0] == name:
                    return self._head[1]
            try:
                entry = self._read_head(name)
            except FileNotFoundError:
                self._forget(name)
                continue
            except BadEntry as exc:
                self._quarantine_name(name, str(exc))
                continue
            with self._lock:
                self._head = (name, entry)
            return entry

    def _forget(self, name: str) -> None:
        with self._lock:
            names = self._index()
            size = self._sizes.pop(name, None)
            if size is not None:
                self._bytes -= size
                index = bisect.bisect_left(names, name)
                if index < len(names) and names[index] == name:
                    del names[index]
            if self._head is not None and self._head[0] == name:
                self._head = None

    def remove(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
        self._forget(entry.name)

    def _quarantine_name(self, name: str, reason: str) -> Path:
        folder = self.directory / QUARANTINE
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.directory / name, folder / name)
            (folder / (name + ".reason")).write_text(reason + "\n")
        except FileNotFoundError:
            pass
        self._forget(name)
        log.error("spool entry %s quarantined in %s: %s", name, folder, reason)
        return folder / name

    def quarantine(self, entry: SpoolEntry, reason: str) -> Path:
        """Move an entry that can never land to ``quarantine/`` with its reason; return its new path."""
        return self._quarantine_name(entry.name, reason)

    def quarantined(self) -> list[tuple[str, str]]:
        """(entry name, reason) of every quarantined entry."""
        folder = self.directory / QUARANTINE
        if not folder.is_dir():
            return []
        return sorted((p.name.removesuffix(".reason"), p.read_text().strip())
                      for p in folder.iterdir() if p.name.endswith(".reason"))

    def depth(self) -> int:
        with self._lock:
            return len(self._index())

    def size(self) -> int:
        """Bytes held by the spooled entries."""
        with self._lock:
            self._index()
            return self._bytes


class LanderMetrics:
    """Hooks a Lander reports through; the default does nothing."""

    def landed(self, entry: SpoolEntry, rows: int) -> None: ...
    def failed(self, entry: SpoolEntry, exc: BaseException) -> None: ...
    def quarantined(self, entry: SpoolEntry, reason: str) -> None: ...


class Lander:
    """Lands spool entries oldest first, merging each into its key.

    ``run()`` is the loop of a background thread: it lands whatever is
    spooled, and when the store fails it waits ``retry_initial`` seconds,
    doubling up to ``retry_max``, before trying the same (oldest) entry again.
    An entry that can never land is quarantined instead (see the module
    docstring) and the next one is tried at once. ``kick()`` wakes it when a
    new entry was spooled; ``stop()`` ends it. ``wait`` is how it sleeps (an
    injected clock's wait, so tests can run the backoff fast); it must return
    early when the event is set.
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
        #: Rows per device of the files landed last, for the manifests that follow them.
        self._counts: OrderedDict[str, Counter[str] | None] = OrderedDict()

    def land_one(self) -> bool | None:
        """Land the oldest entry. True: landed or quarantined; False: the store failed; None: nothing spooled."""
        entry = self.spool.oldest()
        if entry is None:
            return None
        try:
            prepared = _prepare(entry.kind, entry.data(), canonical=entry.canonical)
            if entry.kind == MANIFEST:
                rows = self._land_manifest(entry, prepared)
            else:
                rows = self._land_data(entry, prepared)
        except FileNotFoundError:
            self.spool.remove(entry)  # another drain of this spool landed it meanwhile
            return True
        except BadEntry as exc:
            self._quarantine(entry, f"bad entry: {exc}")
            return True
        except _StoreError as exc:  # the store is down or refused: keep the entry, retry later
            log.warning("landing %s failed, %d file(s) spooled: %s", entry.key, self.spool.depth(), exc.__cause__)
            self.metrics.failed(entry, exc.__cause__ or exc)
            return False
        except Exception as exc:  # a bug in the merge: never block the entries queued behind this one
            self._quarantine(entry, internal_reason(exc))
            return True
        self.spool.remove(entry)
        try:
            self.metrics.landed(entry, rows)
        except Exception:  # a reporting hook must not stop the landing
            log.exception("metrics hook failed after landing %s", entry.key)
        log.debug("landed %s (%d rows)", entry.key, rows)
        return True

    def _quarantine(self, entry: SpoolEntry, reason: str) -> None:
        path = self.spool.quarantine(entry, reason)
        self.metrics.quarantined(entry, reason)
        log.error("%s could not land and is kept in %s: %s", entry.key, path, reason)

    def _store(self, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except KeyError:
            raise
        except Exception as exc:
            raise _StoreError() from exc

    def _land_data(self, entry: SpoolEntry, prepared: Any) -> int:
        existing = self._store(_get, self.landing, entry.key)
        body, rows, counts = _merge(entry.kind, entry.key, prepared, existing)
        self._store(self.landing.put, entry.key, body, metadata(entry.kind, rows))
        # None: the entry landed as it is, and its manifest entry carries its rows per device.
        self._counts[entry.key] = counts
        while len(self._counts) > 64:
            self._counts.popitem(last=False)
        return rows

    def _land_manifest(self, entry: SpoolEntry, spec: dict[str, Any]) -> int:
        data_key = spec["data_key"]
        counts = self._counts.get(data_key)
        if counts is None and data_key in self._counts:
            counts = Counter({str(k): int(v) for k, v in (spec.get("rows") or {}).items()})
        if counts is None:  # landed by a previous run, or quarantined: count what the store holds
            landed = self._store(_get, self.landing, data_key)
            counts = Counter[str]()
            if landed is not None:
                kind = spec.get("kind", SENSOR)
                try:
                    _, _, counts = _merge(kind, data_key, [], landed)
                except BadEntry as exc:
                    log.warning("manifest of %s counts no rows: %s", data_key, exc)
            counts = counts if counts is not None else Counter[str]()
        try:
            manifest = MinuteManifest(
                source=spec["source"], writer=spec["writer"],
                minute=datetime.fromtimestamp(int(spec["minute"]), timezone.utc),
                rows=dict(counts), received=0, closed_at=datetime.fromtimestamp(self.spool.clock(), timezone.utc),
            )
            key = manifest.key
        except Exception as exc:
            raise BadEntry(f"manifest entry {spec!r:.300}: {type(exc).__name__}: {exc}") from None
        info = self._store(self.landing.head, key)
        applied = [t for t in (info.metadata.get(META_TALLIES, "") if info else "").split(",") if t]
        old_bytes = self._store(_get, self.landing, key) if info is not None else None
        received, deadletters = 0, Counter[str]()
        if old_bytes is not None:
            try:
                old = MinuteManifest.from_json(old_bytes, key)
                received, deadletters = old.received, Counter(old.deadletters)
            except ManifestError as exc:
                log.warning("replacing an unreadable manifest: %s", exc)
                applied = []
        tally = entry.name
        if tally not in applied:
            received += int(spec.get("received") or 0)
            deadletters.update({str(k): int(v) for k, v in (spec.get("deadletters") or {}).items()})
            applied = [*applied, tally][-_TALLIES_KEPT:]
        if spec.get("received_is_rows"):
            received = sum(counts.values())
        manifest = MinuteManifest(source=manifest.source, writer=manifest.writer, minute=manifest.minute,
                                  rows=manifest.rows, received=received, deadletters=dict(deadletters),
                                  closed_at=manifest.closed_at)
        self._store(self.landing.put, key, manifest.to_json(),
                    {META_SCHEMA: MANIFEST, META_TALLIES: ",".join(applied)})
        return manifest.total_rows

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
            try:
                drained = self.drain()
            except Exception:  # never let the lander thread end: log it, back off, try again
                log.exception("landing failed unexpectedly; retrying")
                drained = False
            if drained:
                self.backoff = 0.0
                # Poll now and then too: an entry spooled by a previous run needs no kick.
                self._wait(self._wake, 5.0)
            else:
                self.backoff = min(self.retry_max, self.backoff * 2 if self.backoff else self.retry_initial)
                # Only stop() cuts a backoff short; new entries wait their turn behind the oldest.
                self._wait(self._stop, self.backoff)


class _StoreError(Exception):
    """A call to the store failed (its cause is the store's exception): retry later."""


def manifest_entry(source: str, writer: str, minute: int, data_key: str, kind: str, *,
                   received: int = 0, deadletters: dict[str, int] | None = None,
                   received_is_rows: bool = False, rows: dict[str, int] | None = None) -> tuple[str, str, bytes]:
    """The spool entry ``(key, kind, data)`` that writes a minute's manifest after ``data_key`` landed.

    ``received`` and ``deadletters`` are this entry's tally (added once to what
    the landed manifest holds); with ``received_is_rows`` the payload count is
    the merged row count (a host sampler: one sample, one row). ``rows`` are the
    rows per device of the data entry, used when it landed as it is (no file to
    merge with); otherwise the lander counts the merged file.
    """
    spec = {"source": source, "writer": writer, "minute": minute, "data_key": data_key, "kind": kind,
            "received": received, "deadletters": deadletters or {}, "received_is_rows": received_is_rows,
            "rows": rows or {}}
    return data_key, MANIFEST, json.dumps(spec).encode()
