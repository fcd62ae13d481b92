"""Configuration: --help documents every option with its default; bad values name the option."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from collectors.config import ConfigError, flag_of
from collectors.host import HostConfig
from collectors.mqtt import MqttConfig
from collectors.simulate_sensors import SimulatorConfig

from collector_helpers import REPO


@pytest.mark.parametrize("module, cls", [
    pytest.param("collectors.host", HostConfig, id="host"),
    pytest.param("collectors.mqtt", MqttConfig, id="mqtt"),
    pytest.param("collectors.simulate_sensors", SimulatorConfig, id="simulator"),
])
def test_help_documents_every_option(module, cls):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, check=True).stdout
    for f in dataclasses.fields(cls):
        if f.metadata.get("secret"):
            assert flag_of(f.name) + "-file" in out
        else:
            assert flag_of(f.name) in out
    assert out.count("default:") >= len([f for f in dataclasses.fields(cls) if not f.metadata.get("secret")])


@pytest.mark.parametrize("argv, environ, names", [
    pytest.param(["--landing-url", "ftp://x"], {}, "--landing-url", id="landing-scheme"),
    pytest.param(["--mqtt-port", "0"], {}, "--mqtt-port", id="mqtt-port"),
    pytest.param([], {"SLUICE_MAX_PAYLOAD_BYTES": "big"}, "SLUICE_MAX_PAYLOAD_BYTES", id="env-not-int"),
    pytest.param(["--mqtt-topics", "a/#/b"], {}, "--mqtt-topics", id="topic-filter"),
    pytest.param(["--mqtt-session-expiry", "0"], {}, "--mqtt-session-expiry", id="session-expiry"),
    pytest.param(["--retry-initial", "10", "--retry-max", "1"], {}, "--retry-initial", id="retry"),
    pytest.param(["--mqtt-password-file", "/nonexistent/pw"], {}, "--mqtt-password-file", id="secret-file"),
    pytest.param(["--s3-ca-bundle", "/nonexistent/ca.crt"], {}, "--s3-ca-bundle", id="ca-bundle-missing"),
    pytest.param([], {"SLUICE_S3_CA_BUNDLE": "/nonexistent/ca.crt"}, "--s3-ca-bundle", id="ca-bundle-env-missing"),
    pytest.param(["--mqtt-ca-file", "/nonexistent/ca.crt"], {}, "--mqtt-ca-file", id="ca-file"),
    pytest.param(["--no-mqtt-tls", "--mqtt-ca-file", __file__], {}, "--mqtt-ca-file", id="ca-without-tls"),
])
def test_invalid_config_names_the_option(tmp_path, argv, environ, names):
    with pytest.raises(ConfigError, match=names):
        MqttConfig.from_args(["--state-dir", str(tmp_path), *argv], environ)


def test_secrets_come_from_files_and_flags_beat_env(tmp_path):
    (tmp_path / "key").write_text("AKIA123\n")
    (tmp_path / "secret").write_text("s3cr3t\n")
    env = {"SLUICE_S3_ACCESS_KEY_FILE": str(tmp_path / "key"), "SLUICE_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
           "SLUICE_HOST": "from-env"}
    config = HostConfig.from_args(["--state-dir", str(tmp_path), "--host", "from-flag"], env)
    assert (config.s3_access_key, config.s3_secret_key, config.host) == ("AKIA123", "s3cr3t", "from-flag")


def test_invalid_config_exits_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "collectors.host", "--state-dir", str(tmp_path), "--host", "a b"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "--host" in proc.stderr


def test_mqtt_security_defaults_and_the_password_stays_out_of_repr_and_argv(tmp_path):
    """TLS on 8883 by default; the password comes from a file (there is no flag for the value itself)."""
    (tmp_path / "pw").write_text("hunter2-mqtt\n")
    config = MqttConfig.from_args(["--state-dir", str(tmp_path), "--mqtt-client-id", "col-1",
                                   "--mqtt-password-file", str(tmp_path / "pw")],
                                  {"SLUICE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    assert (config.mqtt_tls, config.mqtt_port, config.mqtt_user, config.mqtt_password) == (True, 8883, "col-1", "hunter2-mqtt")
    assert "hunter2-mqtt" not in repr(config)
    with pytest.raises(SystemExit):
        MqttConfig.from_args(["--state-dir", str(tmp_path), "--mqtt-password", "hunter2-mqtt"], {})
    sim = SimulatorConfig(mqtt_password="hunter2-mqtt")
    assert "hunter2-mqtt" not in repr(sim) and sim.mqtt_tls


def test_simulator_devices_file_must_cover_every_device(tmp_path):
    (tmp_path / "devices").write_text("room-0000:pw0\n")
    with pytest.raises(ConfigError, match="--mqtt-devices-file.*1 simulated device"):
        SimulatorConfig.from_args(["--devices", "2", "--mqtt-devices-file", str(tmp_path / "devices")], {})
    (tmp_path / "devices").write_text("room-0000 pw0\n")
    with pytest.raises(ConfigError, match="line 1 is not device:password"):
        SimulatorConfig.from_args(["--devices", "1", "--mqtt-devices-file", str(tmp_path / "devices")], {})
