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
  waiting for its PUBACK (up to ``inflight`` in flight over a process's
  devices), and the run waits for all of them only at the end;
* as the stack's broker demands (stack/services/mosquitto.py), every device is
  its own client over TLS, logged in as itself, publishing to the one topic
  its ACL allows (``sluice/sensors/<device>``); the users come from a
  ``device:password`` file (``python -m stack mqtt-user``, or
  tests/mqtt_helpers.py ``MqttUsers.devices_file``), the CA from ``--ca-file``;
* one thread per process drives the network of all its clients itself (one
  ``selectors`` loop over their sockets, paho's ``loop_read``/``loop_write``)
  instead of a background thread per client: with paho's own loop thread,
  measured on this machine, a message cost 218 µs of CPU against 57-68 µs
  when the publishing thread serves the socket, the threads fighting over the GIL;
* the devices are split over ``--processes`` processes, each with its own
  clients and its own share of the rate, on a deadline schedule (what is due is
  published in one go, then it waits until the next message is due).

Timestamps are epoch milliseconds, strictly increasing per device, so no two
messages of one device share a reading id. Prints one JSON line: messages,
readings, publish seconds (first to last publish), the rate reached, and the
messages not acknowledged by the broker at the end (0 when all went through).

``python tests/benchmarks/mqtt_load.py --port 8883 --ca-file ca.crt --devices-file devices --rate 5000 --seconds 30``
(``--devices`` defaults to every device of the file.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import selectors
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stack.services.mosquitto import device_topic  # noqa: E402

KINDS = ("temperature", "humidity", "dust")
METRIC = "mqtt.home.sensor"
_PLACEHOLDER = 1_111_111_111_111


@dataclass(frozen=True)
class Offer:
    host: str
    port: int
    devices_file: str  # ``device:password`` lines: who publishes (passwords stay off command lines)
    ca_file: str  # the CA that signed the broker's certificate
    devices: int  # the first ``devices`` of the file
    rate: float
    seconds: float
    inflight: int = 2000


def read_devices(path: str, count: int | None = None) -> list[tuple[str, str]]:
    """(device, password) of the first ``count`` (all: None) lines of a ``device:password`` file."""
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            device, sep, password = line.partition(":")
            if not sep or not device or not password:
                raise ValueError(f"{path} line {n}: expected device:password")
            pairs.append((device, password))
    if count is not None and len(pairs) < count:
        raise ValueError(f"{path} holds {len(pairs)} devices, the offer needs {count}")
    return pairs[:count]


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

    logins = read_devices(offer.devices_file, offer.devices)[first:first + count]
    devices = [d for d, _ in logins]
    topics = [device_topic(d) for d in devices]
    templates = [payload_template(d, first + i) for i, d in enumerate(devices)]
    last_ts = [0] * count
    acked = {"n": 0}
    connected: set[int] = set()
    refused: list[str] = []
    clients = []
    pending: set[int] = set()  # clients published to since the last serve(): only they can have bytes queued
    sel = selectors.DefaultSelector()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        acked["n"] += 1

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused.append(f"{devices[userdata]}: {reason_code}")
        else:
            connected.add(userdata)

    per_client = max(1, offer.inflight // count)
    for i, (device, password) in enumerate(logins):
        # The broker makes the user name the client id: the device id is both.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, userdata=i)
        client.tls_set(ca_certs=offer.ca_file)
        client.username_pw_set(device, password)
        client.max_inflight_messages_set(per_client)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.on_connect = on_connect
        client.connect(offer.host, offer.port, keepalive=60)  # TCP and the TLS handshake, blocking
        sel.register(client.socket(), selectors.EVENT_READ, client)
        clients.append(client)

    def serve(timeout: float) -> None:
        """Read what came in on any socket (CONNACK, PUBACK), send what is still queued."""
        for key, _ in sel.select(max(0.0, timeout)):
            c = key.data
            c.loop_read()
            while c.socket() is not None and c.socket().pending():  # TLS: bytes decrypted but not yet read
                c.loop_read()
        for i in list(pending):
            if clients[i].want_write():
                clients[i].loop_write()
            if not clients[i].want_write():
                pending.discard(i)

    pending.update(range(count))  # the CONNECT packets
    deadline = time.monotonic() + 60
    while len(connected) + len(refused) < count and time.monotonic() < deadline:
        serve(0.1)
    if refused or len(connected) < count:
        raise RuntimeError(f"{len(connected)} of {count} devices connected to {offer.host}:{offer.port} within 60 s"
                           + (f"; refused: {', '.join(refused[:5])}" if refused else ""))
    total = int(offer.seconds * rate)
    sent = 0
    t0 = last_misc = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        now_ms = int(time.time() * 1000)
        while sent < due:
            i = sent % count
            ts = now_ms if now_ms > last_ts[i] else last_ts[i] + 1
            last_ts[i] = ts
            clients[i].publish(topics[i], templates[i] % (ts, ts, ts), qos=1)  # written at once when the socket takes it
            pending.add(i)
            sent += 1
            if sent % 64 == 0:
                serve(0)
        if time.monotonic() - last_misc > 5:  # keepalive pings
            last_misc = time.monotonic()
            for c in clients:
                c.loop_misc()
        serve(t0 + sent / rate - time.monotonic())  # wait for the next due message, serving the sockets
    publish_s = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while acked["n"] < total and time.monotonic() < deadline:
        serve(0.1)
    for c in clients:
        c.disconnect()
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
    read_devices(offer.devices_file, offer.devices)  # a bad file fails here, with its reason, not in a child
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no state of the caller, no forked threads
    results = ctx.Queue()
    procs = [ctx.Process(target=publish_share, args=(offer, first, count, rate, results), daemon=True)
             for first, count, rate in shares(offer, processes)]
    for proc in procs:
        proc.start()
    outs = []
    deadline = time.monotonic() + offer.seconds + 300
    while len(outs) < len(procs):
        try:
            outs.append(results.get(timeout=1))
            continue
        except queue.Empty:
            pass
        failed = [p.exitcode for p in procs if p.exitcode]  # e.g. a device refused: its traceback is on stderr
        if failed or time.monotonic() > deadline:
            for proc in procs:
                proc.terminate()
            raise RuntimeError(f"{len(procs) - len(outs)} of {len(procs)} publisher processes gave no result"
                               + (f" (exit codes {failed}; their errors are above)" if failed else " in time"))
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
    parser.add_argument("--port", type=int, required=True, help="the broker's TLS port")
    parser.add_argument("--ca-file", required=True, help="CA certificate that signed the broker's certificate")
    parser.add_argument("--devices-file", required=True, help="device:password lines; each device publishes to its own topic")
    parser.add_argument("--devices", type=int, help="the first N devices of the file (default: all)")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s over all devices (default 5000)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args()
    try:
        devices = len(read_devices(args.devices_file, args.devices))
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if devices < args.processes or args.rate <= 0 or args.seconds <= 0:
        parser.error("need devices >= --processes, --rate > 0 and --seconds > 0")
    offer = Offer(args.host, args.port, args.devices_file, args.ca_file, devices, args.rate, args.seconds)
    print(json.dumps(offer_load(offer, args.processes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
