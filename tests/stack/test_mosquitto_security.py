"""The broker's security on the real Mosquitto 2.0.11 of the local stack (issue 15, MQTT).

What each kind of client gets:

* no user, a wrong password, a removed user: CONNACK "Not authorized"; on the SIGHUP that
  every change of the users sends, 2.0.11 also re-checks open connections and closes those
  of removed users and of users whose password changed;
* plaintext: nothing listens on the plaintext port (it is bound only for a demo, then on
  127.0.0.1 and with the same users); MQTT without TLS on the TLS port gets no CONNACK;
  a client that does not trust the stack's CA fails the handshake;
* a device publishing to another device's topic: PUBACK "Not authorized" (MQTT v5), nothing
  reaches the real collector and nothing lands under the other device;
* a device subscribing to sensor topics: 2.0.11 grants the SUBACK (its ACL file has no
  separate subscribe right) but delivers nothing: every message is checked against the
  reader's ``read`` right when it is sent, and devices have none;
* a device asking for the collector's client id: the broker renames it to its user name
  (``use_username_as_clientid``), so the collector keeps its connection and its session.
  Mosquitto 2.0 cannot *refuse* that CONNECT with a password file (only the dynamic-security
  plugin binds client ids to users, and it replaces the password and ACL files).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
from mqtt_helpers import MqttUsers

from collectors.mqtt import MqttCollector, MqttConfig
from include.landing import open_landing
from include.schemas import SENSOR_SCHEMA
from include.spool import parse_csv
from stack.config import DEFAULT_PORTS, REPO_ROOT
from stack.service import port_open
from stack.services.mosquitto import Mosquitto, device_topic

pytestmark = pytest.mark.integration


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def connack(client: mqtt.Client, host: str, port: int, timeout: float = 5) -> str | None:
    """The CONNACK reason of ``client`` connecting (v5: clean start), or None when none came."""
    got: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: got.put(str(rc))
    kw = {"clean_start": True} if client._protocol == mqtt.MQTTv5 else {}
    client.connect(host, port, keepalive=10, **kw)
    client.loop_start()
    try:
        return got.get(timeout=timeout)
    except queue.Empty:
        client.loop_stop()
        return None


def close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()
        client.loop_stop()


def reading(device: str, n: int) -> bytes:
    return orjson.dumps({"metric": "mqtt.home.sec", "value": n, "timestamp": int(time.time() * 1000) + n,
                         "tags": {"type": "temperature", "loc": device}})


class Collector:
    """The real MQTT collector (TLS, its own user), landing into a folder, no Kafka."""

    def __init__(self, tmp_path, mq: MqttUsers, run: str, devices: list[str]) -> None:
        self.config = MqttConfig(landing_url=(tmp_path / "landing").as_uri(), state_dir=str(tmp_path / "state"),
                                 kafka_bootstrap="", metrics_port=-1, heartbeat_interval=0, fsync_interval=0,
                                 **mq.collector_options(f"col-{run}", devices))
        self.config.validate()
        self.collector = MqttCollector(self.config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop,))
        self.topics: list[str] = []
        self.disconnects = 0

    def __enter__(self) -> Collector:
        self.thread.start()
        assert self.collector.connected.wait(20), "the collector did not connect over TLS with its user"
        client = self.collector.client
        handle, lost = client.on_message, client.on_disconnect

        def on_message(c, u, msg) -> None:
            self.topics.append(msg.topic)
            handle(c, u, msg)

        def on_disconnect(*args) -> None:
            self.disconnects += 1
            lost(*args)

        client.on_message, client.on_disconnect = on_message, on_disconnect
        time.sleep(0.3)  # the SUBACK
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()

    def rows(self) -> list[list[str]]:
        landing = open_landing(self.config.landing_url)
        return [row for info in landing.list("raw/sensor/") if info.key.endswith(".csv")
                for row in parse_csv(SENSOR_SCHEMA, landing.get(info.key))]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- who may connect -----------------------------------------------------------------
def test_anonymous_wrong_password_and_removed_users_are_refused(mqtt_users):
    host, port = mqtt_users.broker.config.host, mqtt_users.port
    (device,) = mqtt_users.devices(run_id())
    assert connack(mqtt_users.client(None, v5=True, client_id="anon"), host, port) == "Not authorized"
    assert connack(mqtt_users.client(device, password="not-its-password", v5=True), host, port) == "Not authorized"
    ok = mqtt_users.client(device, v5=True)
    assert connack(ok, host, port) == "Success"
    dropped = threading.Event()
    ok.on_disconnect = lambda *a: dropped.set()
    ok.reconnect_delay_set(30, 60)  # it must not come back on its own before the check
    password = mqtt_users.password(device)
    mqtt_users.broker.remove_users([device])  # SIGHUP: the broker rereads its users at once ...
    assert dropped.wait(5), "a removed user's open connection stayed"  # ... and re-checks open connections
    close(ok)
    assert connack(mqtt_users.client(device, password=password, v5=True), host, port) == "Not authorized"


def publish_three_as(mqtt_users, device: str, col) -> None:
    """Three readings from ``device`` on its own topic, over TLS as itself; wait until the collector has them."""
    source = mqtt_users.client(device, v5=True)
    assert connack(source, mqtt_users.broker.config.host, mqtt_users.port) == "Success"
    for n in range(3):
        source.publish(device_topic(device), reading(device, n), qos=1).wait_for_publish(10)
    close(source)
    wait_until(lambda: col.collector.messages >= 3, 10, "the messages at the collector")


def test_plaintext_is_not_served(mqtt_users, tmp_path):
    broker = mqtt_users.broker
    host = broker.config.host
    (device,) = mqtt_users.devices(run_id())
    # The plaintext port is not bound by default ...
    assert not broker.plaintext_demo
    assert not port_open(host, broker.config.ports["mosquitto"])
    # ... MQTT without TLS on the TLS port gets no CONNACK: the broker reads it as a bad handshake ...
    plain = mqtt_users.client(device, tls=False)
    assert connack(plain, host, mqtt_users.port, timeout=3) is None
    plain.loop_stop()
    # ... and a client that does not trust the stack's CA stops at the handshake (the server is verified).
    stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    stranger.tls_set()  # the system's CAs only
    stranger.username_pw_set(device, mqtt_users.password(device))
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect(host, mqtt_users.port)


def test_the_plaintext_demo_listener_is_loopback_only_and_still_authenticated(stack_config, tmp_path):
    ports = {}
    for name in DEFAULT_PORTS:  # a private broker on free ports: the shared one stays as it is
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
    broker = Mosquitto(dataclasses.replace(stack_config, runtime=tmp_path / "rt", ports=ports), plaintext_demo=True)
    broker.install()
    broker.start()
    try:
        mq = MqttUsers(broker, tmp_path)
        (device,) = mq.devices(run_id())
        plain_port = broker.config.ports["mosquitto"]
        assert f"listener {plain_port} 127.0.0.1\n" in broker.conf_file.read_text()
        assert connack(mq.client(None, tls=False, v5=True, client_id="anon"), "127.0.0.1", plain_port) == "Not authorized"
        client = mq.client(device, tls=False, v5=True)
        assert connack(client, "127.0.0.1", plain_port) == "Success"
        close(client)
    finally:
        broker.stop()


# -- what a device may do ----------------------------------------------------------------
def test_a_device_cannot_publish_as_another_device(mqtt_users, tmp_path):
    run = run_id()
    a, b = mqtt_users.devices(run, 2)
    with Collector(tmp_path, mqtt_users, run, [a, b]) as col:
        client = mqtt_users.client(a, v5=True)
        assert connack(client, mqtt_users.broker.config.host, mqtt_users.port) == "Success"
        acks: dict[int, str] = {}
        client.on_publish = lambda c, u, mid, rc, props: acks.__setitem__(mid, str(rc))
        forged = [client.publish(device_topic(b), reading(b, n), qos=1).mid for n in range(3)]
        own = [client.publish(device_topic(a), reading(a, n), qos=1).mid for n in range(3)]
        wait_until(lambda: len(acks) == 6, 10, "a PUBACK for every publish")
        close(client)
        assert [acks[m] for m in forged] == ["Not authorized"] * 3
        assert [acks[m] for m in own] == ["Success"] * 3
        wait_until(lambda: col.collector.messages >= 3, 10, "the device's own messages at the collector")
        time.sleep(1.0)  # a forged message would have arrived by now
        assert col.topics == [device_topic(a)] * 3, "the collector saw a message on another device's topic"
        col.collector._close(int(time.time() // 60 * 60 + 120))
        wait_until(lambda: len(col.rows()) >= 3, 20, "the device's readings landed")
    devices = [row[SENSOR_SCHEMA.names.index("device")] for row in col.rows()]
    assert devices == [a] * 3, "nothing may land under the other device"


def test_a_device_cannot_read_other_devices_data(mqtt_users, tmp_path):
    run = run_id()
    a, b = mqtt_users.devices(run, 2)
    host = mqtt_users.broker.config.host
    with Collector(tmp_path, mqtt_users, run, [b]) as col:
        spy = mqtt_users.client(a, v5=True)
        inbox: queue.Queue = queue.Queue()
        granted: queue.Queue = queue.Queue()
        spy.on_message = lambda c, u, msg: inbox.put(msg.topic)
        spy.on_subscribe = lambda c, u, mid, rcs, props: granted.put([str(rc) for rc in rcs])
        assert connack(spy, host, mqtt_users.port) == "Success"
        spy.subscribe([(device_topic(b), 1), (device_topic("+"), 1), ("sluice/#", 1), ("#", 1),
                       (f"$share/spy/{device_topic('+')}", 1)])
        print("SUBACK to a device in 2.0.11:", granted.get(timeout=5))
        publish_three_as(mqtt_users, b, col)
        time.sleep(1.0)
        close(spy)
    assert inbox.empty(), f"a device received {inbox.get()!r}"


def test_a_device_cannot_take_over_the_collectors_client_id(mqtt_users, tmp_path):
    run = run_id()
    a, b = mqtt_users.devices(run, 2)
    host = mqtt_users.broker.config.host
    with Collector(tmp_path, mqtt_users, run, [b]) as col:
        collector_id = col.config.mqtt_client_id
        # A second client with the collector's client id: a clean start would drop the
        # collector's queued session and kick it off, were the id honoured.
        intruder = mqtt_users.client(a, client_id=collector_id, v5=True)
        inbox: queue.Queue = queue.Queue()
        intruder.on_message = lambda c, u, msg: inbox.put(msg.topic)
        assert connack(intruder, host, mqtt_users.port) == "Success"
        intruder.subscribe(device_topic(b), qos=1)
        publish_three_as(mqtt_users, b, col)
        time.sleep(0.5)
        assert col.collector.connected.is_set() and col.disconnects == 0, "the collector was kicked off"
        # The broker knows the intruder by its user name, not the id it asked for.
        log = mqtt_users.broker.log_file.read_text()
        assert f"as {a} (p5, c1, k10, u'{a}')" in log
        close(intruder)
    assert inbox.empty()


def test_mqtt_user_cli_adds_reloads_and_removes(mqtt_users, stack_config):
    """``python -m stack mqtt-user``, run as a user would, on the running shared broker."""
    name = f"cli-{run_id()}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack", "mqtt-user", *args], input=stdin, text=True,
                              capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)

    added = cli("add", name, "--password-stdin", stdin="a-chosen-password\n")
    assert added.returncode == 0, added.stderr
    mqtt_users.made.append(name)
    assert "a-chosen-password" not in added.stdout + added.stderr
    assert f"{name}" in cli("list").stdout
    host = mqtt_users.broker.config.host
    client = mqtt_users.client(name, password="a-chosen-password", v5=True)
    assert connack(client, host, mqtt_users.port) == "Success"
    close(client)
    again = cli("add", name)
    assert again.returncode == 2 and "--replace" in again.stderr
    rotated = cli("add", name, "--replace")
    assert rotated.returncode == 0, rotated.stderr
    new_password = rotated.stdout.strip()
    assert connack(mqtt_users.client(name, password="a-chosen-password", v5=True), host, mqtt_users.port) == "Not authorized"
    client = mqtt_users.client(name, password=new_password, v5=True)
    assert connack(client, host, mqtt_users.port) == "Success"
    close(client)
    assert cli("remove", name).returncode == 0
    assert connack(mqtt_users.client(name, password=new_password, v5=True), host, mqtt_users.port) == "Not authorized"
    bad = cli("add", "no/slashes")
    assert bad.returncode == 2 and "device id" in bad.stderr
    # Only hashes reach the broker's password file.
    assert new_password not in mqtt_users.broker.password_file.read_text()
