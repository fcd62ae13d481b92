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
    per_chunk = 100
    chunks = [0]  # chunks published so far
    stop = threading.Event()

    def publish() -> None:
        # A steady stream until the test says stop, so the kill and the join both happen while
        # records flow however slowly the loaders start on a loaded machine.
        while not stop.is_set():
            t.sensor_records(metric, ts0, per_chunk, start=chunks[0] * per_chunk, devices=DEVICES)
            chunks[0] += 1
            time.sleep(0.4)

    def joined_took_partitions(log: str) -> bool:
        return f"assigned {t.raw}" in log or f"assigned {t.host}" in log

    es_client = elasticsearch.admin()  # checks and clean-up
    logs = [tmp_path / f"loader{i}.log" for i in range(4)]
    ports = [free_port() for _ in range(4)]
    procs = [spawn("collectors.stream", cli_args(cfg, instance_id=None, metrics_port=ports[i]), logs[i]) for i in range(3)]
    publisher = threading.Thread(target=publish)
    try:
        publisher.start()
        wait_for(lambda: all(scrape(p, "sluice_stream_batches_committed_total") > 0 for p in ports[:3]), 120,
                 "each of the three loaders committing")
        # Mid-batch: the victim holds records it consumed but has not committed yet.
        wait_for(lambda: scrape(ports[0], "sluice_stream_records_consumed_total")
                 > scrape(ports[0], "sluice_stream_records_committed_total"), 30, "the victim inside a batch", interval=0.005)
        terminate(procs[0], signal.SIGKILL)
        time.sleep(2.0)
        procs.append(spawn("collectors.stream", cli_args(cfg, instance_id=None, metrics_port=ports[3]), logs[3]))
        wait_for(lambda: joined_took_partitions(logs[3].read_text()), 90, "the fourth loader taking partitions")
        after_join = chunks[0]
        wait_for(lambda: chunks[0] >= after_join + 5, 60, "five more chunks published after the join")
        stop.set()
        publisher.join(60)
        assert not publisher.is_alive(), "the publisher did not stop"
        total = chunks[0] * per_chunk
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
    finally:
        stop.set()
        publisher.join(60)
        for proc, log in zip(procs[1:], logs[1:len(procs)], strict=True):  # the victim is gone already
            assert terminate(proc) == 0, log.read_text()[-3000:]
        es.drop_prefix(es_client, cfg.es_index_prefix)
