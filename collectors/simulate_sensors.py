"""Sensor simulator: N devices publishing temperature, humidity and dust over MQTT.

``python -m collectors.simulate_sensors --help`` lists every option. Each
message is the Arduino payload of ``seeds/000`` (a JSON array of three
``{type, metric, timestamp, value, tags}`` objects, metric
``mqtt.home.<device>``, tags ``type`` and ``loc``) on topic
``<topic-prefix>/<device>``; ``--payload-format flat`` sends
``{"timestamp":…, "temperature":…, "humidity":…, "dust":…}`` instead.
Values follow a daily cycle (warmest mid-afternoon UTC, humidity the other
way round) with Gaussian noise; ``--anomaly-rate`` injects spikes,
``--malformed-rate`` sends one of several broken payloads instead.

``--output <landing URL>`` runs offline instead: no broker, the readings of
``--duration`` seconds from ``--start`` go straight into minute files of that
landing zone, one file per writer (``--client-id``) per minute in the
collector's CSV format (the payloads are parsed by the collector's own
:func:`include.sensors.parse_payload`), and ``--ground-truth`` gets one JSON
line per injected spike (device, timestamp, type, value). Same seed, same
files and same ground truth: the anomaly tests and benchmarks use this.

Timestamps are epoch seconds as in the seed when every device publishes at
most once a second, else epoch milliseconds (one device never repeats a
timestamp, so no two of its readings share a row identity). Publishing is
QoS 1 with a deadline schedule; the run ends after ``--duration`` seconds or
``--messages`` messages and waits until the broker acknowledged all of them.

With ``--mqtt-devices-file`` (``device:password`` lines; the local stack writes
``runtime/mosquitto/devices``) every simulated device opens its own connection
as its own user, as real devices do on Sluice's broker, which lets a device
publish to its own topic only. Connections use TLS unless ``--no-mqtt-tls``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field

from datetime import datetime, timezone
from pathlib import Path

import orjson

from collectors.common import MQTT_TLS_PORT, Clock, secure_client, start_cli
from collectors.config import ConfigError, build_parser, describe, option, require, resolve
from include.contract import minute_key, parse_iso_utc
from include.landing import open_landing
from include.schemas import SENSOR, SENSOR_METRIC, SENSOR_SCHEMA
from include.sensors import SENSOR_TOPIC_PREFIX, Limits, csv_line, parse_payload

log = logging.getLogger(__name__)

#: Broken payloads the simulator can send, each a case the collector must dead-letter.
MALFORMED = (
    b"{not json",
    b'[{"metric": "mqtt.home.x", "timestamp": 1, "value": "hot", "tags": {"type": "temperature"}}]',
    b'[{"metric": "mqtt.home.x", "tags": {"type": "temperature"}}]',
    b'[{"metric": "mqtt.home.x", "value": NaN, "tags": {"type": "temperature"}}]',
    b'[{"metric": "mqtt.home.x", "timestamp": 99999999999999, "value": 1, "tags": {"type": "dust"}}]',
    b"42",
)


@dataclass(frozen=True)
class SimulatorConfig:
    mqtt_host: str = option("127.0.0.1", "MQTT broker host.")
    mqtt_port: int = option(MQTT_TLS_PORT, "MQTT broker port (8883: TLS).")
    topic_prefix: str = option(SENSOR_TOPIC_PREFIX, "Topics are <prefix>/<device>.")
    devices: int = option(3, "Number of simulated devices.")
    device_prefix: str = option("room", "Device ids are <prefix>-<n>.")
    rate: float = option(1.0, "Messages per second per device (each seed-format message holds three readings).")
    duration: float = option(60.0, "Seconds to run (0: until --messages are sent or stopped).")
    messages: int = option(0, "Stop after this many messages in total (0: no limit).")
    payload_format: str = option("seed", "Payload shape.", choices=("seed", "flat"))
    anomaly_rate: float = option(0.0, "Fraction of readings replaced by a spike.")
    malformed_rate: float = option(0.0, "Fraction of messages replaced by a malformed payload.")
    qos: int = option(1, "MQTT QoS of the publishes.", choices=(0, 1))
    seed: int = option(0, "Random seed (same seed, same values).")
    client_id: str = option("sluice-simulator", "MQTT client id of the simulator.")
    # -- MQTT security (issue 15): each device logs in as itself, over TLS.
    mqtt_devices_file: str = option(
        "", "File of device:password lines (the stack writes runtime/mosquitto/devices): each simulated device "
            "connects as its own user, with the device id as user name and client id. Empty: one connection "
            "as --mqtt-username for every device.")
    mqtt_username: str = option("", "MQTT user name of the one shared connection without a devices file (empty: anonymous).")
    mqtt_password: str = option("", "MQTT password of --mqtt-username.", secret=True)
    mqtt_tls: bool = option(True, "Connect with TLS (off only for a plaintext demo listener on loopback).")
    mqtt_ca_file: str = option("", "PEM file of the CA that signed the broker's certificate (empty: the system's CAs).")
    output: str = option("", "Offline: write minute files into this landing URL (file:///… or s3://…) instead of publishing.")
    start: str = option("", "Offline: time of the first reading, ISO-8601 UTC (default: --duration seconds ago).")
    ground_truth: str = option("", "Offline: write one JSON line per injected spike to this file.")

    @classmethod
    def from_args(cls, argv=None, environ=None) -> SimulatorConfig:
        parser = build_parser(cls, "python -m collectors.simulate_sensors", __doc__.split("\n\n")[0])
        args = parser.parse_args(argv)
        values = resolve(cls, args, environ)
        if "qos" in values:
            values["qos"] = int(values["qos"])
        config = cls(**values)
        config.validate()
        object.__setattr__(config, "_log_level", args.log_level)
        return config

    def validate(self) -> None:
        require(self.devices >= 1, "devices", "must be >= 1")
        require(self.rate > 0, "rate", "must be > 0 messages per second")
        require(self.duration >= 0, "duration", "must be >= 0 seconds")
        require(self.messages >= 0, "messages", "must be >= 0")
        require(self.duration > 0 or self.messages > 0, "duration", "give --duration or --messages, or the run never ends")
        require(0 <= self.anomaly_rate <= 1, "anomaly_rate", "must be within 0..1")
        require(0 <= self.malformed_rate <= 1, "malformed_rate", "must be within 0..1")
        require(1 <= self.mqtt_port <= 65535, "mqtt_port", "must be 1..65535")
        require(not self.mqtt_ca_file or Path(self.mqtt_ca_file).is_file(), "mqtt_ca_file",
                f"{self.mqtt_ca_file!r} is not a readable file; give the CA certificate (PEM) that signed the broker's")
        if self.mqtt_devices_file and not self.output:
            passwords = read_devices_file(self.mqtt_devices_file)  # ConfigError naming the line
            missing = [d for d in device_ids(self.device_prefix, self.devices) if d not in passwords]
            require(not missing, "mqtt_devices_file",
                    f"{len(missing)} simulated device(s) have no password there (first: {missing[:1]}); "
                    f"add them with `python -m stack mqtt-user add NAME`")
        require(not self.output or self.duration > 0, "duration", "offline (--output) needs --duration seconds")
        require(not self.output or self.malformed_rate == 0, "malformed_rate",
                "offline (--output) writes what the collector would land; malformed payloads are never landed")
        if self.start:
            try:
                parse_start(self.start)
            except ValueError as exc:
                require(False, "start", str(exc))


def device_ids(prefix: str, count: int) -> list[str]:
    """The ids of ``count`` simulated devices: ``<prefix>-0000``, ``<prefix>-0001``, …"""
    return [f"{prefix}-{i:04d}" for i in range(count)]


def read_devices_file(path: str) -> dict[str, str]:
    """Device id -> password from a file of ``device:password`` lines; ConfigError naming a bad line."""
    where = describe("mqtt_devices_file")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        device, sep, password = line.partition(":")
        if not sep or not device or not password:
            raise ConfigError(f"{where}: {path} line {lineno} is not device:password")
        out[device] = password
    return out


@dataclass
class Sent:
    messages: int = 0
    readings: int = 0
    malformed: int = 0
    anomalies: int = 0
    #: Every injected spike as ``{"device", "timestamp", "type", "value"}`` (timestamp as sent).
    injected: list[dict] = field(default_factory=list)


class SensorModel:
    """Daily cycles plus noise; pure (values from a seeded RNG and the time)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.offsets = [self.rng.uniform(-2, 2) for _ in range(config.devices)]

    def values(self, index: int, epoch: float) -> dict[str, float]:
        day = 2 * math.pi * ((epoch % 86400) / 86400.0 - 15 / 24)  # warmest at 15:00 UTC
        r = self.rng
        values = {
            "temperature": 22.0 + self.offsets[index] + 4.0 * math.cos(day) + r.gauss(0, 0.3),
            "humidity": 45.0 - 10.0 * math.cos(day) + r.gauss(0, 1.0),
            "dust": max(0.0, 20.0 + 6.0 * math.cos(day / 2) + r.gauss(0, 2.0)),
        }
        return {k: round(v, 2) for k, v in values.items()}

    def payload(self, index: int, device: str, timestamp: int, sent: Sent) -> bytes:
        c = self.config
        if c.malformed_rate and self.rng.random() < c.malformed_rate:
            sent.malformed += 1
            return self.rng.choice(MALFORMED)
        epoch = timestamp / 1000 if timestamp > 1e11 else timestamp
        values = self.values(index, epoch)
        for name in values:
            if c.anomaly_rate and self.rng.random() < c.anomaly_rate:
                values[name] = round(values[name] * 3 + 50, 2)
                sent.anomalies += 1
                sent.injected.append({"device": device, "timestamp": timestamp, "type": name, "value": values[name]})
        sent.readings += len(values)
        if c.payload_format == "flat":
            return orjson.dumps({"timestamp": timestamp, **values})
        return orjson.dumps([
            {"type": "Metric", "metric": SENSOR_METRIC, "timestamp": timestamp, "value": v,
             "tags": {"type": name, "loc": device}}
            for name, v in values.items()
        ])


