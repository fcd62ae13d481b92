"""Keep one long-running program alive: ``python -m stack.supervise [OPTIONS] STATE_FILE -- CMD ...``.

The local stack starts the collectors, the stream loader and the simulator
through this supervisor. It runs ``CMD`` as its child (in the supervisor's own
process group, so stopping the service's group stops both) and, when the child
exits without being asked to, starts it again after a backoff that doubles
from 1 s to 30 s and resets once a run has lasted :data:`HEALTHY_RUN_S`.

It records what it does in ``STATE_FILE`` (JSON, rewritten atomically): the
child's pid, when it started, the restart count, the last exit code and whether
the program is *failing* — :data:`FAILING_AFTER` exits in a row, each within
:data:`HEALTHY_RUN_S` of its start. A failing program is still retried (at the
longest backoff): a broker that comes back should bring it back too.
``python -m stack status`` reads the file.

SIGTERM or SIGINT: the supervisor forwards SIGTERM to the child, waits for it
to finish (a collector flushes its partial minute), and exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A run this long (seconds) counts as having worked: the backoff and the failing streak reset.
HEALTHY_RUN_S = 60.0
#: Consecutive quick exits after which the program is reported as failing.
FAILING_AFTER = 5


def read_state(path: Path) -> dict:
    """The supervisor's last state, or {} when it has written none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Supervisor:
    """Backoff and the failing rule are keyword options (seconds; tests shorten them)."""

    def __init__(self, state_file: Path, cmd: list[str], *, first_backoff_s: float = FIRST_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, healthy_run_s: float = HEALTHY_RUN_S,
                 failing_after: int = FAILING_AFTER) -> None:
        self.state_file = state_file
        self.cmd = cmd
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_run_s = healthy_run_s
        self.failing_after = failing_after
        self.stop = threading.Event()
        self.child: subprocess.Popen | None = None
        self.state = {"child_pid": None, "child_started": None, "restarts": 0, "last_exit": None,
                      "last_exit_at": None, "quick_exits": 0, "failing": False, "backoff_s": 0.0}

    def write(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    def on_signal(self, signum, frame) -> None:
        self.stop.set()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        backoff = self.first_backoff_s
        while not self.stop.is_set():
            started = time.monotonic()
            # stdout/stderr are inherited: the service's log file.
            self.child = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL)
            self.state.update(child_pid=self.child.pid, child_started=time.time(), backoff_s=0.0)
            self.write()
            code = self.child.wait()
            if self.stop.is_set():
                break
            ran = time.monotonic() - started
            if ran >= self.healthy_run_s:
                backoff = self.first_backoff_s
                self.state["quick_exits"] = 0
            else:
                self.state["quick_exits"] += 1
            self.state.update(
                child_pid=None, last_exit=code, last_exit_at=time.time(), restarts=self.state["restarts"] + 1,
                failing=self.state["quick_exits"] >= self.failing_after, backoff_s=backoff,
            )
            self.write()
            what = " ".join(self.cmd)[:100]
            print(f"=== sluice supervisor: {what} exited with {code} "
                  f"after {ran:.0f} s; restart {self.state['restarts']} in {backoff:.0f} s", flush=True)
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff_s)
        self.state.update(child_pid=None)
        self.write()
        return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    args = sys.argv[1:] if argv is None else argv
    if "--" not in args or args.index("--") == len(args) - 1:
        print("usage: python -m stack.supervise [OPTIONS] STATE_FILE -- CMD [ARG ...]", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="python -m stack.supervise")
    parser.add_argument("state_file", type=Path)
    parser.add_argument("--first-backoff", type=float, default=FIRST_BACKOFF_S, help="seconds (default 1)")
    parser.add_argument("--max-backoff", type=float, default=MAX_BACKOFF_S, help="seconds (default 30)")
    parser.add_argument("--healthy-run", type=float, default=HEALTHY_RUN_S, help="seconds (default 60)")
    parser.add_argument("--failing-after", type=int, default=FAILING_AFTER, help="quick exits in a row (default 5)")
    opts = parser.parse_args(args[:split])
    sup = Supervisor(opts.state_file, args[split + 1:], first_backoff_s=opts.first_backoff,
                     max_backoff_s=opts.max_backoff, healthy_run_s=opts.healthy_run, failing_after=opts.failing_after)
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
