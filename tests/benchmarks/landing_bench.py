"""Landing throughput of one MQTT collector: device-rows/s, lateness and spool depth at N devices.

One file per writer per minute: a collector's minute file holds every device's
rows, so the landing side does one split, one spool entry, one merge and one
put per minute however many devices there are. This drives the collector's
real landing path (journal + the open minutes in memory -> minute close ->
spool -> merge -> MinIO, then the minute manifest) at ``--devices`` devices x 1
message/s x 3 readings, in real time, each message journalled by the MQTT
message handler's own :func:`collectors.mqtt.journal_message`, and prints per
closed minute:

* rows landed (from the manifest) against rows sent,
* close: seconds the minute's close took (seal, build the file, spool it),
* lateness: seconds from the minute's end (when the generator had sent its last
  reading: the wall-clock end, unless the generator fell behind) to its
  manifest landing (the close itself waits ``close_delay`` = 2 s for late
  readings),
* landing throughput: device-rows / (manifest landed - minute closed),
* the deepest the spool got, and whether each minute closed from memory.

Beside it, references measured in the same run:

* the message handler's own cost (parse + journal append, in-process, no
  network) in messages/s, against the ``--devices`` messages/s the devices send;
* a bare boto3 ``put_object`` of the same minute file (what landing it costs
  at the least);
* the same full minute closed from its journal alone (the restart path, and
  how every minute closed before the open minutes were kept in memory).

Needs MinIO of the local stack (``python -m stack up minio``). Run:
``.venv/bin/python tests/benchmarks/landing_bench.py [--devices 5000] [--seconds 150]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from collectors.journal import MinuteStore  # noqa: E402
from collectors.mqtt import OpenMinutes, journal_message, sensor_splitter  # noqa: E402
from include.landing import LandingZone  # noqa: E402
from include.contract import manifest_key, parse_key, timestamp_text  # noqa: E402
from include.manifests import MinuteManifest  # noqa: E402
from include.schemas import SENSOR  # noqa: E402
from include.spool import MANIFEST, LanderMetrics, SpoolEntry  # noqa: E402

KINDS = ("dust", "humidity", "temperature")
METRIC = "mqtt.home.sensor"


@dataclass
class MinuteResult:
    minute: int
    sent: int = 0
    #: Wall-clock time the generator had sent the minute's last reading (its end, when on time).
    ended_at: float = 0.0
    closed_at: float = 0.0
    #: Seconds the close_minutes call that closed this minute took.
    close_seconds: float = 0.0
    landed_at: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def landed_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def lateness(self) -> float:
        """Seconds from the minute's end (its last reading sent) to its manifest landing."""
        return self.landed_at - self.ended_at

    @property
    def rows_per_s(self) -> float:
        return self.landed_rows / max(1e-6, self.landed_at - self.closed_at)


@dataclass
class LoadResult:
    devices: int
    minutes: list[MinuteResult]
    max_spool_depth: int
    max_spool_bytes: int
    behind_seconds: int  # seconds the generator could not send on time (the machine fell behind)
    closed_from_memo: int = 0
    closed_from_journal: int = 0
    #: Spool depth right before each close (0: every earlier minute had landed whole).
    depth_before_close: list[int] = field(default_factory=list)


class _Timing(LanderMetrics):
    """Notes when each minute's manifest landed (the entry is gone by then: its key says the minute)."""

    def __init__(self, landing: LandingZone, writer: str, results: dict[int, MinuteResult]) -> None:
        self.landing, self.writer, self.results = landing, writer, results

    def landed(self, entry: SpoolEntry, rows: int) -> None:
        if entry.kind != MANIFEST:
            return
        minute = parse_key(entry.key).minute
        result = self.results[int(minute.timestamp())]
        result.landed_at = time.time()
        manifest = MinuteManifest.from_json(self.landing.get(manifest_key(SENSOR, minute, self.writer)))
        result.rows = dict(manifest.rows)


