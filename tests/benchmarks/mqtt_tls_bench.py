"""TLS overhead of the MQTT collector: readings/s with TLS and without, in one run; prints figures, asserts nothing.

One private Mosquitto (a temporary runtime folder, free ports) with both listeners:
TLS, as the stack runs it, and the plaintext demo listener (``SLUICE_MQTT_PLAINTEXT_DEMO``,
127.0.0.1, the same users and ACL). Per round, one collector session for each listener is
made (a collector user each, subscribed to ``sluice/sensors/+``) and left without its
client; the simulator's devices, each logged in as itself, then publish N seed payloads,
which the broker queues in every session. Then ``python -m collectors.mqtt`` drains each
session in turn, plaintext and TLS alternating (the machine is shared: alternating spreads
its noise over both), with journal-gated acknowledgements, minute files and, unless
``--no-kafka``, Kafka. Draining a queue measures what the receiving side takes, not what a
publisher on the same cores manages to offer. The figure is readings/s from the first to
the last reading counted by the collector's metrics; every drain is checked to land each
reading once.

Needs Kafka of the local stack unless ``--no-kafka`` (``python -m stack up kafka``). Run:
``.venv/bin/python tests/benchmarks/mqtt_tls_bench.py [--messages 20000] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collectors_bench import free_port, metric, reading_ids  # noqa: E402  (one copy of each)


def make_session(mq, user: str, port: int, tls: bool) -> None:
    """A persistent QoS 1 session of collector ``user`` on every device topic, left without its client."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from stack.services.mosquitto import device_topic

    c = mq.client(user, v5=True, tls=tls)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    granted = []
    c.on_subscribe = lambda cl, u, mid, rcs, p: granted.extend(rcs)
    c.connect("127.0.0.1", port, keepalive=30, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe(device_topic("+"), qos=1)
    deadline = time.monotonic() + 10
    while not granted and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    if not granted or any(rc.is_failure for rc in granted):
        raise RuntimeError(f"the broker did not grant {user}'s subscription: {granted}")


def drain(mq, user: str, tls: bool, readings: int, messages: int, kafka: str, tmp: Path) -> dict:
    """Run the collector as ``user`` until it has every queued reading (and Kafka confirmed every record)."""
    from kafka_login import env as kafka_env

    broker = mq.broker
    port = broker.config.ports["mosquitto_tls" if tls else "mosquitto"]
    metrics_port = free_port()
    folder = tmp / user
    cmd = [sys.executable, "-m", "collectors.mqtt", "--landing-url", (folder / "landing").as_uri(),
           "--state-dir", str(folder / "state"), "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
           "--mqtt-client-id", user, "--mqtt-password-file", str(broker.collector_password_file(user)),
           "--mqtt-topics", "sluice/sensors/+", "--metrics-port", str(metrics_port), "--heartbeat-interval", "0",
           "--log-level", "WARNING",
           *(["--mqtt-ca-file", str(broker.ca_file)] if tls else ["--no-mqtt-tls"]),
           *(["--kafka-bootstrap", kafka, "--kafka-topic", f"bench.{user}.raw",
              "--kafka-deadletter-topic", f"bench.{user}.dl"] if kafka else ["--kafka-bootstrap", ""])]
    folder.mkdir(parents=True)
    # Kafka is the local stack's (SASL_SSL): the collector logs in as the admin, who may make the bench's topics.
    env = {**os.environ, **(kafka_env() if kafka else {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=(folder / "collector.log").open("ab"), stderr=subprocess.STDOUT)
    first = last = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                got = metric(metrics_port, "sluice_collector_readings_received_total")
                delivered = metric(metrics_port, "sluice_collector_kafka_delivered_total") if kafka else messages
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
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(180)
    seconds = (last or time.monotonic()) - (first or time.monotonic())
    rows, distinct = reading_ids(folder / "landing")
    return {"listener": "TLS" if tls else "plaintext", "seconds": round(seconds, 2),
            "readings_per_s": round(readings / seconds) if seconds and last else 0,
            "nothing_lost": last is not None and rows == distinct == readings,
            "log": str(folder / "collector.log")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="queued messages per session (3 readings each)")
    parser.add_argument("--rounds", type=int, default=2, help="drains per listener, alternating (default 2)")
    parser.add_argument("--devices", type=int, default=10, help="device users publishing (default 10)")
    parser.add_argument("--no-kafka", action="store_true", help="minute files only, no Kafka forwarding")
    args = parser.parse_args()

    from mqtt_helpers import MqttUsers

    from collectors.simulate_sensors import device_ids
    from stack.config import DEFAULT_PORTS, StackConfig
    from stack.services.mosquitto import Mosquitto

    stack = StackConfig.from_env()
    kafka = "" if args.no_kafka else stack.kafka_bootstrap
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-mqtt-tls-"))
    config = StackConfig(runtime=tmp / "runtime", cache=stack.cache, ports={n: free_port() for n in DEFAULT_PORTS})
    broker = Mosquitto(config, plaintext_demo=True)
    broker.install()
    print(f"private Mosquitto with TLS on {config.ports['mosquitto_tls']} and plaintext on "
          f"{config.ports['mosquitto']} (runtime {config.runtime}) ...", flush=True)
    broker.start()
    try:
        mq = MqttUsers(broker, tmp)
        run = uuid.uuid4().hex[:6]
        devices = mq.devices(run, names=device_ids(f"d{run}", args.devices))
        order = [(f"c{run}-{'tls' if tls else 'plain'}-{r}", tls) for r in range(args.rounds) for tls in (False, True)]
        for user, _ in order:
            mq.collector(user)
            make_session(mq, user, config.ports["mosquitto_tls"], tls=True)
        print(f"queueing {args.messages} messages from {args.devices} devices for each of {len(order)} "
              "collector sessions ...", flush=True)
        out = subprocess.run(
            [sys.executable, "-m", "collectors.simulate_sensors", "--mqtt-host", "127.0.0.1",
             "--mqtt-port", str(config.ports["mosquitto"]), "--no-mqtt-tls",
             "--mqtt-devices-file", str(mq.devices_file(devices)), "--device-prefix", f"d{run}",
             "--devices", str(args.devices), "--rate", "100000", "--duration", "0", "--messages", str(args.messages),
             "--log-level", "WARNING"], cwd=REPO, capture_output=True, text=True, check=True, timeout=900)
        sent = json.loads(out.stdout.strip().splitlines()[-1])
        results = []
        for user, tls in order:
            print(f"collector draining over {'TLS' if tls else 'plaintext'} ({user}) ...", flush=True)
            results.append(drain(mq, user, tls, sent["readings"], sent["messages"], kafka, tmp))
            print(f"  {results[-1]['readings_per_s']} readings/s, nothing lost: {results[-1]['nothing_lost']}",
                  flush=True)
    finally:
        broker.stop()

    def mean(tls: bool) -> float:
        rates = [r["readings_per_s"] for r in results if (r["listener"] == "TLS") == tls]
        return sum(rates) / len(rates)

    plain, tls = mean(False), mean(True)
    summary = {
        "messages_per_session": sent["messages"], "readings_per_session": sent["readings"],
        "kafka": bool(kafka), "drains": results,
        "plaintext_readings_per_s": round(plain), "tls_readings_per_s": round(tls),
        "ratio_tls_to_plaintext": round(tls / plain, 3) if plain else None,
        "tls_overhead_percent": round(100 * (1 - tls / plain), 1) if plain else None,
        "nothing_lost": all(r["nothing_lost"] for r in results),
    }
    print(json.dumps(summary, indent=2))
    print(f"\nMQTT collector, {sent['readings']} readings per drain ({'with' if kafka else 'without'} Kafka): "
          f"plaintext {plain:,.0f} readings/s | TLS {tls:,.0f} readings/s | TLS/plaintext "
          f"{summary['ratio_tls_to_plaintext']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
