"""Landing throughput of one MQTT collector: device-rows/s, lateness and spool depth at N devices.

One file per writer per minute: a collector's minute file holds every device's
rows, so the landing side does one split, one spool entry, one merge and one
put per minute however many devices there are. This drives the collector's
real landing path (journal -> minute split -> spool -> merge -> MinIO, then the
minute manifest) at ``--devices`` devices x 1 message/s x 3 readings, in real
time, with the exact journal records the MQTT message handler writes, and
prints per closed minute:

* rows landed (from the manifest) against rows sent,
* lateness: seconds from the minute's end to its manifest landing (the close
  itself waits ``close_delay`` = 2 s for late readings),
* landing throughput: device-rows / (manifest landed - minute closed),
* the deepest the spool got.

Beside it, the reference measured in the same run: the message handler's own
cost (parse + journal append, in-process, no network) in messages/s, against
the ``--devices`` messages/s the devices send.

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

from collectors.journal import MinuteStore, encode_record  # noqa: E402
from collectors.mqtt import TALLY, sensor_splitter  # noqa: E402
from include.landing import LandingZone  # noqa: E402
from include.contract import manifest_key, parse_key, timestamp_text  # noqa: E402
from include.manifests import MinuteManifest  # noqa: E402
from include.schemas import SENSOR  # noqa: E402
from include.spool import MANIFEST, LanderMetrics, SpoolEntry  # noqa: E402

KINDS = ("dust", "humidity", "temperature")
_TS = b"TSTSTSTSTSTSTSTSTSTS"  # as long as an ISO second: 2023-11-14T22:14:01Z


@dataclass
class MinuteResult:
    minute: int
    sent: int = 0
    closed_at: float = 0.0
    landed_at: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def landed_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def lateness(self) -> float:
        return self.landed_at - (self.minute + 60)

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


def second_template(devices: int) -> bytes:
    """The journal records of one second of ``devices`` devices, the timestamp left as a placeholder."""
    ts = _TS.decode()
    return b"".join(
        encode_record([ts, f"dev{d:05d}", "mqtt.home.sensor", str(20 + d % 7 + i), f"loc=dev{d:05d} type={kind}"])
        for d in range(devices) for i, kind in enumerate(KINDS))


def run_load(landing: LandingZone, state_dir: Path, *, devices: int, seconds: float, writer: str,
             close_delay: float = 2.0, progress=print) -> LoadResult:
    """Send ``devices`` x 3 readings every second for ``seconds``, closing minutes as the collector does."""
    results: dict[int, MinuteResult] = defaultdict(lambda: MinuteResult(0))
    store = MinuteStore(state_dir, landing, sensor_splitter(writer), fsync_interval=1.0, retry_initial=0.5, retry_max=2)
    store.lander.metrics = _Timing(landing, writer, results)
    template = second_template(devices)
    tally = b"[]\n" * devices
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
            result = results[minute]
            result.minute = minute
            result.sent += 3 * devices
            store.append(SENSOR, minute, template.replace(_TS, timestamp_text(second).encode()))
            store.append(TALLY, minute, tally)
            store.flush()
            if time.time() >= next_close + close_delay:
                results[next_close - 60].closed_at = time.time()
                store.close_minutes(next_close)
                progress(f"  minute {timestamp_text(next_close - 60)} closed; spool depth {store.spool.depth()}")
                next_close += 60
        for minute in sorted(results):
            if not results[minute].closed_at:
                results[minute].closed_at = time.time()
        store.close_minutes(None)
        deadline = time.time() + 300
        while any(not r.landed_at for r in results.values()) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        store.stop(30)
    return LoadResult(devices, [results[m] for m in sorted(results)], depth["n"], depth["bytes"], behind)


def handler_rate(messages: int = 20000) -> float:
    """Messages/s of the MQTT handler's own work: parse the seed payload, encode, journal (no network)."""
    import orjson

    from collectors.journal import Journal
    from include.sensors import csv_row, parse_payload

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp), fsync_interval=1.0)
        now = time.time()
        payloads = [orjson.dumps([{"metric": "mqtt.home.sensor", "timestamp": int(now * 1000) + i, "value": 20.5,
                                   "tags": {"type": k, "loc": f"dev{i % 5000:05d}"}} for k in KINDS])
                    for i in range(messages)]
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            parsed = parse_payload(payload, now)
            journal.append("sensor.0.jrnl", b"".join(encode_record(csv_row(f"dev{i % 5000:05d}", r))
                                                     for r in parsed.readings))
            journal.append("tally.0.jrnl", b"[]\n")
            if i % 100 == 0:
                journal.flush()
        journal.flush()
        return messages / (time.perf_counter() - t0)


def report(result: LoadResult, print_=print) -> None:
    print_(f"{result.devices} devices x 1 message/s x 3 readings = {3 * result.devices} device-rows/s offered")
    print_(f"{'minute':22} {'sent':>8} {'landed':>8} {'lateness s':>11} {'landing rows/s':>15}")
    for m in result.minutes:
        print_(f"{timestamp_text(m.minute):22} {m.sent:8d} {m.landed_rows:8d} {m.lateness:11.1f} {m.rows_per_s:15.0f}")
    print_(f"deepest spool: {result.max_spool_depth} entries, {result.max_spool_bytes / 2**20:.1f} MiB; "
           f"seconds the generator fell behind: {result.behind_seconds}")


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
    landing = S3Landing(minio.admin_client(), LANDING_BUCKET, f"bench-landing-{uuid.uuid4().hex[:8]}")
    print(f"landing {args.devices} devices for {args.seconds:.0f} s into {landing.url} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_load(landing, Path(tmp), devices=args.devices, seconds=args.seconds, writer="bench-collector")
    report(result)
    whole = [m for m in result.minutes if m.sent == m.landed_rows]
    if whole:
        print(f"landing throughput (median of closed minutes): "
              f"{sorted(m.rows_per_s for m in whole)[len(whole) // 2]:,.0f} device-rows/s "
              f"against {3 * args.devices:,} device-rows/s offered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
