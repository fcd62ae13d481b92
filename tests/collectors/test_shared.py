"""Two MQTT collectors on one MQTT v5 shared subscription; one is SIGKILLed mid-minute and restarted.

Real Mosquitto, Kafka, MinIO and Elasticsearch. Both collectors subscribe to
``$share/<group>/<filter>`` with their own client id (own persistent session,
own writer id, own minute file) and land in one MinIO prefix; a stream loader
(``python -m collectors.stream``) takes their Kafka topic into Elasticsearch.
Five devices publish at a fixed rate while collector ``a`` is killed and
restarted. Afterwards:

- every published reading is in the minute files exactly once, counted by
  reading id across both writers' files;
- every published payload is on Kafka at least once (redeliveries are the
  surplus);
- Elasticsearch holds exactly the published ids.

The failover figures (seconds the group received nothing after the kill,
records redelivered) are printed, not asserted.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter

import pytest
from collector_helpers import new_run_id, spawn, terminate, wait_for
from confluent_kafka import Consumer
from mqtt_helpers import MqttUsers
from stream_helpers import Topics, es_count, es_docs, expected_ids, lag, seed_payload
from stream_helpers import cli_args as loader_args
from stream_helpers import config as loader_config

from include import elasticsearch as es
from include.contract import parse_key, parse_timestamp, row_identity
from include.kafka import HEADER_RECEIVED_AT
from include.landing import S3Landing
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.spool import parse_csv
from stack.config import LANDING_BUCKET
from stack.services.mosquitto import device_topic

pytestmark = pytest.mark.integration

DEVICES = 5
RATE = 50.0  # messages/s, all devices together
SECONDS = 24.0
KILL_AT, RESTART_AFTER = 8.0, 3.0


def publish_steadily(mq: MqttUsers, devices: list[str], metric: str, ts0: int, count: int,
                     started: threading.Event) -> None:
    """``count`` seed payloads (QoS 1) at RATE per second, each device as itself; message i has timestamp ts0 + i ms."""
    acked: set[tuple[int, int]] = set()
    clients = []
    for k, device in enumerate(devices):
        client = mq.client(device)
        client.max_inflight_messages_set(1000)
        client.on_publish = lambda c, u, mid, rc, props, k=k: acked.add((k, mid))
        client.connect("127.0.0.1", mq.port)
        client.loop_start()
        clients.append(client)
    try:
        mids = []
        start = time.monotonic()
        started.set()
        for i in range(count):
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            k = i % DEVICES
            info = clients[k].publish(device_topic(devices[k]), seed_payload(metric, f"dev{k}", ts0 + i, i), qos=1)
            mids.append((k, info.mid))
        wait_for(lambda: acked.issuperset(mids), 60, "PUBACKs of every publish")
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()


def kafka_records(bootstrap: str, topic: str, want: set[bytes], timeout: float) -> list[tuple[bytes, float]]:
    """(value, received_at epoch) of every record of ``topic``, read until ``want`` is covered and 2 s are quiet."""
    from kafka_login import settings

    consumer = Consumer({**settings(bootstrap), "group.id": f"test-{new_run_id()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[tuple[bytes, float]] = []
    deadline, quiet = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                if want <= {v for v, _ in got}:
                    quiet = quiet or time.monotonic() + 2.0
                    if time.monotonic() > quiet:
                        break
                continue
            headers = dict(msg.headers() or [])
            got.append((msg.value(), parse_timestamp(headers[HEADER_RECEIVED_AT].decode()).timestamp()))
    finally:
        consumer.close()
    return got


def test_two_collectors_share_devices_kill_one_mid_minute(tmp_path, mqtt_users, kafka, minio, elasticsearch):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    metric, group = f"t.{run}.m", f"g{run}"
    devices = mqtt_users.devices(run, DEVICES)
    creds = minio.credentials("collector")  # the collectors' own user; the test reads as root
    (tmp_path / "ak").write_text(creds["access_key"])
    (tmp_path / "sk").write_text(creds["secret_key"])
    landing_prefix = f"test-{run}"
    landing = S3Landing(minio.admin_client(), LANDING_BUCKET, landing_prefix)

    def collector_args(name: str) -> list[str]:
        return ["--landing-url", f"s3://{LANDING_BUCKET}/{landing_prefix}", "--s3-endpoint-url", minio.endpoint_url,
                "--s3-access-key-file", str(tmp_path / "ak"), "--s3-secret-key-file", str(tmp_path / "sk"),
                "--s3-ca-bundle", str(minio.ca_file),
                "--state-dir", str(tmp_path / f"state-{name}"),
                # Its own collector user (= client id), over TLS; $share/<group>/ before each device topic.
                *mqtt_users.collector_args(f"col-{run}-{name}", devices), "--mqtt-shared-group", group,
                "--kafka-bootstrap", t.bootstrap, "--kafka-topic", t.raw, "--kafka-deadletter-topic", t.dl,
                "--metrics-port", "-1", "--heartbeat-interval", "0"]

    def start(name: str):
        log = tmp_path / f"collector-{name}.log"
        seen = log.read_text().count("subscribed to") if log.exists() else 0
        proc = spawn("collectors.mqtt", collector_args(name), log)
        wait_for(lambda: log.read_text().count("subscribed to") > seen, 60, f"collector {name}'s shared subscription")
        return proc

    cfg = loader_config(run, t, sinks=("elasticsearch",), elasticsearch=elasticsearch)
    es_client = elasticsearch.admin()  # checks and clean-up
    count = int(RATE * SECONDS)
    ts0 = int(time.time() * 1000)
    payloads = {seed_payload(metric, f"dev{i % DEVICES}", ts0 + i, i) for i in range(count)}  # loc tag: dev<k>
    want_ids = expected_ids(metric, ts0, count, devices=DEVICES, topic_devices=devices)
    procs = {name: start(name) for name in ("a", "b")}
    loader = spawn("collectors.stream", loader_args(cfg, metrics_port=-1), tmp_path / "loader.log")
    try:
        started = threading.Event()
        publisher = threading.Thread(target=publish_steadily, args=(mqtt_users, devices, metric, ts0, count, started))
        publisher.start()
        assert started.wait(30)
        time.sleep(KILL_AT)
        killed_at = time.time()
        terminate(procs["a"], signal.SIGKILL)
        time.sleep(RESTART_AFTER)
        procs["a"] = start("a")
        restarted_at = time.time()
        publisher.join(120)
        assert not publisher.is_alive()
        records = kafka_records(t.bootstrap, t.raw, payloads, timeout=120)
        # Both collectors stop: SIGTERM lands the partial minute of each writer.
        for name in ("a", "b"):
            assert terminate(procs[name], timeout=120) == 0
        wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, [t.raw]) == 0, 120, "the loader to commit everything")
        wait_for(lambda: es_count(es_client, cfg.es_index_prefix, SENSOR) >= len(want_ids), 60, "documents in ES")
        es_ids = set(es_docs(es_client, cfg.es_index_prefix, SENSOR))
    finally:
        for proc in (*procs.values(), loader):
            if proc.poll() is None:
                terminate(proc, timeout=120)
        es.drop_prefix(es_client, cfg.es_index_prefix)

    # Minute files: one per writer, the union is every reading exactly once (by id).
    files = [info.key for info in landing.list("raw/sensor/") if info.key.endswith(".csv")]
    writers = {parse_key(key).name for key in files}
    assert writers == {f"col-{run}-a.csv", f"col-{run}-b.csv"}, files
    ids: Counter[str] = Counter()
    rows_of: Counter[str] = Counter()
    devices_of: dict[str, set[str]] = {}
    for key in files:
        writer = parse_key(key).writer
        for row in parse_csv(SENSOR_SCHEMA, landing.get(key)):
            ids[row_identity(SENSOR, row).id] += 1
            rows_of[writer] += 1
            devices_of.setdefault(writer, set()).add(row[SENSOR_SCHEMA.names.index("device")])
    # The case the contract is about: readings of one device and minute reached both writers.
    assert devices_of[f"col-{run}-a"] & devices_of[f"col-{run}-b"]
    assert set(ids) == want_ids
    assert [i for i, n in ids.items() if n > 1] == []  # exactly once across both writers
    # Kafka: at least once, nothing but what was published.
    values = Counter(v for v, _ in records)
    assert set(values) == payloads
    # Elasticsearch: exactly the published ids.
    assert es_ids == want_ids

    times = sorted(at for _, at in records if at >= killed_at - 1)
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= killed_at]
    redelivered = sum(values.values()) - len(values)
    print(f"\nshared-subscription failover: {count} messages ({3 * count} readings) at {RATE:g}/s over two "
          f"collectors; SIGKILL, restart after {restarted_at - killed_at:.1f} s: longest pause of the group's "
          f"receiving after the kill {max(gaps, default=0.0):.2f} s; {redelivered} Kafka record(s) redelivered; "
          f"minute-file rows per writer {dict(rows_of)}, {len(ids)} distinct ids")
