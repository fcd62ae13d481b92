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
from confluent_kafka import Consumer
from kafka_login import options as kafka_options
from kafka_login import settings
from stream_helpers import (
    Running, Topics, cli_args, config, counter, es_count, es_docs, expected_ids, host_record, lag, seed_payload,
    tsdb_points,
)

from collectors.config import ConfigError
from collectors.stream import StreamConfig
from collectors.stream.decode import (
    RECEIVED_AT_AHEAD,
    RECEIVED_AT_BEHIND,
    RECEIVED_AT_INVALID,
    DecodeRules,
    Undecodable,
    host_documents,
    received_time,
    sensor_documents,
)
from include.contract import RECEIVED_AT_MAX_AHEAD_S, RECEIVED_AT_MAX_BEHIND_S
from include import elasticsearch as es
from include.kafka import HEADER_MQTT_TOPIC, HEADER_RECEIVED_AT
from include.opentsdb import OpenTSDBClient
from include.contract import timestamp_text
from include.schemas import HOST, SENSOR, SENSOR_SCHEMA
from include.sensors import Limits, csv_line, parse_payload
from include.transform import transform_file
from stack.services.elasticsearch import Elasticsearch

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
    header = timestamp_text(received).encode()
    parsed = parse_payload(payload, received)
    data = (",".join(SENSOR_SCHEMA.names) + "\n" + "".join(csv_line("dev-1", r) for r in parsed.readings)).encode()
    batch = transform_file(SENSOR, data)
    docs, rejects = sensor_documents(b"dev-1", payload, received_time([(HEADER_RECEIVED_AT, header)], None)[0], Limits())
    assert [orjson.loads(d) for d in batch.documents] == [doc for _, doc in docs]
    assert [doc_id for doc_id, _ in docs] == batch.ids
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
                          (b'{"timestamp": "2026-01-01T00:00:00Z", "host": "h", "cpu_usage_percent": null}', "lacks column")):
        with pytest.raises(Undecodable, match=needle):
            host_documents(value)


KAFKA_MS = 1767225600250  # 2026-01-01T00:00:00.250Z, the record's own Kafka timestamp


@pytest.mark.parametrize("header,expected,why", [
    pytest.param(None, 1767225600.25, None, id="header-absent: Kafka timestamp"),
    pytest.param(b"2026-01-01T00:00:00.000Z", 1767225600.0, None, id="within-bound: the header"),
    pytest.param(b"2026-01-01T00:05:00.250Z", 1767225900.25, None, id="ahead-by-exactly-the-bound: the header"),
    pytest.param(b"2026-01-01T00:05:00.251Z", 1767225600.25, RECEIVED_AT_AHEAD, id="future: Kafka timestamp, counted"),
    pytest.param(b"2025-12-31T00:00:00.250Z", 1767139200.25, None, id="behind-by-exactly-the-bound: the header"),
    pytest.param(b"2025-12-31T00:00:00.249Z", 1767225600.25, RECEIVED_AT_BEHIND, id="far-past: Kafka timestamp, counted"),
    pytest.param(b"garbage", 1767225600.25, RECEIVED_AT_INVALID, id="garbage: Kafka timestamp, counted"),
    pytest.param(b"\xff\xfe", 1767225600.25, RECEIVED_AT_INVALID, id="not-utf8: Kafka timestamp, counted"),
])
def test_received_at_is_trusted_only_within_its_bounds_of_the_kafka_timestamp(header, expected, why):
    headers = [(HEADER_RECEIVED_AT, header)] if header is not None else [("mqtt_topic", b"x")]
    rules = DecodeRules("t.raw", "t.host", received_at_max_ahead=300.0, received_at_max_behind=86400.0)
    assert received_time(headers, KAFKA_MS, rules) == (expected, why)


def test_received_at_bounds_default_to_the_contract_and_a_record_without_any_time_is_undecodable():
    assert DecodeRules("a", "b").received_at_max_ahead == RECEIVED_AT_MAX_AHEAD_S
    assert StreamConfig().rules.received_at_max_behind == RECEIVED_AT_MAX_BEHIND_S
    # No Kafka timestamp (a broker without them): the header is all there is.
    assert received_time([(HEADER_RECEIVED_AT, b"2026-01-01T00:00:00.250Z")], None) == (1767225600.25, None)
    with pytest.raises(Undecodable):
        received_time(None, -1)
    with pytest.raises(Undecodable):
        received_time([(HEADER_RECEIVED_AT, b"garbage")], None)


