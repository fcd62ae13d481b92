"""The supervisor that keeps the collectors alive: real processes, shortened backoffs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack.supervise import read_state

SUPERVISE = [sys.executable, "-m", "stack.supervise", "--first-backoff", "0.1", "--max-backoff", "0.2",
             "--healthy-run", "5", "--failing-after", "3"]
REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, *cmd: str) -> tuple[subprocess.Popen, Path, Path]:
    state, log = tmp_path / "supervisor.json", tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*SUPERVISE, str(state), "--", *cmd], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, state, log


def _wait(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_program_that_keeps_dying_is_restarted_counted_and_reported_failing(tmp_path):
    proc, state, log = _start(tmp_path, sys.executable, "-c", "import sys; print('boom'); sys.exit(3)")
    try:
        assert _wait(lambda: read_state(state).get("failing")), read_state(state)
        s = read_state(state)
        assert s["restarts"] >= 3 and s["quick_exits"] >= 3 and s["last_exit"] == 3
        assert "exited with 3" in log.read_text() and "boom" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_killed_child_is_restarted_and_sigterm_stops_both(tmp_path):
    proc, state, _ = _start(tmp_path, sys.executable, "-c", "import time; time.sleep(600)")
    try:
        assert _wait(lambda: read_state(state).get("child_pid"))
        first = read_state(state)["child_pid"]
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: read_state(state).get("child_pid") not in (None, first))
        s = read_state(state)
        assert s["restarts"] == 1 and s["last_exit"] == -signal.SIGKILL and not s["failing"]
        child = s["child_pid"]
    finally:
        proc.send_signal(signal.SIGTERM)  # the supervisor alone: it forwards SIGTERM to the child
        assert proc.wait(10) == 0
    assert _wait(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2])
    assert read_state(state)["child_pid"] is None and read_state(state)["restarts"] == 1


def test_usage_errors_exit_2_with_a_message(tmp_path):
    for args in ([str(tmp_path / "s.json")], [str(tmp_path / "s.json"), "--"]):
        proc = subprocess.run([sys.executable, "-m", "stack.supervise", *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2 and "usage:" in proc.stderr


def test_a_failing_service_reports_the_end_of_its_log(tmp_path):
    import json

    from stack.config import StackConfig
    from stack.services.collectors import HostCollector

    svc = HostCollector(StackConfig.from_env({"SLUICE_RUNTIME": str(tmp_path)}))
    svc.dir.mkdir(parents=True)
    svc.log_file.write_text("starting\nKafkaException: broker down\n")
    svc.state_file.write_text(json.dumps({"restarts": 7, "quick_exits": 5, "last_exit": 1, "failing": True}))
    ok, detail = svc.health()
    assert not ok
    assert "failing: exited 5 times in a row (last exit code 1)" in detail and "KafkaException: broker down" in detail
    assert svc.restarts() == 7
