"""A live poison-pill test of the stream loader on the real Kafka, Elasticsearch and OpenTSDB.

Each pill of issue 10 is produced to Kafka, then a good record from another
device. The loader (a real ``python -m collectors.stream`` process) must stay
up with ``/healthz`` 200, the good record must be in both sinks, and each
pill in the dead-letter topic with its reason.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
from collector_helpers import free_port, new_run_id, spawn, terminate, wait_for
from stream_helpers import Topics, cli_args, config, es_docs, headers_of, host_record, lag, read_deadletters, tsdb_points

from include import elasticsearch as es
from include.kafka import HEADER_MQTT_TOPIC, HEADER_RECEIVED_AT
from include.opentsdb import OpenTSDBClient
from include.schemas import SENSOR
from include.contract import timestamp_text

#: The broker's default record limit is 1 MB; the test's sensor topic takes 4 MB so the 2 MB pill gets through.
TOPIC_MAX_BYTES = 4 * 1024 * 1024


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def test_every_pill_is_dead_lettered_and_the_loader_stays_up(tmp_path, kafka, elasticsearch, opentsdb):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run, max_message_bytes=TOPIC_MAX_BYTES)
    cfg = config(run, t, elasticsearch=elasticsearch,
                 opentsdb_url=opentsdb.config.url("opentsdb"), batch_messages=50)
    metric = f"t.{run}.m"
    now = time.time()
    ts_ms = int(now * 1000)
    received = [(HEADER_RECEIVED_AT, timestamp_text(round(now, 3)).encode())]

    def sensor(device: str, payload: bytes) -> tuple[str, bytes, bytes, list]:
        return t.raw, device.encode(), payload, [(HEADER_MQTT_TOPIC, f"sensors/{device}".encode()), *received]

    def reading(**fields) -> bytes:
        return orjson.dumps([{"metric": metric, "timestamp": ts_ms, "value": 1.5, "tags": {"type": "temperature"}, **fields}])

    deep = b"[" * 1025 + b"]" * 1025
    deeper = b'{"a":' * 5000 + b"1" + b"}" * 5000
    item = reading()[1:-1]
    huge = b"[" + b",".join([item] * (2_000_000 // (len(item) + 1) + 1)) + b"]"
    assert len(huge) >= 2_000_000
    hostless = orjson.loads(host_record("hpill", int(now), 1))
    del hostless["host"]
    # (what, record, reason codes the dead letter may carry, stage)
    pills = [
        ("deep nesting 1,025", sensor("pill-deep", deep), {"internal", "not_json", "too_deep"}, "decode"),
        ("deep nesting 5,000", sensor("pill-deeper", deeper), {"internal", "not_json", "too_deep"}, "decode"),
        ("metric ending in \\n", sensor("pill-nl", reading(metric=metric + "\n")), {"bad_name"}, "decode"),
        ("tag value ending in \\n", sensor("pill-nl2", reading(tags={"type": "x\n"})), {"bad_name"}, "decode"),
        ("device key ending in \\n", sensor("pill-key\n", reading()), {"bad_device"}, "decode"),
        ("2 MB record", sensor("pill-huge", huge), {"oversized"}, "decode"),
        ("host record without host", (t.host, b"hpill", orjson.dumps(hostless), None), {"missing_column"}, "decode"),
    ]
    # An odd tag key, new per record: Elasticsearch either maps it under tags or refuses that document alone.
    odd = [sensor("pill-odd", reading(tags={"type": "temperature", f"type.x{n}": "1"}, value=n)) for n in range(3)]
    good = sensor("good-device", reading(value=42.0, tags={"type": "humidity"}))
    es_client = elasticsearch.admin()  # checks and clean-up
    port = free_port()
    log = tmp_path / "loader.log"
    proc = spawn("collectors.stream", cli_args(cfg, metrics_port=port), log)
    try:
        wait_for(lambda: healthz(port)[0] == 200 if proc.poll() is None else True, 30, "the loader's /healthz")
        for record in [p[1] for p in pills] + odd + [good]:
            topic, key, value, headers = record
            t.produce(topic, key, value, headers)
        t.flush()
        wait_for(lambda: proc.poll() is not None or lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 90,
                 "every record committed")
        assert proc.poll() is None, f"the loader died: {log.read_text()[-3000:]}"
        status, text = healthz(port)
        assert status == 200 and text == "ok\n", text

        # The good record is in both sinks.
        docs = es_docs(es_client, cfg.es_index_prefix, SENSOR)
        assert [d["value"] for d in docs.values() if d["device"] == "good-device"] == [42.0]
        points = tsdb_points(OpenTSDBClient(cfg.opentsdb_url), metric, int(now) - 60, tags={"device": "good-device"})
        assert list(points.values()) == [42.0]

        # Each pill is in the dead-letter topic with its reason; the odd tag keys are stored or refused alone.
        odd_stored = sorted(d["value"] for d in docs.values() if d["device"] == "pill-odd")
        odd_refused = 3 - len(odd_stored)
        letters = read_deadletters(t.bootstrap, t.dl, len(pills) + odd_refused)
        seen: dict[str, list[dict]] = {}
        for msg in letters:
            h = headers_of(msg)
            seen.setdefault((msg.key() or b"").decode("utf-8", "replace"), []).append(h)
        for what, (topic, key, value, _), codes, stage in pills:
            (h,) = seen[key.decode()]  # exactly one dead letter per pill
            assert h["stage"] == stage and h["reason_code"] in codes and h["reason"], (what, h)
            assert h["source_topic"] == topic and int(h["source_value_bytes"]) == len(value), what
        huge_letter = next(m for m in letters if m.key() == b"pill-huge")
        assert huge_letter.value() is None, "an oversized record must send only its metadata"
        for h in seen.get("pill-odd", []):
            assert h["stage"] == "sink:elasticsearch" and h["reason_code"] == "refused" and h["reason"]
        print("pills:", {k: [(h["stage"], h["reason_code"], h["reason"][:120]) for h in v] for k, v in seen.items()},
              "odd tag keys stored in Elasticsearch:", len(odd_stored))
    finally:
        assert terminate(proc) == 0, log.read_text()[-3000:]
        es.drop_prefix(es_client, cfg.es_index_prefix)
