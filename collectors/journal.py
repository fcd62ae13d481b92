"""The minute buffer of a collector: a journal on local disk, then the spool.

Readings are never held only in memory. Each reading is appended to the
journal file of its minute (``{stream}.{minute_epoch}.jrnl``) and the journal
is flushed to the operating system before the reading counts as received: the
MQTT collector acknowledges a message to the broker only after that flush. A
process killed with ``kill -9`` therefore loses only what was appended but not
yet flushed (at most the flush interval, a few milliseconds, and for MQTT
nothing: those messages were not acknowledged and the broker delivers them
again). The page cache survives a killed process; surviving a power cut needs
the fsync, done every ``fsync_interval`` seconds (0: at every flush).

A journal record is one JSON line (:func:`encode_record`): a row is a JSON
array of its fields, device included, so the device travels *beside* the row
and nothing re-parses row text to find it, and JSON escapes any newline a
field may hold, so a record is always exactly one line. A flush that fails
half-way (ENOSPC, a short write) truncates the file back to where that flush
started, so a journal never holds a torn line; the records stay buffered for
the next flush.

Closing a minute renames its journal files to ``….closing`` (so readings that
arrive late for that minute start a fresh file instead of being lost with the
old one), hands every stream of the minute to the collector's splitter, which
turns them into spool entries (landing files, dead letters, the manifest), and
deletes them.

A collector may also keep a *memo* of its open minutes (:class:`MinuteMemo`):
the same records, already in the form the minute file needs, updated under
the journal's lock together with each append. A minute whose sealed files were
all written by this run then closes from the memo (a sort and a join) instead
of re-reading and decoding the journal, which at 5,000 devices is 900,000
records and most of the close time. The journal stays the source of truth:
whenever the memo cannot vouch for exactly the sealed files (a previous run's
journal, a close that failed half-way, a memo update that raised) the minute
is split from the journal as before. The splitter is total: a record it cannot use becomes a dead
letter with its reason. Should it raise anyway, the minute's sealed files are
moved to ``journal/quarantine/`` with a ``.reason`` file beside them, counted
and logged, and every other minute still lands: a poisoned ``.closing`` file
never crash-loops the collector at start.

On start, every journal file left by a previous run is closed the same way:
what was journalled before a crash lands, merged with whatever that run
landed already (include/spool.py explains the merge rule), so nothing is lost
and nothing is doubled.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from include.contract import INTERNAL, check_device
from include.landing import LandingZone
from include.schemas import SCHEMAS
from include.spool import Lander, LanderMetrics, Spool

log = logging.getLogger(__name__)

#: (minute_epoch, {stream: journalled bytes}) -> [(landing key, kind, file bytes)], spooled in that order.
#: Data files (kind a schema name) must be canonical: checked, deduplicated and sorted
#: (include.spool.canonical_file), so the lander can land them as they are.
Splitter = Callable[[int, dict[str, bytes]], list[tuple[str, str, bytes]]]


class MinuteMemo(Protocol):
    """What a collector keeps in memory of its open minutes, beside the journal (never instead of it).

    The collector updates it in the ``then`` of :meth:`MinuteStore.append_many`,
    under the journal's lock, so a minute's memo and its journal files always
    hold the same records at the instant the files are sealed.
    """

    def take(self, minute: int) -> Any | None:
        """Remove and return what is held of ``minute`` (None: nothing usable); runs under the journal lock."""

    def entries(self, minute: int, taken: Any) -> list[tuple[str, str, bytes]] | None:
        """The minute's spool entries from ``taken``, the same the splitter makes of its journal; None: use the journal."""

JOURNAL_SUFFIX = ".jrnl"
CLOSING_SUFFIX = ".closing"
QUARANTINE = "quarantine"

#: Characters a landed CSV field may not hold: they would need quoting or split the row.
#: Lone surrogates are unsafe too: they have no UTF-8 form, so the row could not be written.
_UNSAFE_FIELD = re.compile('[\x00-\x1f\x7f",\ud800-\udfff]')


def encode_record(fields: Iterable[str]) -> bytes:
    """One journal line: the fields as a JSON array (newlines in a field stay escaped)."""
    return orjson.dumps(list(fields)) + b"\n"


