"""Helpers of the stream loader tests: topics of a run's own, the loader in-process or as a process, what the sinks hold.

Every test has its own topics, consumer group, index prefix and OpenTSDB
metric (or host tag), so parallel runs never meet.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_login import options as kafka_options
from kafka_login import security, settings

from collectors.stream import StreamConfig, StreamLoader
from include.kafka import HEADER_MQTT_TOPIC, HEADER_RECEIVED_AT, ensure_topics, producer_config
from include.elasticsearch_security import LOADER
from include.opentsdb import OpenTSDBClient
from stack.secrets import write_private
from include.contract import reading_id
from include.schemas import HOST_SCHEMA, SENSOR
from include.contract import timestamp_text

INT_COLUMNS = {c.name for c in HOST_SCHEMA.columns if c.kind == "int"}


# -- helpers -------------------------------------------------------------------------
def seed_payload(metric: str, device: str, ts_ms: int, n: int) -> bytes:
    """The Arduino payload of seeds/000: three readings under one metric, told apart by ``type``."""
    return orjson.dumps([
        {"type": "Metric", "metric": metric, "timestamp": ts_ms, "value": round(20 + n % 50 * 0.1, 1),
         "tags": {"type": kind, "loc": device}}
        for kind in ("temperature", "humidity", "dust")
    ])


def expected_ids(metric: str, ts0: int, count: int, devices: int = 3, *, topic_devices: list[str] | None = None) -> set[str]:
    """Ids of the readings of :func:`sensor_records`, computed from the contract, not the loader.

    ``topic_devices``: the device ids of the MQTT topics (device users of the broker), when
    they are not ``dev<k>`` as in the payloads' ``loc`` tag.
    """
    names = topic_devices or [f"dev{k}" for k in range(devices)]
    return {reading_id(SENSOR, names[i % devices], timestamp_text((ts0 + i) / 1000), metric, f"loc=dev{i % devices} type={kind}")
            for i in range(count) for kind in ("temperature", "humidity", "dust")}


def host_record(host: str, second: int, n: int) -> bytes:
    """A host row as the host sampler publishes it: HOST_SCHEMA order, numbers as numbers."""
    doc = {"timestamp": timestamp_text(second), "host": host}
    for i, name in enumerate(HOST_SCHEMA.names[2:]):
        doc[name] = 1000 + n * 10 + i if name in INT_COLUMNS else round(n % 100 + i / 4, 2)
    return orjson.dumps(doc)


class Topics:
    """The run's own sensor, host and dead-letter topics, and a producer.

    ``max_message_bytes`` raises the sensor topic's record limit (and the
    producer's) so a test can put a record larger than Kafka's default 1 MB.
    """

    def __init__(self, bootstrap: str, run: str, *, partitions: int = 3, max_message_bytes: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.raw, self.host, self.dl = f"t.{run}.raw", f"t.{run}.host", f"t.{run}.dl"
        extra = {}
        if max_message_bytes:
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient(settings(bootstrap))
            topic = NewTopic(self.raw, num_partitions=partitions, replication_factor=1,
                             config={"max.message.bytes": str(max_message_bytes)})
            admin.create_topics([topic])[self.raw].result(30)
            extra["message.max.bytes"] = max_message_bytes
        ensure_topics(bootstrap, [self.raw, self.host, self.dl], partitions=partitions, settings=security())
        self.producer = Producer(producer_config(bootstrap, client_id=f"test-{run}", **extra, **security()))

    def produce(self, topic: str, key: bytes | None, value: bytes, headers=None) -> None:
        self.producer.produce(topic, key=key, value=value, headers=headers)
        self.producer.poll(0)

    def sensor_records(self, metric: str, ts0: int, count: int, start: int = 0, devices: int = 3) -> None:
        for i in range(start, start + count):
            device = f"dev{i % devices}"
            headers = [(HEADER_MQTT_TOPIC, f"sensors/{device}".encode()), (HEADER_RECEIVED_AT, timestamp_text(time.time()).encode())]
            while True:
                try:
                    self.produce(self.raw, device.encode(), seed_payload(metric, device, ts0 + i, i), headers)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        assert self.producer.flush(30) == 0

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def es_options(server, prefix: str) -> dict[str, str]:
    """Options that point a loader at ``server`` (a stack Elasticsearch) with the loader role's key for ``prefix``."""
    return {"elasticsearch_url": server.url, "elasticsearch_api_key": server.api_key(LOADER, prefix),
            "elasticsearch_ca_certs": str(server.ca_certs)}