def test_a_distrusted_received_at_moves_a_timestamp_less_reading_to_the_kafka_time_and_is_counted():
    from collectors.stream.batch import Batch
    from collectors.stream.metrics import StreamMetrics

    class Msg:
        def __init__(self, offset, header):
            self._o, self._h = offset, [(HEADER_RECEIVED_AT, header)]
        def topic(self): return "t.raw"
        def partition(self): return 0
        def offset(self): return self._o
        def key(self): return b"dev-1"
        def value(self): return b'{"temperature": 21.5}'
        def headers(self): return self._h
        def timestamp(self): return (1, KAFKA_MS)

    rules = DecodeRules("t.raw", "t.host")
    batch = Batch.of([Msg(0, b"2026-01-01T00:00:00.250Z"), Msg(1, b"2030-01-01T00:00:00Z"), Msg(2, b"1999-01-01T00:00:00Z"),
                      Msg(3, b"yesterday")], rules)
    assert dict(batch.untrusted_received_at) == {RECEIVED_AT_AHEAD: 1, RECEIVED_AT_BEHIND: 1, RECEIVED_AT_INVALID: 1}
    # Every reading lands at the record's Kafka time: the same document, stored once.
    assert batch.documents == 1 and batch.docs["sensor"].timestamps == ["2026-01-01T00:00:00.250Z"]
    metrics = StreamMetrics()
    metrics.decoded(batch)
    assert metrics.registry.get_sample_value("sluice_stream_received_at_untrusted_total", {"why": RECEIVED_AT_AHEAD}) == 1


def test_kafka_login_is_required_by_default_and_its_password_stays_out_of_argv_and_repr(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="--kafka-username / SLUICE_KAFKA_USERNAME: SASL_SSL needs a Kafka user"):
        StreamConfig.from_args([], {})
    with pytest.raises(ConfigError, match="--kafka-password / SLUICE_KAFKA_PASSWORD: .*SLUICE_KAFKA_PASSWORD_FILE"):
        StreamConfig.from_args(["--kafka-username", "loader"], {})
    # There is no --kafka-password flag (`ps` would show it), and flags are never abbreviated, so it is
    # not taken for --kafka-password-file either: argparse refuses it.
    with pytest.raises(SystemExit):
        StreamConfig.from_args(["--kafka-username", "loader", "--kafka-password", "pw"], {})
    secret = tmp_path / "kafka.password"
    secret.write_text("s3cret-value\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    cfg = StreamConfig.from_args(["--kafka-username", "loader", "--kafka-ca-file", str(ca)],
                                 {"SLUICE_KAFKA_PASSWORD_FILE": str(secret)})
    assert cfg.kafka_settings() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                    "sasl.username": "loader", "sasl.password": "s3cret-value", "ssl.ca.location": str(ca)}
    assert "s3cret" not in repr(cfg) and "loader" in repr(cfg)
    with pytest.raises(ConfigError, match="--kafka-ca-file .*does not exist"):
        StreamConfig.from_args(["--kafka-username", "loader", "--kafka-ca-file", str(tmp_path / "nope.crt")],
                               {"SLUICE_KAFKA_PASSWORD": "pw"})
    with pytest.raises(ConfigError, match="--kafka-security-protocol"):
        StreamConfig.from_args(["--kafka-security-protocol", "TLS"], {})
    # A broker without security, said so explicitly: no login needed.
    assert StreamConfig.from_args(["--kafka-security-protocol", "PLAINTEXT"], {}).kafka_settings() == {
        "security.protocol": "PLAINTEXT"}


def test_config_names_the_bad_option(monkeypatch):
    monkeypatch.setenv("SLUICE_SINKS", "elasticsearch,opentsdb")
    monkeypatch.setenv("SLUICE_ES_INDEX_PREFIX", "mine")
    monkeypatch.setenv("SLUICE_KAFKA_USERNAME", "loader")
    monkeypatch.setenv("SLUICE_KAFKA_PASSWORD", "pw")
    cfg = StreamConfig.from_args(["--kafka-group", "g1", "--batch-wait", "0.5"])
    assert (cfg.sinks, cfg.es_index_prefix, cfg.kafka_group, cfg.batch_wait) == (("elasticsearch", "opentsdb"), "mine", "g1", 0.5)
    assert cfg.sensor_topic == "sluice.sensors.raw" and StreamConfig().kafka_group == "sluice-stream-loader"
    for argv, needle in ((["--sinks", "influxdb"], "--sinks / SLUICE_SINKS"),
                         (["--batch-messages", "0"], "--batch-messages"),
                         (["--deadletter-topic", "sluice.sensors.raw"], "--deadletter-topic"),
                         (["--retry-initial", "5", "--retry-max", "1"], "--retry-initial")):
        with pytest.raises(ConfigError, match=needle.replace("/", ".")):
            StreamConfig.from_args(argv)


