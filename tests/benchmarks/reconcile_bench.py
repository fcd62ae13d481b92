"""CPU cost of reconciling one minute (both sources, every hop) beside the batch load of that same minute.

    .venv/bin/python tests/benchmarks/reconcile_bench.py [--devices 10] [--hosts 5]   # needs the local stack

One minute is made as the system makes it, under throw-away names: a sensor
writer hears ``--devices`` devices (20 payloads of 3 readings each) and sends
them to a private Kafka topic, its minute file and manifest land in MinIO;
``--hosts`` host files of 60 rows land with their manifests. The reference is
the minute DAG's work for that minute, :func:`include.pipeline.load_files`
into Elasticsearch and OpenTSDB. The figure is
:func:`include.reconcile.reconcile_minutes` for both sources (landing zone,
Kafka, Elasticsearch, OpenTSDB, storing the two documents): CPU seconds of
this process (``time.process_time``, every thread) and wall seconds, best of
3. The Airflow task around it (process start, imports) is not included: the
report states that separately. It prints figures and asserts nothing;
everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import orjson

from include import elasticsearch as es_mod
from include import pipeline, reconcile, sinks
from include.contract import minute_key
from include.landing import S3Landing
from include.manifests import MinuteManifest, write_manifest
from include.opentsdb import OpenTSDBClient
from include.sensors import csv_line, parse_payload

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)


def measure(fn) -> tuple[float, float, object]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10, help="sensor devices in the minute (20 payloads each)")
    parser.add_argument("--hosts", type=int, default=5, help="host files in the minute (60 rows each)")
    args = parser.parse_args()

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from include.kafka import ensure_topics, producer_config
    from stack import api
    from stack.config import LANDING_BUCKET, StackConfig
    from stack.services.minio import MinIO

    config = StackConfig.from_env()
    print("starting (or reusing) minio, kafka, elasticsearch, opentsdb ...", flush=True)
    api.ensure(config, ["minio", "kafka", "elasticsearch", "opentsdb"])
    run = uuid.uuid4().hex[:8]
    landing = S3Landing(MinIO(config).admin_client(), LANDING_BUCKET, f"bench-reconcile-{run}")
    from stack.services.elasticsearch import Elasticsearch

    es = Elasticsearch(config).admin(request_timeout=60)  # loads, reconciles and cleans up with one client
    prefix = f"sluicebench-{run}"
    topic = f"sluice.bench.reconcile.{run}"
    from stack.services.kafka import client_settings

    bootstrap = config.kafka_bootstrap
    login = client_settings(config)  # SASL_SSL as the stack's admin (bootstrap included)
    security = {k: v for k, v in login.items() if k != "bootstrap.servers"}
    ensure_topics(bootstrap, [topic], settings=security)
    tsdb = OpenTSDBClient(config.url("opentsdb"))
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=10)
    try:
        print(f"making minute {minute:%H:%M}: {args.devices} sensor devices, {args.hosts} hosts ...", flush=True)
        producer = Producer(producer_config(bootstrap, **security))
        lines, rows = [], {}
        for d in range(args.devices):
            device = f"bench-{run}-{d}"
            for s in range(20):
                received = minute.timestamp() + s * 3 + 0.5
                payload = orjson.dumps([{"metric": "mqtt.home.pcroom", "value": 20 + s, "tags": {"type": k}}
                                        for k in ("dust", "humidity", "temperature")])
                at = datetime.fromtimestamp(received, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                producer.produce(topic, key=device.encode(), value=payload, timestamp=int(received * 1000),
                                 headers=[("received_at", at.encode())])
                readings = parse_payload(payload, received).readings
                lines += [csv_line(device, r) for r in readings]
                rows[device] = rows.get(device, 0) + len(readings)
        producer.flush(30)
        landing.put(minute_key("sensor", minute, "mqtt-bench"), ("timestamp,device,metric,value,tags\n" + "".join(lines)).encode())
        write_manifest(landing, MinuteManifest("sensor", "mqtt-bench", minute, rows=rows, received=20 * args.devices))
        for h in range(args.hosts):
            host = f"bench-{run}-h{h}"
            body = "".join(f"{minute:%Y-%m-%dT%H:%M}:{s:02d}Z,{host},{s / 2},{1000 + s},2,0,0,17084211200,4082380800,"
                           f"76.1,13001830400,4082380800\n" for s in range(60))
            landing.put(minute_key("host", minute, host), f"{HOST_HEADER}\n{body}".encode())
            write_manifest(landing, MinuteManifest("host", host, minute, rows={host: 60}, received=60))

        loaders = [sinks.ElasticsearchSink(es, prefix=prefix), sinks.OpenTSDBSink(tsdb)]
        load_cpu = load_wall = 0.0
        for source in ("sensor", "host"):
            files = pipeline.minute_files(landing, source, minute)
            cpu, wall, _ = measure(lambda s=source, f=files: pipeline.load_files(landing, loaders, s, f, run_id="bench"))
            load_cpu, load_wall = load_cpu + cpu, load_wall + wall
        es.indices.refresh(index=f"{prefix}-*")

        def consumer():
            return Consumer({**login, "group.id": f"bench-{run}", "enable.auto.commit": False,
                             "log_level": 3})

        def reconcile_once():
            return reconcile.reconcile_minutes(landing, [("sensor", minute), ("host", minute)], elasticsearch=es,
                                               es_prefix=prefix, opentsdb=tsdb, kafka=consumer,
                                               kafka_topics={"sensor": topic})

        runs = [measure(reconcile_once) for _ in range(3)]
        cpu, wall, verdicts = min(runs, key=lambda r: r[0])
        total = sum(rows.values()) + 60 * args.hosts
        print(f"verdicts: {'; '.join(v.describe() for v in verdicts)}")
        print(f"minute of {total} readings ({sum(rows.values())} sensor on Kafka, {60 * args.hosts} host)")
        print(f"reconcile one minute, both sources, every hop: {cpu:.3f} CPU s, {wall:.3f} s wall (best of 3)")
        print(f"reference, the batch load of the same minute (ES + OpenTSDB): {load_cpu:.3f} CPU s, {load_wall:.3f} s wall")
    finally:
        for info in list(landing.list("")):
            landing.delete(info.key)
        es_mod.drop_prefix(es, prefix)
        es_mod.delete_indices(es, f"{prefix}-*")
        AdminClient(login).delete_topics([topic])
        tsdb.close()
        es.close()


if __name__ == "__main__":
    main()