def row_problem(fields: list[str]) -> str | None:
    """Why ``fields`` cannot be one landed CSV row (a field with a comma, quote or control character), else None."""
    for field in fields:
        if _UNSAFE_FIELD.search(field):
            return (f"{field[:100]!r} holds a comma, quote, control character or lone surrogate "
                    "(it would split, quote or break the CSV row)")
    return None


def rows_safe(rows: Iterable[list[str]]) -> bool:
    """True when no field of ``rows`` needs a look from :func:`row_problem` (one regex pass over them all)."""
    return _UNSAFE_FIELD.search("".join(["".join(row) for row in rows])) is None


def decode_rows(data: bytes, width: int, *, device_column: int | None = None) -> tuple[list[list[str]], list[tuple[int, str, bytes]]]:
    """The rows of journalled records, and ``(line number, reason, raw line)`` for each unusable one.

    Never raises. A record is usable when it is a JSON array of ``width``
    strings none of which needs CSV quoting (no comma, quote or control
    character) and, with ``device_column``, whose device is a valid device id.
    A torn last line (a crash mid-write) is reported like any other bad line.
    """
    fast = _decode_clean(data, width, device_column)
    if fast is not None:
        return fast, []
    rows: list[list[str]] = []
    bad: list[tuple[int, str, bytes]] = []
    devices_ok: set[str] = set()
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append((lineno, f"{INTERNAL}: journal line is not a JSON record ({exc})", line))
            continue
        if not isinstance(fields, list) or len(fields) != width or not all(isinstance(f, str) for f in fields):
            bad.append((lineno, f"{INTERNAL}: journal record is not an array of {width} strings", line))
            continue
        if _UNSAFE_FIELD.search("".join(fields)):
            bad.append((lineno, f"{INTERNAL}: {row_problem(fields)}", line))
            continue
        if device_column is not None:
            device = fields[device_column]
            if device not in devices_ok:
                try:
                    check_device(device)
                except ValueError as exc:
                    bad.append((lineno, f"{INTERNAL}: {exc}", line))
                    continue
                devices_ok.add(device)
        rows.append(fields)
    return rows, bad


