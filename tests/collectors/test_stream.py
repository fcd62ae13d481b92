"""Stream loader: decoding against the batch path, and against real Kafka, Elasticsearch, OpenTSDB.

Every test has its own topics, consumer group, index prefix and OpenTSDB
metric (or host tag), so parallel runs never meet. The sink outage runs on a
private Elasticsearch (collector_helpers.private_service) so the shared one
keeps serving the other engineers.
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
from confluent_kafka import Consumer, Producer, TopicPartition

from collectors.config import ConfigError
from collectors.stream import (
    StreamConfig, StreamLoader, Undecodable, host_documents, received_time, sensor_documents,
)
from include import elasticsearch as es
from include.kafka import HEADER_MQTT_TOPIC, HEADER_RECEIVED_AT, ensure_topics, producer_config
from include.opentsdb import OpenTSDBClient
from include.contract import reading_id
from include.contract import timestamp_text as iso_utc
from include.schemas import HOST, HOST_SCHEMA, SENSOR, SENSOR_SCHEMA
from include.sensors import Limits, csv_line, parse_payload
from include.transform import transform_file
from stack.services.elasticsearch import Elasticsearch

INT_COLUMNS = {c.name for c in HOST_SCHEMA.columns if c.kind == "int"}


# -- helpers -------------------------------------------------------------------------
def seed_payload(metric: str, device: str, ts_ms: int, n: int) -> bytes:
    """The Arduino payload of seeds/000: three readings under one metric, told apart by ``type``."""
    return orjson.dumps([
        {"type": "Metric", "metric": metric, "timestamp": ts_ms, "value": round(20 + n % 50 * 0.1, 1),
         "tags": {"type": kind, "loc": device}}
        for kind in ("temperature", "humidity", "dust")
    ])


def expected_ids(metric: str, ts0: int, count: int, devices: int = 3) -> set[str]:
    """Ids of the readings of :func:`sensor_records`, computed from the contract, not the loader."""
    return {reading_id(SENSOR, f"dev{i % devices}", iso_utc((ts0 + i) / 1000), metric, f"loc=dev{i % devices} type={kind}")
            for i in range(count) for kind in ("temperature", "humidity", "dust")}


def host_record(host: str, second: int, n: int) -> bytes:
    """A host row as the host sampler publishes it: HOST_SCHEMA order, numbers as numbers."""
    doc = {"timestamp": iso_utc(second), "host": host}
    for i, name in enumerate(HOST_SCHEMA.names[2:]):
        doc[name] = 1000 + n * 10 + i if name in INT_COLUMNS else round(n % 100 + i / 4, 2)
    return orjson.dumps(doc)


class Topics:
    def __init__(self, bootstrap: str, run: str) -> None:
        self.bootstrap = bootstrap
        self.raw, self.host, self.dl = f"t.{run}.raw", f"t.{run}.host", f"t.{run}.dl"
        ensure_topics(bootstrap, [self.raw, self.host, self.dl])
        self.producer = Producer(producer_config(bootstrap, client_id=f"test-{run}"))

    def produce(self, topic: str, key: bytes | None, value: bytes, headers=None) -> None:
        self.producer.produce(topic, key=key, value=value, headers=headers)
        self.producer.poll(0)

    def sensor_records(self, metric: str, ts0: int, count: int, start: int = 0, devices: int = 3) -> None:
        for i in range(start, start + count):
            device = f"dev{i % devices}"
            headers = [(HEADER_MQTT_TOPIC, f"sensors/{device}".encode()), (HEADER_RECEIVED_AT, iso_utc(time.time()).encode())]
            while True:
                try:
                    self.produce(self.raw, device.encode(), seed_payload(metric, device, ts0 + i, i), headers)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        assert self.producer.flush(30) == 0

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def config(run: str, t: Topics, **kw) -> StreamConfig:
    kw.setdefault("sinks", ("elasticsearch", "opentsdb"))
    cfg = StreamConfig(kafka_bootstrap=t.bootstrap, kafka_group=f"g-{run}", sensor_topic=t.raw, host_topic=t.host,
                       deadletter_topic=t.dl, es_index_prefix=f"t{run}", metrics_port=0, retry_initial=0.2,
                       retry_max=1.0, **kw)
    cfg.validate()
    return cfg


def cli_args(cfg: StreamConfig) -> list[str]:
    return ["--kafka-bootstrap", cfg.kafka_bootstrap, "--kafka-group", cfg.kafka_group,
            "--kafka-instance-id", f"{cfg.kafka_group}-1", "--sensor-topic", cfg.sensor_topic,
            "--host-topic", cfg.host_topic, "--deadletter-topic", cfg.deadletter_topic,
            "--sinks", ",".join(cfg.sinks), "--elasticsearch-url", cfg.elasticsearch_url,
            "--es-index-prefix", cfg.es_index_prefix, "--opentsdb-url", cfg.opentsdb_url,
            "--batch-messages", str(cfg.batch_messages), "--metrics-port", "-1"]


def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (end offset - committed, all partitions)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(parts, timeout=10)}
        total = 0
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            done = committed[(tp.topic, tp.partition)]
            total += high - (done if done >= 0 else low)
        return total
    finally:
        consumer.close()


def es_docs(client, prefix: str, source: str) -> dict[str, dict]:
    """Every document of the test's indices of ``source``: id -> source."""
    pattern = f"{prefix}-{source}-*"
    client.indices.refresh(index=pattern, ignore_unavailable=True, allow_no_indices=True)
    out = {}
    resp = client.search(index=pattern, size=10000, scroll="30s", ignore_unavailable=True, allow_no_indices=True)
    scroll = resp.get("_scroll_id")
    try:
        while resp["hits"]["hits"]:
            out.update({h["_id"]: h["_source"] for h in resp["hits"]["hits"]})
            resp = client.scroll(scroll_id=scroll, scroll="30s")
    finally:
        if scroll:
            client.clear_scroll(scroll_id=scroll)
    return out