def config(run: str, t: Topics, *, elasticsearch=None, **kw) -> StreamConfig:
    """The run's loader options; ``elasticsearch`` (the stack's service) gives its URL, CA and a loader key."""
    kw.setdefault("sinks", ("elasticsearch", "opentsdb"))
    kw = {**kafka_options(), **kw}  # the test's own topics and group: as the admin
    kw.setdefault("es_index_prefix", f"t{run}")
    if elasticsearch is not None:
        kw.update(es_options(elasticsearch, kw["es_index_prefix"]))
    cfg = StreamConfig(kafka_bootstrap=t.bootstrap, kafka_group=f"g-{run}", sensor_topic=t.raw, host_topic=t.host,
                       deadletter_topic=t.dl, metrics_port=0, retry_initial=0.2, retry_max=1.0, **kw)
    cfg.validate()
    return cfg


def es_key_file(cfg: StreamConfig) -> str:
    """A 0600 file holding ``cfg``'s API key, for a loader process: the key never goes on its command line."""
    path = Path(tempfile.gettempdir()) / "sluice-test-keys" / f"{cfg.kafka_group}.es-key"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(path, cfg.elasticsearch_api_key, replace=True)
    return str(path)


def cli_args(cfg: StreamConfig, *, instance_id: str | None = "", metrics_port: int = -1) -> list[str]:
    """Flags of a loader process running ``cfg``; ``instance_id`` None leaves the default (<host>-<pid>).

    The Kafka login is not among them (no password on a command line): run the process with
    ``kafka_login.env()`` in its environment.
    """
    args = ["--kafka-bootstrap", cfg.kafka_bootstrap, "--kafka-group", cfg.kafka_group,
            "--kafka-session-timeout", str(cfg.kafka_session_timeout), "--sensor-topic", cfg.sensor_topic,
            "--host-topic", cfg.host_topic, "--deadletter-topic", cfg.deadletter_topic,
            "--sinks", ",".join(cfg.sinks), "--elasticsearch-url", cfg.elasticsearch_url,
            "--elasticsearch-ca-certs", cfg.elasticsearch_ca_certs, "--elasticsearch-api-key-file", es_key_file(cfg),
            "--es-index-prefix", cfg.es_index_prefix, "--opentsdb-url", cfg.opentsdb_url,
            "--batch-messages", str(cfg.batch_messages), "--metrics-port", str(metrics_port),
            "--health-idle-after", str(cfg.health_idle_after)]
    if instance_id is not None:
        args += ["--kafka-instance-id", instance_id or f"{cfg.kafka_group}-1"]
    return args


def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (end offset - committed, all partitions)."""
    consumer = Consumer({**settings(bootstrap), "group.id": group, "enable.auto.commit": False})
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

    def __init__(self, cfg: StreamConfig, **kw) -> None:
        self.loader = StreamLoader(cfg, **kw)
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


def read_deadletters(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    """The first ``count`` records of the dead-letter topic (fewer at the time-out), then checks none follows."""
    consumer = Consumer({**settings(bootstrap), "group.id": f"read-{topic}-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg)
        extra = consumer.poll(1.0)
        assert extra is None or extra.error(), f"more than {count} dead letters, e.g. {extra.headers()}"
    finally:
        consumer.close()
    return got


def headers_of(msg) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in msg.headers() or ()}


def scrape(port: int, name: str) -> float:
    """Sum of the samples named ``name`` on a loader's /metrics (0 when it does not answer)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)
