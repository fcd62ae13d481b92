"""An install step (``Service.run_checked``): says it is still running, and fails with what it printed."""

from __future__ import annotations

import logging
import sys

import pytest

from stack import api
from stack.config import StackError


@pytest.fixture
def service(stack_config):
    (svc,) = api.services(stack_config, ["mosquitto"])
    return svc


def test_a_long_step_says_it_is_still_running(service, caplog):
    caplog.set_level(logging.INFO, logger="stack.service")
    done = service.run_checked([sys.executable, "-c", "import time; time.sleep(0.5); print('built')"],
                               "building a thing", heartbeat_s=0.1)
    assert done.stdout.strip() == "built"
    beats = [r.getMessage() for r in caplog.records if "still building a thing" in r.getMessage()]
    assert len(beats) >= 2, beats
    assert beats[0].startswith("mosquitto: still building a thing (")


def test_a_failed_step_names_itself_and_keeps_the_end_of_its_output(service):
    script = "import sys; print('line one'); print('the reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StackError) as err:
        service.run_checked([sys.executable, "-c", script], "compiling a thing")
    assert err.value.reason.startswith("compiling a thing failed (exit 3)")
    assert "line one" in err.value.log_tail and "the reason" in err.value.log_tail


def test_a_step_past_its_timeout_is_killed_and_says_so(service):
    script = "import time; print('started', flush=True); time.sleep(30)"
    with pytest.raises(StackError) as err:
        service.run_checked([sys.executable, "-c", script], "migrating", timeout=0.5, heartbeat_s=0.2)
    assert "migrating did not finish within 0.5 s" in err.value.reason
    assert "started" in err.value.log_tail


def test_a_missing_program_says_to_bootstrap(service):
    with pytest.raises(StackError) as err:
        service.run_checked(["/nonexistent/sluice-tool"], "running a tool")
    assert "is not installed (run `make bootstrap`)" in err.value.reason
