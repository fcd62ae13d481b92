"""The life cycle every service of the local stack shares.

A service knows how to install itself (idempotently, into the download cache),
prepare its runtime folder, which command runs it, and how to tell it is
healthy. This module does the rest the same way for all of them: start the
process in its own session (so the whole tree can be signalled), record its pid
together with the kernel's start time of that pid (so a recycled pid is never
mistaken for ours), wait for health while watching the process, and stop by
that pid's process group only — never by process name.
"""

from __future__ import annotations

import enum
import hashlib
import errno
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stack.config import StackConfig, StackError

log = logging.getLogger(__name__)

#: Services that refuse to run as root (Elasticsearch) run as this system user.
SERVICE_USER = "sluice"


class State(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Status:
    service: str
    state: State
    pid: int | None
    ports: dict[str, int]
    detail: str = ""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(host: str, port: int) -> bool:
    """True when nothing holds the port (listening or otherwise bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _proc_start_time(pid: int) -> str | None:
    """The start time of pid in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return fields[19]


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def ensure_service_user(user: str = SERVICE_USER) -> tuple[int, int]:
    """Create the unprivileged system user when missing; return (uid, gid)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            check=True,
        )
        entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


class Service:
    """Base class; subclasses set ``name`` and ``port_names`` and fill the hooks."""

    name: str = ""
    #: Names in StackConfig.ports this service binds; the first is its main port.
    port_names: tuple[str, ...] = ()
    #: Seconds to wait for health after the process started.
    start_timeout: float = 60.0
    #: Seconds between SIGTERM and SIGKILL.
    stop_timeout: float = 30.0
    #: Run as SERVICE_USER when invoked as root (for servers that refuse root).
    drop_root: bool = False
    #: The system user a ``drop_root`` service runs as (PostgreSQL wants its own ``postgres``).
    run_as: str = SERVICE_USER

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    # -- paths -------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """``runtime/<name>``, unless the service user could not reach it.

        Run by root, a ``drop_root`` server runs as :attr:`run_as`, which must
        traverse every folder above its home. A checkout in a private folder
        (``mktemp -d`` makes 0700 ones) blocks it; then the service lives in
        ``/var/lib/sluice/<name>-<hash of the runtime path>`` and
        ``runtime/<name>`` is a link to it.
        """
        inside = self.config.runtime / self.name
        if not self.drop_root or os.geteuid() != 0 or _others_can_traverse(self.config.runtime):
            return inside
        digest = hashlib.sha1(str(self.config.runtime).encode()).hexdigest()[:12]
        outside = Path("/var/lib/sluice") / f"{self.name}-{digest}"
        if not inside.is_symlink():
            outside.mkdir(parents=True, exist_ok=True)
            outside.chmod(0o755)
            outside.parent.chmod(0o755)
            if inside.exists():
                shutil.rmtree(inside)
            inside.parent.mkdir(parents=True, exist_ok=True)
            inside.symlink_to(outside)
        return outside

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def ports(self) -> dict[str, int]:
        return {n: self.config.ports[n] for n in self.port_names}

    @property
    def port(self) -> int:
        return self.config.ports[self.port_names[0]]

    # -- hooks for subclasses ----------------------------------------------
    @classmethod
    def enabled(cls, config: StackConfig) -> bool:
        """Whether this configuration runs the service at all (e.g. Kafka nodes 2 and 3)."""
        return True

    def install(self) -> None:
        """Fetch or build what the service needs; a no-op when already cached."""

    def prepare(self) -> None:
        """Write configuration and initialise data; called before every start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def check_health(self) -> str:
        """Return a short description when healthy; raise any exception if not."""
        raise NotImplementedError

    def after_start(self) -> None:
        """Idempotent set-up that needs the running service (buckets, topics)."""

    def as_service_user(self, cmd: list[str]) -> list[str]:
        """``cmd`` as run by :attr:`run_as` when we are root and the service drops root.

        The service's folder is handed to that user first. setpriv execs, so the
        pid of the wrapped command is the program's own.
        """
        if not (self.drop_root and os.geteuid() == 0):
            return cmd
        uid, gid = ensure_service_user(self.run_as)
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(self.dir)], check=True)
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *cmd]

    # -- life cycle --------------------------------------------------------
    def pid(self) -> int | None:
        """The pid of our running process, or None (stale pid files are ignored)."""
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if _proc_start_time(pid) == started else None

    def uptime(self) -> float | None:
        """Seconds since our process started, or None when it is not running."""
        pid = self.pid()
        started = _proc_start_time(pid) if pid else None
        if started is None:
            return None
        boot_s = float(Path("/proc/uptime").read_text().split()[0])
        return boot_s - int(started) / os.sysconf("SC_CLK_TCK")

    def restarts(self) -> int | None:
        """Restarts by a supervisor; None for a service nothing restarts."""
        return None

    def health(self) -> tuple[bool, str]:
        try:
            return True, self.check_health()
        except Exception as exc:  # any failure of a probe means "not healthy"
            return False, f"{type(exc).__name__}: {exc}"

    def wait_healthy(self, timeout: float) -> bool:
        """Poll health for up to ``timeout`` seconds while our process runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            if self.health()[0]:
                return True
            time.sleep(0.5)
        return False

    def restore(self) -> None:
        """Make sure the service runs healthy again after a deliberate stop.

        For fault tests on a shared stack: another session may already have
        started it again, in which case this waits for it instead of failing.
        """
        if self.pid() is None:
            self.start()
        elif not self.wait_healthy(self.start_timeout):
            raise StackError(self.name, f"running but not healthy within {self.start_timeout:.0f} s")

    def status(self) -> Status:
        pid = self.pid()
        if pid is None:
            busy = [f"{n}={p}" for n, p in self.ports.items() if port_open(self.config.host, p)]
            detail = f"ports in use by another process: {', '.join(busy)}" if busy else ""
            return Status(self.name, State.STOPPED, None, self.ports, detail)
        ok, detail = self.health()
        return Status(self.name, State.RUNNING if ok else State.UNHEALTHY, pid, self.ports, detail)

    def start(self) -> None:
        """Start the service and wait until it is healthy.

        Raises StackError naming the reason (port taken, process exited, not
        healthy in time); on failure nothing of this service is left running.
        """
        if self.pid() is not None:
            raise StackError(self.name, f"already running as pid {self.pid()}")
        for port_name, port in self.ports.items():
            if not port_bindable(self.config.host, port):
                raise StackError(
                    self.name,
                    f"port {port} ({port_name}) is already taken by another process; "
                    f"stop it or set SLUICE_{port_name.upper()}_PORT",
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = self.as_service_user(self.command())
        log.info("starting %s: %s", self.name, " ".join(cmd))
        with self.log_file.open("ab") as out:
            out.write(f"\n=== sluice stack: starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=self.dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = _proc_start_time(proc.pid)
        self.pid_file.write_text(f"{proc.pid} {started}\n")
        deadline = time.monotonic() + self.start_timeout
        detail = ""
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                self._cleanup(proc.pid)
                raise StackError(self.name, f"process exited with code {code} while starting", tail(self.log_file))
            ok, detail = self.health()
            if ok:
                break
            time.sleep(0.5)
        else:
            self.stop()
            raise StackError(
                self.name,
                f"not healthy within {self.start_timeout:.0f} s (last check: {detail})",
                tail(self.log_file),
            )
        try:
            self.after_start()
        except Exception as exc:
            self.stop()
            raise StackError(self.name, f"set-up after start failed: {exc}", tail(self.log_file)) from exc
        log.info("%s healthy: %s", self.name, detail)

    def stop(self) -> bool:
        """Stop our process group; True when something was running.

        SIGTERM first, SIGKILL after ``stop_timeout``; returns once the group is
        gone and the service's ports are free again.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and self._group_alive(pid):
            time.sleep(0.2)
        if self._group_alive(pid):
            log.warning("%s did not stop within %.0f s; sending SIGKILL", self.name, self.stop_timeout)
            self._signal_group(pid, signal.SIGKILL)
            while self._group_alive(pid):
                time.sleep(0.1)
        self._cleanup(pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            port_open(self.config.host, p) for p in self.ports.values()
        ):
            time.sleep(0.2)
        return True

    # -- helpers -----------------------------------------------------------
    def _cleanup(self, pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap when we are the parent
        except ChildProcessError:
            pass
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)  # start_new_session made pid the group leader
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
        return False

    def run_checked(self, cmd: list[str], what: str, *, timeout: float | None = None, heartbeat_s: float = 30.0,
                    **kwargs) -> subprocess.CompletedProcess:
        """Run an install/prepare step; a failure (or ``timeout`` seconds) becomes a StackError with its output.

        A step that takes longer than ``heartbeat_s`` says so every ``heartbeat_s``
        seconds (a MinIO build is four silent minutes otherwise).
        """
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        except FileNotFoundError:
            raise StackError(self.name, f"{what}: {cmd[0]} is not installed (run `make bootstrap`)") from None
        started = time.monotonic()
        while True:
            try:
                wait = heartbeat_s if timeout is None else min(heartbeat_s, max(0.1, timeout - (time.monotonic() - started)))
                stdout, stderr = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:  # still running: communicate() may be called again
                elapsed = time.monotonic() - started
                if timeout is not None and elapsed >= timeout:
                    proc.kill()
                    stdout, stderr = proc.communicate()
                    raise StackError(self.name, f"{what} did not finish within {timeout:g} s: {' '.join(cmd)}",
                                     _last_lines(stdout, stderr)) from None
                log.info("%s: still %s (%.0f s so far)", self.name, what, elapsed)
        if proc.returncode != 0:
            raise StackError(self.name, f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}",
                             _last_lines(stdout, stderr))
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _last_lines(stdout: str | None, stderr: str | None, lines: int = 20) -> str:
    """The end of a step's output and of its errors, for the StackError it becomes."""
    return "\n".join((stdout or "").splitlines()[-lines:] + (stderr or "").splitlines()[-lines:])


def _others_can_traverse(path: Path) -> bool:
    """True when a user owning none of the folders can reach ``path`` (x for others on each)."""
    path = path.resolve()
    for folder in [path, *path.parents]:
        try:
            if not folder.stat().st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue  # created later with the default 0755
    return True


def which_or_fail(service: str, program: str, *candidates: str) -> str:
    """Path of program (also looking at candidate paths such as /usr/sbin)."""
    found = shutil.which(program)
    if found:
        return found
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise StackError(service, f"{program} is not installed (run `make bootstrap`)")
