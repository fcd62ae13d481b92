"""MQTT load generator: N devices at R messages/s in total, from several publisher processes.

The sensor simulator (collectors/simulate_sensors.py) models devices: values
on a daily cycle with noise, encoded per message, and a lock per publish to
count acknowledgements. That costs about 200 µs a message, and one simulator
process reached 1,000-2,000 messages/s on this machine (3,795 with several). A
benchmark of the collector needs the offer to be no limit, so this generator
does the least a publisher can:

* each device's payload (the seed format, three readings) is encoded once, with
  ``%d`` where the timestamps go; a message is one ``bytes % (ts, ts, ts)``;
* QoS 1, as devices publish to the collector; ``publish`` is called without
  waiting for its PUBACK (up to ``inflight`` in flight), and the run waits for
  all of them only at the end;
* one thread per process drives paho's network loop itself (``loop()`` between
  publishes and while it waits) instead of paho's background thread: measured
  on this machine, 57-68 µs of CPU a message against 218 µs with
  ``loop_start()``, where the two threads fight over the GIL;
* the devices are split over ``--processes`` processes, each with its own
  client and its own share of the rate, on a deadline schedule (what is due is
  published in one go, then it sleeps until the next message is due).

Timestamps are epoch milliseconds, strictly increasing per device, so no two
messages of one device share a reading id. Prints one JSON line: messages,
readings, publish seconds (first to last publish), the rate reached, and the
messages not acknowledged by the broker at the end (0 when all went through).

``python tests/benchmarks/mqtt_load.py --port 1883 --prefix sluice/sensors --devices 5000 --rate 5000 --seconds 30``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
from dataclasses import dataclass

import orjson

KINDS = ("temperature", "humidity", "dust")
METRIC = "mqtt.home.sensor"
_PLACEHOLDER = 1_111_111_111_111


@dataclass(frozen=True)
class Offer:
    host: str
    port: int
    prefix: str
    devices: int
    rate: float
    seconds: float
    client_id: str
    device_prefix: str = "load"
    inflight: int = 2000
    username: str = ""
    password: str = ""


def payload_template(device: str, index: int) -> bytes:
    """The device's seed-format payload with ``%d`` for each reading's timestamp."""
    body = orjson.dumps([
        {"type": "Metric", "metric": METRIC, "timestamp": _PLACEHOLDER, "value": round(20.0 + index % 7 + k * 0.25, 2),
         "tags": {"type": kind, "loc": device}}
        for k, kind in enumerate(KINDS)])
    return body.replace(b"%", b"%%").replace(str(_PLACEHOLDER).encode(), b"%d")


def publish_share(offer: Offer, first: int, count: int, rate: float, results) -> None:
    """One process: devices ``first .. first+count-1`` at ``rate`` messages/s for ``offer.seconds``."""
    import paho.mqtt.client as mqtt

    devices = [f"{offer.device_prefix}-{i:05d}" for i in range(first, first + count)]
    topics = [f"{offer.prefix}/{d}" for d in devices]
    templates = [payload_template(d, first + i) for i, d in enumerate(devices)]
    last_ts = [0] * count
    acked = {"n": 0}
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{offer.client_id}-{first}")
    client.max_inflight_messages_set(offer.inflight)
    client.max_queued_messages_set(0)
    if offer.username:
        client.username_pw_set(offer.username, offer.password or None)

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        acked["n"] += 1

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            connected.set()

    client.on_publish = on_publish
    client.on_connect = on_connect
    client.connect(offer.host, offer.port, keepalive=30)
    deadline = time.monotonic() + 30
    while not connected.is_set() and time.monotonic() < deadline:
        client.loop(0.1)
    if not connected.is_set():
        raise RuntimeError(f"no CONNACK from {offer.host}:{offer.port} within 30 s")
    total = int(offer.seconds * rate)
    publish, loop = client.publish, client.loop
    sent = 0
    t0 = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        now_ms = int(time.time() * 1000)
        while sent < due:
            i = sent % count
            ts = now_ms if now_ms > last_ts[i] else last_ts[i] + 1
            last_ts[i] = ts
            publish(topics[i], templates[i] % (ts, ts, ts), qos=1)
            sent += 1
            if sent % 64 == 0:
                loop(0)  # read the PUBACKs that came in, send what is queued
        loop(max(0.0, t0 + sent / rate - time.monotonic()))  # wait for the next due message, serving the socket
    publish_s = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while acked["n"] < total and time.monotonic() < deadline:
        loop(0.1)
    client.disconnect()
    results.put({"messages": sent, "publish_seconds": publish_s, "unacked": total - acked["n"]})


def shares(offer: Offer, processes: int) -> list[tuple[int, int, float]]:
    """(first device, devices, messages/s) of each publisher process."""
    per, extra = divmod(offer.devices, processes)
    out, first = [], 0
    for p in range(processes):
        count = per + (p < extra)
        out.append((first, count, offer.rate * count / offer.devices))
        first += count
    return out


def planned_messages(offer: Offer, processes: int) -> int:
    """How many messages :func:`offer_load` will publish (what a subscriber waits for)."""
    return sum(int(offer.seconds * rate) for _, _, rate in shares(offer, processes))


def offer_load(offer: Offer, processes: int) -> dict:
    """Run the offer over ``processes`` publisher processes; their summed figures."""
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no state of the caller, no forked threads
    results = ctx.Queue()
    procs = [ctx.Process(target=publish_share, args=(offer, first, count, rate, results), daemon=True)
             for first, count, rate in shares(offer, processes)]
    for proc in procs:
        proc.start()
    outs = [results.get(timeout=offer.seconds + 300) for _ in procs]
    for proc in procs:
        proc.join(30)
    messages = sum(o["messages"] for o in outs)
    seconds = max(o["publish_seconds"] for o in outs)
    return {"messages": messages, "readings": 3 * messages, "publish_seconds": round(seconds, 2),
            "messages_per_s": round(messages / seconds) if seconds else 0,
            "unacked": sum(o["unacked"] for o in outs), "processes": processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", default="sluice/sensors", help="topics are <prefix>/<device>")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s over all devices (default 5000)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--client-id", default="sluice-load")
    args = parser.parse_args()
    if args.devices < args.processes or args.rate <= 0 or args.seconds <= 0:
        parser.error("need --devices >= --processes, --rate > 0 and --seconds > 0")
    offer = Offer(args.host, args.port, args.prefix, args.devices, args.rate, args.seconds, args.client_id)
    print(json.dumps(offer_load(offer, args.processes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