def es_count(client, prefix: str, source: str) -> int:
    pattern = f"{prefix}-{source}-*"
    client.indices.refresh(index=pattern, ignore_unavailable=True, allow_no_indices=True)
    return client.count(index=pattern, ignore_unavailable=True, allow_no_indices=True)["count"]


def tsdb_points(client: OpenTSDBClient, metric: str, start: int, tags=None) -> dict[tuple, float]:
    """(sorted tags, timestamp ms) -> value of every stored datapoint of ``metric``."""
    out = {}
    for series in client.query(metric, start=start, end=start + 7200, tags=tags, ms=True):
        key = tuple(sorted(series["tags"].items()))
        for ts, value in series["dps"].items():
            out[(key, int(ts))] = value
    return out


class Running:
    """An in-process loader on a thread."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.loader = StreamLoader(cfg)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loader.run, args=(self.stop,))

    def __enter__(self) -> StreamLoader:
        self.thread.start()
        assert self.loader.assigned.wait(30), "no partitions assigned"
        return self.loader

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def counter(metric, **labels) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


# -- decoding: the batch path's meaning ------------------------------------------------
PAYLOADS = [
    pytest.param(seed_payload("mqtt.home.pcroom", "pcroom", 1770000000123, 1), id="seed-array-ms"),
    pytest.param(b'{"metric": "m.one", "timestamp": 1770000000, "value": 7, "tags": {"b": "2", "a": "1"}}',
                 id="seed-object-seconds"),
    pytest.param(b'{"temperature": 21.5, "humidity": 40, "room": "lab"}', id="flat-no-timestamp"),
    pytest.param(b'[{"metric": "m", "value": 1.25}, {"metric": "m", "value": "hot"}]', id="partial-reject"),
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_stream_documents_equal_the_batch_path(payload):
    # The collector's receive time (whole ms, as it is since the stream loader exists) and its header.
    received = round(1770000000.4567891, 3)
    header = iso_utc(received).encode()
    parsed = parse_payload(payload, received)
    data = (",".join(SENSOR_SCHEMA.names) + "\n" + "".join(csv_line("dev-1", r) for r in parsed.readings)).encode()
    batch = transform_file(SENSOR, data)
    docs, rejects = sensor_documents(b"dev-1", payload, received_time([(HEADER_RECEIVED_AT, header)], None), Limits())
    assert [orjson.loads(d) for d in batch.documents] == docs
    from include.transform import document_id

    assert [document_id(SENSOR, d) for d in docs] == batch.ids
    assert sum(rejects.values()) == len(parsed.rejects)


def test_host_record_equals_the_batch_path():
    record = host_record("h1", 1770000000, 3)
    obj = orjson.loads(record)
    row = ",".join("" if v is None else str(v) for v in obj.values())
    batch = transform_file(HOST, (",".join(obj) + "\n" + row + "\n").encode())
    assert host_documents(record) == [orjson.loads(d) for d in batch.documents]


@pytest.mark.parametrize("key,payload,code", [
    pytest.param(b"dev", b"{oops", "not_json", id="not-json"),
    pytest.param(b"bad/key", seed_payload("m", "d", 1770000000000, 0), "bad_device", id="bad-key"),
    pytest.param(None, seed_payload("m", "d", 1770000000000, 0), "bad_device", id="no-key"),
    pytest.param(b"dev", b'[{"metric": "m", "value": "hot"}]', "wrong_type", id="no-valid-reading"),
    pytest.param(b"dev", b"[]", "no_readings", id="empty-array"),
])
def test_undecodable_sensor_records(key, payload, code):
    with pytest.raises(Undecodable) as info:
        sensor_documents(key, payload, 1770000000.0, Limits())
    assert info.value.code == code and info.value.reason


def test_undecodable_host_records():
    for value, needle in ((b"[1]", "not an object"), (b'{"timestamp": "x", "bogus": 1}', "bogus"),
                          (b'{"timestamp": "2026-01-01T00:00:00Z", "host": "h", "cpu_usage_percent": null}', "no value")):
        with pytest.raises(Undecodable, match=needle):
            host_documents(value)


def test_receive_time_from_header_else_kafka_timestamp():
    assert received_time([(HEADER_RECEIVED_AT, b"2026-01-01T00:00:00.250Z")], 5) == 1767225600.25
    assert received_time([(HEADER_RECEIVED_AT, b"garbage")], 1767225600250) == 1767225600.25
    with pytest.raises(Undecodable):
        received_time(None, -1)


def test_config_names_the_bad_option(monkeypatch):
    monkeypatch.setenv("SLUICE_SINKS", "elasticsearch,opentsdb")
    monkeypatch.setenv("SLUICE_ES_INDEX_PREFIX", "mine")
    cfg = StreamConfig.from_args(["--kafka-group", "g1", "--batch-wait", "0.5"])
    assert (cfg.sinks, cfg.es_index_prefix, cfg.kafka_group, cfg.batch_wait) == (("elasticsearch", "opentsdb"), "mine", "g1", 0.5)
    assert cfg.sensor_topic == "sluice.sensors.raw" and StreamConfig().kafka_group == "sluice-stream-loader"
    for argv, needle in ((["--sinks", "influxdb"], "--sinks / SLUICE_SINKS"),
                         (["--batch-messages", "0"], "--batch-messages"),
                         (["--deadletter-topic", "sluice.sensors.raw"], "--deadletter-topic"),
                         (["--retry-initial", "5", "--retry-max", "1"], "--retry-initial")):
        with pytest.raises(ConfigError, match=needle.replace("/", ".")):
            StreamConfig.from_args(argv)


# -- against the real services ---------------------------------------------------------
def test_kill_9_mid_batch_and_restart_loads_every_reading_once(tmp_path, kafka, elasticsearch, opentsdb):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch_url=elasticsearch.config.url("elasticsearch"),
                 opentsdb_url=opentsdb.config.url("opentsdb"), batch_messages=200)
    metric, host = f"t.{run}.m", f"h{run}"
    ts0 = int(time.time() * 1000) - 60_000
    count, hosts = 2400, 60
    t.sensor_records(metric, ts0, count)
    second0 = ts0 // 1000
    for n in range(hosts):
        t.produce(t.host, host.encode(), host_record(host, second0 + n, n))
    t.flush()
    total = count + hosts
    es_client = es.connect(cfg.elasticsearch_url)
    log = tmp_path / "loader.log"
    try:
        proc = spawn("collectors.stream", cli_args(cfg), log)
        try:
            # Any moment while records are waiting is inside a batch (decoding, loading or committing).
            wait_for(lambda: 0 < total - lag(t.bootstrap, cfg.kafka_group, cfg.topics) < total - 600, 60,
                     "some batches committed", interval=0.02)
        finally:
            terminate(proc, signal.SIGKILL)
        left = lag(t.bootstrap, cfg.kafka_group, cfg.topics)
        assert 0 < left < total, "killed before the end"
        proc = spawn("collectors.stream", cli_args(cfg), log)
        try:
            wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 90, "the rest committed", interval=0.2)
        finally:
            assert terminate(proc) == 0, log.read_text()[-3000:]
        docs = es_docs(es_client, cfg.es_index_prefix, SENSOR)
        assert set(docs) == expected_ids(metric, ts0, count)
        assert es_count(es_client, cfg.es_index_prefix, SENSOR) == 3 * count
        assert es_count(es_client, cfg.es_index_prefix, HOST) == hosts
        tsdb = OpenTSDBClient(cfg.opentsdb_url)
        points = tsdb_points(tsdb, metric, second0 - 1)
        assert len(points) == 3 * count
        assert points[((("device", "dev1"), ("loc", "dev1"), ("type", "dust")), ts0 + 1)] == pytest.approx(20.1)
        cpu = tsdb_points(tsdb, "host.cpu_usage_percent", second0 - 1, tags={"host": host})
        assert len(cpu) == hosts
    finally:
        es.drop_prefix(es_client, cfg.es_index_prefix)


def test_poison_records_are_dead_lettered_and_do_not_block(kafka, elasticsearch):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch_url=elasticsearch.config.url("elasticsearch"), sinks=("elasticsearch",))
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    mqtt_header = [(HEADER_MQTT_TOPIC, b"sensors/dev0"), (HEADER_RECEIVED_AT, iso_utc(round(time.time(), 3)).encode())]
    # Same key: the poison sits in the middle of the good records' partition.
    t.sensor_records(metric, ts0, 5, devices=1)
    poison = [(t.raw, b"dev0", b"{oops", "not_json"),
              (t.raw, b"bad/key", seed_payload(metric, "x", ts0, 0), "bad_device"),
              (t.raw, b"dev0", b'[{"metric": "m", "value": "hot"}]', "wrong_type"),
              (t.host, b"h", b"not json either", "not_json")]
    for topic, key, value, _ in poison:
        t.produce(topic, key, value, mqtt_header if topic == t.raw else None)
    t.flush()
    t.sensor_records(metric, ts0, 5, start=5, devices=1)
    es_client = es.connect(cfg.elasticsearch_url)
    try:
        with Running(cfg) as loader:
            wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 30, "every record committed")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{loader.metrics_port}/metrics").read().decode()
            assert 'sluice_stream_deadletters_total{code="not_json",stage="decode"} 2.0' in metrics
            assert counter(loader.metrics.loaded, sink="elasticsearch") == 30
        assert set(es_docs(es_client, cfg.es_index_prefix, SENSOR)) == expected_ids(metric, ts0, 10, devices=1)
        consumer = Consumer({"bootstrap.servers": t.bootstrap, "group.id": f"read-{run}", "auto.offset.reset": "earliest"})
        consumer.subscribe([t.dl])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < len(poison) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
        time.sleep(0.5)
        extra = consumer.poll(0.5)
        consumer.close()
        assert extra is None, "a record was dead-lettered twice"
        by_value = {m.value(): m for m in got}
        assert len(got) == len(poison)
        for topic, key, value, code in poison:
            msg = by_value[value]
            headers = {k: v.decode() for k, v in msg.headers()}
            assert msg.key() == key
            assert headers["reason_code"] == code and headers["reason"] and headers["stage"] == "decode"
            assert headers["source_topic"] == topic and int(headers["source_offset"]) >= 0
            assert ("mqtt_topic" in headers) == (topic == t.raw)
        assert "not JSON" in {k: v.decode() for k, v in by_value[b"{oops"].headers()}["reason"]
    finally:
        es.drop_prefix(es_client, cfg.es_index_prefix)


def test_elasticsearch_outage_pauses_and_resumes_without_loss(tmp_path, stack_config, kafka):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    runtime = Path(f"/tmp/sluice-stream-test-{run}")  # Elasticsearch runs as another user: not under pytest's 0700 tmp
    runtime.mkdir(mode=0o755)
    try:
        with private_service(Elasticsearch, stack_config, runtime) as server:
            url = server.config.url("elasticsearch")
            cfg = config(run, t, elasticsearch_url=url, sinks=("elasticsearch",), sink_timeout=3.0)
            es_client = es.connect(url)
            with Running(cfg) as loader:
                t.sensor_records(metric, ts0, 100)
                wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 30, "the first records committed")
                server.stop()
                try:
                    t.sensor_records(metric, ts0, 100, start=100)
                    wait_for(lambda: loader.metrics.paused._value.get() == 1, 30, "consumption paused")
                    time.sleep(1.0)
                    assert lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 100, "committed past an outage"
                    assert counter(loader.metrics.sink_failures, sink="elasticsearch") >= 1
                finally:
                    server.start()
                wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 60, "the rest committed after the outage")
                assert loader.metrics.paused._value.get() == 0
            assert set(es_docs(es_client, cfg.es_index_prefix, SENSOR)) == expected_ids(metric, ts0, 200)
            assert es_count(es_client, cfg.es_index_prefix, SENSOR) == 600
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
