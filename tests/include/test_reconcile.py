"""Reconciliation on the real MinIO, Kafka, Elasticsearch and OpenTSDB of the local stack.

Each minute is produced the way the system produces it: a collector's
payloads go to Kafka (record timestamp = receive time, ``received_at``
header), its minute file lands with its manifest (:mod:`include.manifests`),
and the batch path (:func:`include.pipeline.load_files`) loads Elasticsearch
and OpenTSDB and writes the load records. Then one fault per minute, the
reconciliation, a replay, and the reconciliation again.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from kafka_login import security, settings

from include import elasticsearch as es_mod
from include import pipeline, reconcile
from include.sinks import ElasticsearchSink, OpenTSDBSink
from include.contract import minute_key, parse_key
from include.manifests import MinuteManifest, write_manifest
from include.opentsdb import OpenTSDBClient
from include.sensors import csv_line, parse_payload
from include.transform import document_datapoints

TYPES = (("dust", 12.0), ("humidity", 40.5), ("temperature", 24.25))
HEADER = "timestamp,device,metric,value,tags\n"


@pytest.fixture()
def es(elasticsearch):
    # Admin: the tests load, reconcile and inject faults (delete documents) with one client.
    client = elasticsearch.admin(request_timeout=60)
    prefix = f"sluicetest-{uuid.uuid4().hex[:8]}"
    yield client, prefix
    es_mod.drop_prefix(client, prefix)
    es_mod.delete_indices(client, f"{prefix}-reconcile-*")
    client.close()


@pytest.fixture()
def tsdb(opentsdb):
    with OpenTSDBClient(opentsdb.config.url("opentsdb")) as client:
        yield client


@pytest.fixture()
def topic(kafka):
    from include.kafka import ensure_topics

    name = f"sluice.test.reconcile.{uuid.uuid4().hex[:8]}"
    bootstrap = kafka.config.kafka_bootstrap
    ensure_topics(bootstrap, [name], partitions=3, settings=security())
    yield bootstrap, name
    from confluent_kafka.admin import AdminClient

    AdminClient(settings(bootstrap)).delete_topics([name])


def consumer_factory(bootstrap: str):
    from confluent_kafka import Consumer

    return lambda: Consumer({**settings(bootstrap), "group.id": "sluice-reconcile-test",
                             "enable.auto.commit": False, "log_level": 3})


class Collector:
    """One MQTT collector instance, doing what it does per payload and per minute."""

    def __init__(self, writer: str, landing, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        from include.kafka import producer_config

        self.writer, self.landing, self.topic = writer, landing, topic
        self.producer = Producer(producer_config(bootstrap, **security()))

    def publish(self, device: str, minute: datetime, seconds: range, *, kinds=TYPES) -> list[str]:
        """Payloads received at ``minute + s`` go to Kafka; returns their CSV lines (what the file holds)."""
        lines = []
        for s in seconds:
            received = minute.timestamp() + s + 0.25
            payload = orjson.dumps([{"metric": "mqtt.home.pcroom", "value": v + s, "tags": {"type": k}} for k, v in kinds])
            at = datetime.fromtimestamp(received, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.producer.produce(self.topic, key=device.encode(), value=payload, timestamp=int(received * 1000),
                                  headers=[("received_at", at.encode())])
            lines += [csv_line(device, r) for r in parse_payload(payload, received).readings]
        assert self.producer.flush(30) == 0
        return lines

    def close_minute(self, minute: datetime, files: dict[str, list[str]], received: int) -> None:
        # One file per writer and minute, holding every device the writer heard.
        rows = "".join(line for lines in files.values() for line in lines)
        self.landing.put(minute_key("sensor", minute, self.writer), (HEADER + rows).encode())
        write_manifest(self.landing, MinuteManifest("sensor", self.writer, minute,
                                                    rows={d: len(lines) for d, lines in files.items()}, received=received))


def load(landing, es, tsdb, minute: datetime, *, sinks=("elasticsearch", "opentsdb"), run_id: str = "minute") -> dict:
    client, prefix = es
    chosen = []
    if "elasticsearch" in sinks:
        chosen.append(ElasticsearchSink(client, prefix=prefix))
    if "opentsdb" in sinks:
        chosen.append(OpenTSDBSink(tsdb))
    totals = pipeline.load_files(landing, chosen, "sensor", pipeline.minute_files(landing, "sensor", minute), run_id=run_id)
    client.indices.refresh(index=f"{prefix}-*", allow_no_indices=True, ignore_unavailable=True)
    return totals


def run(landing, es, tsdb, bootstrap: str, topic: str, minutes: list[datetime]) -> dict[datetime, reconcile.Verdict]:
    client, prefix = es
    verdicts = reconcile.reconcile_minutes(
        landing, [("sensor", m) for m in minutes], elasticsearch=client, es_prefix=prefix, opentsdb=tsdb,
        kafka=consumer_factory(bootstrap), kafka_topics={"sensor": topic},
    )
    return {v.minute: v for v in verdicts}


def test_a_clean_minute_is_green_each_fault_turns_its_minute_red_naming_the_hop_and_a_replay_heals(
    landing, es, tsdb, topic
):
    bootstrap, topic_name = topic
    client, prefix = es
    run_id = uuid.uuid4().hex[:6]
    device, late_device = f"ard-{run_id}", f"ard-late-{run_id}"
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=30)
    clean, deleted_file, deleted_docs, missing_point, kafka_only = (base + timedelta(minutes=i) for i in range(5))
    collector = Collector("mqtt-a", landing, bootstrap, topic_name)
    late = Collector("mqtt-b", landing, bootstrap, topic_name)

    for m in (clean, deleted_file, deleted_docs, missing_point, kafka_only):
        lines = collector.publish(device, m, range(20))  # 20 payloads of 3 readings: 60 rows
        collector.close_minute(m, {device: lines}, received=20)
        load(landing, es, tsdb, m, sinks=("elasticsearch",) if m == missing_point else ("elasticsearch", "opentsdb"))

    # Faults, one per minute.
    (deleted_key,) = [f.key for f in pipeline.minute_files(landing, "sensor", deleted_file)]
    deleted_bytes = landing.get(deleted_key)
    landing.delete(deleted_key)
    hits = client.search(index=f"{prefix}-sensor-*", size=5, query={"range": {"@timestamp": {
        "gte": deleted_docs.isoformat(), "lt": (deleted_docs + timedelta(minutes=1)).isoformat()}}})["hits"]["hits"]
    for hit in hits:
        client.delete(index=hit["_index"], id=hit["_id"], refresh=True)
    # OpenTSDB cannot delete: put every point of the minute but one.
    points = _points(landing, missing_point)
    assert tsdb.put(points[1:]).failed == []
    # Readings a second collector put on Kafka while its file (spooled) never landed and nothing loaded them.
    late_lines = late.publish(late_device, kafka_only, range(1), kinds=TYPES[:1])

    verdicts = run(landing, es, tsdb, bootstrap, topic_name, [clean, deleted_file, deleted_docs, missing_point, kafka_only])
    assert verdicts[clean].status == "green", verdicts[clean].describe()
    assert verdicts[clean].counts.hops == {"received": 20, "collector": 60, "landed": 60, "kafka": 60, "loaded": 60,
                                          "elasticsearch": 60, "opentsdb": 60}
    expected = {
        deleted_file: [("landed", 60, 0)],
        deleted_docs: [("elasticsearch", 60, 55)],
        missing_point: [("opentsdb", 60, 59)],
        kafka_only: [("kafka", 60, 61)],
    }
    for m, wanted in expected.items():
        v = verdicts[m]
        assert v.status == "red"
        assert [(x.hop, x.expected, x.found) for x in v.mismatches] == wanted, v.describe()
    assert "elasticsearch holds 55, expected 60 from the collectors' manifests (-5)" in verdicts[deleted_docs].describe()

    stored = reconcile.stored(client, prefix, [("sensor", m) for m in expected])
    assert {d["status"] for d in stored.values()} == {"red"}
    assert [(s, m) for s, m in reconcile.red_minutes(client, prefix=prefix)] == [("sensor", m) for m in sorted(expected, reverse=True)]

    # Replays: the spooled file lands again, the minute is loaded again, the missing point is put,
    # the second collector's file lands late with its manifest and the sweep loads it.
    landing.put(deleted_key, deleted_bytes)
    load(landing, es, tsdb, deleted_docs, sinks=("elasticsearch",), run_id="replay")
    assert tsdb.put(points[:1]).failed == []
    late.close_minute(kafka_only, {late_device: late_lines}, received=1)
    load(landing, es, tsdb, kafka_only, run_id="sweep")

    healed = run(landing, es, tsdb, bootstrap, topic_name, [m for s, m in reconcile.red_minutes(client, prefix=prefix)])
    assert {m: (v.status, v.healed) for m, v in healed.items()} == {m: ("green", True) for m in expected}
    assert healed[kafka_only].counts.hops["collector"] == 61
    assert reconcile.red_minutes(client, prefix=prefix) == []
    again = reconcile.stored(client, prefix, [("sensor", clean)])
    assert again[reconcile.document_id("sensor", clean)]["healed"] is False


def _points(landing, minute: datetime) -> list[dict]:
    """Every OpenTSDB datapoint the batch path would put for the minute's files, in file order."""
    from include.transform import transform_file

    out = []
    for info in pipeline.minute_files(landing, "sensor", minute):
        docs = transform_file(parse_key(info.key).source, landing.get(info.key))
        for raw in docs.documents:
            out += document_datapoints("sensor", orjson.loads(raw))
    return out


