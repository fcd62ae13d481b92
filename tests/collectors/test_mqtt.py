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
import paho.mqtt.client as mqtt
import pytest
from collector_helpers import new_run_id, private_service, spawn, terminate, wait_for
from confluent_kafka import Consumer

from collectors.mqtt import MqttCollector, MqttConfig
from collectors.simulate_sensors import Simulator, SimulatorConfig
from include.contract import PAYLOAD, deadletter_prefix
from include.landing import S3Landing, open_landing
from include.schemas import SENSOR_SCHEMA
from include.spool import parse_csv
from stack.config import LANDING_BUCKET
from stack.services.kafka import Kafka
from stack.services.mosquitto import Mosquitto

pytestmark = pytest.mark.integration


# -- helpers -------------------------------------------------------------------------
def seed_payload(device: str, ts_ms: int, n: int) -> bytes:
    return orjson.dumps([
        {"type": "Metric", "metric": f"mqtt.home.{device}", "timestamp": ts_ms, "value": round(20 + n % 7 * 0.1, 2),
         "tags": {"type": kind, "loc": device}}
        for kind in ("temperature", "humidity", "dust")
    ])


def publish(port: int, prefix: str, count: int, *, start: int = 0, devices: int = 3, ts0: int | None = None,
            host: str = "127.0.0.1", client_id: str | None = None, rate: float = 0) -> None:
    """Publish ``count`` seed payloads with QoS 1 and wait for every PUBACK.

    Message i carries timestamp ts0 + i ms (distinct per device), so readings
    never share an identity. ``ts0`` defaults to the start of the current
    minute. ``rate`` > 0 spreads the messages at that many per second.
    Publishes made while the broker is away are queued by paho and sent
    after it reconnected (its persistent session, clean_session off).
    """
    ts0 = ts0 if ts0 is not None else int(time.time() // 60 * 60 * 1000)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{new_run_id()}",
                         clean_session=False)
    client.max_inflight_messages_set(500)
    acked: set[int] = set()
    client.on_publish = lambda c, u, mid, rc, props: acked.add(mid)
    client.connect(host, port)
    client.loop_start()
    try:
        mids = []
        for i in range(start, start + count):
            info = client.publish(f"{prefix}/dev{i % devices}", seed_payload(f"dev{i % devices}", ts0 + i, i), qos=1)
            mids.append(info.mid)
            if rate:
                time.sleep(1 / rate)
        wait_for(lambda: acked.issuperset(mids), 60, "PUBACKs of every publish")
    finally:
        client.disconnect()
        client.loop_stop()


def sensor_rows(landing, prefix: str = "raw/sensor/") -> list[tuple[str, ...]]:
    return [tuple(r) for info in landing.list(prefix) if info.key.endswith(".csv")
            for r in parse_csv(SENSOR_SCHEMA, landing.get(info.key))]


def deadletters(landing) -> list[dict]:
    return [orjson.loads(line) for info in landing.list(deadletter_prefix(PAYLOAD))
            for line in landing.get(info.key).splitlines()]


