"""MQTT clients for tests, logged in the way the stack's broker demands: TLS and a user each.

Mosquitto of the local stack takes no anonymous client and lets a device publish to
``sluice/sensors/<device>`` only (stack/services/mosquitto.py). A test therefore makes
its own users on the broker it uses (the shared one, or a private instance) through the
same registry as ``python -m stack mqtt-user``, with names that carry the test's run id:
its device topics are its own, and its collector subscribes to exactly those topics, so
tests running beside a platform's simulator see nothing of it. ``MqttUsers.close``
removes the users again.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from stack.secrets import write_private
from stack.services.mosquitto import COLLECTOR, DEVICE, Mosquitto, device_topic


class MqttUsers:
    """Users a test made on ``broker``; clients and collector options that log in as them."""

    def __init__(self, broker: Mosquitto, folder: Path) -> None:
        self.broker = broker
        self.folder = folder
        self.made: list[str] = []

    # -- users ---------------------------------------------------------------------
    def devices(self, run: str, count: int = 1, *, names: list[str] | None = None) -> list[str]:
        """Device users ``d<run>-<k>`` (or ``names``), created on the broker; their ids."""
        ids = names if names is not None else [f"d{run}-{k}" for k in range(count)]
        self.broker.ensure_users(ids, DEVICE)
        self.made += ids
        return ids

    def collector(self, name: str) -> Path:
        """A collector user ``name`` (its client id too); the file holding its password."""
        self.broker.ensure_users([name], COLLECTOR)
        self.made.append(name)
        return self.broker.collector_password_file(name)

    def password(self, user: str) -> str:
        devices = self.broker.devices()
        return devices[user] if user in devices else self.broker.collector_password(user)

    def devices_file(self, ids: list[str]) -> Path:
        """A ``device:password`` file of ``ids`` for the simulator's ``--mqtt-devices-file``."""
        path = self.folder / f"devices-{uuid.uuid4().hex[:8]}"
        write_private(path, "".join(f"{d}:{self.password(d)}\n" for d in ids))
        return path

    def close(self) -> None:
        if self.made:
            self.broker.remove_users([u for u in dict.fromkeys(self.made) if u in self.broker.users()])
            self.made.clear()

    # -- what clients need -----------------------------------------------------------
    @property
    def port(self) -> int:
        return self.broker.config.ports["mosquitto_tls"]

    @property
    def ca_file(self) -> str:
        return str(self.broker.ca_file)

    def client(self, user: str | None, *, password: str | None = None, client_id: str | None = None,
               tls: bool = True, v5: bool = False, clean_session: bool | None = None) -> mqtt.Client:
        """A paho client (not connected) with TLS and ``user``'s login (``None``: anonymous)."""
        kw = {"protocol": mqtt.MQTTv5} if v5 else {"clean_session": clean_session}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user or "", **kw)
        if tls:
            client.tls_set(ca_certs=self.ca_file)
        if user is not None:
            client.username_pw_set(user, password if password is not None else self.password(user))
        return client

    def collector_options(self, name: str, devices: list[str]) -> dict:
        """MqttConfig fields of collector ``name`` reading ``devices``'s topics over TLS."""
        self.collector(name)
        return {"mqtt_host": self.broker.config.host, "mqtt_port": self.port, "mqtt_ca_file": self.ca_file,
                "mqtt_client_id": name, "mqtt_password": self.password(name),
                "mqtt_topics": tuple(device_topic(d) for d in devices)}

    def collector_args(self, name: str, devices: list[str] | None = None, *, filters: list[str] | None = None) -> list[str]:
        """``python -m collectors.mqtt`` flags of collector ``name``: TLS, its user, its password as a file."""
        password_file = self.collector(name)
        topics = filters if filters is not None else [device_topic(d) for d in devices or ()]
        return ["--mqtt-host", self.broker.config.host, "--mqtt-port", str(self.port), "--mqtt-ca-file", self.ca_file,
                "--mqtt-client-id", name, "--mqtt-password-file", str(password_file),
                "--mqtt-topics", ",".join(topics)]
