"""A config holding a secret never shows it: not in repr, str, --help, a log line or a config error.

Every collector config is checked, with each of its ``secret=True`` options set
to a known value, both from ``SLUICE_<NAME>_FILE`` (the compose way) and from
``SLUICE_<NAME>`` (development). The value must still reach the field: a test
where the secret never arrived would pass for the wrong reason.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from collectors.config import ConfigError, env_of
from collectors.host import HostConfig
from collectors.mqtt import MqttConfig
from collectors.simulate_sensors import SimulatorConfig
from collectors.stream.config import StreamConfig

CONFIGS = [HostConfig, MqttConfig, StreamConfig, SimulatorConfig]
#: Options whose validation needs a partner when the secret is set (user with password, key id with key).
PARTNERS = {
    "s3_secret_key": {"SLUICE_S3_ACCESS_KEY": "AKIDPLAIN"},
    "opentsdb_password": {"SLUICE_OPENTSDB_USERNAME": "loader"},
    "kafka_password": {"SLUICE_KAFKA_USERNAME": "loader"},
}


def _secret_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata and f.metadata["secret"]]


def _marker(name: str) -> str:
    return f"Zq9-{name}-s3cr3t-value"


def _environ(cls: type, tmp_path, via_file: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in _secret_fields(cls):
        env.update(PARTNERS.get(name, {}))
        if name == "s3_access_key":
            continue  # a key id, which the partner of s3_secret_key sets in plain sight
        if via_file:
            path = tmp_path / name
            path.write_text(_marker(name) + "\n")
            env[env_of(name) + "_FILE"] = str(path)
        else:
            env[env_of(name)] = _marker(name)
    return env


def test_every_collector_config_has_secrets_to_check():
    assert {name for cls in CONFIGS for name in _secret_fields(cls)} >= {
        "s3_access_key", "s3_secret_key", "mqtt_password", "elasticsearch_api_key", "opentsdb_password", "kafka_password"}


@pytest.mark.parametrize("via_file", [True, False], ids=["from-file", "from-env"])
@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_repr_str_and_logs_never_show_a_secret(cls, via_file, tmp_path, caplog):
    config = cls.from_args([], _environ(cls, tmp_path, via_file))
    markers = {name: _marker(name) for name in _secret_fields(cls) if name != "s3_access_key"}
    for name, value in markers.items():
        assert getattr(config, name) == value, f"{name} did not reach the config"
    log = logging.getLogger("sluice.test.secrets")
    with caplog.at_level(logging.DEBUG, logger="sluice.test.secrets"):
        log.info("config %s", config)
        log.info("config %r", config)
        log.info(f"config {config}")
    shown = "\n".join([repr(config), str(config), f"{config!r}", caplog.text])
    assert cls.__name__ in shown and "config" in caplog.text
    for name, value in markers.items():
        assert value not in shown, f"{cls.__name__}.{name} shows in its repr or a log line"
        assert f"{name}=" not in repr(config)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_help_never_shows_a_secret(cls, tmp_path, capsys, monkeypatch):
    for key, value in _environ(cls, tmp_path, via_file=False).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit):
        cls.from_args(["--help"])
    text = capsys.readouterr().out
    assert "-file" in text  # the secret options are listed, as files
    for name in _secret_fields(cls):
        assert _marker(name) not in text


def test_a_config_error_beside_a_secret_names_the_option_not_the_secret(tmp_path):
    env = _environ(StreamConfig, tmp_path, via_file=True) | {"SLUICE_BATCH_MESSAGES": "many"}
    with pytest.raises(ConfigError) as err:
        StreamConfig.from_args([], env)
    assert "SLUICE_BATCH_MESSAGES" in str(err.value)
    assert _marker("elasticsearch_password") not in str(err.value)


def test_an_unreadable_secret_file_is_a_config_error_naming_the_variable(tmp_path):
    env = {"SLUICE_KAFKA_USERNAME": "loader", "SLUICE_ELASTICSEARCH_API_KEY_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="SLUICE_ELASTICSEARCH_API_KEY_FILE: cannot read"):
        StreamConfig.from_args([], env)
