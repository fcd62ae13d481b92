"""Bringing services up and down as a group: what the CLI and the tests call."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from stack.config import StackConfig, StackError
from stack.service import Service, State, Status
from stack.services import ALL, BY_NAME

log = logging.getLogger(__name__)


def services(config: StackConfig, names: Iterable[str] | None = None) -> list[Service]:
    """Service objects in start order; unknown names raise ValueError."""
    enabled = [cls for cls in ALL if cls.enabled(config)]
    if names is None:
        return [cls(config) for cls in enabled]
    wanted = list(names)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    # Naming "kafka" means the whole Kafka cluster of this configuration.
    if "kafka" in wanted:
        wanted += [cls.name for cls in enabled if cls.name.startswith("kafka-")]
    return [cls(config) for cls in enabled if cls.name in wanted]


def install(config: StackConfig, names: Iterable[str] | None = None) -> None:
    for svc in services(config, names):
        log.info("installing %s", svc.name)
        svc.install()


def ensure(config: StackConfig, names: Iterable[str] | None = None) -> list[Service]:
    """Start what is not running; return the services this call started.

    A service that is already running and healthy is reused. One that runs but
    stays unhealthy for its start timeout is an error (it is not ours to
    restart behind a user's back).
    If any start fails, the services started by this call are stopped again and
    the StackError is raised: nothing is left half-started.
    """
    started: list[Service] = []
    try:
        for svc in services(config, names):
            status = svc.status()
            if status.state is State.RUNNING:
                log.info("%s already running (pid %s): %s", svc.name, status.pid, status.detail)
                continue
            if status.state is State.UNHEALTHY:
                # Perhaps still starting (another `up` or a test restarting it): give it
                # its start time before calling it broken.
                if svc.wait_healthy(svc.start_timeout):
                    continue
                raise StackError(svc.name, f"running as pid {status.pid} but unhealthy: {svc.health()[1]}")
            svc.install()
            svc.start()
            started.append(svc)
    except BaseException:
        for svc in reversed(started):
            svc.stop()
        raise
    return started


def down(config: StackConfig, names: Iterable[str] | None = None) -> list[str]:
    """Stop services (in reverse start order); return the names that were running.

    Also those this configuration would not start (Celery workers and Redis after a
    ``SLUICE_EXECUTOR=celery`` run, the extra Kafka nodes): ``down`` leaves none
    behind whichever variables it is called with. One that does not run is skipped.
    """
    wanted = None if names is None else set(names)
    if wanted is not None and "kafka" in wanted:
        wanted |= {cls.name for cls in ALL if cls.name.startswith("kafka-")}
    if wanted is not None:
        unknown = wanted - set(BY_NAME)
        if unknown:
            raise ValueError(f"unknown service(s) {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}")
    stopped = []
    for svc in reversed([cls(config) for cls in ALL if wanted is None or cls.name in wanted]):
        if svc.stop():
            stopped.append(svc.name)
    return stopped


def status(config: StackConfig, names: Iterable[str] | None = None) -> list[Status]:
    return [svc.status() for svc in services(config, names)]
