"""MQTT collector against real Mosquitto, Kafka and MinIO: counts and faults.

Every test uses its own MQTT topics, client id, Kafka topics and landing
prefix. Faults that stop a server use a private instance of it
(collector_helpers.private_service), so the shared stack keeps running.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from collector_helpers import new_run_id, private_service, spawn, terminate, wait_for
from confluent_kafka import Consumer
from kafka_login import options as kafka_options
from kafka_login import settings as kafka_settings
from mqtt_helpers import MqttUsers

from collectors.mqtt import MqttCollector, MqttConfig
from collectors.simulate_sensors import Simulator, SimulatorConfig, device_ids
from include.contract import PAYLOAD, deadletter_prefix
from include.landing import S3Landing, open_landing
from include.schemas import SENSOR_SCHEMA
from include.spool import parse_csv
from stack.config import LANDING_BUCKET, StackConfig
from stack.services.kafka import Kafka
from stack.services.mosquitto import Mosquitto, device_topic

pytestmark = pytest.mark.integration


# -- helpers -------------------------------------------------------------------------
def seed_payload(device: str, ts_ms: int, n: int) -> bytes:
    return orjson.dumps([
        {"type": "Metric", "metric": f"mqtt.home.{device}", "timestamp": ts_ms, "value": round(20 + n % 7 * 0.1, 2),
         "tags": {"type": kind, "loc": device}}
        for kind in ("temperature", "humidity", "dust")
    ])


def publish(mq: MqttUsers, devices: list[str], count: int, *, start: int = 0, ts0: int | None = None,
            rate: float = 0) -> None:
    """Publish ``count`` seed payloads with QoS 1, each device as itself, and wait for every PUBACK.

    Message i comes from device ``devices[i % n]`` on its own topic; its payload names
    ``dev{i % n}`` and carries timestamp ts0 + i ms (distinct per device), so readings
    never share an identity. ``ts0`` defaults to the start of the current minute.
    ``rate`` > 0 spreads the messages at that many per second. Publishes made while
    the broker is away are queued by paho and sent after it reconnected (each
    device's persistent session, clean_session off).
    """
    ts0 = ts0 if ts0 is not None else int(time.time() // 60 * 60 * 1000)
    acked: set[tuple[int, int]] = set()
    clients = []
    for k, device in enumerate(devices):
        client = mq.client(device, clean_session=False)
        client.max_inflight_messages_set(500)
        client.on_publish = lambda c, u, mid, rc, props, k=k: acked.add((k, mid))
        client.connect(mq.broker.config.host, mq.port)
        client.loop_start()
        clients.append(client)
    n = len(devices)
    try:
        mids = []
        for i in range(start, start + count):
            info = clients[i % n].publish(device_topic(devices[i % n]), seed_payload(f"dev{i % n}", ts0 + i, i), qos=1)
            mids.append((i % n, info.mid))
            if rate:
                time.sleep(1 / rate)
        wait_for(lambda: acked.issuperset(mids), 60, "PUBACKs of every publish")
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()


def sensor_rows(landing, prefix: str = "raw/sensor/") -> list[tuple[str, ...]]:
    return [tuple(r) for info in landing.list(prefix) if info.key.endswith(".csv")
            for r in parse_csv(SENSOR_SCHEMA, landing.get(info.key))]


def deadletters(landing) -> list[dict]:
    return [orjson.loads(line) for info in landing.list(deadletter_prefix(PAYLOAD))
            for line in landing.get(info.key).splitlines()]


def kafka_count(bootstrap: str, topics: list[str], expect: int, timeout: float = 20,
                kafka_config: StackConfig | None = None) -> dict[str, list[bytes]]:
    consumer = Consumer({**kafka_settings(bootstrap, config=kafka_config), "group.id": f"test-{new_run_id()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    got: dict[str, list[bytes]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                total = sum(map(len, got.values()))
                if total >= expect:
                    # Reached the count: read on briefly to catch duplicates.
                    quiet_until = quiet_until or time.monotonic() + 1.0
                    if time.monotonic() > quiet_until:
                        break
                continue
            got[msg.topic()].append(msg.value())
    finally:
        consumer.close()
    return got


def kafka_unique(bootstrap: str, topic: str, expected: set[bytes], timeout: float) -> set[bytes]:
    """Distinct values of ``topic``, read until they include ``expected`` or ``timeout`` seconds pass."""
    consumer = Consumer({**kafka_settings(bootstrap), "group.id": f"test-{new_run_id()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: set[bytes] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not expected <= got:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.add(msg.value())
    finally:
        consumer.close()
    return got


def mqtt_config(tmp_path: Path, run: str, mq: MqttUsers, devices: list[str], kafka_bootstrap: str, *,
                kafka_config: StackConfig | None = None, **kw) -> MqttConfig:
    """An in-process collector of its own user ``col-<run>`` reading exactly ``devices``'s topics,
    logging in to Kafka as the admin of ``kafka_config``'s stack."""
    kw.setdefault("landing_url", (tmp_path / "landing").as_uri())
    kw = {**kafka_options(config=kafka_config), **kw}
    cfg = MqttConfig(
        state_dir=str(tmp_path / "state"), **mq.collector_options(f"col-{run}", devices),
        kafka_bootstrap=kafka_bootstrap, kafka_topic=f"t.{run}.raw", kafka_deadletter_topic=f"t.{run}.dl",
        metrics_port=0, **kw)
    cfg.validate()
    return cfg


class Running:
    """An in-process collector on a thread."""

    def __init__(self, config: MqttConfig, **kw) -> None:
        self.collector = MqttCollector(config, **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop,))

    def __enter__(self) -> MqttCollector:
        self.thread.start()
        assert self.collector.connected.wait(20), "collector did not connect"
        time.sleep(0.3)  # the SUBACK
        return self.collector

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def cli_args(tmp_path: Path, run: str, mq: MqttUsers, devices: list[str], kafka_bootstrap: str) -> list[str]:
    return ["--landing-url", (tmp_path / "landing").as_uri(), "--state-dir", str(tmp_path / "state"),
            *mq.collector_args(f"col-{run}", devices),
            "--kafka-bootstrap", kafka_bootstrap, "--kafka-topic", f"t.{run}.raw",
            "--kafka-deadletter-topic", f"t.{run}.dl", "--metrics-port", "-1", "--fsync-interval", "0"]


