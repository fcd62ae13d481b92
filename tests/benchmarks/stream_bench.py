"""Benchmarks of the stream loader; prints figures, asserts nothing.

1. Throughput: ``--messages`` seed payloads (three readings each) are put in
   topics of the run's own, then ``python -m collectors.stream`` (a real
   process, default batch options; ``--loaders N`` runs N in one group) loads
   them into Elasticsearch and OpenTSDB. Messages/s and readings/s are taken
   from the moment every loader owns partitions and one has consumed (the
   records not committed then are the ones measured) to the moment the
   group's lag is zero (every offset committed, so every reading accepted by
   both sinks).
   The reference, measured right after in the same run: the same documents
   into Elasticsearch alone as plain ``_bulk`` requests of pre-built bodies.
2. Latency: ``python -m collectors.mqtt`` forwards MQTT payloads to Kafka and
   the loader loads them; a publisher sends ``--rate`` readings/s (payloads of
   three) to Mosquitto with QoS 1 for ``--seconds``, and a reader searches
   Elasticsearch every 50 ms. The latency of a reading is the time from its
   publish to the first search that finds it (so it includes Elasticsearch's
   1 s refresh); p50, p95 and max are printed, with the count found.

Every run uses its own topics, consumer group, index prefix and metric names
and removes its indices at the end. Needs the local stack (``python -m stack up``); every Kafka
client logs in as the stack's admin over SASL_SSL (the loader and collector through
``SLUICE_KAFKA_*``, password by file). ``stream_security_bench.py`` compares SASL_SSL with PLAINTEXT.
Run: ``.venv/bin/python tests/benchmarks/stream_bench.py [--messages 20000] [--loaders 1] [--rate 1000] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from dataclasses import dataclass, field

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # mqtt_helpers: the broker's users for the latency run

from stack.services.elasticsearch import Elasticsearch  # noqa: E402

@dataclass(frozen=True)
class KafkaTarget:
    """Where the loader and collector processes connect and how they log in, and the benchmark's own login."""

    #: Bootstrap servers of the loader and collector processes.
    bootstrap: str
    #: Their ``SLUICE_KAFKA_*`` environment (login, password by file).
    env: dict
    #: librdkafka settings (bootstrap included) of the benchmark's own clients: topics, producer, lag.
    admin: dict = field(default_factory=dict)

    def admin_security(self) -> dict:
        return {k: v for k, v in self.admin.items() if k != "bootstrap.servers"}


def stack_target(cfg) -> KafkaTarget:
    """The local stack's Kafka, as its admin (the benchmark's topics and group are its own)."""
    from stack.services.kafka import ADMIN_USER, client_env, client_settings

    return KafkaTarget(cfg.kafka_bootstrap, client_env(cfg, ADMIN_USER), client_settings(cfg, ADMIN_USER))

KINDS = ("temperature", "humidity", "dust")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(metric: str, device: str, ts_ms: int, n: int) -> bytes:
    return orjson.dumps([{"type": "Metric", "metric": metric, "timestamp": ts_ms, "value": round(20 + n % 50 * 0.1, 1),
                          "tags": {"type": k, "loc": device}} for k in KINDS])


