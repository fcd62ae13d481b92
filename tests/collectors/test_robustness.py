"""Hostile input and full disks against the real Mosquitto, Kafka and MinIO.

* Poison pills: each is sent, then a good payload from another device; the
  collector stays up and healthy, the good payloads land and reach Kafka, each
  pill is a dead letter with its reason (metadata only on Kafka when oversized).
* Backpressure: with a small journal cap the collector stops acknowledging,
  says so, and after the cap clears everything lands exactly once.
* Kafka refusing a record, and a backlog record Kafka can never take.
* The host sampler with Kafka down.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import orjson
import paho.mqtt.client as mqtt
import pytest
from collector_helpers import free_port, new_run_id, wait_for
from confluent_kafka import Producer
from kafka_login import options as kafka_options
from kafka_login import security
from test_mqtt import Running, deadletters, kafka_count, mqtt_config, publish, seed_payload, sensor_rows

from collectors.common import ScaledClock
from collectors.host import HostConfig, HostSampler
from collectors.kafka_bridge import KafkaBridge, encode_record
from include.kafka import ensure_topics, producer_config
from include.landing import S3Landing, open_landing
from include.manifests import read_heartbeats, read_manifests
from include.contract import reading_id
from include.schemas import HOST, SENSOR
from stack.config import LANDING_BUCKET
from stack.services.mosquitto import device_topic

pytestmark = pytest.mark.integration


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def pills(now_ms: int) -> dict[str, tuple[str, bytes, set[str]]]:
    """name -> (device, payload, reason codes that may dead-letter it)."""
    def one(**kw) -> bytes:
        return orjson.dumps({"metric": "m", "value": 1, "timestamp": now_ms, **kw})

    return {
        "nested-1025": ("deep1", nested(1025), {"internal", "not_json", "too_deep"}),
        "nested-5000": ("deep2", nested(5000), {"internal", "not_json", "too_deep"}),
        "metric-newline": ("nl1", one(metric="temp\n"), {"bad_name"}),
        "tag-key-newline": ("nl2", one(tags={"type\n": "x"}), {"bad_name"}),
        "tag-value-newline": ("nl3", one(tags={"type": "x\n"}), {"bad_name"}),
        "flat-key-newline": ("nl4", orjson.dumps({"temp\n": 1, "timestamp": now_ms}), {"bad_name"}),
        "oversized-2MB": ("big", b'{"metric": "m", "value": 1, "pad": "' + b"x" * 2_000_000 + b'"}', {"oversized"}),
    }


def test_poison_pills_leave_the_collector_up_and_the_good_payloads_flowing(tmp_path, mqtt_users, kafka, minio):
    run = new_run_id()
    bootstrap = kafka.config.kafka_bootstrap
    # The collector lands as MinIO's collector user (write-only) through the store it opens itself
    # (the MinIO client, as in production); the test reads as root.
    creds = minio.credentials("collector")
    store = {"s3_endpoint_url": minio.endpoint_url, "s3_access_key": creds["access_key"],
             "s3_secret_key": creds["secret_key"], "s3_ca_bundle": str(minio.ca_file)}
    seen = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-{run}")
    now_ms = int(time.time() // 60 * 60 * 1000) + 1000
    sent = pills(now_ms)
    # Each pill comes from a device user of its own (its name: the run id, then the pill's device).
    name = {d: f"d{run}-{d}" for d in [*(device for device, _, _ in sent.values()), "good", "odd"]}
    mqtt_users.devices(run, names=list(name.values()))
    cfg = mqtt_config(tmp_path, run, mqtt_users, list(name.values()), bootstrap,
                      landing_url=f"s3://{LANDING_BUCKET}/test-{run}", fsync_interval=0, heartbeat_interval=1.0,
                      **store)
    good = []
    with Running(cfg) as collector:
        clients = {d: mqtt_users.client(user) for d, user in name.items()}
        for client in clients.values():
            client.connect("127.0.0.1", mqtt_users.port)
            client.loop_start()
        n = 0
        for device, payload, _ in sent.values():
            clients[device].publish(device_topic(name[device]), payload, qos=1).wait_for_publish(20)
            good.append(seed_payload("good", now_ms + n, n))
            clients["good"].publish(device_topic(name["good"]), good[-1], qos=1).wait_for_publish(10)
            n += 1
        # An odd tag key, new per message: valid names, so they are readings (the sinks' mapping
        # must cope, see the stream loader); here they must not disturb anything.
        for i in range(5):
            clients["odd"].publish(device_topic(name["odd"]), orjson.dumps(
                {"metric": "m", "value": i, "timestamp": now_ms + i, "tags": {f"type.x{i}": "a"}}), qos=1).wait_for_publish(10)
        for client in clients.values():
            client.disconnect()
            client.loop_stop()
        # A device ending in a newline: Mosquitto refuses the topic (control characters are not
        # valid MQTT UTF-8) and drops the publisher; the collector never sees it ...
        refused = mqtt_users.client(name["good"])
        gone = threading.Event()
        refused.on_disconnect = lambda *a: gone.set()
        refused.connect("127.0.0.1", mqtt_users.port)
        refused.loop_start()
        refused.publish(device_topic("dev\n"), b'{"metric": "m", "value": 1}', qos=1)
        assert gone.wait(10), "the broker accepted a topic with a newline"
        refused.loop_stop()
        # ... and should another broker pass it, the handler dead-letters it (paho's own message type).
        msg = mqtt.MQTTMessage(mid=0, topic=device_topic("dev\n").encode())
        msg.payload, msg.qos = orjson.dumps({"metric": "m", "value": 1, "timestamp": now_ms}), 0
        collector._on_message(collector.client, None, msg)
        sent["device-newline"] = ("dev\n", msg.payload, {"bad_name", "bad_device"})
        total = 2 * len(sent) - 1 + 5
        wait_for(lambda: collector.messages >= total, 30, "every message handled")
        wait_for(lambda: collector.metrics.kafka_delivered._value.get() >= total, 30, "Kafka confirmed every record")
        status, text = healthz(collector.metrics_port)
        assert status == 200, text
        assert collector.client._thread.is_alive()  # paho's network thread survived every pill
    rows = sensor_rows(seen)
    good_rows = [r for r in rows if r[1] == name["good"]]
    assert sorted(good_rows) == sorted(set(good_rows))
    assert len(good_rows) == 3 * (len(sent) - 1)
    assert len([r for r in rows if r[1] == name["odd"]]) == 5
    assert not [r for r in rows if r[1] not in (name["good"], name["odd"])], "no pill became a row"
    letters = deadletters(seen)
    by_topic = {x["topic"].split("/sensors/", 1)[1]: x for x in letters}
    for pill, (device, payload, codes) in sent.items():
        letter = by_topic[name.get(device, device)]
        assert set(letter["codes"]) & codes, (pill, letter["reason"])
        assert letter["reason"] and letter["payload_bytes"] == len(payload), pill
    got = kafka_count(bootstrap, [cfg.kafka_topic, cfg.kafka_deadletter_topic], total)
    assert set(good) <= set(got[cfg.kafka_topic])
    dead = got[cfg.kafka_deadletter_topic]
    assert len(dead) == len(sent)  # every pill, the handler-level one included
    assert max(map(len, dead)) < 100_000  # the 2 MB payload went as metadata only
    meta = [orjson.loads(v) for v in dead if v.startswith(b'{"metadata_only"')]
    assert len(meta) == 1 and meta[0]["payload_bytes"] == len(sent["oversized-2MB"][1])
    # The manifest of the minute counts the dead letters; the heartbeat is there.
    manifests, bad = read_manifests(seen, SENSOR, time_minute(now_ms))
    assert not bad and len(manifests) == 1
    assert manifests[0].rows[name["good"]] == 3 * (len(sent) - 1)
    # Payloads count in their receive minute: the test may have crossed into the next one.
    later, _ = read_manifests(seen, SENSOR, time_minute(now_ms + 60_000))
    assert sum(m.received for m in manifests + later) == total
    assert sum(sum(m.deadletters.values()) for m in manifests + later) >= len(sent)
    beats, _ = read_heartbeats(seen, SENSOR)
    assert [b.writer for b in beats] == [cfg.mqtt_client_id]


def time_minute(ms: int):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms // 1000 // 60 * 60, timezone.utc)


def test_backpressure_at_the_journal_cap_holds_acks_and_loses_nothing(tmp_path, mqtt_users, kafka):
    run = new_run_id()
    bootstrap = kafka.config.kafka_bootstrap
    devices = mqtt_users.devices(run, 3)
    # About 250 journal bytes a message: the cap is reached after ~100 of the 400 messages.
    cfg = mqtt_config(tmp_path, run, mqtt_users, devices, bootstrap, journal_max_bytes=25_000, mqtt_receive_maximum=20,
                      fsync_interval=0)
    # Keep clear of a minute's end: the collector's own minute close would clear the cap mid-test.
    wait_for(lambda: 2 < time.time() % 60 < 30, 40, "the first half of a minute", interval=0.5)
    ts0 = int(time.time() // 60 * 60 * 1000)
    count = 400
    landing = open_landing((tmp_path / "landing").as_uri())
    with Running(cfg) as collector:
        publisher = threading.Thread(target=publish, args=(mqtt_users, devices, count), kwargs={"ts0": ts0})
        publisher.start()
        wait_for(lambda: collector.holding, 30, "the journal cap")
        time.sleep(1.0)
        held = collector.messages
        time.sleep(1.5)
        assert collector.messages == held < count, "at the cap the broker keeps the messages"
        assert not collector.connected.is_set()
        assert held <= 25_000 // 200 + cfg.mqtt_receive_maximum
        status, text = healthz(collector.metrics_port)
        assert status == 503 and "journal holds" in text
        assert collector.metrics.backpressure._value.get() == 1
        publisher.join(60)  # the broker took every publish: they wait in the collector's session
        assert not publisher.is_alive()
        # Closing the minute moves the journal to the spool: the cap clears, the collector reconnects
        # and the broker delivers what it kept (and, again, what was handled but not acknowledged).
        def landed_ids() -> set[str]:
            return {reading_id(SENSOR, r[1], r[0], r[2], r[4]) for r in sensor_rows(landing)}

        def settled() -> bool:
            collector._close(int(time.time() // 60 * 60 + 60))
            time.sleep(0.5)
            return not collector.holding and collector.connected.is_set() and len(landed_ids()) >= 3 * count

        wait_for(settled, 120, "every message landed with the cap cleared", interval=0.1)
        assert collector._gen >= 2, "the cap was reached more than once"
    rows = sensor_rows(landing)
    ids = [reading_id(SENSOR, r[1], r[0], r[2], r[4]) for r in rows]
    expected = {reading_id(SENSOR, devices[i % 3], _iso(ts0 + i), f"mqtt.home.dev{i % 3}", f"loc=dev{i % 3} type={k}")
                for i in range(count) for k in ("dust", "humidity", "temperature")}
    assert len(ids) == len(set(ids)) == 3 * count  # exactly once
    assert set(ids) == expected
    got = kafka_count(bootstrap, [cfg.kafka_topic], count, timeout=30)
    assert len(set(got[cfg.kafka_topic])) == count


def _iso(ms: int) -> str:
    from include.contract import timestamp_text

    return timestamp_text(ms / 1000)


def test_kafka_refusing_a_record_quarantines_it_and_the_thread_lives(tmp_path, kafka):
    run = new_run_id()
    bootstrap = kafka.config.kafka_bootstrap
    topic = f"t.{run}.raw"
    ensure_topics(bootstrap, [topic], settings=security())
    done: list = []
    producer = Producer(producer_config(bootstrap, client_id=f"bridge-{run}", message_timeout_s=10, **security()))
    bridge = KafkaBridge(producer, tmp_path / "backlog", lambda token, seq: done.append(token),
                         monotonic=time.monotonic, fsync_interval=0)
    bridge.forward(topic, b"dev", b"x" * 2_000_000, [], "too-big")  # over librdkafka's message.max.bytes
    bridge.forward(topic, b"dev", b"fine", [], "good")
    wait_for(lambda: (bridge.poll(0.1) or len(done)) >= 2, 20, "both tokens done")
    assert set(done) == {"too-big", "good"} and bridge.quarantined == 1 and not bridge.down
    assert (tmp_path / "backlog" / "quarantine" / "records.kbl").stat().st_size > 2_000_000
    got = kafka_count(bootstrap, [topic], 1)
    assert got[topic] == [b"fine"]


def test_a_backlog_record_kafka_never_takes_is_quarantined_not_replayed_forever(tmp_path, kafka):
    run = new_run_id()
    bootstrap = kafka.config.kafka_bootstrap
    topic = f"t.{run}.raw"
    ensure_topics(bootstrap, [topic], settings=security())
    backlog = tmp_path / "backlog"
    backlog.mkdir()
    # A previous run parked a good record, a 2 MB one and another good one; a second file is corrupt.
    (backlog / "000000000000.kbl").write_bytes(
        encode_record(topic, b"d", b"one", []) + encode_record(topic, b"d", b"y" * 2_000_000, [])
        + encode_record(topic, b"d", b"two", []))
    (backlog / "000000000001.kbl").write_bytes(b"\x00\x00\x00\x05{bad}" + b"\x00" * 8)
    for attempt in range(2):  # the second start finds nothing left to replay
        producer = Producer(producer_config(bootstrap, client_id=f"bridge-{run}", message_timeout_s=10, **security()))
        bridge = KafkaBridge(producer, backlog, lambda token, seq: None, monotonic=time.monotonic,
                             retry_interval=0.1, fsync_interval=0)
        wait_for(lambda b=bridge: (b.poll(0.05) or not b.down), 30, "the backlog drained")
        bridge.close(5)
        if attempt == 0:
            assert bridge.quarantined == 2
    assert sorted(kafka_count(bootstrap, [topic], 2)[topic]) == [b"one", b"two"]
    reasons = [p.read_text() for p in (backlog / "quarantine").glob("*.reason")]
    assert len(reasons) == 1 and "metadata is not valid" in reasons[0]
    assert not list(backlog.glob("*.kbl*"))


def test_host_sampler_starts_samples_and_lands_while_kafka_is_down(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: Kafka is down for the whole run
    landing = open_landing((tmp_path / "landing").as_uri())
    cfg = HostConfig(landing_url=landing.url, state_dir=str(tmp_path / "state"), host="box1", metrics_port=0,
                     kafka_bootstrap=dead, shutdown_timeout=1.0, heartbeat_interval=5.0, **kafka_options())
    cfg.validate()
    clock = ScaledClock(20, start=(time.time() // 60 * 60) + 30)
    sampler = HostSampler(cfg, clock=clock)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: sampler.metrics_port > 0 and sampler.samples >= 100, 60, "samples while Kafka is down")
        assert healthz(sampler.metrics_port)[0] == 200
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    files = [info.key for info in landing.list("raw/host/")]
    assert len(files) >= 2 and all(k.endswith("/box1.csv") for k in files)
    minute = sorted(files)[1]  # a whole minute: 60 rows, and its manifest says so
    from include.contract import parse_key

    manifests, bad = read_manifests(landing, HOST, parse_key(minute).minute)
    assert not bad and manifests[0].rows == {"box1": 60} and manifests[0].received == 60
    beats, _ = read_heartbeats(landing, HOST)
    assert beats and beats[0].writer == "box1"
