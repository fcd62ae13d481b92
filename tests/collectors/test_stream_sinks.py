"""The stream loader against sinks that say no: a refusal for good, and an OpenTSDB outage.

* A sink refusing documents for good (Elasticsearch: a mapping the documents
  do not fit; OpenTSDB: more tags than it stores) dead-letters just those
  records with stage ``sink:<name>`` and commits past them; the other sink
  and the other records are stored.
* A sink that fails in a way that is no outage (a bug in a sink plugin)
  dead-letters the batch for that sink with ``internal: <what>`` instead of
  retrying the same offsets forever.
* OpenTSDB stopped and started (a private instance, so the shared one keeps
  serving): consumption pauses, nothing is committed past the outage,
  ``/healthz`` turns 503 naming OpenTSDB once the outage outlasts
  ``health_idle_after``, and after the restart every point is there.
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import orjson
from collector_helpers import new_run_id, private_service, wait_for
from stream_helpers import (
    Running, Topics, config, counter, es_count, es_docs, expected_ids, headers_of, lag, read_deadletters, tsdb_points,
)

from include import elasticsearch as es
from include.kafka import HEADER_RECEIVED_AT
from include.opentsdb import OpenTSDBClient
from include.schemas import SENSOR
from include.contract import timestamp_text
from stack.services.opentsdb import OpenTSDB


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_sink_refusing_for_good_dead_letters_only_its_records(kafka, elasticsearch, opentsdb):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch=elasticsearch,
                 opentsdb_url=opentsdb.config.url("opentsdb"))
    metric = f"t.{run}.m"
    now = time.time()
    yesterday = now - 86400
    es_client = elasticsearch.admin()  # checks and clean-up
    # Today's index exists already with a mapping the readings do not fit: Elasticsearch refuses each for good.
    today = datetime.fromtimestamp(now, timezone.utc).strftime("%Y.%m.%d")
    es_client.indices.create(index=f"{cfg.es_index_prefix}-{SENSOR}-{today}",
                             mappings={"properties": {"value": {"type": "boolean"}}})

    def payload(when: float, n: int, tags: dict) -> bytes:
        return orjson.dumps([{"metric": metric, "timestamp": int(when * 1000) + n, "value": 10.5 + n, "tags": tags}])

    nine = {f"k{i}": "v" for i in range(8)}  # with device= OpenTSDB gets 9 tags: it stores at most 8
    records = ([("es-refuses", payload(now, n, {"type": "dust"})) for n in range(3)]
               + [("tsdb-refuses", payload(yesterday, n, nine)) for n in range(3)]
               + [("both-accept", payload(yesterday, n, {"type": "dust"})) for n in range(3)])
    headers = [(HEADER_RECEIVED_AT, timestamp_text(round(now, 3)).encode())]
    for device, value in records:
        t.produce(t.raw, device.encode(), value, headers)
    t.flush()
    try:
        with Running(cfg) as loader:
            wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 60, "every record committed")
            assert counter(loader.metrics.deadletters, stage="sink:elasticsearch", code="refused") == 3
            assert counter(loader.metrics.deadletters, stage="sink:opentsdb", code="refused") == 3
        letters = read_deadletters(t.bootstrap, t.dl, 6)
        by_device = {}
        for msg in letters:
            by_device.setdefault(msg.key().decode(), []).append(headers_of(msg))
        assert sorted(by_device) == ["es-refuses", "tsdb-refuses"]
        for h in by_device["es-refuses"]:
            assert h["stage"] == "sink:elasticsearch" and h["reason_code"] == "refused" and "parse" in h["reason"], h
        for h in by_device["tsdb-refuses"]:
            assert h["stage"] == "sink:opentsdb" and "Too many tags" in h["reason"], h
        stored = {d["device"] for d in es_docs(es_client, cfg.es_index_prefix, SENSOR).values()}
        assert stored == {"tsdb-refuses", "both-accept"}
        points = tsdb_points(OpenTSDBClient(cfg.opentsdb_url), metric, int(yesterday) - 60)
        assert sorted(dict(k)["device"] for k, _ in points) == ["both-accept"] * 3
        today_points = tsdb_points(OpenTSDBClient(cfg.opentsdb_url), metric, int(now) - 60)
        assert sorted(dict(k)["device"] for k, _ in today_points) == ["es-refuses"] * 3
    finally:
        es.drop_prefix(es_client, cfg.es_index_prefix)


class PluginWithABug:
    """A sink plugin (the Sink protocol of include/pipeline.py) whose code breaks on the documents it gets."""

    name = "buggy"

    def load(self, source, batches):
        return {key: docs.documents[0]["value"] for key, docs in batches}  # bytes are not subscriptable by str

    def close(self) -> None:
        pass


def test_a_sink_that_fails_unexpectedly_dead_letters_its_batch_instead_of_replaying_it(kafka, elasticsearch):
    from include.sinks import ElasticsearchSink

    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    cfg = config(run, t, elasticsearch=elasticsearch, sinks=("elasticsearch",))
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    es_client = elasticsearch.admin()  # checks and clean-up
    sinks = [ElasticsearchSink(elasticsearch.client("loader", prefix=cfg.es_index_prefix), prefix=cfg.es_index_prefix), PluginWithABug()]
    try:
        t.sensor_records(metric, ts0, 20)
        with Running(cfg, sinks=sinks) as loader:
            wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 60, "every record committed")
            assert counter(loader.metrics.internal_errors) >= 1
            assert counter(loader.metrics.deadletters, stage="sink:buggy", code="internal") == 20
        letters = read_deadletters(t.bootstrap, t.dl, 20)
        for h in map(headers_of, letters):
            assert h["stage"] == "sink:buggy" and h["reason"].startswith("internal: TypeError: "), h
        # The healthy sink stored every reading; nothing waits for the broken one.
        assert set(es_docs(es_client, cfg.es_index_prefix, SENSOR)) == expected_ids(metric, ts0, 20)
    finally:
        es.drop_prefix(es_client, cfg.es_index_prefix)


def test_opentsdb_outage_pauses_turns_unhealthy_and_loses_nothing(stack_config, kafka, elasticsearch):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run)
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000)
    runtime = Path(f"/tmp/sluice-stream-test-{run}")
    runtime.mkdir(mode=0o755)
    es_client = elasticsearch.admin()  # checks and clean-up
    try:
        with private_service(OpenTSDB, stack_config, runtime) as server:
            url = server.config.url("opentsdb")
            cfg = config(run, t, elasticsearch=elasticsearch, opentsdb_url=url,
                         sink_timeout=3.0, health_idle_after=5.0)
            with Running(cfg) as loader:
                port = loader.metrics_port
                t.sensor_records(metric, ts0, 100)
                wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 60, "the first records committed")
                assert healthz(port)[0] == 200
                server.stop()
                try:
                    t.sensor_records(metric, ts0, 100, start=100)
                    wait_for(lambda: loader.metrics.paused._value.get() == 1, 60, "consumption paused")
                    # 503 once records waited health_idle_after seconds; the reason names the sink once it has
                    # been down that long too (its outage began at the first failed put, just after the fetch).
                    status, text = wait_for(lambda: (lambda r: r if "opentsdb down for" in r[1] else None)(healthz(port)),
                                            60, "/healthz to fail naming opentsdb")
                    assert status == 503 and "nothing was handled" in text, text
                    assert lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 100, "committed past an outage"
                    assert counter(loader.metrics.sink_failures, sink="opentsdb") >= 1
                finally:
                    server.start()
                wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 120, "the rest committed")
                wait_for(lambda: healthz(port)[0] == 200, 10, "/healthz to recover")
                assert loader.metrics.paused._value.get() == 0
            points = tsdb_points(OpenTSDBClient(url), metric, ts0 // 1000 - 1)
            assert len(points) == 600
            assert set(es_docs(es_client, cfg.es_index_prefix, SENSOR)) == expected_ids(metric, ts0, 200)
            assert es_count(es_client, cfg.es_index_prefix, SENSOR) == 600
    finally:
        es.drop_prefix(es_client, f"t{run}")
        shutil.rmtree(runtime, ignore_errors=True)
