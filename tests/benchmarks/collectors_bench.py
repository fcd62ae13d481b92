"""Benchmarks of the collectors; prints figures, asserts nothing.

The host sampler is measured beside collectd by ``host_bench.py``; this file
keeps :func:`measure` (a process's CPU and peak RSS), which it uses.

1. MQTT collector, live: ``--rate`` messages/s (default 5,000: 5,000 devices at
   1 message/s) offered through paho into the real Mosquitto by the load
   generator (tests/benchmarks/mqtt_load.py: several processes, pre-encoded
   payloads, QoS 1, no per-message waits, every device over TLS as its own
   user). A bare paho subscriber (automatic acks, no work: the reference;
   over TLS as a collector user, so it pays the same TLS cost) takes the same
   offer once before and once after the collector (journal-gated acks, minute
   files and Kafka over SASL_SSL). Prints
   the rate each sustained, their ratio, the rate the generator reached, and
   checks by reading id that every reading is in the minute files once and
   every message on Kafka.
2. MQTT receive limit (``--drain``): the same number of QoS 1 messages is
   queued in a persistent session while its client is away, then drained:
   by a bare paho subscriber (automatic acks, no work: the reference), by the
   collector (journal-gated acks, minute files and Kafka; ``--collectors N``:
   N of them on one shared subscription), by the bare subscriber again. Each
   queue is filled just before its drain, so each receiver meets the broker
   holding its queue alone. Draining a queue measures what the receiver
   takes, not what a publisher on the same two cores manages to offer. Prints
   each rate, their ratio and each receiver's CPU per message, and checks by
   reading id that every reading is in the minute files once.

Needs the local stack (``python -m stack up``). Run:
``.venv/bin/python tests/benchmarks/collectors_bench.py [--mqtt-seconds 20] [--drain 60000]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))  # mqtt_helpers, kafka_login: the stack's users (TLS, a user per device and collector)

from mqtt_load import Offer, offer_load, planned_messages  # noqa: E402

def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024


def measure(procs: dict[str, subprocess.Popen], seconds: float, warmup: float = 5.0) -> dict[str, dict]:
    time.sleep(warmup)  # imports and first sample are start-up, not steady state
    handles = {name: psutil.Process(p.pid) for name, p in procs.items()}
    start = {name: sum(h.cpu_times()[:2]) for name, h in handles.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {
        name: {"cpu_percent_of_one_core": round(100 * (sum(h.cpu_times()[:2]) - start[name]) / elapsed, 3),
               "peak_rss_mb": round(peak_rss_mb(h.pid), 1)}
        for name, h in handles.items()
    }


# argv: host port user topics-file want receive-maximum ca-file password-file session-expiry-s.
# It prints "subscribed" once the broker granted the subscription, then its figures as JSON.
BARE_SUBSCRIBER = textwrap.dedent("""
    import json, sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    host, port, client_id, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[5])
    topics = open(sys.argv[4]).read().split()
    ca_file, password = sys.argv[7], open(sys.argv[8]).read().strip()
    seen = {"n": 0, "first": None, "last": None, "cpu_first": 0.0, "cpu_last": 0.0}
    def on_message(client, userdata, msg):
        seen["n"] += 1
        now = time.monotonic()
        if seen["first"] is None:
            seen["first"], seen["cpu_first"] = now, time.process_time()
        seen["last"] = now
        if seen["n"] == want:
            seen["cpu_last"] = time.process_time()
    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            sys.exit(f"subscription refused: {reason_codes}")
        print("subscribed", flush=True)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca_file)
    c.username_pw_set(client_id, password)
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(sys.argv[9])
    props.ReceiveMaximum = int(sys.argv[6])
    c.connect(host, port, keepalive=30, clean_start=False, properties=props)
    c.subscribe([(t, 1) for t in topics])
    deadline = time.monotonic() + 600
    while seen["n"] < want and time.monotonic() < deadline:
        c.loop(0.05)
    c.disconnect()
    print(json.dumps({"messages": seen["n"], "seconds": (seen["last"] or 0) - (seen["first"] or 0),
                      "cpu_seconds": seen["cpu_last"] - seen["cpu_first"]}))