def journalled_rows(state: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (state / "journal").glob("sensor.*"))


# -- the whole path ------------------------------------------------------------------
def test_simulator_to_minio_and_kafka_exact_counts(tmp_path, mqtt_users, kafka, minio):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    # The collector lands as MinIO's collector user (write-only); the test reads as root.
    landing = S3Landing(minio.client("collector"), LANDING_BUCKET, f"test-{run}")
    seen = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-{run}")
    devices = mqtt_users.devices(run, names=device_ids(f"r{run}", 4))
    cfg = mqtt_config(tmp_path, run, mqtt_users, devices, bootstrap, landing_url=f"s3://{LANDING_BUCKET}/test-{run}")
    # Each simulated device logs in as itself (the simulator's devices file), over TLS.
    sim = Simulator(SimulatorConfig(mqtt_port=mqtt_users.port, mqtt_ca_file=mqtt_users.ca_file,
                                    mqtt_devices_file=str(mqtt_users.devices_file(devices)), device_prefix=f"r{run}",
                                    devices=4, rate=25, duration=2, malformed_rate=0.05, anomaly_rate=0.01))
    with Running(cfg, landing=landing) as collector:
        sent = sim.run(threading.Event())
        wait_for(lambda: collector.messages >= sent.messages, 20, "every message received")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.metrics_port}/metrics").read().decode()
        assert "sluice_collector_readings_received_total" in metrics
        assert "sluice_collector_spool_depth" in metrics
    rows = sensor_rows(seen)
    assert len(rows) == len(set(rows)) == sent.readings
    assert {r[1] for r in rows} == set(devices)
    letters = deadletters(seen)
    assert len(letters) == sent.malformed and all(x["reason"] and "payload" in x for x in letters)
    got = kafka_count(bootstrap, [cfg.kafka_topic, cfg.kafka_deadletter_topic], sent.messages)
    assert len(got[cfg.kafka_topic]) == sent.messages - sent.malformed
    assert len(got[cfg.kafka_deadletter_topic]) == sent.malformed
    # The payload goes to Kafka as sent: JSON, no base64 envelope.
    assert orjson.loads(got[cfg.kafka_topic][0])[0]["metric"].startswith("mqtt.home.")