def spawn(module: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, from the loader's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def batch_steps(ports: list[int]) -> dict[str, float]:
    """Mean seconds a batch spent decoding and in each sink, over the loaders' whole run (their histograms)."""
    def mean(name: str, **labels: str) -> float:
        count = sum(scrape(port, f"{name}_count", **labels) for port in ports)
        return round(sum(scrape(port, f"{name}_sum", **labels) for port in ports) / count, 3) if count else 0.0

    steps = {"decode": mean("sluice_stream_decode_seconds")}
    for sink in ("elasticsearch", "opentsdb"):
        steps[sink] = mean("sluice_stream_sink_load_seconds", sink=sink)
    steps["batch"] = mean("sluice_stream_batch_seconds")
    return steps


class GroupLag:
    """Records of ``topics`` ``group`` has not committed, asked through one consumer kept open.

    ``admin`` is the librdkafka settings (bootstrap, login). One client for the
    whole wait: a new SASL_SSL consumer every 0.1 s cost a fifth of a core,
    taken from the loader being measured.
    """

    def __init__(self, admin: dict, group: str, topics: list[str]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({**admin, "group.id": group, "enable.auto.commit": False})
        self.parts = [TopicPartition(t, p) for t in topics
                      for p in self.consumer.list_topics(t, timeout=10).topics[t].partitions]

    def __call__(self) -> int:
        total = 0
        for tp in self.consumer.committed(self.parts, timeout=10):
            low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            total += high - (tp.offset if tp.offset >= 0 else low)
        return total

    def close(self) -> None:
        self.consumer.close()


def loader_args(bootstrap: str, run: str, raw: str, es_server, tsdb_url: str, port: int, extra: list[str]) -> list[str]:
    """Flags of a bench loader; ``es_server`` (the stack's Elasticsearch) gives the HTTPS URL, the CA and a
    loader key for the bench's prefix, handed over in a 0600 file (never on the command line)."""
    from stack.secrets import write_private

    key_file = Path(tempfile.gettempdir()) / "sluice-bench-keys" / f"bench{run}.es-key"
    key_file.parent.mkdir(mode=0o700, exist_ok=True)
    write_private(key_file, es_server.api_key("loader", prefix=f"bench{run}"), replace=True)
    return ["--kafka-bootstrap", bootstrap, "--kafka-group", f"bench-{run}", "--sensor-topic", raw,
            "--host-topic", f"bench.{run}.host", "--deadletter-topic", f"bench.{run}.dl",
            "--sinks", "elasticsearch,opentsdb", "--elasticsearch-url", es_server.url,
            "--elasticsearch-ca-certs", str(es_server.ca_certs), "--elasticsearch-api-key-file", str(key_file),
            "--opentsdb-url", tsdb_url, "--es-index-prefix", f"bench{run}", "--metrics-port", str(port), *extra]


def bench_topics(run: str) -> list[str]:
    """The run's sensor, host and dead-letter topics."""
    return [f"bench.{run}.raw", f"bench.{run}.host", f"bench.{run}.dl"]


def bench_throughput(cfg, messages: int, tmp: Path, extra: list[str], target: KafkaTarget | None = None,
                     prepared=None, loaders: int = 1) -> dict:
    """``messages`` payloads put in the run's own topics, then loaded by ``loaders`` loader processes of
    one consumer group: their readings/s together, from the moment every loader owns partitions (the
    records not committed then) to the group's lag of zero.

    ``target`` is the Kafka the loaders read (default: the stack's, as its
    admin); the topics are filled by :func:`fill` before the clock starts, then
    ``prepared(run, group)`` is called (e.g. to grant the loader's user its rights).
    The sensor topic has two partitions a loader (at least three), so a group splits it evenly.
    """
    target = target or stack_target(cfg)
    bootstrap = target.bootstrap
    run = uuid.uuid4().hex[:8]
    raw = f"bench.{run}.raw"
    group = f"bench-{run}"
    fill(target, run, messages, partitions=max(3, 2 * loaders))
    if prepared is not None:
        prepared(run, group)
    ports = [free_port() for _ in range(loaders)]
    procs = [spawn("collectors.stream", loader_args(bootstrap, run, raw, Elasticsearch(cfg), cfg.url("opentsdb"),
                                                    port, [*extra, "--kafka-instance-id", f"bench-{run}-{n}"]),
                   tmp / f"loader-{run}-{n}.log", target.env)
             for n, port in enumerate(ports)]

    def started() -> bool:
        """Every loader owns partitions and one has consumed a record."""
        try:
            return (all(scrape(port, "sluice_stream_partitions_assigned") > 0 for port in ports)
                    and sum(scrape(port, "sluice_stream_records_consumed_total") for port in ports) > 0)
        except OSError:
            return False

    lag = GroupLag(target.admin, group, [raw])
    try:
        deadline = time.monotonic() + 120
        while not started():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"loader did not start; see {tmp}")
            time.sleep(0.02)
        # The clock starts when the whole group is up; what was not committed by then is measured
        # (with several loaders, the rebalances of their start are not).
        t0 = time.monotonic()
        left = lag()
        while lag() > 0:
            if time.monotonic() - t0 > 600:
                raise RuntimeError("loader did not finish within 600 s")
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        loaded = {sink: sum(scrape(port, "sluice_stream_documents_loaded_total", sink=sink) for port in ports)
                  for sink in ("elasticsearch", "opentsdb")}
        steps = batch_steps(ports)
    finally:
        lag.close()
        for proc in procs:
            stop(proc)
        from include import elasticsearch as es

        es.drop_prefix(Elasticsearch(cfg).admin(), f"bench{run}")
    return {
        "messages": messages,
        "readings": 3 * messages,
        "loaders": loaders,
        "messages_measured": left,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(left / elapsed),
        "readings_per_s_into_both_sinks": round(3 * left / elapsed),
        "documents_loaded": loaded,
        "mean_seconds_a_batch": steps,
        "run": run,
    }


def fill(target: KafkaTarget, run: str, messages: int, *, partitions: int = 3) -> None:
    """Make the run's topics (``partitions`` each) and put ``messages`` seed payloads (three readings each)
    in its sensor topic."""
    from confluent_kafka import Producer

    from include.contract import timestamp_text as iso_utc
    from include.kafka import ensure_topics, producer_config

    bootstrap = target.admin["bootstrap.servers"]
    raw = f"bench.{run}.raw"
    ensure_topics(bootstrap, bench_topics(run), partitions=partitions, settings=target.admin_security())
    producer = Producer(producer_config(bootstrap, client_id="bench", **target.admin_security()))
    metric = f"bench.{run}.m"
    ts0 = int(time.time() * 1000) - 3_600_000
    received = iso_utc(round(time.time(), 3)).encode()
    for i in range(messages):
        device = f"dev{i % 20}"
        while True:
            try:
                producer.produce(raw, key=device.encode(), value=payload(metric, device, ts0 + i, i),
                                 headers=[("received_at", received)])
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def bench_plain_bulk(cfg, messages: int, *, chunk: int = 15000) -> dict:
    """The reference of the throughput run: the same documents as one plain ``_bulk`` after another.

    The documents are what the loader makes of the same payloads
    (:func:`collectors.stream.decode.sensor_documents`), serialised and framed
    before the clock starts; ``chunk`` documents a request (the loader's
    default batch of 5,000 payloads is 15,000 readings).
    """
    from collectors.stream.decode import sensor_documents
    from include import elasticsearch as es_mod
    from include.contract import daily_index
    from include.sensors import Limits

    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}ref"
    admin = Elasticsearch(cfg).admin(request_timeout=120)
    es = Elasticsearch(cfg).client("loader", prefix=prefix, request_timeout=120)  # what the loader has
    es_mod.ensure_index_template(es, "sensor", prefix=prefix)
    ts0 = int(time.time() * 1000) - 3_600_000
    lines: list[bytes] = []
    for i in range(messages):
        device = f"dev{i % 20}"
        docs, _ = sensor_documents(device.encode(), payload(f"bench.{run}.m", device, ts0 + i, i), time.time(), Limits())
        for doc_id, doc in docs:  # the loader's documents under the loader's ids
            index = daily_index("sensor", doc["@timestamp"], prefix=prefix)
            lines.append(b'{"index":{"_index":"%s","_id":"%s"}}\n%s\n' % (index.encode(), doc_id.encode(),
                                                                       orjson.dumps(doc)))
    bodies = [b"".join(lines[i:i + chunk]) for i in range(0, len(lines), chunk)]
    try:
        start = time.monotonic()
        for body in bodies:
            if es.bulk(operations=body)["errors"]:
                raise RuntimeError("plain _bulk refused documents")
        elapsed = time.monotonic() - start
    finally:
        es_mod.drop_prefix(admin, prefix)
    return {"documents": len(lines), "seconds": round(elapsed, 2), "docs_per_s": round(len(lines) / elapsed)}


