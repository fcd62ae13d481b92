"""Benchmarks of the collectors; prints figures, asserts nothing.

1. Host sampler at 1 Hz: CPU % of one core and peak RSS of
   ``python -m collectors.host`` over several minutes, side by side with a
   minimal Python psutil loop writing one CSV a minute (the baseline).
2. MQTT collector, live: sustained readings/s from Mosquitto (TLS, a user per
   device and for the collector, as the stack runs it) into minute files and
   Kafka, driven by the simulator on the same machine, then a count that
   nothing was lost. The TLS overhead itself: tests/benchmarks/mqtt_tls_bench.py.
3. MQTT receive limit (``--drain``): the same number of QoS 1 messages is
   queued in two persistent sessions while their clients are away, then a
   bare paho subscriber (automatic acks, no work: the reference) and the
   collector (journal-gated acks, minute files and Kafka) each drain theirs.
   Draining a queue measures what the receiver takes, not what a publisher on
   the same two cores manages to offer. Prints both rates and their ratio,
   and checks by reading id that every reading is in the minute files once.

Needs the local stack (``python -m stack up``). Run:
``.venv/bin/python tests/benchmarks/collectors_bench.py [--host-minutes 3] [--mqtt-seconds 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # mqtt_helpers: the broker's users (TLS, a user per device and collector)

#: Devices (each a user of the broker, publishing as itself) per simulator process.
DEVICES_PER_PUBLISHER = 20

MINIMAL_LOOP = textwrap.dedent("""
    import csv, os, sys, time, psutil
    out = sys.argv[1]
    rows, minute = [], None
    psutil.cpu_percent()
    next_t = time.time() // 1 + 1
    while True:
        time.sleep(max(0, next_t - time.time()))
        now = next_t; next_t += 1
        c, m = psutil.cpu_stats(), psutil.virtual_memory()
        rows.append([time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)), psutil.cpu_percent(), c.ctx_switches,
                     c.interrupts, c.soft_interrupts, c.syscalls, m.total, m.available, m.percent, m.used, m.free])
        if minute is not None and int(now // 60) != minute:
            with open(os.path.join(out, f'{minute}.csv'), 'w', newline='') as fh:
                csv.writer(fh).writerows(rows[:-1])
            rows = rows[-1:]
        minute = int(now // 60)
""")



def kafka_env(cfg) -> dict[str, str]:
    """``SLUICE_KAFKA_*`` of a collector logging in as the stack's admin (its topics are the benchmark's own)."""
    from stack.services.kafka import ADMIN_USER, client_env

    return client_env(cfg, ADMIN_USER)

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


def bench_host(minutes: float, with_s3: bool) -> dict:
    from stack.config import LANDING_BUCKET, StackConfig
    from stack.services.minio import MinIO

    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-host-"))
    procs = {}
    logs = (tmp / "log").open("ab")
    env = dict(os.environ)
    runs = {"minimal_psutil_loop": [sys.executable, "-c", MINIMAL_LOOP, str(tmp)],
            "collectors.host (file://)": [sys.executable, "-m", "collectors.host", "--landing-url",
                                          (tmp / "landing").as_uri(), "--state-dir", str(tmp / "state-file"),
                                          "--metrics-port", "0"]}
    if with_s3:
        minio = MinIO(StackConfig.from_env())
        creds = minio.credentials("collector")
        (tmp / "ak").write_text(creds["access_key"])
        (tmp / "sk").write_text(creds["secret_key"])
        runs["collectors.host (s3:// MinIO)"] = [
            sys.executable, "-m", "collectors.host", "--landing-url", f"s3://{LANDING_BUCKET}/bench-{uuid.uuid4().hex[:6]}",
            "--s3-endpoint-url", minio.endpoint_url, "--s3-access-key-file", str(tmp / "ak"),
            "--s3-ca-bundle", str(minio.ca_file),
            "--s3-secret-key-file", str(tmp / "sk"), "--state-dir", str(tmp / "state-s3"), "--metrics-port", "0"]
    for name, cmd in runs.items():
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT)
    try:
        return measure(procs, minutes * 60)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(30)


BARE_SUBSCRIBER = textwrap.dedent("""
    import json, sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    host, port, client_id, topics, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
    ca_file, password = sys.argv[7], open(sys.argv[8]).read().strip()
    seen = {"n": 0, "first": None, "last": None}
    def on_message(client, userdata, msg):
        seen["n"] += 1
        now = time.monotonic()
        seen["first"] = seen["first"] or now
        seen["last"] = now
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca_file)
    c.username_pw_set(client_id, password)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = int(sys.argv[6])
    c.connect(host, port, keepalive=30, clean_start=False, properties=props)
    c.subscribe([(t, 1) for t in topics])
    deadline = time.monotonic() + 600
    while seen["n"] < want and time.monotonic() < deadline:
        c.loop(0.05)
    c.disconnect()
    print(json.dumps({"messages": seen["n"], "seconds": (seen["last"] or 0) - (seen["first"] or 0)}))