def test_invalid_payloads_are_dead_lettered_and_valid_ones_land(tmp_path, mqtt_users, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    bad_device, good_device = mqtt_users.devices(run, 2)
    cfg = mqtt_config(tmp_path, run, mqtt_users, [bad_device, good_device], bootstrap)
    now_ms = int(time.time() * 1000)
    bad = {
        "not-json": b"{oops",
        "wrong-type": b'[{"metric": "m", "value": "hot", "timestamp": %d}]' % now_ms,
        "missing-value": b'{"metric": "m", "timestamp": %d}' % now_ms,
        "nan": b'[{"metric": "m", "value": NaN}]',
        "absurd-time": b'{"metric": "m", "value": 1, "timestamp": 4102444800}',
        "oversized": b"[" + b"0," * 40000 + b"0]",
    }
    with Running(cfg) as collector:
        clients = {d: mqtt_users.client(d) for d in (bad_device, good_device)}
        for client in clients.values():
            client.connect("127.0.0.1", mqtt_users.port)
            client.loop_start()
        infos = [clients[bad_device].publish(device_topic(bad_device), p, qos=1) for p in bad.values()]
        infos += [clients[good_device].publish(device_topic(good_device), seed_payload("good", now_ms + i, i), qos=1)
                  for i in range(5)]
        for info in infos:
            info.wait_for_publish(10)
        for client in clients.values():
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: collector.messages >= len(infos), 10, "all messages")
        assert sum(s.value for m in collector.metrics.deadletters.collect() for s in m.samples
                   if s.name.endswith("_total")) == len(bad)
    landing = open_landing((tmp_path / "landing").as_uri())
    assert len(sensor_rows(landing)) == 15
    reasons = [x["reason"] for x in deadletters(landing)]
    assert len(reasons) == len(bad)
    for needle in ("not JSON", "not a number", "value is missing", "NaN", "outside", "exceeds"):
        assert any(needle in r for r in reasons), needle


