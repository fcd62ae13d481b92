"""Helpers for the collector tests.

Fault tests (MinIO down, Kafka down, Mosquitto restarted) run against a
*private* instance of the real server: the same binaries and life cycle as
the local stack (stack/services), but in a temporary runtime folder and on
free ports, so stopping it does not pull the shared stack out from under the
other engineers' tests running in parallel. Every private instance is stopped
in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from stack.config import DEFAULT_PORTS, StackConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_config(stack_config: StackConfig, runtime: Path) -> StackConfig:
    ports = {name: free_port() for name in DEFAULT_PORTS}
    return StackConfig(runtime=runtime, cache=stack_config.cache, host="127.0.0.1", ports=ports)


@contextlib.contextmanager
def private_service(cls, stack_config: StackConfig, runtime: Path):
    svc = cls(private_config(stack_config, runtime))
    svc.install()
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def spawn(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m module args`` in its own session, output to ``log``.

    The process logs in to Kafka as the stack's admin (``SLUICE_KAFKA_*``, password by file) unless
    ``env`` says otherwise: test topics and groups have names of their own.
    """
    from kafka_login import env as kafka_env

    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, **kafka_env(), **(env or {})}, start_new_session=True,
    )


def terminate(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)
