"""The minute buffer of a collector: a journal on local disk, then the spool.

Readings are never held only in memory. Each reading is appended to the
journal file of its minute (``{stream}.{minute_epoch}.jrnl``, one CSV row or
JSON line per reading) and the journal is flushed to the operating system
before the reading counts as received: the MQTT collector acknowledges a
message to the broker only after that flush. A process killed with ``kill -9``
therefore loses only what was appended but not yet flushed (at most the
flush interval, a few milliseconds, and for MQTT nothing: those messages were
not acknowledged and the broker delivers them again). The page cache survives
a killed process; surviving a power cut needs the fsync, done every
``fsync_interval`` seconds (0: at every flush).

Closing a minute renames its journal file to ``….closing`` (so readings that
arrive late for that minute start a fresh file instead of being lost with the
old one), turns it into spool entries, one per landing key, and deletes it.
On start, every journal file left by a previous run is closed the same way:
what was journalled before a crash lands, merged with whatever that run
landed already (include/spool.py explains the merge rule), so nothing is lost
and nothing is doubled.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from include.landing import LandingZone
from include.spool import Lander, LanderMetrics, Spool

log = logging.getLogger(__name__)

#: (stream, minute_epoch, journalled bytes) -> [(landing key, kind, file bytes)]
Splitter = Callable[[str, int, bytes], list[tuple[str, str, bytes]]]

JOURNAL_SUFFIX = ".jrnl"
CLOSING_SUFFIX = ".closing"


class Journal:
    """Append-only files under ``directory``, buffered in memory until :meth:`flush`.

    Thread-safe: one thread may append while another flushes. Every append
    gets a sequence number; :attr:`flushed_seq` is the highest one written to
    the operating system, which is what acknowledgements wait for.
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

    def append(self, name: str, data: bytes) -> int:
        with self._lock:
            self._pending.setdefault(name, []).append(data)
            self._seq += 1
            return self._seq

    def flush(self) -> int:
        """Write everything appended so far to the files; return the flushed sequence number.

        Raises OSError when the disk refuses (full, read-only): the caller
        must then not acknowledge anything.
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
        for name, chunks in self._pending.items():
            fd = self._fds.get(name)
            if fd is None:
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._fds[name] = fd
            data = b"".join(chunks)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._dirty.add(fd)
        self._pending.clear()

    def open_names(self) -> list[str]:
        """Journal files on disk and in the buffer (not yet being closed)."""
        with self._lock:
            names = set(self._pending) | set(self._fds)
        names |= {n for n in os.listdir(self.directory) if n.endswith(JOURNAL_SUFFIX)}
        return sorted(names)

    def closing_paths(self) -> list[Path]:
        return sorted(self.directory / n for n in os.listdir(self.directory) if n.endswith(CLOSING_SUFFIX))

    def seal(self, name: str) -> Path | None:
        """Flush ``name``, close it and rename it aside; return the sealed path (None if empty).

        Later appends to ``name`` start a new file, so a late reading is never
        deleted together with the sealed one.
        """
        with self._lock:
            self._write_pending()
            fd = self._fds.pop(name, None)
            if fd is not None:
                os.fsync(fd)
                self._dirty.discard(fd)
                os.close(fd)
            path = self.directory / name
            if not path.exists():
                return None
            sealed = path.with_name(f"{name}.{os.getpid()}-{next(self._closing)}{CLOSING_SUFFIX}")
            os.replace(path, sealed)
            return sealed

    def close(self) -> None:
        with self._lock:
            self._write_pending()
            for fd in self._fds.values():
                os.fsync(fd)
                os.close(fd)
            self._fds.clear()
            self._dirty.clear()


def journal_name(stream: str, minute: int) -> str:
    return f"{stream}.{minute}{JOURNAL_SUFFIX}"


def parse_journal_name(name: str) -> tuple[str, int]:
    """(stream, minute_epoch) of a journal or sealed file name."""
    stream, minute, _ = name.split(".", 2)
    return stream, int(minute)


class MinuteStore:
    """Journal of the open minutes -> spool -> landing zone.

    ``append`` puts a reading in its minute's journal; ``close_minutes``
    seals minutes, splits them into landing files with ``splitter`` and
    spools those; a :class:`Lander` thread lands the spool in the background.
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
    ) -> None:
        self.journal = Journal(Path(state_dir) / "journal", fsync_interval=fsync_interval)
        self.spool = Spool(Path(state_dir) / "spool", clock=wall_clock)
        self.lander = Lander(landing, self.spool, retry_initial=retry_initial, retry_max=retry_max,
                             metrics=metrics, wait=wait)
        self.splitter = splitter
        self._thread: threading.Thread | None = None
        self._close_lock = threading.Lock()

    def append(self, stream: str, minute: int, data: bytes) -> int:
        return self.journal.append(journal_name(stream, minute), data)

    def flush(self) -> int:
        return self.journal.flush()

    def start(self) -> int:
        """Spool what a previous run left in the journal, start the lander; return files spooled."""
        spooled = self._spool_sealed()  # sealed by a run that died before spooling them
        spooled += self.close_minutes(None)
        self._thread = threading.Thread(target=self.lander.run, name="lander", daemon=True)
        self._thread.start()
        return spooled

    def close_minutes(self, before: int | None) -> int:
        """Seal and spool every journalled minute ``< before`` (all when None); return files spooled."""
        with self._close_lock:
            for name in self.journal.open_names():
                _, minute = parse_journal_name(name)
                if before is None or minute < before:
                    self.journal.seal(name)
            spooled = self._spool_sealed()
        if spooled:
            self.lander.kick()
        return spooled

    def _spool_sealed(self) -> int:
        count = 0
        for path in self.journal.closing_paths():
            stream, minute = parse_journal_name(path.name)
            for key, kind, data in self.splitter(stream, minute, path.read_bytes()):
                self.spool.add(key, kind, data)
                count += 1
            # Spooled entries are fsynced; only now may the journal copy go.
            path.unlink()
        return count

    def stop(self, timeout: float, *, wait: Callable[[float], None] = time.sleep,
             monotonic: Callable[[], float] = time.monotonic) -> bool:
        """Spool every open minute, stop the lander, try to land the spool for ``timeout`` seconds.

        Returns True when the spool is empty; what could not land stays
        spooled and lands at the next start.
        """
        self.close_minutes(None)
        self.journal.close()
        self.lander.stop()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0) + 10)
        deadline = monotonic() + timeout
        while True:
            if self.lander.drain():
                return True
            if monotonic() >= deadline:
                log.warning("%d file(s) stay spooled in %s; they land at the next start",
                            self.spool.depth(), self.spool.directory)
                return False
            wait(min(0.5, max(0.0, deadline - monotonic())))