def test_a_minute_without_manifest_is_judged_on_its_landed_files_and_amber_when_a_sink_is_unreachable(landing, es):
    client, prefix = es
    minute = datetime(2020, 9, 3, 7, 11, tzinfo=timezone.utc)
    landing.put(minute_key("sensor", minute, "ard-1"), (HEADER + "2020-09-03T07:11:00Z,ard-1,m,1,type=dust\n").encode())
    load(landing, es, None, minute, sinks=("elasticsearch",))
    from include.opentsdb import OpenTSDBClient as Client

    with Client("http://127.0.0.1:9", max_attempts=1, timeout=2) as unreachable:
        (verdict,) = reconcile.reconcile_minutes(landing, [("sensor", minute)], elasticsearch=client, es_prefix=prefix,
                                                 opentsdb=unreachable)
    assert verdict.status == "amber", verdict.describe()
    assert verdict.counts.hops["collector"] is None and verdict.counts.hops["landed"] == 1
    assert set(verdict.counts.unmeasured) == {"collector", "opentsdb"}
    assert verdict.counts.hops["elasticsearch"] == 1


def test_dead_lettered_rows_are_counted_by_reason_and_do_not_turn_the_minute_red(landing, es):
    client, prefix = es
    minute = datetime(2020, 9, 3, 7, 12, tzinfo=timezone.utc)
    rows = "2020-09-03T07:12:00Z,ard-1,m,1,type=dust\n2020-09-03T07:12:01Z,ard-1,m,not-a-number,type=dust\n"
    landing.put(minute_key("sensor", minute, "ard-1"), (HEADER + rows).encode())
    write_manifest(landing, MinuteManifest("sensor", "mqtt-a", minute, rows={"ard-1": 2}, received=3,
                                           deadletters={"not_json": 1}))
    load(landing, es, None, minute, sinks=("elasticsearch",))
    (verdict,) = reconcile.reconcile_minutes(landing, [("sensor", minute)], elasticsearch=client, es_prefix=prefix)
    assert verdict.status == "green", verdict.describe()
    assert verdict.counts.hops["loaded"] == verdict.counts.hops["elasticsearch"] == 1
    assert verdict.counts.deadletters["collector"] == {"not_json": 1}
    assert sum(verdict.counts.deadletters["load"].values()) == 1