def _decode_clean(data: bytes, width: int, device_column: int | None) -> list[list[str]] | None:
    """The rows of a journal with no bad record, in a few C-speed passes; None when any record needs a look.

    orjson escapes every quote, backslash and control character in a string,
    so journal bytes without a backslash or DEL hold no unsafe field, and
    every ``"`` delimits a string: then a line is an array of ``width``
    strings without a comma inside exactly when the data holds ``2 * width``
    quotes and ``width - 1`` ``","`` per line and every line is ``["…"]``.
    """
    body = data.rstrip(b"\n")
    n = body.count(b"\n") + 1
    if not body or b"\\" in data or b"\x7f" in data or b"\r" in data or b"\n\n" in body:
        return None
    if (data.count(b'"') != 2 * width * n or data.count(b'","') != (width - 1) * n
            or data.count(b",") != (width - 1) * n or not body.startswith(b'["') or not body.endswith(b'"]')
            or body.count(b'"]\n["') != n - 1):
        return None
    try:
        rows = orjson.loads(b"[" + body.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    if device_column is not None:
        for device in {row[device_column] for row in rows}:
            try:
                check_device(device)
            except ValueError:
                return None
    return rows


class Journal:
    """Append-only files under ``directory``, buffered in memory until :meth:`flush`.

    Thread-safe: one thread may append while another flushes. Every append
    gets a sequence number; :attr:`flushed_seq` is the highest one written to
    the operating system, which is what acknowledgements wait for.
    :meth:`size` is the bytes held (files on disk plus the buffer), which the
    collector compares with its cap.
    """

    def __init__(self, directory: Path, *, fsync_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, list[bytes]] = {}
        self._fds: dict[str, int] = {}
        self._seq = 0
        self.flushed_seq = 0
        self._last_fsync = clock()
        self._dirty: set[int] = set()
        self._closing = itertools.count()
        # What a previous run left counts against the cap too (the quarantine folder does not).
        self._bytes = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def size(self) -> int:
        """Bytes journalled and not yet discarded (on disk or buffered)."""
        return self._bytes

    def append(self, name: str, data: bytes) -> int:
        with self._lock:
            self._pending.setdefault(name, []).append(data)
            self._bytes += len(data)
            self._seq += 1
            return self._seq

    def append_many(self, items: Iterable[tuple[str, bytes]], *, then: Callable[[], None] | None = None) -> int:
        """Append several ``(name, data)`` under one lock and one sequence number (one message's records).

        ``then`` runs under the same lock once they are appended (a collector's
        memo of the records, see :class:`MinuteMemo`): :meth:`seal_all` can then
        never fall between the records and the memo.
        """
        with self._lock:
            pending = self._pending
            for name, data in items:
                pending.setdefault(name, []).append(data)
                self._bytes += len(data)
            self._seq += 1
            if then is not None:
                then()
            return self._seq

    def flush(self) -> int:
        """Write everything appended so far to the files; return the flushed sequence number.

        Raises OSError when the disk refuses (full, read-only): the caller
        must then not acknowledge anything. Nothing is lost: what could not be
        written stays buffered, and the file is cut back to its last whole line.
        """
        with self._lock:
            self._write_pending()
            if self._dirty and (self.fsync_interval == 0 or self._clock() - self._last_fsync >= self.fsync_interval):
                for fd in self._dirty:
                    os.fsync(fd)
                self._dirty.clear()
                self._last_fsync = self._clock()
            self.flushed_seq = self._seq
            return self._seq

    def _write_pending(self) -> None:
        for name in list(self._pending):
            fd = self._fds.get(name)
            if fd is None:
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._fds[name] = fd
            data = b"".join(self._pending[name])
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                # Cut the partial write off: the file ends on a whole record, and
                # the buffer keeps every record of this flush for the next one.
                os.ftruncate(fd, start)
                self._pending[name] = [data]
                raise
            del self._pending[name]
            self._dirty.add(fd)

    def open_names(self) -> list[str]:
        """Journal files on disk and in the buffer (not yet being closed)."""
        with self._lock:
            names = set(self._pending) | set(self._fds)
        names |= {n for n in os.listdir(self.directory) if n.endswith(JOURNAL_SUFFIX)}
        return sorted(names)

    def closing_paths(self) -> list[Path]:
        return sorted(self.directory / n for n in os.listdir(self.directory) if n.endswith(CLOSING_SUFFIX))

    def seal(self, name: str) -> Path | None:
        """Flush ``name``, close it and rename it aside; return the sealed path (None if empty)."""
        sealed, _ = self.seal_all([name])
        return sealed[0] if sealed else None

    def seal_all(self, names: Iterable[str], *, take: Callable[[], Any] | None = None) -> tuple[list[Path], Any]:
        """Flush ``names``, close them and rename them aside, all under one lock; return (sealed paths, ``take()``).

        Later appends to a name start a new file, so a late reading is never
        deleted together with the sealed one. ``take`` runs under the same lock
        right after the renames: what it takes (a memo of the minute) holds
        exactly the records of the sealed files.
        """
        sealed: list[Path] = []
        with self._lock:
            self._write_pending()
            for name in names:
                fd = self._fds.pop(name, None)
                if fd is not None:
                    os.fsync(fd)
                    self._dirty.discard(fd)
                    os.close(fd)
                path = self.directory / name
                if not path.exists():
                    continue
                target = path.with_name(f"{name}.{os.getpid()}-{next(self._closing)}{CLOSING_SUFFIX}")
                os.replace(path, target)
                sealed.append(target)
            return sealed, take() if take is not None else None

    def discard(self, path: Path) -> None:
        """Delete a sealed file whose records are safe elsewhere (spooled, produced)."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        path.unlink()
        with self._lock:
            self._bytes = max(0, self._bytes - size)

    def quarantine(self, paths: list[Path], reason: str) -> Path:
        """Move sealed files aside with a ``.reason`` file; they no longer count against the cap."""
        folder = self.directory / QUARANTINE
        folder.mkdir(exist_ok=True)
        for path in paths:
            try:
                size = path.stat().st_size
                os.replace(path, folder / path.name)
            except FileNotFoundError:
                continue
            (folder / (path.name + ".reason")).write_text(reason + "\n")
            with self._lock:
                self._bytes = max(0, self._bytes - size)
        return folder

    def close(self) -> None:
        with self._lock:
            self._write_pending()
            for fd in self._fds.values():
                os.fsync(fd)
                os.close(fd)
            self._fds.clear()
            self._dirty.clear()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for building a minute's rows (millions of objects, no cycles).

    At 5,000 devices a minute is 900,000 rows; the collector runs full
    collections over them again and again while they are built, which made
    the split 1.5-2x slower (measured: 13 s against 8 s on the loaded 2-core
    machine). Reference counting still frees everything; the collector runs
    as usual again afterwards.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def journal_name(stream: str, minute: int) -> str:
    return f"{stream}.{minute}{JOURNAL_SUFFIX}"


def parse_journal_name(name: str) -> tuple[str, int] | None:
    """(stream, minute_epoch) of a journal or sealed file name; None for a name we did not write."""
    parts = name.split(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class MinuteStore:
    """Journal of the open minutes -> spool -> landing zone.

    ``append`` puts a reading in its minute's journal; ``close_minutes``
    seals minutes, splits each minute's streams into spool entries with
    ``splitter`` (or takes them from ``memo``, see the module docstring) and spools those; a :class:`Lander` thread lands the spool in
    the background. ``journal_max_bytes`` and ``spool_max_bytes`` are the caps
    :meth:`over_cap` compares with (0: no cap).
    """

    def __init__(
        self,
        state_dir: Path,
        landing: LandingZone,
        splitter: Splitter,
        *,
        fsync_interval: float = 1.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        metrics: LanderMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        wait: Callable[[threading.Event, float], bool] | None = None,
        journal_max_bytes: int = 0,
        spool_max_bytes: int = 0,
        memo: MinuteMemo | None = None,
    ) -> None:
        self.journal = Journal(Path(state_dir) / "journal", fsync_interval=fsync_interval)
        self.spool = Spool(Path(state_dir) / "spool", clock=wall_clock)
        self.lander = Lander(landing, self.spool, retry_initial=retry_initial, retry_max=retry_max,
                             metrics=metrics, wait=wait)
        self.splitter = splitter
        self.journal_max_bytes = journal_max_bytes
        self.spool_max_bytes = spool_max_bytes
        #: Minutes whose sealed files were quarantined (poisoned), for the metrics.
        self.quarantined = 0
        self.memo = memo
        #: Minutes closed from the memo and from the journal (what a test or a benchmark checks).
        self.closed_from_memo = 0
        self.closed_from_journal = 0
        self.thread: threading.Thread | None = None
        self._close_lock = threading.Lock()

    def append(self, stream: str, minute: int, data: bytes) -> int:
        return self.journal.append(journal_name(stream, minute), data)

    def append_many(self, items: Iterable[tuple[str, int, bytes]], *, then: Callable[[], None] | None = None) -> int:
        """Append ``(stream, minute, data)`` records under one journal sequence number; ``then`` as in the journal."""
        return self.journal.append_many([(journal_name(stream, minute), data) for stream, minute, data in items],
                                        then=then)

    def flush(self) -> int:
        return self.journal.flush()

    def over_cap(self) -> str | None:
        """Why the store is full (journal or spool over its byte cap), else None."""
        j, s = self.journal.size(), self.spool.size()
        if self.journal_max_bytes and j >= self.journal_max_bytes:
            return f"journal holds {j} bytes, cap {self.journal_max_bytes}"
        if self.spool_max_bytes and s >= self.spool_max_bytes:
            return f"spool holds {s} bytes, cap {self.spool_max_bytes}"
        return None

    def start(self) -> int:
        """Spool what a previous run left in the journal, start the lander; return files spooled."""
        spooled = self._spool_sealed()  # sealed by a run that died before spooling them
        spooled += self.close_minutes(None)
        self.thread = threading.Thread(target=self.lander.run, name="lander", daemon=True)
        self.thread.start()
        return spooled

    def close_minutes(self, before: int | None) -> int:
        """Seal and spool every journalled minute ``< before`` (all when None); return files spooled."""
        with self._close_lock:
            names: dict[int, list[str]] = defaultdict(list)
            for name in self.journal.open_names():
                parsed = parse_journal_name(name)
                if parsed is not None and (before is None or parsed[1] < before):
                    names[parsed[1]].append(name)
            fresh: dict[int, tuple[frozenset[Path], Any]] = {}
            for minute, minute_names in names.items():
                take = None if self.memo is None else (lambda m=minute: self.memo.take(m))
                sealed, taken = self.journal.seal_all(minute_names, take=take)
                fresh[minute] = (frozenset(sealed), taken)
            spooled = self._spool_sealed(fresh)
        if spooled:
            self.lander.kick()
        return spooled

    def _spool_sealed(self, fresh: dict[int, tuple[frozenset[Path], Any]] | None = None) -> int:
        """Spool every sealed minute; ``fresh`` holds (files sealed, memo taken) of the minutes just sealed."""
        by_minute: dict[int, list[Path]] = defaultdict(list)
        for path in self.journal.closing_paths():
            parsed = parse_journal_name(path.name)
            if parsed is None:
                self.journal.quarantine([path], f"{INTERNAL}: {path.name} is not a journal file name")
                self.quarantined += 1
                continue
            by_minute[parsed[1]].append(path)
        count = 0
        for minute, paths in sorted(by_minute.items()):
            entries = self._from_memo(minute, paths, (fresh or {}).get(minute))
            if entries is not None:
                self.closed_from_memo += 1
            else:
                entries = self._split(minute, paths)
                if entries is None:
                    continue
                self.closed_from_journal += 1
            for key, kind, data in entries:
                self.spool.add(key, kind, data, canonical=kind in SCHEMAS)
                count += 1
            # Spooled entries are fsynced; only now may the journal copies go.
            for path in paths:
                self.journal.discard(path)
        return count

    def _from_memo(self, minute: int, paths: list[Path], fresh: tuple[frozenset[Path], Any] | None):
        """The minute's entries from the memo when it holds exactly ``paths`` (all sealed just now), else None."""
        if fresh is None or fresh[1] is None or fresh[0] != frozenset(paths):
            return None  # older sealed files of this minute (a close that failed), or no memo of it
        try:
            with gc_paused():
                return self.memo.entries(minute, fresh[1])
        except Exception:  # a bug in the memo costs time, never rows: the journal has them all
            log.exception("closing minute %d from memory failed; splitting its journal instead", minute)
            return None

    def _split(self, minute: int, paths: list[Path]) -> list[tuple[str, str, bytes]] | None:
        """The minute's entries split from its sealed journal files; None when they were quarantined."""
        try:
            streams: dict[str, list[bytes]] = defaultdict(list)
            for path in paths:
                streams[parse_journal_name(path.name)[0]].append(path.read_bytes())  # type: ignore[index]
            with gc_paused():
                return self.splitter(minute, {k: b"".join(v) for k, v in streams.items()})
        except Exception as exc:  # a bug or an unreadable file: set this minute aside, land the others
            reason = f"{INTERNAL}: splitting minute {minute} failed: {type(exc).__name__}: {exc}"
            folder = self.journal.quarantine(paths, reason)
            self.quarantined += 1
            log.error("%s; its journal files are kept in %s", reason, folder)
            return None

    def stop(self, timeout: float, *, wait: Callable[[float], None] = time.sleep,
             monotonic: Callable[[], float] = time.monotonic) -> bool:
        """Spool every open minute, stop the lander, try to land the spool for ``timeout`` seconds.

        Returns True when the spool is empty; what could not land stays
        spooled and lands at the next start.
        """
        self.close_minutes(None)
        self.journal.close()
        self.lander.stop()
        if self.thread is not None:
            self.thread.join(timeout=max(timeout, 1.0) + 10)
        deadline = monotonic() + timeout
        while True:
            if self.lander.drain():
                return True
            if monotonic() >= deadline:
                log.warning("%d file(s) stay spooled in %s; they land at the next start",
                            self.spool.depth(), self.spool.directory)
                return False
            wait(min(0.5, max(0.0, deadline - monotonic())))