""")


def bare_args(mq, user: str, topics: list[str], want: int, expiry_s: int) -> list[str]:
    """Command line of :data:`BARE_SUBSCRIBER` reading ``topics`` as collector user ``user`` over TLS."""
    password_file = mq.collector(user)
    topics_file = mq.folder / f"topics-{user}"
    topics_file.write_text("\n".join(topics) + "\n")
    return [sys.executable, "-c", BARE_SUBSCRIBER, "127.0.0.1", str(mq.port), user, str(topics_file), str(want),
            "1000", mq.ca_file, str(password_file), str(expiry_s)]


def make_session(mq, user: str, topics: list[str]) -> None:
    """A persistent QoS 1 session of collector ``user`` on ``topics``, left without its client: the broker queues for it."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    mq.collector(user)
    c = mq.client(user, v5=True)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", mq.port, keepalive=30, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe([(t, 1) for t in topics])
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()


def publish(mq, devices: list[str], messages: int, publishers: int) -> dict:
    """Publish about ``messages`` seed payloads (QoS 1) from ``devices`` as fast as they go; what was sent.

    Each publisher process sends its share of the rate rounded down, so the count can be
    a few short of ``messages``: the receivers wait for what was sent, not for what was asked.
    """
    sent = offer_load(Offer("127.0.0.1", mq.port, str(mq.devices_file(devices)), mq.ca_file, devices=len(devices),
                            rate=20_000, seconds=messages / 20_000), publishers)
    if sent["unacked"]:
        raise RuntimeError(f"the broker did not acknowledge {sent['unacked']} of {sent['messages']} publishes")
    return sent


