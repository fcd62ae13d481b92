"""Keep one long-running program alive: ``python -m stack.supervise STATE_FILE -- CMD ...``.

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
    def __init__(self, state_file: Path, cmd: list[str]) -> None:
        self.state_file = state_file
        self.cmd = cmd
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
        backoff = FIRST_BACKOFF_S
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
            if ran >= HEALTHY_RUN_S:
                backoff = FIRST_BACKOFF_S
                self.state["quick_exits"] = 0
            else:
                self.state["quick_exits"] += 1
            self.state.update(
                child_pid=None, last_exit=code, last_exit_at=time.time(), restarts=self.state["restarts"] + 1,
                failing=self.state["quick_exits"] >= FAILING_AFTER, backoff_s=backoff,
            )
            self.write()
            print(f"=== sluice supervisor: {self.cmd[2] if len(self.cmd) > 2 else self.cmd[0]} exited with {code} "
                  f"after {ran:.0f} s; restart {self.state['restarts']} in {backoff:.0f} s", flush=True)
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        self.state.update(child_pid=None)
        self.write()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m stack.supervise STATE_FILE -- CMD [ARG ...]", file=sys.stderr)
        return 2
    sup = Supervisor(Path(args[0]), args[2:])
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