def test_the_elasticsearch_api_key_comes_from_a_file_or_the_environment_never_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")  # this test is about Elasticsearch's key
    key = tmp_path / "es-key"
    key.write_text("c2VjcmV0OmtleQ==\n")
    cfg = StreamConfig.from_args(["--elasticsearch-api-key-file", str(key), "--elasticsearch-url", "https://es:9200"])
    assert cfg.elasticsearch_api_key == "c2VjcmV0OmtleQ=="
    assert "c2VjcmV0OmtleQ" not in repr(cfg), "the key is kept out of the config's repr (and so out of logs)"
    with pytest.raises(SystemExit):  # argparse refuses an unknown flag: there is no --elasticsearch-api-key
        StreamConfig.from_args(["--elasticsearch-api-key", "c2VjcmV0OmtleQ=="])
    monkeypatch.setenv("SLUICE_ELASTICSEARCH_API_KEY_FILE", str(key))
    assert StreamConfig.from_args([]).elasticsearch_api_key == "c2VjcmV0OmtleQ=="
    with pytest.raises(ConfigError, match="elasticsearch-api-key-file"):
        StreamConfig.from_args(["--elasticsearch-api-key-file", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="elasticsearch-ca-certs"):
        StreamConfig.from_args(["--elasticsearch-ca-certs", str(tmp_path / "no-ca.pem")])


# -- against the real services ---------------------------------------------------------
def test_kill_9_mid_batch_and_restart_loads_every_reading_once(tmp_path, kafka, elasticsearch, opentsdb):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch=elasticsearch,
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
    es_client = elasticsearch.admin()  # checks and clean-up
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


def test_a_refused_kafka_login_or_right_is_named_on_healthz(kafka):
    """A wrong password, or a user without rights on the group, keeps the loader up and says so."""
    import threading

    from collectors.stream import StreamLoader

    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    for kw, needle in (({"kafka_password": "wrong"}, "invalid credentials"),
                       # The lag check's user may not join a group: the broker refuses the group.
                       ({"kafka_username": "sluice-lag", **{k: v for k, v in kafka_options(user="sluice-lag").items()
                                                            if k != "kafka_username"}}, "authorization failed")):
        cfg = config(run, t, sinks=("elasticsearch",), **kw)
        loader = StreamLoader(cfg, sinks=[])
        stop = threading.Event()
        thread = threading.Thread(target=loader.run, args=(stop,))
        thread.start()
        try:
            def unhealthy(health=loader.metrics.health):
                verdict = health.check()
                return None if verdict.healthy else verdict

            verdict = wait_for(unhealthy, 60, "an unhealthy verdict")
            assert any("kafka_login: Kafka refused user" in r and needle in r for r in verdict.reasons), verdict.reasons
            assert thread.is_alive() and loader.fatal is None  # it keeps trying
        finally:
            stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert "wrong" not in repr(cfg)


def test_poison_records_are_dead_lettered_and_do_not_block(kafka, elasticsearch):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch=elasticsearch, sinks=("elasticsearch",))
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    mqtt_header = [(HEADER_MQTT_TOPIC, b"sensors/dev0"), (HEADER_RECEIVED_AT, timestamp_text(round(time.time(), 3)).encode())]
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
    es_client = elasticsearch.admin()  # checks and clean-up
    try:
        with Running(cfg) as loader:
            wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 30, "every record committed")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{loader.metrics_port}/metrics").read().decode()
            assert 'sluice_stream_deadletters_total{code="not_json",stage="decode"} 2.0' in metrics
            assert counter(loader.metrics.loaded, sink="elasticsearch") == 30
        assert set(es_docs(es_client, cfg.es_index_prefix, SENSOR)) == expected_ids(metric, ts0, 10, devices=1)
        consumer = Consumer({**settings(t.bootstrap), "group.id": f"read-{run}", "auto.offset.reset": "earliest"})
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
            cfg = config(run, t, elasticsearch=server, sinks=("elasticsearch",), sink_timeout=3.0)
            es_client = server.admin()  # checks
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


class HeldSink:
    """A sink plugin that holds its first load until released, then accepts everything: a probe of the
    loop's order in front of no store (the real sinks are exercised by every other test here)."""

    name = "held"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.loads: list[int] = []

    def load(self, source, batches):
        from include.sinks import SinkFileResult

        self.loads.append(sum(len(docs.ids) for _, docs in batches))
        self.entered.set()
        assert self.release.wait(60), "never released"
        return {key: SinkFileResult(accepted=len(docs.ids)) for key, docs in batches}

    def close(self) -> None:
        self.release.set()


def test_the_next_batch_is_decoded_while_the_sinks_load_and_commits_stay_in_order(kafka):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, sinks=("elasticsearch",), batch_messages=30, batch_wait=0.2)
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    sink = HeldSink()
    t.sensor_records(metric, ts0, 30, devices=1)  # one partition: a batch is exactly these 30
    t.flush()
    with Running(cfg, sinks=[sink]) as loader:
        assert sink.entered.wait(30), "the first batch never reached the sink"
        t.sensor_records(metric, ts0, 30, start=30, devices=1)
        t.flush()
        # The second batch is gathered and decoded while the first is held in the sink ...
        wait_for(lambda: counter(loader.metrics.records) == 60, 30, "the second batch decoded meanwhile")
        # ... but it goes to the sinks, and is committed, only after the first: nothing is committed yet.
        time.sleep(0.5)
        assert sink.loads == [90] and lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 60
        sink.release.set()
        wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 30, "both batches committed")
        assert sink.loads == [90, 90] and loader.committed_batches == 2