def free_port() -> int:
    """A port nothing listens on now (for a collector's /metrics; the stack's ports are someone's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reading_ids(landing: Path) -> tuple[int, int]:
    """(rows, distinct reading ids) of every sensor minute file under ``landing``."""
    from include.contract import row_identity
    from include.schemas import SENSOR

    rows, ids = 0, set()
    for path in landing.rglob("raw/sensor/**/*.csv"):
        with path.open() as fh:
            fh.readline()
            for line in fh:
                rows += 1
                ids.add(row_identity(SENSOR, line.rstrip("\n").split(",")).id)
    return rows, len(ids)


def warn_of_broker_backlog(mosquitto) -> None:
    """Say so when Mosquitto's persistence file is large: the broker rewrites it every second.

    Every benchmark device publishes under ``sluice/sensors/``, so a persistent
    session subscribed there whose client is away (the stack's own collector,
    stopped for a quiet run) queues every benchmark message; at 0.5 GB the
    broker's saves took a third of a core and halved the bare subscriber.
    """
    db = mosquitto.data_dir / "mosquitto.db"
    size = db.stat().st_size if db.exists() else 0
    if size > 50 * 2**20:
        print(f"WARNING: {db} is {size / 2**20:,.0f} MiB: a persistent session whose client is away queues what "
              "the benchmark publishes, and the broker saves it every second, which skews every MQTT figure. "
              "Start the stack's mqtt-collector to drain it, or stop mosquitto and remove the file.", flush=True)


def bench_drain(messages: int, publishers: int, profile: Path | None, collectors: int = 1) -> dict:
    """Receive limit: a bare paho subscriber and the collector each drain ``messages`` queued QoS 1 messages.

    With ``collectors`` > 1 the collector's queue is a shared subscription
    (``$share/<group>/…``) of that many collectors, each with its own
    session, and they drain it together: the scale-out of docs/scale.md.
    """
    from kafka_login import env as kafka_env
    from mqtt_helpers import MqttUsers

    from stack.config import StackConfig
    from stack.services.mosquitto import Mosquitto, device_topic

    cfg = StackConfig.from_env()
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-drain-"))
    warn_of_broker_backlog(Mosquitto(cfg))
    mq = MqttUsers(Mosquitto(cfg), tmp)
    try:  # the bench's MQTT users go, whatever happens
        # The machine is shared: the reference drains once before and once after the collector,
        # each from its own queue, and the figure is their mean. Each queue has devices (and
        # topics: a device publishes to its own only) of its own, and is filled just before it
        # is drained: every receiver meets the same broker, holding only its own queue (the
        # broker saves what it holds every second, and that costs it more the more it holds).
        group = f"bench{run}" if collectors > 1 else ""
        col_ids = [f"bench-{run}-{i}" for i in range(collectors)]
        devices = {name: mq.devices(f"{name}{run}", 1000) for name in ("r1", "r2", "c")}
        topics = {name: [device_topic(d) for d in devs] for name, devs in devices.items()}
        for name in ("r1", "r2"):
            make_session(mq, f"{name}-{run}", topics[name])
        for col_id in col_ids:  # the broker spreads a shared group's messages over its sessions, present or away
            make_session(mq, col_id, [f"$share/{group}/{t}" for t in topics["c"]] if group else topics["c"])
        ref_cpu: list[float] = []  # CPU µs per message of each bare drain

        def fill(name: str) -> dict:
            print(f"queueing {messages:,} messages for {name} ...", flush=True)
            return publish(mq, devices[name], messages, publishers)  # the same offer each time: the same count

        def bare(name: str) -> float:
            want = fill(name)["messages"]
            print(f"bare paho subscriber draining ({name}) ...", flush=True)
            out = subprocess.run(bare_args(mq, f"{name}-{run}", topics[name], want, 3600),
                                 check=True, capture_output=True, text=True, timeout=900)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            ref_cpu.append(1e6 * got["cpu_seconds"] / max(got["messages"], 1))
            return got["messages"] / got["seconds"] if got["seconds"] and got["messages"] == want else 0.0

        ref_rates = [bare("r1")]
        sent = fill("c")
        messages, readings = sent["messages"], sent["readings"]
        print(f"{collectors} collector(s) draining ...", flush=True)
        ports, procs = [], []
        for col_id in col_ids:
            ports.append(free_port())
            shared = ["--mqtt-shared-group", group] if group else []
            cmd = [sys.executable, "-m", "collectors.mqtt", "--landing-url", (tmp / "landing").as_uri(),
                   "--state-dir", str(tmp / f"state-{col_id}"), *mq.collector_args(col_id, devices["c"]), *shared,
                   "--kafka-bootstrap", cfg.kafka_bootstrap, "--kafka-topic", f"bench.{run}.raw",
                   "--kafka-deadletter-topic", f"bench.{run}.dl", "--metrics-port", str(ports[-1]),
                   "--log-level", "WARNING"]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **kafka_env(config=cfg)},
                                          stdout=(tmp / f"{col_id}.log").open("ab"), stderr=subprocess.STDOUT))
        spy = None
        if profile is not None:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(procs[0].pid), "--rate", "50", "--format", "raw",
                                    "--output", str(profile), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = last = None
        cpu_first = cpu_last = 0.0
        watched = [psutil.Process(p.pid) for p in procs]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in watched)

        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                got = sum(metric(port, "sluice_collector_readings_received_total") for port in ports)
                delivered = sum(metric(port, "sluice_collector_kafka_delivered_total") for port in ports)
            except OSError:
                time.sleep(0.2)
                continue
            now = time.monotonic()
            if got and first is None:
                first, cpu_first = now, cpu()
            if got >= readings and delivered >= messages:
                last, cpu_last = now, cpu()
                break
            time.sleep(0.25)  # a scrape costs the collector CPU: keep them rare
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(180)
        col_s = (last or time.monotonic()) - (first or time.monotonic())
        ref_rates.append(bare("r2"))
        rows, distinct = reading_ids(tmp / "landing")
        ref_rate = sum(ref_rates) / len(ref_rates)
        col_rate = messages / col_s if col_s else 0.0
        return {
            "collectors": collectors, "messages_each": messages, "readings_sent": readings,
            "paho_bare_messages_per_s_before_after": [round(r) for r in ref_rates],
            "paho_bare_messages_per_s": round(ref_rate), "paho_bare_readings_per_s": round(3 * ref_rate),
            "collector_messages_per_s": round(col_rate), "collector_readings_per_s": round(readings / col_s) if col_s else 0,
            "ratio_collector_to_paho": round(col_rate / ref_rate, 3) if ref_rate else None,
            # CPU of the process per message over its drain (user + system, every thread).
            "paho_bare_cpu_us_per_message_before_after": [round(c) for c in ref_cpu],
            "collector_cpu_us_per_message": round(1e6 * (cpu_last - cpu_first) / messages) if last else None,  # all of them
            "rows_in_minute_files": rows, "distinct_reading_ids": distinct,
            "nothing_lost": rows == readings == distinct and last is not None,
        }
    finally:
        mq.close()


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench_live(seconds: float, devices: int, rate: float, publishers: int) -> dict:
    """The collector and a bare paho subscriber, each taking ``rate`` messages/s live from Mosquitto.

    The three runs (paho, collector, paho) follow each other with the same device users, so
    every subscriber reads the filter ``sluice/sensors/+`` (a topic list of 5,000 devices
    does not fit on the collector's command line); on a broker where other devices publish
    meanwhile, the counts show it (``nothing_lost`` false), they are not hidden.
    """
    from kafka_login import env as kafka_env
    from kafka_login import settings as kafka_settings
    from mqtt_helpers import MqttUsers

    from include.sensors import SENSOR_TOPIC_PREFIX
    from stack.config import StackConfig
    from stack.services.mosquitto import Mosquitto

    cfg = StackConfig.from_env()
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-live-"))
    mq = MqttUsers(Mosquitto(cfg), tmp)
    try:  # the bench's MQTT users go, whatever happens
        print(f"making {devices} device users (TLS, each publishes to its own topic) ...", flush=True)
        devices_file = str(mq.devices_file(mq.devices(run, devices)))
        every_device = [f"{SENSOR_TOPIC_PREFIX}/+"]
        offer = Offer("127.0.0.1", mq.port, devices_file, mq.ca_file, devices, rate, seconds)

        def bare(tag: str) -> dict:
            # Session expiry 0: the session ends with the subscriber and queues nothing of the runs after it.
            sub = subprocess.Popen(bare_args(mq, f"{tag}-{run}", every_device, planned_messages(offer, publishers), 0),
                                   stdout=subprocess.PIPE, text=True)
            if sub.stdout.readline().strip() != "subscribed":  # subscribed before the first publish: it misses nothing
                sub.kill()
                raise RuntimeError(f"the bare subscriber {tag}-{run} did not subscribe (its stderr says why)")
            print(f"bare paho subscriber ({tag}) taking {rate:,.0f} messages/s for {seconds:.0f} s ...", flush=True)
            sent = offer_load(offer, publishers)
            out, _ = sub.communicate(timeout=900)
            got = json.loads(out.strip().splitlines()[-1])
            return {"offered": sent, "messages": got["messages"], "seconds": got["seconds"],
                    "messages_per_s": got["messages"] / got["seconds"] if got["seconds"] else 0.0}

        before = bare("r1")
        print(f"  {before['messages_per_s']:,.0f} messages/s (generator reached {before['offered']['messages_per_s']:,} "
              f"messages/s)", flush=True)
        col_id, port = f"bench-{run}", free_port()
        make_session(mq, col_id, every_device)
        collector = subprocess.Popen(
            [sys.executable, "-m", "collectors.mqtt", "--landing-url", (tmp / "landing").as_uri(),
             "--state-dir", str(tmp / "state"), *mq.collector_args(col_id, filters=every_device),
             "--kafka-bootstrap", cfg.kafka_bootstrap, "--kafka-topic", f"bench.{run}.raw",
             "--kafka-deadletter-topic", f"bench.{run}.dl", "--metrics-port", str(port), "--log-level", "WARNING"],
            cwd=REPO, env={**os.environ, **kafka_env(config=cfg)},
            stdout=(tmp / "collector.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                metric(port, "sluice_collector_readings_received_total")
                break
            except OSError:
                time.sleep(0.2)
        print(f"collector taking {rate:,.0f} messages/s for {seconds:.0f} s ...", flush=True)
        sent: dict = {}
        publisher = threading.Thread(target=lambda: sent.update(offer_load(offer, publishers)), daemon=True)
        try:
            cpu0 = psutil.Process(collector.pid).cpu_times()
            publisher.start()
            first = last = None
            seen = 0.0
            deadline = time.monotonic() + seconds + 600
            while time.monotonic() < deadline:
                try:
                    got = metric(port, "sluice_collector_readings_received_total")
                    delivered = metric(port, "sluice_collector_kafka_delivered_total")
                except OSError:  # a starved collector answers its scrape late: ask again
                    continue
                now = time.monotonic()
                if got and first is None:
                    first = now
                if got > seen:
                    seen, last = got, now
                # The counter counts redeliveries too (after a reconnect the broker sends the
                # unacknowledged messages again), so reaching the count is not the end: wait
                # until nothing more comes for 3 s. The files then show what was received.
                if sent and got >= sent["readings"] and delivered >= sent["messages"] and now - last >= 3:
                    break
                time.sleep(0.25)  # a scrape costs the collector CPU: keep them rare
            cpu1 = psutil.Process(collector.pid).cpu_times()
            rss = peak_rss_mb(collector.pid)
        finally:
            collector.send_signal(signal.SIGTERM)
            collector.wait(180)
        publisher.join(60)
        col_s = (last or time.monotonic()) - (first or time.monotonic())
        after = bare("r2")
        rows, distinct = reading_ids(tmp / "landing")
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**kafka_settings(config=cfg), "group.id": f"bench-{run}"})
        meta = consumer.list_topics(f"bench.{run}.raw", timeout=10)
        in_kafka = sum(hi - lo for lo, hi in (consumer.get_watermark_offsets(TopicPartition(f"bench.{run}.raw", p), timeout=10)
                                              for p in meta.topics[f"bench.{run}.raw"].partitions))
        consumer.close()
        ref = (before["messages_per_s"] + after["messages_per_s"]) / 2
        col_rate = sent["messages"] / col_s if col_s > 0 else 0.0
        return {
            "offered_messages_per_s": rate, "seconds": seconds, "devices": devices, "publisher_processes": publishers,
            "generator_reached_messages_per_s": [before["offered"]["messages_per_s"], sent["messages_per_s"],
                                                 after["offered"]["messages_per_s"]],
            "paho_bare_messages_per_s_before_after": [round(before["messages_per_s"]), round(after["messages_per_s"])],
            "paho_bare_messages_per_s": round(ref),
            "collector_messages_per_s": round(col_rate), "collector_readings_per_s": round(3 * col_rate),
            "ratio_collector_to_paho": round(col_rate / ref, 3) if ref else None,
            "collector_cpu_percent_of_one_core": round(100 * (sum(cpu1[:2]) - sum(cpu0[:2])) / col_s, 1) if col_s > 0 else None,
            "collector_peak_rss_mb": round(rss, 1),
            "readings_sent": sent["readings"], "rows_in_minute_files": rows, "distinct_reading_ids": distinct,
            "records_in_kafka": in_kafka,
            "nothing_lost": rows == distinct == sent["readings"] and in_kafka >= sent["messages"] and last is not None,
        }
    finally:
        mq.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt-seconds", type=float, default=30.0, help="seconds the live load lasts (default 30)")
    parser.add_argument("--devices", type=int, default=5000, help="devices of the live load (default 5000)")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s over all devices (default 5000)")
    parser.add_argument("--publishers", type=int, default=3, help="load generator processes (default 3)")
    parser.add_argument("--drain", type=int, default=0, metavar="N",
                        help="also measure the receive limit: N queued messages for paho and for the collector")
    parser.add_argument("--profile", type=Path, help="with --drain: py-spy raw profile of the (first) collector to this file")
    parser.add_argument("--collectors", type=int, default=1, metavar="N",
                        help="with --drain: N collectors drain one shared subscription together (default 1)")
    parser.add_argument("--skip-mqtt", action="store_true")
    args = parser.parse_args()
    results = {}
    if args.drain:
        results["drain"] = bench_drain(args.drain, args.publishers, args.profile, args.collectors)
        print(json.dumps({"drain": results["drain"]}, indent=2), flush=True)
    if not args.skip_mqtt:
        results["mqtt"] = bench_live(args.mqtt_seconds, args.devices, args.rate, args.publishers)
        print(json.dumps({"mqtt": results["mqtt"]}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
