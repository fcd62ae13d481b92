"""Failover of the stream loader group; prints figures, asserts nothing.

Three ``python -m collectors.stream`` processes share a six-partition topic
(default static instance ids, cooperative-sticky) while a producer publishes
``--rate`` seed payloads/s for ``--seconds``. At ``--kill-at`` seconds one
loader is SIGKILLed inside a batch; at ``--join-at`` a fourth joins. A
monitor reads every partition's committed and end offsets every 0.1 s.

Figures, each beside its reference from the same run:

* the longest stretch a partition with waiting records saw no commit after
  the kill, after the join, and (reference) in steady state before the kill;
* readings redelivered: the sum over Elasticsearch documents of
  ``_version - 1`` (each rewrite of an id bumps it), and the reading count,
  which must equal the produced count (nothing lost, nothing extra by id).

Needs the local stack (Kafka, Elasticsearch, OpenTSDB).
Run: ``.venv/bin/python tests/benchmarks/stream_failover_bench.py [--rate 300] [--seconds 45]``
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import free_port, loader_args, payload, scrape, spawn, stack_target, stop  # noqa: E402

from stack.services.elasticsearch import Elasticsearch  # noqa: E402


def offsets(consumer, parts) -> dict:
    committed = consumer.committed(parts, timeout=10)
    return {(tp.topic, tp.partition): (tp.offset, consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1])
            for tp in committed}


def longest_stall(samples: list, start: float, end: float) -> float:
    """Longest time (s) in [start, end) a partition had records waiting and its committed offset did not move."""
    worst = 0.0
    since: dict = {}  # partition -> (first sample time with this committed offset while records waited, offset)
    for t, snap in samples:
        if not start <= t < end:
            continue
        for key, (done, high) in snap.items():
            last = since.get(key)
            if done >= high:
                since[key] = None
            elif last is None or done != last[1]:
                since[key] = (t, done)
            else:
                worst = max(worst, t - last[0])
    return round(worst, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300, help="payloads/s (3 readings each)")
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--kill-at", type=float, default=12)
    parser.add_argument("--join-at", type=float, default=28)
    parser.add_argument("--loader-arg", action="append", default=[], help="extra loader option, e.g. --kafka-session-timeout=6")
    args = parser.parse_args()
    from confluent_kafka import Consumer, Producer, TopicPartition

    from include import elasticsearch as es
    from include.kafka import ensure_topics, producer_config
    from include.contract import timestamp_text
    from stack.config import StackConfig

    cfg = StackConfig.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-failover-"))
    run = uuid.uuid4().hex[:8]
    bootstrap = cfg.kafka_bootstrap
    raw, host = f"bench.{run}.raw", f"bench.{run}.host"
    target = stack_target(cfg)  # SASL_SSL as the stack's admin
    ensure_topics(bootstrap, [raw, host, f"bench.{run}.dl"], partitions=6, settings=target.admin_security())
    producer = Producer(producer_config(bootstrap, client_id="bench-failover", **target.admin_security()))
    metric = f"bench.{run}.m"
    ts0 = int(time.time() * 1000) - 3_600_000
    ports = [free_port() for _ in range(4)]

    def loader(i: int):
        return spawn("collectors.stream", loader_args(bootstrap, run, raw, Elasticsearch(cfg), cfg.url("opentsdb"),
                                                      ports[i], ["--batch-messages", "200", *args.loader_arg]),
                     tmp / f"loader{i}.log", target.env)

    print(f"starting 3 loaders (logs in {tmp})", flush=True)
    procs = [loader(i) for i in range(3)]
    # The reference needs a settled group: every loader owns partitions, all twelve (raw + host) are owned.
    while not all(scrape_ok(p) for p in ports[:3]) or not (
            all(scrape(p, "sluice_stream_partitions_assigned") > 0 for p in ports[:3])
            and sum(scrape(p, "sluice_stream_partitions_assigned") for p in ports[:3]) == 12):
        time.sleep(0.2)
    print("group settled: 3 loaders own 12 partitions", flush=True)
    watcher = Consumer({**target.admin, "group.id": f"bench-{run}", "enable.auto.commit": False})
    parts = [TopicPartition(raw, p) for p in range(6)]
    samples: list = []
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), offsets(watcher, parts)))
            time.sleep(0.1)

    threading.Thread(target=monitor, daemon=True).start()
    t0 = time.monotonic()
    sent = 0
    killed = joined = None
    print(f"publishing {args.rate:g} payloads/s for {args.seconds:g} s", flush=True)
    while time.monotonic() - t0 < args.seconds:
        for _ in range(int((time.monotonic() - t0) * args.rate) - sent):
            device = f"dev{sent % 24}"
            producer.produce(raw, key=device.encode(), value=payload(metric, device, ts0 + sent, sent),
                             headers=[("received_at", timestamp_text(round(time.time(), 3)).encode())])
            sent += 1
        producer.poll(0)
        now = time.monotonic() - t0
        if killed is None and now >= args.kill_at:
            wait_until = time.monotonic() + 10  # inside a batch: records consumed but not committed yet
            while (scrape(ports[0], "sluice_stream_records_consumed_total")
                   <= scrape(ports[0], "sluice_stream_records_committed_total") and time.monotonic() < wait_until):
                time.sleep(0.002)
            procs[0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            print(f"SIGKILL loader 0 at {killed - t0:.1f} s", flush=True)
        if joined is None and now >= args.join_at:
            procs.append(loader(3))
            joined = time.monotonic()
            print(f"loader 3 joins at {joined - t0:.1f} s", flush=True)
        time.sleep(0.01)
    producer.flush(60)
    end = time.monotonic()
    while True:
        snap = offsets(watcher, parts)
        if all(done_ >= high for done_, high in snap.values()) or time.monotonic() - end > 180:
            break
        time.sleep(0.2)
    drained = time.monotonic()
    done.set()
    for proc in procs[1:]:
        stop(proc)
    watcher.close()
    client = Elasticsearch(cfg).admin()  # the bench's own search and clean-up
    prefix = f"bench{run}"
    client.indices.refresh(index=f"{prefix}-sensor-*")
    versions = []
    resp = client.search(index=f"{prefix}-sensor-*", size=10000, scroll="60s", version=True, source=False)
    while resp["hits"]["hits"]:
        versions += [h["_version"] for h in resp["hits"]["hits"]]
        resp = client.scroll(scroll_id=resp["_scroll_id"], scroll="60s")
    es.drop_prefix(client, prefix)
    redelivered = sum(v - 1 for v in versions)
    result = {
        "loaders": "3, one SIGKILLed, then one joins", "partitions": 6, "payloads": sent, "readings_produced": 3 * sent,
        "readings_in_elasticsearch": len(versions), "readings_missing": 3 * sent - len(versions),
        "longest_stall_s_after_kill": longest_stall(samples, killed, joined),
        "longest_stall_s_after_join": longest_stall(samples, joined, drained),
        "reference_longest_stall_s_before_kill": longest_stall(samples, t0, killed),
        "readings_redelivered": redelivered, "payloads_redelivered": redelivered // 3,
        "drain_s_after_last_publish": round(drained - end, 2), "loader_args": args.loader_arg, "logs": str(tmp),
    }
    print(json.dumps(result, indent=2))
    return 0


def scrape_ok(port: int) -> bool:
    try:
        scrape(port, "sluice_stream_partitions_assigned")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