class Simulator:
    def __init__(self, config: SimulatorConfig, *, clock: Clock | None = None, client=None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._client = client
        self.model = SensorModel(config)
        self.sent = Sent()
        self.devices = device_ids(config.device_prefix, config.devices)
        self._last_ts = [0] * config.devices
        self._millis = config.rate > 1.0
        self._unacked = 0
        self._acked = threading.Condition()

    def _timestamp(self, index: int) -> int:
        now = self.clock.time()
        ts = int(now * 1000) if self._millis else int(now)
        ts = max(ts, self._last_ts[index] + 1)
        self._last_ts[index] = ts
        return ts

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self._unacked -= 1
            self._acked.notify_all()

    def run(self, stop: threading.Event) -> Sent:
        clients = self._connect()
        try:
            self._publish_loop(clients, stop)
            self._wait_acked(stop, timeout=60)
        finally:
            for client in dict.fromkeys(clients):
                client.disconnect()
                client.loop_stop()
        return self.sent

    def _connect(self) -> list:
        """One client per device (index-aligned): its own login with a devices file, else one shared client."""
        import paho.mqtt.client as mqtt

        c = self.config
        if self._client is not None:
            logins = None
        elif c.mqtt_devices_file:
            passwords = read_devices_file(c.mqtt_devices_file)
            logins = [(d, passwords[d]) for d in self.devices]
        else:
            logins = [(c.mqtt_username, c.mqtt_password)]
        made = [self._client] if logins is None else []
        for user, password in logins or ():
            # The device id as client id too: Sluice's broker forces the user name anyway.
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                 client_id=user if c.mqtt_devices_file else c.client_id)
            secure_client(client, user=user, password=password, tls=c.mqtt_tls, ca_file=c.mqtt_ca_file)
            made.append(client)
        for client in made:
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.on_publish = self._on_publish
            client.on_connect = _log_refusal
            try:
                client.connect(c.mqtt_host, c.mqtt_port, keepalive=30)
            except OSError:
                for other in made:
                    other.loop_stop()
                raise
            client.loop_start()
        return made if len(made) == len(self.devices) else [made[0]] * len(self.devices)

    def _publish_loop(self, clients: list, stop: threading.Event) -> None:
        c, clock = self.config, self.clock
        total_rate = c.rate * c.devices
        start = clock.monotonic()
        end = start + c.duration if c.duration else math.inf
        limit = c.messages or math.inf
        device = 0
        while not stop.is_set():
            now = clock.monotonic()
            if now >= end or self.sent.messages >= limit:
                return
            due = min(limit, int((now - start) * total_rate) + 1)
            while self.sent.messages < due:
                payload = self.model.payload(device, self.devices[device], self._timestamp(device), self.sent)
                with self._acked:
                    self._unacked += c.qos > 0
                clients[device].publish(f"{c.topic_prefix}/{self.devices[device]}", payload, qos=c.qos)
                self.sent.messages += 1
                device = (device + 1) % c.devices
            next_due = start + (self.sent.messages) / total_rate
            clock.wait(stop, min(next_due, end) - clock.monotonic())

    def _wait_acked(self, stop: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._acked:
            while self._unacked > 0 and time.monotonic() < deadline and not stop.is_set():
                self._acked.wait(0.1)
        if self._unacked:
            log.warning("%d publish(es) not acknowledged by the broker", self._unacked)


def _log_refusal(client, userdata, flags, reason_code, properties) -> None:
    if reason_code.is_failure:
        log.error("the broker refused %s: %s (check its password in the devices file)",
                  client._username.decode() if client._username else "the anonymous client", reason_code)


def parse_start(text: str) -> datetime:
    """``--start`` as an aware UTC datetime; ValueError (ContractError) saying what is expected."""
    return parse_iso_utc(text)


def write_offline(config: SimulatorConfig, *, landing=None, now: float | None = None) -> Sent:
    """Write ``--duration`` seconds of readings into minute files of ``--output`` (see the module doc).

    Device ``i`` sends at ``start + k / rate`` (k = 0, 1, …); each minute's
    rows of every device go into one file ``{client_id}.csv`` per minute.
    The payloads are exactly what :meth:`Simulator.run` would publish, parsed
    as the collector parses them, so the files are what it would land.
    """
    landing = landing or open_landing(config.output)
    start = parse_start(config.start) if config.start else (
        datetime.fromtimestamp(int((now or time.time()) - config.duration), timezone.utc))
    model, sent = SensorModel(config), Sent()
    devices = device_ids(config.device_prefix, config.devices)
    millis = config.rate > 1.0
    header = ",".join(SENSOR_SCHEMA.names) + "\n"
    limits = Limits(max_age=math.inf, max_future=math.inf)
    steps = int(config.duration * config.rate)
    rows: list[str] = []
    minute = None
    for k in range(steps):
        epoch = start.timestamp() + k / config.rate
        at = datetime.fromtimestamp(epoch, timezone.utc).replace(second=0, microsecond=0)
        if at != minute:
            if rows:
                landing.put(minute_key(SENSOR, minute, config.client_id), (header + "".join(rows)).encode())
            rows, minute = [], at
        timestamp = int(epoch * 1000) if millis else int(epoch)
        for index, device in enumerate(devices):
            payload = model.payload(index, device, timestamp, sent)
            sent.messages += 1
            rows.extend(csv_line(device, r) for r in parse_payload(payload, epoch, limits).readings)
    if rows:
        landing.put(minute_key(SENSOR, minute, config.client_id), (header + "".join(rows)).encode())
    if config.ground_truth:
        Path(config.ground_truth).write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in sent.injected))
    log.info("wrote %d readings of %d devices from %s into %s (%d spikes)", sent.readings, config.devices,
             start.isoformat(), landing.url, sent.anomalies)
    return sent


def main(argv: list[str] | None = None) -> int:
    config, stop = start_cli("collectors.simulate_sensors", SimulatorConfig, argv)
    t0 = time.monotonic()
    sent = write_offline(config) if config.output else Simulator(config).run(stop)
    elapsed = time.monotonic() - t0
    print(orjson.dumps({"messages": sent.messages, "readings": sent.readings, "malformed": sent.malformed,
                        "anomalies": sent.anomalies, "seconds": round(elapsed, 3)}).decode())
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
