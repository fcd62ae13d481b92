"""Health that means something: a long-running process is healthy only while it works.

A collector or the stream loader registers the threads it depends on and tells
:class:`Health` when its source had traffic and when it handled a message. The
process is unhealthy when

* a watched thread has died (paho's network loop, the lander, the Kafka poller), or
* its source had traffic but nothing was handled for ``idle_after_s`` seconds
  (a deaf MQTT client, a loader stuck on one offset).

An idle source (no traffic) is healthy. :meth:`Health.check` is what the
``/healthz`` endpoint serves (200 ``ok`` or 503 with the reasons, one a line),
so the compose health check and ``python -m stack status`` see the same verdict.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]

    def text(self) -> str:
        return "ok\n" if self.healthy else "".join(f"{r}\n" for r in self.reasons)


class Health:
    """Thread liveness plus progress-while-busy, read by the ``/healthz`` endpoint.

    ``idle_after_s`` (seconds): how long traffic may go unhandled before the
    process counts as stuck. ``clock`` is injected (monotonic seconds) for tests.
    """

    def __init__(self, *, idle_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if idle_after_s <= 0:
            raise ValueError(f"idle_after_s={idle_after_s} must be > 0 seconds")
        self.idle_after_s = idle_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}
        self._traffic_since: float | None = None  # first unhandled traffic, monotonic seconds
        self._last_handled = clock()

    def watch(self, name: str, thread: threading.Thread) -> None:
        """The process is unhealthy once ``thread`` is no longer alive."""
        with self._lock:
            self._threads[name] = thread

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._threads.pop(name, None)

    def add_check(self, name: str, check: Callable[[], str | None]) -> None:
        """An extra condition: ``check()`` returns a reason when unhealthy, else None."""
        with self._lock:
            self._checks[name] = check

    def traffic(self) -> None:
        """The source has something to handle (a message arrived, records are waiting)."""
        with self._lock:
            if self._traffic_since is None:
                self._traffic_since = self._clock()

    def handled(self) -> None:
        """A message was handled (turned into readings or a reject): progress."""
        with self._lock:
            self._last_handled = self._clock()
            self._traffic_since = None

    def check(self) -> Verdict:
        now = self._clock()
        reasons: list[str] = []
        with self._lock:
            threads = dict(self._threads)
            checks = dict(self._checks)
            waiting = self._traffic_since
            last = self._last_handled
        for name, thread in sorted(threads.items()):
            if not thread.is_alive():
                reasons.append(f"thread {name} has died")
        if waiting is not None and now - max(waiting, last) > self.idle_after_s:
            reasons.append(
                f"source has traffic but nothing was handled for {now - max(waiting, last):.0f} s "
                f"(limit {self.idle_after_s:g} s)"
            )
        for name, fn in sorted(checks.items()):
            try:
                reason = fn()
            except Exception as exc:  # a failing check is itself a reason, never a crash of /healthz
                reason = f"check failed: {type(exc).__name__}: {exc}"
            if reason:
                reasons.append(f"{name}: {reason}")
        return Verdict(not reasons, tuple(reasons))
