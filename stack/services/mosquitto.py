"""Mosquitto, the MQTT broker, from Debian's package (``apt-get install mosquitto``).

Persistence is on so that a persistent session's queued QoS 1 messages survive
a broker restart; the broker listens on loopback only and allows anonymous
clients, as a development broker should.
"""

from __future__ import annotations

import threading

from stack.service import Service, which_or_fail

#: Largest MQTT packet the broker accepts, bytes (docker-compose's mosquitto.conf says the same).
#: It bounds what one client can make the broker and the collector hold; the collector
#: dead-letters payloads over its own, smaller ``max_payload_bytes`` (metadata only on Kafka).
MAX_PACKET_BYTES = 4 * 2**20


class Mosquitto(Service):
    name = "mosquitto"
    port_names = ("mosquitto",)
    start_timeout = 20.0

    @property
    def conf_file(self):
        return self.dir / "mosquitto.conf"

    def install(self) -> None:
        which_or_fail(self.name, "mosquitto", "/usr/sbin/mosquitto")

    def prepare(self) -> None:
        self.conf_file.write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            f"listener {self.port} {self.config.host}\n"
            "allow_anonymous true\n"
            # Started as root, mosquitto would switch to user "mosquitto", which
            # cannot write our runtime folder; stay the user who started it.
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            f"max_packet_size {MAX_PACKET_BYTES}\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
        )

    def command(self) -> list[str]:
        return [which_or_fail(self.name, "mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.conf_file)]

    def check_health(self) -> str:
        import paho.mqtt.client as mqtt

        connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sluice-stack-health")
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        client.connect(self.config.host, self.port, keepalive=5)
        client.loop_start()
        try:
            if not connected.wait(3):
                raise TimeoutError("no CONNACK within 3 s")
        finally:
            client.disconnect()
            client.loop_stop()
        return f"MQTT CONNACK on {self.config.host}:{self.port}"