def bench_latency(cfg, rate: float, seconds: float, tmp: Path, extra: list[str]) -> dict:
    from mqtt_helpers import MqttUsers

    from include import elasticsearch as es
    from include.kafka import ensure_topics
    from include.contract import reading_id
    from include.schemas import SENSOR
    from include.contract import timestamp_text as iso_utc

    run = uuid.uuid4().hex[:8]
    target = stack_target(cfg)
    bootstrap = cfg.kafka_bootstrap
    raw = f"bench.{run}.raw"
    ensure_topics(bootstrap, bench_topics(run), settings=target.admin_security())
    prefix = f"bench{run}"
    metric = f"bench.{run}.lat"
    from stack.services.mosquitto import Mosquitto, device_topic

    # The stack's broker: TLS, a collector user of its own, ten device users publishing as themselves.
    mq = MqttUsers(Mosquitto(cfg), tmp)
    devices = mq.devices(run, 10)
    collector = spawn("collectors.mqtt", [
        "--landing-url", (tmp / f"landing-{run}").as_uri(), "--state-dir", str(tmp / f"state-{run}"),
        *mq.collector_args(f"bench-{run}", devices), "--kafka-bootstrap", bootstrap, "--kafka-topic", raw, "--kafka-deadletter-topic", f"bench.{run}.dl",
        "--metrics-port", "-1"], tmp / f"collector-{run}.log", target.env)
    port = free_port()
    loader = spawn("collectors.stream", loader_args(bootstrap, run, raw, Elasticsearch(cfg), cfg.url("opentsdb"),
                                                    port, extra), tmp / f"loader-{run}.log", target.env)
    client = Elasticsearch(cfg).admin()  # the bench's own search and clean-up
    published: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or len(seen) < len(published):
            if done.is_set() and time.monotonic() > reader_deadline[0]:
                return
            try:
                resp = client.search(index=f"{prefix}-sensor-*", size=10000, source=False, ignore_unavailable=True,
                                     allow_no_indices=True,
                                     query={"range": {"@timestamp": {"gte": reader_from[0]}}})
            except Exception:
                time.sleep(0.05)
                continue
            now = time.time()
            for hit in resp["hits"]["hits"]:
                seen.setdefault(hit["_id"], now)
            time.sleep(0.05)

    reader_from = [iso_utc(int(time.time()))]
    reader_deadline = [float("inf")]
    try:
        time.sleep(4)  # both processes connected, the loader assigned
        pubs = {}
        for device in devices:
            pubs[device] = mq.client(device)
            pubs[device].max_inflight_messages_set(1000)
            pubs[device].connect("127.0.0.1", mq.port)
            pubs[device].loop_start()
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        per_second = rate / 3
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            target = int((time.monotonic() - t0) * per_second)
            while n < target:
                device = devices[n % 10]
                now = time.time()
                ts_ms = int(now * 1000)
                # Distinct per device: one device never sends two payloads in the same millisecond here.
                ts_ms = max(ts_ms, last_ts.get(device, 0) + 1)
                last_ts[device] = ts_ms
                for kind in KINDS:
                    published[reading_id(SENSOR, device, iso_utc(ts_ms / 1000), metric, f"loc={device} type={kind}")] = now
                pubs[device].publish(device_topic(device), payload(metric, device, ts_ms, n), qos=1)
                n += 1
            time.sleep(0.002)
        for pub in pubs.values():
            pub.loop_stop()
            pub.disconnect()
        done.set()
        reader_deadline[0] = time.monotonic() + 30
        thread.join(40)
        delay_sum = scrape(port, "sluice_stream_delay_seconds_sum")
        delay_count = scrape(port, "sluice_stream_delay_seconds_count")
        batch_sum = scrape(port, "sluice_stream_batch_seconds_sum")
        batch_count = scrape(port, "sluice_stream_batch_seconds_count")
    finally:
        done.set()
        stop(loader)
        stop(collector)
        mq.close()
        try:
            es.drop_prefix(client, prefix)
        except Exception:
            pass
    latencies = sorted(seen[i] - published[i] for i in published if i in seen)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else float("nan")

    return {
        "readings_published": len(published),
        "readings_found": len(latencies),
        "rate_readings_per_s": rate,
        "seconds": seconds,
        "latency_p50_s": pct(0.50),
        "latency_p95_s": pct(0.95),
        "latency_max_s": round(latencies[-1], 3) if latencies else float("nan"),
        # The loader's own view: MQTT receive time -> offsets committed, and a batch's first record -> commit.
        "loader_receive_to_commit_mean_s": round(delay_sum / max(delay_count, 1), 3),
        "loader_batch_mean_s": round(batch_sum / max(batch_count, 1), 3),
        "loader_batches": int(batch_count),
        "run": run,
    }