# -- restarts ------------------------------------------------------------------------
def test_sigterm_flushes_partial_minute_and_restart_merges(tmp_path, mqtt_users, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    devices = mqtt_users.devices(run, 3)
    args = cli_args(tmp_path, run, mqtt_users, devices, bootstrap)
    ts0 = int(time.time() // 60 * 60 * 1000)  # every reading in one minute, whatever the wall clock does
    landing = open_landing((tmp_path / "landing").as_uri())
    counts = []
    for batch in range(2):
        log = tmp_path / "collector.log"
        seen = log.read_text().count("subscribed to") if log.exists() else 0
        proc = spawn("collectors.mqtt", args, log)
        try:
            # Publish once the collector (over TLS) has its subscription: a new session takes nothing before.
            wait_for(lambda log=log, seen=seen: log.read_text().count("subscribed to") > seen, 60,
                     "the collector's subscription")
            publish(mqtt_users, devices, 30, start=batch * 30, ts0=ts0)
            wait_for(lambda: journalled_rows(tmp_path / "state") >= 90, 15, "readings journalled")
        finally:
            assert terminate(proc) == 0, (tmp_path / "collector.log").read_text()[-2000:]
        rows = sensor_rows(landing)
        counts.append(len(rows))
        assert len(rows) == len(set(rows)) == 90 * (batch + 1)
    assert counts[1] > counts[0]
    got = kafka_count(bootstrap, [f"t.{run}.raw"], 60)
    assert len(got[f"t.{run}.raw"]) == 60


def test_the_end_of_a_burst_is_acknowledged_with_no_message_after_it(tmp_path, mqtt_users, kafka):
    """While messages flow, paho's thread acknowledges between them; after the last one the pump
    thread must: a SIGKILL a moment later then finds nothing unacknowledged, so the restarted
    collector is sent nothing again (a redelivery would be forwarded to Kafka a second time)."""
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    devices = mqtt_users.devices(run, 3)
    args = cli_args(tmp_path, run, mqtt_users, devices, bootstrap)
    log = tmp_path / "collector.log"
    proc = spawn("collectors.mqtt", args, log)
    try:
        wait_for(lambda: "subscribed to" in log.read_text(), 30, "the subscription")
        publish(mqtt_users, devices, 300)
        wait_for(lambda: journalled_rows(tmp_path / "state") >= 900, 60, "readings journalled")
        assert len(kafka_count(bootstrap, [f"t.{run}.raw"], 300, timeout=60)[f"t.{run}.raw"]) == 300
        time.sleep(1.0)  # some 20 ms without traffic hand the acknowledging to the pump thread
    finally:
        terminate(proc, signal.SIGKILL)
    proc = spawn("collectors.mqtt", args, log)
    try:
        wait_for(lambda: log.read_text().count("subscribed to") >= 2, 30, "the restarted collector's subscription")
        time.sleep(2.0)  # a present session's unacknowledged messages come right after the CONNACK
    finally:
        assert terminate(proc) == 0, log.read_text()[-2000:]
    assert len(kafka_count(bootstrap, [f"t.{run}.raw"], 300, timeout=30)[f"t.{run}.raw"]) == 300


def test_kill_9_loses_nothing_journalled(tmp_path, mqtt_users, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    devices = mqtt_users.devices(run, 3)
    args = cli_args(tmp_path, run, mqtt_users, devices, bootstrap)
    ts0 = int(time.time() // 60 * 60 * 1000)
    proc = spawn("collectors.mqtt", args, tmp_path / "collector.log")
    try:
        # Publish only once the (new) session has its subscription, or the broker drops them.
        wait_for(lambda: "subscribed to" in (tmp_path / "collector.log").read_text(), 30, "the subscription")
        publish(mqtt_users, devices, 200, ts0=ts0)
        wait_for(lambda: journalled_rows(tmp_path / "state") >= 600, 60, "readings journalled")
    finally:
        terminate(proc, signal.SIGKILL)
    journalled = journalled_rows(tmp_path / "state")
    assert journalled >= 600
    landing = open_landing((tmp_path / "landing").as_uri())
    expected = {seed_payload(f"dev{i % 3}", ts0 + i, i) for i in range(200)}
    proc = spawn("collectors.mqtt", args, tmp_path / "collector.log")
    try:
        wait_for(lambda: len(sensor_rows(landing)) >= 600, 60, "the journal replayed into the landing zone")
        # A payload journalled but not yet confirmed by Kafka at the kill was never
        # acknowledged to the broker: the broker redelivers it to the restarted
        # collector, which forwards it. Read Kafka while that collector runs.
        got = kafka_unique(bootstrap, f"t.{run}.raw", expected, timeout=60)
    finally:
        assert terminate(proc) == 0
    rows = sensor_rows(landing)
    assert len(rows) == len(set(rows)) == 600
    assert got == expected


# -- broker and Kafka faults (private servers) ---------------------------------------
def test_mosquitto_restart_loses_no_qos1_message(tmp_path, stack_config, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    with private_service(Mosquitto, stack_config, tmp_path / "mosquitto") as broker:
        mq = MqttUsers(broker, tmp_path)  # the private broker's own users (its runtime folder goes with it)
        devices = mq.devices(run, 3)
        cfg = mqtt_config(tmp_path, run, mq, devices, bootstrap)
        ts0 = int(time.time() // 60 * 60 * 1000)
        with Running(cfg) as collector:
            publisher = threading.Thread(target=publish, args=(mq, devices, 300), kwargs={"rate": 100, "ts0": ts0})
            publisher.start()
            wait_for(lambda: collector.messages >= 50, 10, "the first messages")
            broker.stop()  # SIGTERM: Mosquitto saves its persistent sessions
            during = collector.messages
            time.sleep(0.5)
            broker.start()
            assert during < 300, "the restart happened while devices were publishing"
            publisher.join(90)
            assert not publisher.is_alive()
            wait_for(lambda: collector.messages >= 300, 30, "every message after the restart")
            time.sleep(0.5)
    rows = sensor_rows(open_landing((tmp_path / "landing").as_uri()))
    assert len(rows) == len(set(rows)) == 900
    # Redeliveries after the restart are duplicates on Kafka: read until every distinct payload is there.
    expected = {seed_payload(f"dev{i % 3}", ts0 + i, i) for i in range(300)}
    assert kafka_unique(bootstrap, cfg.kafka_topic, expected, timeout=60) == expected


def test_kafka_down_files_still_land_and_bridge_catches_up(tmp_path, stack_config, mqtt_users):
    run = new_run_id()
    devices = mqtt_users.devices(run, 3)
    with private_service(Kafka, stack_config, tmp_path / "kafka") as broker:
        bootstrap = f"{broker.config.host}:{broker.port}"
        cfg = mqtt_config(tmp_path, run, mqtt_users, devices, bootstrap, kafka_message_timeout=5.0,
                          kafka_retry_interval=0.5, kafka_config=broker.config)
        landing = open_landing((tmp_path / "landing").as_uri())
        with Running(cfg) as collector:
            publish(mqtt_users, devices, 100)
            wait_for(lambda: collector.metrics.kafka_delivered._value.get() >= 100, 20, "delivery before the outage")
            broker.stop()
            try:
                publish(mqtt_users, devices, 100, start=100)
                wait_for(lambda: collector.messages >= 200, 30, "messages during the outage")
                assert collector.bridge.down
                # Readings still land in files while Kafka is down.
                collector._close(int(time.time() // 60 * 60 + 60))
                wait_for(lambda: len(sensor_rows(landing)) >= 600, 20, "files landed during the outage")
            finally:
                broker.start()
            wait_for(lambda: not collector.bridge.down, 60, "the backlog drained")
        assert len(sensor_rows(landing)) == 600
        got = kafka_count(bootstrap, [cfg.kafka_topic], 200, timeout=30, kafka_config=broker.config)
        assert len(set(got[cfg.kafka_topic])) == 200