""")


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


def bench_devices(mq, tag: str, publishers: int) -> list[list[str]]:
    """Device users of each simulator process: ``<tag><i>-0000`` …"""
    from collectors.simulate_sensors import device_ids

    return [mq.devices(tag, names=device_ids(f"{tag}{i}", DEVICES_PER_PUBLISHER)) for i in range(publishers)]


def simulator_args(mq, devices: list[str], tag: str) -> list[str]:
    """``collectors.simulate_sensors`` flags: over TLS, every device of the list logged in as itself."""
    return ["--mqtt-port", str(mq.port), "--mqtt-ca-file", mq.ca_file,
            "--mqtt-devices-file", str(mq.devices_file(devices)), "--devices", str(len(devices)),
            "--device-prefix", tag]


def publish(mq, devices: list[list[str]], run: str, messages: int, publishers: int, tag: str) -> int:
    """Publish ``messages`` seed payloads (QoS 1) from the ``devices`` of each publisher; returns the readings sent."""
    sims = [subprocess.Popen(
        [sys.executable, "-m", "collectors.simulate_sensors", *simulator_args(mq, devices[i], f"{tag}{i}"),
         "--rate", "1000", "--duration", "0", "--messages", str(messages // publishers), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(publishers)]
    return sum(json.loads(s.communicate()[0].strip().splitlines()[-1])["readings"] for s in sims)


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


def bench_drain(messages: int, publishers: int, profile: Path | None) -> dict:
    """Receive limit: a bare paho subscriber and the collector each drain ``messages`` queued QoS 1 messages."""
    from mqtt_helpers import MqttUsers

    from stack.config import StackConfig
    from stack.services.mosquitto import Mosquitto, device_topic

    cfg = StackConfig.from_env()
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-drain-"))
    mq = MqttUsers(Mosquitto(cfg), tmp)
    # The machine is shared: the reference drains once before and once after the collector,
    # each from its own queue, and the figure is their mean. Both read over TLS as collector users.
    col_id = f"bench-{run}"
    devices = {name: bench_devices(mq, f"{name}{run}", publishers) for name in ("r1", "r2", "c")}
    topics = {name: [device_topic(d) for group in devs for d in group] for name, devs in devices.items()}
    for name in ("r1", "r2", "c"):
        make_session(mq, f"{name}-{run}" if name != "c" else col_id, topics[name])
    print(f"queueing {messages} messages for each of three sessions (paho twice, the collector once) ...", flush=True)
    for name in ("r1", "r2"):
        publish(mq, devices[name], run, messages, publishers, f"{name}{run}")
    readings = publish(mq, devices["c"], run, messages, publishers, f"c{run}")

    def bare(name: str) -> float:
        print(f"bare paho subscriber draining ({name}) ...", flush=True)
        user = f"{name}-{run}"
        out = subprocess.run([sys.executable, "-c", BARE_SUBSCRIBER, "127.0.0.1", str(mq.port), user,
                              ",".join(topics[name]), str(messages), "1000", mq.ca_file,
                              str(mq.broker.collector_password_file(user))],
                             check=True, capture_output=True, text=True, timeout=900)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        return got["messages"] / got["seconds"] if got["seconds"] and got["messages"] == messages else 0.0

    ref_rates = [bare("r1")]
    print("collector draining ...", flush=True)
    port = 19110
    cmd = [sys.executable, "-m", "collectors.mqtt", "--landing-url", (tmp / "landing").as_uri(),
           "--state-dir", str(tmp / "state"), *mq.collector_args(col_id, filters=topics["c"]),
           "--kafka-bootstrap", cfg.kafka_bootstrap, "--kafka-topic", f"bench.{run}.raw",
           "--kafka-deadletter-topic", f"bench.{run}.dl", "--metrics-port", str(port), "--log-level", "WARNING"]
    collector = subprocess.Popen(cmd, cwd=REPO, stdout=(tmp / "collector.log").open("ab"), stderr=subprocess.STDOUT,
                                 env={**os.environ, **kafka_env(cfg)})
    spy = None
    if profile is not None:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(collector.pid), "--rate", "50", "--format", "raw",
                                "--output", str(profile), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = last = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            got = metric(port, "sluice_collector_readings_received_total")
            delivered = metric(port, "sluice_collector_kafka_delivered_total")
        except OSError:
            time.sleep(0.2)
            continue
        now = time.monotonic()
        if got and first is None:
            first = now
        if got >= readings and delivered >= messages:
            last = now
            break
        time.sleep(0.25)  # a scrape costs the collector CPU: keep them rare
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    collector.send_signal(signal.SIGTERM)
    collector.wait(180)
    col_s = (last or time.monotonic()) - (first or time.monotonic())
    ref_rates.append(bare("r2"))
    mq.close()
    rows, distinct = reading_ids(tmp / "landing")
    ref_rate = sum(ref_rates) / len(ref_rates)
    col_rate = messages / col_s if col_s else 0.0
    return {
        "messages_each": messages, "readings_sent": readings,
        "paho_bare_messages_per_s_before_after": [round(r) for r in ref_rates],
        "paho_bare_messages_per_s": round(ref_rate), "paho_bare_readings_per_s": round(3 * ref_rate),
        "collector_messages_per_s": round(col_rate), "collector_readings_per_s": round(readings / col_s) if col_s else 0,
        "ratio_collector_to_paho": round(col_rate / ref_rate, 3) if ref_rate else None,
        "rows_in_minute_files": rows, "distinct_reading_ids": distinct,
        "nothing_lost": rows == readings == distinct and last is not None,
    }


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench_mqtt(seconds: float, devices: int, rate: float, publishers: int) -> dict:
    from mqtt_helpers import MqttUsers

    from collectors.simulate_sensors import device_ids
    from stack.config import StackConfig
    from stack.services.mosquitto import Mosquitto

    cfg = StackConfig.from_env()
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-mqtt-"))
    port = 19109
    mq = MqttUsers(Mosquitto(cfg), tmp)
    groups = [mq.devices(run, names=device_ids(f"p{run}{i}", devices // publishers)) for i in range(publishers)]
    collector = subprocess.Popen(
        [sys.executable, "-m", "collectors.mqtt", "--landing-url", (tmp / "landing").as_uri(),
         "--state-dir", str(tmp / "state"), *mq.collector_args(f"bench-{run}", [d for g in groups for d in g]),
         "--kafka-bootstrap", f"127.0.0.1:{cfg.ports['kafka']}", "--kafka-topic", f"bench.{run}.raw",
         "--kafka-deadletter-topic", f"bench.{run}.dl", "--metrics-port", str(port), "--log-level", "WARNING"],
        cwd=REPO, stdout=(tmp / "collector.log").open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **kafka_env(cfg)})
    time.sleep(4)
    sims = [subprocess.Popen(
        [sys.executable, "-m", "collectors.simulate_sensors", *simulator_args(mq, groups[i], f"p{run}{i}"),
         "--rate", str(rate), "--duration", str(seconds), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(publishers)]
    t0 = time.monotonic()
    cpu0 = psutil.Process(collector.pid).cpu_times()
    outs = [json.loads(s.communicate()[0].strip().splitlines()[-1]) for s in sims]
    sent_msgs = sum(o["messages"] for o in outs)
    sent_readings = sum(o["readings"] for o in outs)
    publish_s = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = metric(port, "sluice_collector_readings_received_total")
        delivered = metric(port, "sluice_collector_kafka_delivered_total")
        if got >= sent_readings and delivered >= sent_msgs:
            break
        time.sleep(0.05)
    done_s = time.monotonic() - t0
    cpu1 = psutil.Process(collector.pid).cpu_times()
    rss = peak_rss_mb(collector.pid)
    collector.send_signal(signal.SIGTERM)
    collector.wait(120)
    mq.close()
    rows = sum(max(0, sum(1 for _ in p.open()) - 1) for p in (tmp / "landing").rglob("*.csv"))
    from confluent_kafka import Consumer, TopicPartition

    from stack.services.kafka import client_settings

    consumer = Consumer({**client_settings(cfg), "bootstrap.servers": f"127.0.0.1:{cfg.ports['kafka']}",
                         "group.id": f"bench-{run}"})
    in_kafka = 0
    for p in range(3):
        lo, hi = consumer.get_watermark_offsets(TopicPartition(f"bench.{run}.raw", p), timeout=10)
        in_kafka += hi - lo
    consumer.close()
    return {
        "messages_sent": sent_msgs, "readings_sent": sent_readings,
        "publish_seconds": round(publish_s, 2), "all_received_and_in_kafka_after_s": round(done_s, 2),
        "sustained_readings_per_s": round(sent_readings / done_s),
        "collector_cpu_percent_of_one_core": round(100 * (sum(cpu1[:2]) - sum(cpu0[:2])) / done_s, 1),
        "collector_peak_rss_mb": round(rss, 1),
        "rows_in_minute_files": rows, "records_in_kafka": in_kafka,
        "nothing_lost": rows == sent_readings and in_kafka >= sent_msgs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-minutes", type=float, default=3.0, help="minutes to measure the host sampler (default 3)")
    parser.add_argument("--no-s3", action="store_true", help="skip the host sampler landing in MinIO")
    parser.add_argument("--mqtt-seconds", type=float, default=20.0, help="seconds the simulator publishes (default 20)")
    parser.add_argument("--devices", type=int, default=200, help="simulated devices (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per device (default 20)")
    parser.add_argument("--publishers", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--drain", type=int, default=0, metavar="N",
                        help="also measure the receive limit: N queued messages for paho and for the collector")
    parser.add_argument("--profile", type=Path, help="with --drain: py-spy raw profile of the collector to this file")
    parser.add_argument("--skip-host", action="store_true")
    parser.add_argument("--skip-mqtt", action="store_true")
    args = parser.parse_args()
    results = {}
    if args.drain:
        results["drain"] = bench_drain(args.drain, args.publishers, args.profile)
        print(json.dumps({"drain": results["drain"]}, indent=2), flush=True)
    if not args.skip_mqtt:
        results["mqtt"] = bench_mqtt(args.mqtt_seconds, args.devices, args.rate, args.publishers)
        print(json.dumps({"mqtt": results["mqtt"]}, indent=2), flush=True)
    if not args.skip_host:
        results["host"] = bench_host(args.host_minutes, not args.no_s3)
        print(json.dumps({"host": results["host"]}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