last_ts: dict[str, int] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="payloads for the throughput run (3 readings each)")
    parser.add_argument("--rate", type=float, default=1000, help="readings/s for the latency run")
    parser.add_argument("--seconds", type=float, default=30, help="duration of the latency run")
    parser.add_argument("--skip", choices=("throughput", "latency"), action="append", default=[])
    parser.add_argument("--loader-arg", action="append", default=[], help="extra option for the loader, e.g. --batch-wait=0.1")
    parser.add_argument("--loaders", type=int, default=1, help="loader processes in the group for the throughput run")
    args = parser.parse_args()
    from stack.config import StackConfig

    cfg = StackConfig.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-stream-"))
    results = {"logs": str(tmp), "loader_args": args.loader_arg, "cores": os.cpu_count()}
    if "throughput" not in args.skip:
        results["throughput"] = bench_throughput(cfg, args.messages, tmp, args.loader_arg, loaders=args.loaders)
        print(json.dumps({"throughput": results["throughput"]}), flush=True)
        results["plain_bulk_reference"] = bench_plain_bulk(cfg, args.messages)
        print(json.dumps({"plain_bulk_reference": results["plain_bulk_reference"]}), flush=True)
    if "latency" not in args.skip:
        results["latency"] = bench_latency(cfg, args.rate, args.seconds, tmp, args.loader_arg)
        print(json.dumps({"latency": results["latency"]}), flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
