"""Several stream loaders in one group: a member killed mid-batch and a member joining lose nothing, store nothing twice.

Three ``python -m collectors.stream`` processes (default static instance ids,
``<host>-<pid>``; cooperative-sticky assignor) share six partitions while a
producer keeps publishing. One is killed with SIGKILL mid-stream, then a
fourth joins. Afterwards the Elasticsearch ids and the OpenTSDB points are
exactly the produced set: nothing missing, nothing extra.
"""

from __future__ import annotations

import signal
import threading
import time

from collector_helpers import free_port, new_run_id, spawn, terminate, wait_for
from stream_helpers import Topics, cli_args, config, es_count, es_docs, expected_ids, lag, scrape, tsdb_points

from include import elasticsearch as es
from include.opentsdb import OpenTSDBClient
from include.schemas import SENSOR

DEVICES = 12
KINDS = ("temperature", "humidity", "dust")


def test_three_loaders_kill_one_mid_batch_then_add_one(tmp_path, kafka, elasticsearch, opentsdb):
    run = new_run_id()
    t = Topics(f"{kafka.config.host}:{kafka.port}", run, partitions=6)
    cfg = config(run, t, elasticsearch=elasticsearch,
                 opentsdb_url=opentsdb.config.url("opentsdb"), batch_messages=100, kafka_session_timeout=6.0)
    metric = f"t.{run}.m"
    ts0 = int(time.time() * 1000) - 120_000
    chunks, per_chunk = 40, 100
    total = chunks * per_chunk
    produced = threading.Event()

    def publish() -> None:  # a steady stream, so the kill and the join both happen while records flow
        for n in range(chunks):
            t.sensor_records(metric, ts0, per_chunk, start=n * per_chunk, devices=DEVICES)
            time.sleep(0.4)
        produced.set()

    es_client = elasticsearch.admin()  # checks and clean-up
    logs = [tmp_path / f"loader{i}.log" for i in range(4)]
    ports = [free_port() for _ in range(4)]
    procs = [spawn("collectors.stream", cli_args(cfg, instance_id=None, metrics_port=ports[i]), logs[i]) for i in range(3)]
    publisher = threading.Thread(target=publish)
    try:
        publisher.start()
        wait_for(lambda: all(scrape(p, "sluice_stream_batches_committed_total") > 0 for p in ports[:3]), 60,
                 "each of the three loaders committing")
        # Mid-batch: the victim holds records it consumed but has not committed yet.
        wait_for(lambda: scrape(ports[0], "sluice_stream_records_consumed_total")
                 > scrape(ports[0], "sluice_stream_records_committed_total"), 30, "the victim inside a batch", interval=0.005)
        terminate(procs[0], signal.SIGKILL)
        assert not produced.is_set(), "killed after the stream ended"
        time.sleep(2.0)
        procs.append(spawn("collectors.stream", cli_args(cfg, instance_id=None, metrics_port=ports[3]), logs[3]))
        publisher.join(60)
        assert produced.is_set()
        wait_for(lambda: lag(t.bootstrap, cfg.kafka_group, cfg.topics) == 0, 120, "every record committed", interval=0.2)
        for proc, log in zip(procs[1:], logs[1:], strict=True):
            assert proc.poll() is None, log.read_text()[-3000:]

        ids = set(es_docs(es_client, cfg.es_index_prefix, SENSOR))
        want = expected_ids(metric, ts0, total, devices=DEVICES)
        assert ids == want, f"{len(want - ids)} missing, {len(ids - want)} extra"
        assert es_count(es_client, cfg.es_index_prefix, SENSOR) == len(want)
        points = tsdb_points(OpenTSDBClient(cfg.opentsdb_url), metric, ts0 // 1000 - 1)
        want_points = {(tuple(sorted({"device": f"dev{i % DEVICES}", "loc": f"dev{i % DEVICES}", "type": k}.items())),
                        ts0 + i) for i in range(total) for k in KINDS}
        assert set(points) == want_points
        assert f"assigned {t.raw}" in logs[3].read_text() or f"assigned {t.host}" in logs[3].read_text(), \
            "the loader that joined took partitions"
    finally:
        publisher.join(60)
        for proc, log in zip(procs[1:], logs[1:], strict=True):
            assert terminate(proc) == 0, log.read_text()[-3000:]
        es.drop_prefix(es_client, cfg.es_index_prefix)