def kafka_count(bootstrap: str, topics: list[str], expect: int, timeout: float = 20) -> dict[str, list[bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{new_run_id()}",
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
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{new_run_id()}",
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


def mqtt_config(tmp_path: Path, run: str, mqtt_port: int, kafka_bootstrap: str, **kw) -> MqttConfig:
    kw.setdefault("landing_url", (tmp_path / "landing").as_uri())
    cfg = MqttConfig(
        state_dir=str(tmp_path / "state"), mqtt_port=mqtt_port, mqtt_client_id=f"col-{run}",
        mqtt_topics=(f"t{run}/sensors/+",), kafka_bootstrap=kafka_bootstrap,
        kafka_topic=f"t.{run}.raw", kafka_deadletter_topic=f"t.{run}.dl", metrics_port=0, **kw)
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


def cli_args(tmp_path: Path, run: str, mqtt_port: int, kafka_bootstrap: str) -> list[str]:
    return ["--landing-url", (tmp_path / "landing").as_uri(), "--state-dir", str(tmp_path / "state"),
            "--mqtt-port", str(mqtt_port), "--mqtt-client-id", f"col-{run}", "--mqtt-topics", f"t{run}/sensors/+",
            "--kafka-bootstrap", kafka_bootstrap, "--kafka-topic", f"t.{run}.raw",
            "--kafka-deadletter-topic", f"t.{run}.dl", "--metrics-port", "-1", "--fsync-interval", "0"]


def journalled_rows(state: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (state / "journal").glob("sensor.*"))


# -- the whole path ------------------------------------------------------------------
def test_simulator_to_minio_and_kafka_exact_counts(tmp_path, mosquitto, kafka, minio):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    landing = S3Landing(minio.client(), LANDING_BUCKET, f"test-{run}")
    cfg = mqtt_config(tmp_path, run, mosquitto.port, bootstrap, landing_url=f"s3://{LANDING_BUCKET}/test-{run}")
    sim = Simulator(SimulatorConfig(mqtt_port=mosquitto.port, topic_prefix=f"t{run}/sensors", devices=4, rate=25,
                                    duration=2, malformed_rate=0.05, anomaly_rate=0.01, client_id=f"sim-{run}"))
    with Running(cfg, landing=landing) as collector:
        sent = sim.run(threading.Event())
        wait_for(lambda: collector.messages >= sent.messages, 20, "every message received")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.metrics_port}/metrics").read().decode()
        assert "sluice_collector_readings_received_total" in metrics
        assert "sluice_collector_spool_depth" in metrics
    rows = sensor_rows(landing)
    assert len(rows) == len(set(rows)) == sent.readings
    assert {r[1] for r in rows} == {f"room-{i:04d}" for i in range(4)}
    letters = deadletters(landing)
    assert len(letters) == sent.malformed and all(x["reason"] and "payload" in x for x in letters)
    got = kafka_count(bootstrap, [cfg.kafka_topic, cfg.kafka_deadletter_topic], sent.messages)
    assert len(got[cfg.kafka_topic]) == sent.messages - sent.malformed
    assert len(got[cfg.kafka_deadletter_topic]) == sent.malformed
    # The payload goes to Kafka as sent: JSON, no base64 envelope.
    assert orjson.loads(got[cfg.kafka_topic][0])[0]["metric"].startswith("mqtt.home.")


def test_invalid_payloads_are_dead_lettered_and_valid_ones_land(tmp_path, mosquitto, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    cfg = mqtt_config(tmp_path, run, mosquitto.port, bootstrap)
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
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{run}")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        infos = [client.publish(f"t{run}/sensors/bad", p, qos=1) for p in bad.values()]
        infos += [client.publish(f"t{run}/sensors/good", seed_payload("good", now_ms + i, i), qos=1) for i in range(5)]
        for info in infos:
            info.wait_for_publish(10)
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
def test_sigterm_flushes_partial_minute_and_restart_merges(tmp_path, mosquitto, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    args = cli_args(tmp_path, run, mosquitto.port, bootstrap)
    ts0 = int(time.time() // 60 * 60 * 1000)  # every reading in one minute, whatever the wall clock does
    landing = open_landing((tmp_path / "landing").as_uri())
    counts = []
    for batch in range(2):
        proc = spawn("collectors.mqtt", args, tmp_path / "collector.log")
        try:
            # Publish only once this run subscribed: the first run's new session drops what comes before.
            wait_for(lambda: (tmp_path / "collector.log").read_text().count("subscribed to") > batch, 30,
                     "the subscription")
            publish(mosquitto.port, f"t{run}/sensors", 30, start=batch * 30, ts0=ts0)
            wait_for(lambda: journalled_rows(tmp_path / "state") >= 90, 15, "readings journalled")
        finally:
            assert terminate(proc) == 0, (tmp_path / "collector.log").read_text()[-2000:]
        rows = sensor_rows(landing)
        counts.append(len(rows))
        assert len(rows) == len(set(rows)) == 90 * (batch + 1)
    assert counts[1] > counts[0]
    got = kafka_count(bootstrap, [f"t.{run}.raw"], 60)
    assert len(got[f"t.{run}.raw"]) == 60


def test_kill_9_loses_nothing_journalled(tmp_path, mosquitto, kafka):
    run = new_run_id()
    bootstrap = f"{kafka.config.host}:{kafka.port}"
    args = cli_args(tmp_path, run, mosquitto.port, bootstrap)
    ts0 = int(time.time() // 60 * 60 * 1000)
    proc = spawn("collectors.mqtt", args, tmp_path / "collector.log")
    try:
        # Publish only once the (new) session has its subscription, or the broker drops them.
        wait_for(lambda: "subscribed to" in (tmp_path / "collector.log").read_text(), 30, "the subscription")
        publish(mosquitto.port, f"t{run}/sensors", 200, ts0=ts0)
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
        cfg = mqtt_config(tmp_path, run, broker.port, bootstrap)
        with Running(cfg) as collector:
            publisher = threading.Thread(target=publish, args=(broker.port, f"t{run}/sensors", 300),
                                         kwargs={"client_id": f"pub-{run}", "rate": 100})
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
    got = kafka_count(bootstrap, [cfg.kafka_topic], 300)
    assert len(set(got[cfg.kafka_topic])) == 300


def test_kafka_down_files_still_land_and_bridge_catches_up(tmp_path, stack_config, mosquitto):
    run = new_run_id()
    with private_service(Kafka, stack_config, tmp_path / "kafka") as broker:
        bootstrap = f"{broker.config.host}:{broker.port}"
        cfg = mqtt_config(tmp_path, run, mosquitto.port, bootstrap, kafka_message_timeout=5.0, kafka_retry_interval=0.5)
        landing = open_landing((tmp_path / "landing").as_uri())
        with Running(cfg) as collector:
            publish(mosquitto.port, f"t{run}/sensors", 100)
            wait_for(lambda: collector.metrics.kafka_delivered._value.get() >= 100, 20, "delivery before the outage")
            broker.stop()
            try:
                publish(mosquitto.port, f"t{run}/sensors", 100, start=100)
                wait_for(lambda: collector.messages >= 200, 30, "messages during the outage")
                assert collector.bridge.down
                # Readings still land in files while Kafka is down.
                collector._close(int(time.time() // 60 * 60 + 60))
                wait_for(lambda: len(sensor_rows(landing)) >= 600, 20, "files landed during the outage")
            finally:
                broker.start()
            wait_for(lambda: not collector.bridge.down, 60, "the backlog drained")
        assert len(sensor_rows(landing)) == 600
        got = kafka_count(bootstrap, [cfg.kafka_topic], 200, timeout=30)
        assert len(set(got[cfg.kafka_topic])) == 200