def device_rows(devices: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """(device, [(value, tags)] x 3) of each device: the rows of one message, less the timestamp."""
    return [(f"dev{d:05d}", [(str(20 + d % 7 + i), f"loc=dev{d:05d} type={kind}") for i, kind in enumerate(KINDS)])
            for d in range(devices)]


def journal_second(store: MinuteStore, minutes: OpenMinutes, second: int,
                   devices: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """One message per device for ``second``, journalled as the MQTT handler journals a message."""
    ts, minute = timestamp_text(second), second // 60 * 60
    for device, readings in devices:
        journal_message(store, minutes, [(minute, [[ts, device, METRIC, v, tags] for v, tags in readings])],
                        minute, [], None)


def run_load(landing: LandingZone, state_dir: Path, *, devices: int, seconds: float, writer: str,
             close_delay: float = 2.0, progress=print) -> LoadResult:
    """Send ``devices`` x 3 readings every second for ``seconds``, closing minutes as the collector does."""
    results: dict[int, MinuteResult] = defaultdict(lambda: MinuteResult(0))
    minutes = OpenMinutes(writer)
    store = MinuteStore(state_dir, landing, sensor_splitter(writer), fsync_interval=1.0, retry_initial=0.5, retry_max=2,
                        memo=minutes)
    store.lander.metrics = _Timing(landing, writer, results)
    fleet = device_rows(devices)
    before_close: list[int] = []
    stop = threading.Event()
    depth = {"n": 0, "bytes": 0}

    def watch() -> None:
        while not stop.wait(0.2):
            depth["n"] = max(depth["n"], store.spool.depth())
            depth["bytes"] = max(depth["bytes"], store.spool.size())

    store.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = int(time.time()) + 1
    end = start + int(seconds)
    behind = 0
    next_close = start // 60 * 60 + 60
    try:
        for second in range(start, end):
            delay = second - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                behind += 1
            minute = second // 60 * 60
            if second % 60 == 0 and minute - 60 in results:
                results[minute - 60].ended_at = time.time()
            result = results[minute]
            result.minute = minute
            result.sent += 3 * devices
            journal_second(store, minutes, second, fleet)
            store.flush()
            # Close on the generator's own clock: when the generator (the devices) falls behind
            # on a busy machine, its readings must not turn into late readings of a closed minute.
            if second >= next_close + close_delay:
                # Kept up: the minute closed a minute ago has landed whole before the next one closes.
                before_close.append(store.spool.depth())
                closing = results[next_close - 60]
                closing.closed_at = time.time()
                store.close_minutes(next_close)
                closing.close_seconds = time.time() - closing.closed_at
                progress(f"  minute {timestamp_text(next_close - 60)} closed in {closing.close_seconds:.2f} s; "
                         f"spool depth {store.spool.depth()}")
                next_close += 60
        # The run's own last close (a partial minute) waits for the spool like a regular one.
        drain_by = time.time() + 60
        while store.spool.depth() and time.time() < drain_by:
            time.sleep(0.1)
        before_close.append(store.spool.depth())
        last = time.time()
        for minute in sorted(results):
            results[minute].ended_at = results[minute].ended_at or last
            if not results[minute].closed_at:
                results[minute].closed_at = last
        store.close_minutes(None)
        for minute in sorted(results):
            if results[minute].closed_at == last:
                results[minute].close_seconds = time.time() - last
        deadline = time.time() + 300
        while any(not r.landed_at for r in results.values()) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        store.stop(30)
    return LoadResult(devices, [results[m] for m in sorted(results)], depth["n"], depth["bytes"], behind,
                      store.closed_from_memo, store.closed_from_journal, before_close)


def journal_close_seconds(landing: LandingZone, state_dir: Path, *, devices: int, writer: str) -> float:
    """Seconds to close one full minute of ``devices`` from its journal alone (no memo), spool included."""
    store = MinuteStore(state_dir, landing, sensor_splitter(writer), fsync_interval=1.0)
    minutes = OpenMinutes(writer)  # journal_message needs one; the store is not told of it
    fleet = device_rows(devices)
    minute = int(time.time()) // 60 * 60 - 3600
    for second in range(minute, minute + 60):
        journal_second(store, minutes, second, fleet)
    store.flush()
    t0 = time.perf_counter()
    store.close_minutes(None)
    seconds = time.perf_counter() - t0
    assert store.closed_from_journal == 1 and store.closed_from_memo == 0
    return seconds


def bare_put_seconds(client, bucket: str, key: str, data: bytes) -> float:
    """Seconds for one plain boto3 put_object of ``data`` (the least landing a minute file costs)."""
    t0 = time.perf_counter()
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return time.perf_counter() - t0


def handler_rate(messages: int = 20000) -> float:
    """Messages/s of the MQTT handler's own work: parse the seed payload, build rows, journal them (no network)."""
    import orjson

    from include.sensors import csv_row, parse_payload

    with tempfile.TemporaryDirectory() as tmp:
        minutes = OpenMinutes("bench")
        store = MinuteStore(Path(tmp), None, sensor_splitter("bench"), fsync_interval=1.0, memo=minutes)
        now = time.time()
        payloads = [orjson.dumps([{"metric": METRIC, "timestamp": int(now * 1000) + i, "value": 20.5,
                                   "tags": {"type": k, "loc": f"dev{i % 5000:05d}"}} for k in KINDS])
                    for i in range(messages)]
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            parsed = parse_payload(payload, now)
            device = f"dev{i % 5000:05d}"
            rows = [csv_row(device, r) for r in parsed.readings]
            minute = int(parsed.readings[0].epoch // 60 * 60)
            journal_message(store, minutes, [(minute, rows)], int(now // 60 * 60), [], None)
            if i % 100 == 0:
                store.flush()
        store.flush()
        return messages / (time.perf_counter() - t0)


def report(result: LoadResult, print_=print) -> None:
    print_(f"{result.devices} devices x 1 message/s x 3 readings = {3 * result.devices} device-rows/s offered")
    print_(f"{'minute':22} {'sent':>8} {'landed':>8} {'close s':>8} {'lateness s':>11} {'landing rows/s':>15}")
    for m in result.minutes:
        print_(f"{timestamp_text(m.minute):22} {m.sent:8d} {m.landed_rows:8d} {m.close_seconds:8.2f} "
               f"{m.lateness:11.1f} {m.rows_per_s:15.0f}")
    print_(f"deepest spool: {result.max_spool_depth} entries, {result.max_spool_bytes / 2**20:.1f} MiB; "
           f"spool depth before each close: {result.depth_before_close}; "
           f"seconds the generator fell behind: {result.behind_seconds}; minutes closed from memory "
           f"{result.closed_from_memo}, from the journal {result.closed_from_journal}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=150)
    args = parser.parse_args()
    from include.landing import S3Landing
    from stack.config import LANDING_BUCKET, StackConfig
    from stack.services.minio import MinIO

    print("reference: the MQTT handler's own work (parse + journal), in-process ...", flush=True)
    rate = handler_rate()
    print(f"  {rate:,.0f} messages/s against {args.devices:,} messages/s offered "
          f"({rate / args.devices:.2f}x)", flush=True)
    minio = MinIO(StackConfig.from_env())
    # Root's client: run_load reads each minute's manifest back to time it (the collector user cannot read).
    client = minio.admin_client()
    prefix = f"bench-landing-{uuid.uuid4().hex[:8]}"
    landing = S3Landing(client, LANDING_BUCKET, prefix)
    print(f"landing {args.devices} devices for {args.seconds:.0f} s into {landing.url} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_load(landing, Path(tmp), devices=args.devices, seconds=args.seconds, writer="bench-collector")
    report(result)
    whole = [m for m in result.minutes if m.sent == m.landed_rows]
    if whole:
        print(f"landing throughput (median of closed minutes): "
              f"{sorted(m.rows_per_s for m in whole)[len(whole) // 2]:,.0f} device-rows/s "
              f"against {3 * args.devices:,} device-rows/s offered")
    full = [m for m in result.minutes if m.sent == 180 * args.devices]
    if full:
        from datetime import datetime, timezone

        from include.contract import minute_key

        data = landing.get(minute_key(SENSOR, datetime.fromtimestamp(full[0].minute, timezone.utc), "bench-collector"))
        put = bare_put_seconds(client, LANDING_BUCKET, f"{prefix}/bare-put.csv", data)
        print("reference: one full minute closed from its journal alone (the restart path; every close before) ...",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            journal = journal_close_seconds(S3Landing(client, LANDING_BUCKET, f"{prefix}-journal"), Path(tmp),
                                            devices=args.devices, writer="bench-collector")
        closes = sorted(m.close_seconds for m in full)
        late = sorted(m.lateness for m in full)
        print(f"close of a full minute ({len(data) / 2**20:.0f} MiB, {180 * args.devices:,} rows): "
              f"median {closes[len(closes) // 2]:.2f} s from memory, {journal:.2f} s from the journal alone "
              f"({journal / max(1e-6, closes[len(closes) // 2]):.1f}x); a bare boto3 put of the same bytes "
              f"{put:.2f} s; lateness median {late[len(late) // 2]:.1f} s, worst {late[-1]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
