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

from collectors.common import Clock, start_cli
from collectors.config import build_parser, option, require, resolve
from include.contract import minute_key, parse_iso_utc
from include.landing import open_landing
from include.schemas import SENSOR, SENSOR_METRIC, SENSOR_SCHEMA
from include.sensors import Limits, csv_line, parse_payload

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
    mqtt_port: int = option(1883, "MQTT broker port.")
    topic_prefix: str = option("sluice/sensors", "Topics are <prefix>/<device>.")
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
    mqtt_username: str = option("", "MQTT user name (empty: anonymous).")
    mqtt_password: str = option("", "MQTT password.", secret=True)
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
        require(not self.output or self.duration > 0, "duration", "offline (--output) needs --duration seconds")
        require(not self.output or self.malformed_rate == 0, "malformed_rate",
                "offline (--output) writes what the collector would land; malformed payloads are never landed")
        if self.start:
            try:
                parse_start(self.start)
            except ValueError as exc:
                require(False, "start", str(exc))


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
        self.devices = [f"{config.device_prefix}-{i:04d}" for i in range(config.devices)]
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
        import paho.mqtt.client as mqtt

        c = self.config
        client = self._client or mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        if c.mqtt_username and self._client is None:
            client.username_pw_set(c.mqtt_username, c.mqtt_password or None)
        client.connect(c.mqtt_host, c.mqtt_port, keepalive=30)
        client.loop_start()
        try:
            self._publish_loop(client, stop)
            self._wait_acked(stop, timeout=60)
        finally:
            client.disconnect()
            client.loop_stop()
        return self.sent

    def _publish_loop(self, client, stop: threading.Event) -> None:
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
                client.publish(f"{c.topic_prefix}/{self.devices[device]}", payload, qos=c.qos)
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
    devices = [f"{config.device_prefix}-{i:04d}" for i in range(config.devices)]
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
