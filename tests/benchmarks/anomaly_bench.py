"""Figures of the Spark anomaly job on local Spark: one host-day, and 100 devices × one day.

    .venv/bin/python tests/benchmarks/anomaly_bench.py                   # both workloads
    .venv/bin/python tests/benchmarks/anomaly_bench.py --only host --master 'local[2]'

1. **JVM start-up**: building the SparkSession (the JVM, py4j, Spark's
   context) and a first trivial job, timed apart from the work.
2. **Host-day**: one host, one row a second for a day (1,440 minute files of
   60 rows, every column of the host schema: 86,400 rows, 2,505,600 readings of
   29 series), through :func:`include.anomaly.job.run` (anomalies of the day
   and its daily aggregates) in a ``file://`` landing zone.
3. **100 devices × one day**: the simulator's day (``--devices 100``, one
   message a device a minute, 3 readings each: 432,000 readings, one file per
   minute), same job.

Beside each, the reference measured in the same run: a plain-Python pass
(csv module) over the same files computing the daily aggregates only.
Figures: wall seconds, readings/s, and the JVM start-up's share of a
spark-submit-sized run (start-up + work). It prints; it asserts nothing.
Everything goes to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collectors.simulate_sensors import SimulatorConfig, write_offline  # noqa: E402
from include.anomaly import job  # noqa: E402
from include.contract import minute_key  # noqa: E402
from include.landing import FileLanding  # noqa: E402
from include.schemas import HOST, HOST_SCHEMA, SENSOR  # noqa: E402
from pipeline_bench import host_day  # noqa: E402

DAY = datetime(2020, 10, 1, tzinfo=timezone.utc)


def plain_python_daily(root: Path, source: str) -> tuple[int, float]:
    """Readings and seconds of computing count/min/max/mean/p95 per series with the csv module."""
    t0 = time.perf_counter()
    values: dict[tuple, list[float]] = {}
    numeric = [c.name for c in HOST_SCHEMA.numeric]
    for path in sorted(root.glob(f"raw/{source}/date=*/hour=*/minute=*/*.csv")):
        for row in csv.DictReader(io.StringIO(path.read_text())):
            if source == SENSOR:
                values.setdefault((row["device"], row["metric"], row["tags"]), []).append(float(row["value"]))
            else:
                for name in numeric:
                    if row.get(name):
                        values.setdefault((row["host"], name), []).append(float(row[name]))
    readings = 0
    for vs in values.values():
        s = sorted(vs)
        readings += len(s)
        (len(s), s[0], s[-1], math.fsum(s) / len(s), s[math.ceil(0.95 * len(s)) - 1])
    return readings, time.perf_counter() - t0


def run_job(spark, root: Path, source: str) -> tuple[dict, float]:
    landing = FileLanding(root)
    t0 = time.perf_counter()
    summary = job.run(spark, landing, job.JobConfig(root.as_uri(), DAY, DAY + timedelta(days=1), (source,)))
    return summary["sources"][source], time.perf_counter() - t0


def report(name: str, stats: dict, seconds: float, startup: float, reference: tuple[int, float]) -> None:
    rows = stats["rows"]
    ref_rows, ref_seconds = reference
    print(f"{name}: {stats['files']} files, {rows:,} readings, {stats['anomalies']} anomalies, "
          f"{stats['daily']} daily aggregates")
    print(f"  Spark job      {seconds:8.1f} s   {rows / seconds:12,.0f} readings/s   "
          f"(with JVM start-up {startup + seconds:.1f} s: start-up is {startup / (startup + seconds):.0%})")
    print(f"  plain Python   {ref_seconds:8.1f} s   {ref_rows / ref_seconds:12,.0f} readings/s   "
          "(reference: daily aggregates only, csv module, one core)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("host", "sensor"), help="one workload only")
    p.add_argument("--master", default="local[*]")
    p.add_argument("--driver-memory", default="1500m")
    p.add_argument("--devices", type=int, default=100)
    args = p.parse_args(argv)
    java = os.environ.get("SLUICE_SPARK_JAVA_HOME")
    if java:
        os.environ["JAVA_HOME"] = java
    tmp = Path(tempfile.mkdtemp(prefix="sluice-anomaly-bench-"))
    try:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: figures vary)", flush=True)
        t0 = time.perf_counter()
        spark = job.start_spark("sluice anomaly bench", {
            "spark.master": args.master, "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
        spark.range(1).count()
        startup = time.perf_counter() - t0
        print(f"JVM start-up (SparkSession + first job, {args.master}, driver {args.driver_memory}): {startup:.1f} s",
              flush=True)
        if args.only in (None, "host"):
            root = tmp / "host"
            print("writing one host-day (1,440 files) ...", flush=True)
            landing = FileLanding(root)
            for minute, data in host_day("bench-1", DAY):
                landing.put(minute_key(HOST, minute, "bench-1"), data)
            stats, seconds = run_job(spark, root, HOST)
            report("host-day", stats, seconds, startup, plain_python_daily(root, HOST))
        if args.only in (None, "sensor"):
            root = tmp / "sensor"
            print(f"simulating {args.devices} devices × one day (one message a device a minute) ...", flush=True)
            config = SimulatorConfig(devices=args.devices, rate=1 / 60, duration=86400, anomaly_rate=0.001, seed=5,
                                     client_id="bench", output=root.as_uri(), start=f"{DAY:%Y-%m-%dT%H:%M:%SZ}")
            config.validate()
            write_offline(config, landing=FileLanding(root))
            stats, seconds = run_job(spark, root, SENSOR)
            report(f"{args.devices} devices × one day", stats, seconds, startup, plain_python_daily(root, SENSOR))
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
