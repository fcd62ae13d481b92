"""The stack's own behaviour: port conflicts, rollback, status and down.

These run a second, private Mosquitto (its own runtime folder and free ports)
so they never disturb the shared stack other tests use.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from stack import api
from stack.config import DEFAULT_PORTS, StackConfig, StackError
from stack.service import State, port_open


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_config(tmp_path, stack_config) -> StackConfig:
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    return replace(stack_config, runtime=tmp_path / "runtime", ports=ports)


def test_config_rejects_bad_and_clashing_ports():
    with pytest.raises(ValueError, match="SLUICE_KAFKA_PORT='x' is not a port number"):
        StackConfig.from_env({"SLUICE_KAFKA_PORT": "x"})
    with pytest.raises(ValueError, match="both 9092"):
        StackConfig.from_env({"SLUICE_MINIO_PORT": "9092"})


def test_up_status_down_of_a_private_broker(private_config):
    port = private_config.ports["mosquitto_tls"]  # its one listener (plaintext is off)
    assert [s.state for s in api.status(private_config, ["mosquitto"])] == [State.STOPPED]
    started = api.ensure(private_config, ["mosquitto"])
    try:
        assert [s.name for s in started] == ["mosquitto"]
        (st,) = api.status(private_config, ["mosquitto"])
        assert st.state is State.RUNNING and st.pid
        # A second `up` starts nothing.
        assert api.ensure(private_config, ["mosquitto"]) == []
    finally:
        assert api.down(private_config, ["mosquitto"]) == ["mosquitto"]
    assert not port_open("127.0.0.1", port)
    assert [s.state for s in api.status(private_config, ["mosquitto"])] == [State.STOPPED]


def test_port_taken_names_service_and_port_and_rolls_back(private_config):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", private_config.ports["minio"]))
    blocker.listen()
    try:
        with pytest.raises(StackError) as err:
            api.ensure(private_config, ["mosquitto", "minio"])
        assert err.value.service == "minio"
        assert f"port {private_config.ports['minio']} (minio) is already taken" in str(err.value)
        # Mosquitto, started by the same call, was stopped again.
        (st,) = api.status(private_config, ["mosquitto"])
        assert st.state is State.STOPPED
        assert not port_open("127.0.0.1", private_config.ports["mosquitto_tls"])
        # status tells a foreign process on our port apart from "ours, running".
        (minio,) = api.status(private_config, ["minio"])
        assert minio.state is State.STOPPED and "in use by another process" in minio.detail
    finally:
        blocker.close()


def test_process_that_dies_at_start_reports_log_tail(private_config, tmp_path):
    (svc,) = api.services(private_config, ["mosquitto"])
    svc.dir.mkdir(parents=True)
    # An unusable persistence location makes the real broker exit at start.
    svc.prepare = lambda: svc.conf_file.write_text("listener 1 127.0.0.1\nnot_an_option true\n")
    with pytest.raises(StackError) as err:
        svc.start()
    assert "exited with code" in err.value.reason
    assert "not_an_option" in err.value.log_tail or "Error" in err.value.log_tail
    assert svc.pid() is None
