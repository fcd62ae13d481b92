"""The Spark anomaly job: ``spark-submit include/anomaly/job.py --start … --end …``.

For each source (``host``, ``sensor``) it

1. lists the minute files of the window ``[start, end)`` in the landing zone
   (``SLUICE_LANDING_URL`` or ``--landing``: ``s3://bucket/prefix`` read as
   ``s3a://`` through hadoop-aws, or ``file:///path``) and leaves out the
   quarantined ones, each with its reason (:func:`include.loads.list_quarantined`);
2. reads every CSV of those minutes as one DataFrame (one file per writer per
   minute holding many devices, or one per device: rows are grouped by their
   ``device``/``host`` column, never by file name) and turns it into long
   format ``source, device, metric, tags, epoch, value``: a sensor row is one
   reading of series (metric, tags); a host row gives one reading of series
   ``host.<field>`` per numeric column;
3. flags anomalies with :mod:`include.anomaly.detect` and, for every UTC day
   that the window completes (its end is midnight of the next day or later),
   computes the day's aggregates per device and series;
4. writes both as one JSON result per source under
   ``anomaly/{source}/{start}_{end}.json`` in the landing zone (a rerun of the
   window replaces it); the DAG's publish task sends it to Elasticsearch and
   OpenTSDB (:mod:`include.anomaly.results`).

Spark code uses only built-in functions (no Python UDF), so executors on a
cluster need nothing but Spark and hadoop-aws; the driver needs this
repository on ``PYTHONPATH``. S3 access comes from the environment the DAG
gives spark-submit (``SLUICE_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``SLUICE_S3_PATH_STYLE``): never from the command
line, where ``ps`` would show it. Exit status 0 with a one-line JSON summary
on stdout; 2 with one line naming the reason when Spark did not start or the
arguments are wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import orjson

from include.anomaly.detect import SERIES, Method, daily_aggregates, find_anomalies
from include.contract import ANOMALY_RESULTS, format_timestamp, parse_iso_utc, parse_key
from include.landing import LandingZone, open_landing
from include.loads import list_landed, list_quarantined
from include.schemas import HOST, HOST_SCHEMA, SENSOR, SENSOR_SCHEMA, SOURCES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("include.anomaly.job")


class SparkStartError(RuntimeError):
    """Spark could not start (no Java, not enough memory, bad master): the reason, without the JVM's stack."""


@dataclass(frozen=True)
class JobConfig:
    landing_url: str
    start: datetime
    end: datetime
    sources: tuple[str, ...] = SOURCES
    method: Method = field(default_factory=Method)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be UTC times with a zone (…Z)")
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"source(s) {', '.join(unknown)} not among {', '.join(SOURCES)}")


class Window(TypedDict):
    """A job window as ISO-8601 UTC text: ``start`` inclusive, ``end`` exclusive."""

    start: str
    end: str


class SkippedFile(TypedDict):
    """A quarantined file the job left out, with the loader's reason."""

    key: str
    etag: str
    reason: str


class AnomalyRow(TypedDict):
    device: str
    metric: str
    tags: str
    timestamp: str
    #: Seconds since the epoch (milliseconds as a fraction).
    epoch: float
    value: float
    expected: float
    low: float
    high: float
    score: float
    bucket_points: int


class DailyRow(TypedDict):
    #: ``YYYY-MM-DD``, UTC.
    day: str
    device: str
    metric: str
    tags: str
    count: int
    min: float
    max: float
    mean: float
    p95: float


class SourceResult(TypedDict):
    """The result document of one source and window, as :func:`run` writes it to :func:`result_key`."""

    source: str
    window: Window
    method: dict[str, Any]
    files: int
    skipped: list[SkippedFile]
    rows: int
    series: int
    anomalies: list[AnomalyRow]
    daily_days: list[str]
    daily: list[DailyRow]


def result_key(source: str, start: datetime, end: datetime) -> str:
    """Landing key of the result of one source and window (minutes, UTC)."""
    return f"{ANOMALY_RESULTS}{source}/{start:%Y-%m-%dT%H%M}_{end:%Y-%m-%dT%H%M}.json"


def spark_path(landing_url: str, key: str) -> str:
    """The URL Spark reads ``key`` of the landing zone from: ``s3://`` becomes ``s3a://``."""
    parsed = urlparse(landing_url)
    base = landing_url.rstrip("/")
    if parsed.scheme == "s3":
        base = "s3a://" + base[len("s3://"):]
    elif parsed.scheme != "file":
        raise ValueError(f"landing URL {landing_url!r}: the scheme must be s3:// or file://")
    return f"{base}/{key}"


def s3a_conf(environ: Mapping[str, str]) -> dict[str, str]:
    """Hadoop ``fs.s3a.*`` settings (as ``spark.hadoop.*``) from the environment.

    With ``SLUICE_S3_ENDPOINT_URL`` (MinIO) the endpoint and path-style access
    (``SLUICE_S3_PATH_STYLE``, default true with an endpoint) are set; with
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` the simple credentials
    provider is used, else hadoop-aws's default chain (instance roles, …).
    Spark redacts ``*secret*`` and ``*access.key*`` settings in its UI and logs.
    """
    conf: dict[str, str] = {}
    endpoint = environ.get("SLUICE_S3_ENDPOINT_URL", "")
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
        conf["spark.hadoop.fs.s3a.path.style.access"] = environ.get("SLUICE_S3_PATH_STYLE", "true").lower()
        conf["spark.hadoop.fs.s3a.endpoint.region"] = environ.get("AWS_DEFAULT_REGION", "us-east-1")
    key, secret = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key and secret:
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        )
        conf["spark.hadoop.fs.s3a.access.key"] = key
        conf["spark.hadoop.fs.s3a.secret.key"] = secret
    return conf


def start_spark(app_name: str, conf: Mapping[str, str]) -> SparkSession:
    """A SparkSession (master and memory from spark-submit), or SparkStartError with the reason.

    When the JVM cannot start, pyspark raises a gateway error whose message
    says only that Java exited; the reason is in what the JVM printed, which
    spark-submit's own output already carries. This turns it into one line.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # The job passes explicit file paths (a day is 1,440 minutes × writers): checking them in the
        # driver is a few ms each, a distributed listing job of one task per path costs minutes.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
    }
    for k, v in {**defaults, **conf}.items():
        builder = builder.config(k, v)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark raises its own error types for a JVM that did not come up
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SparkStartError(f"Spark did not start: {first}") from None
    spark.sparkContext.setLogLevel("WARN")
    return spark


@dataclass
class WindowFiles:
    #: What Spark reads: folders (or single files) that hold exactly the window's readable files.
    paths: list[str]
    skipped: list[SkippedFile]
    keys: list[str]


def window_files(landing: LandingZone, source: str, start: datetime, end: datetime) -> WindowFiles:
    """The CSV files of ``source`` for minutes in [start, end), quarantined ones left out with their reason."""
    quarantined = list_quarantined(landing, source, start, end)
    keys: list[str] = []
    skipped: list[SkippedFile] = []
    for info in list_landed(landing, source, start, end):
        reason = quarantined.get((info.key, info.etag))
        if reason is not None:
            skipped.append({"key": info.key, "etag": info.etag, "reason": reason})
            log.warning("skipping quarantined file %s: %s", info.key, reason)
            continue
        keys.append(info.key)
    if skipped:
        paths = [spark_path(landing.url, k) for k in keys]
    else:
        paths = [spark_path(landing.url, p) for p in covering_folders(keys, start, end)]
    return WindowFiles(paths, skipped, keys)


def covering_folders(keys: Sequence[str], start: datetime, end: datetime) -> list[str]:
    """The fewest landing folders (day, hour or minute) holding exactly ``keys``.

    ``keys`` are every file of the window (none left out), so a day or hour
    folder that the window covers whole holds nothing else. Spark lists a few
    folders recursively in one go; checking a day's 1,440+ file paths one by
    one costs it far more (and one request each on S3).
    """
    folders: set[str] = set()
    for key in keys:
        minute_folder = key.rsplit("/", 1)[0] + "/"
        hour_folder = minute_folder.rsplit("/", 2)[0] + "/"
        day_folder = hour_folder.rsplit("/", 2)[0] + "/"
        m = parse_key(key).minute
        day, hour = m.replace(hour=0, minute=0), m.replace(minute=0)
        if start <= day and day + timedelta(days=1) <= end:
            folders.add(day_folder)
        elif start <= hour and hour + timedelta(hours=1) <= end:
            folders.add(hour_folder)
        else:
            folders.add(minute_folder)
    return sorted(folders)


def read_readings(spark: SparkSession, source: str, paths: Sequence[str]) -> DataFrame:
    """Long format ``source, device, metric, tags, timestamp, epoch, value`` of the CSV files under ``paths``.

    Columns are read by position against the full schema (columns are only
    ever appended, so an older, shorter file gets nulls for the newer ones);
    every value is read as text and cast, so a row whose value or timestamp is
    not a number or a time becomes null and is left out, as the loader would
    refuse it.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = SENSOR_SCHEMA if source == SENSOR else HOST_SCHEMA
    struct = StructType([StructField(name, StringType()) for name in schema.names])
    # Folders are read recursively for their .csv files (never the .meta.json sidecars); Spark skips
    # names starting with "." (a file store's half-written temporaries) itself.
    raw = spark.read.csv(list(paths), header=True, schema=struct, mode="PERMISSIVE",
                         recursiveFileLookup=True, pathGlobFilter="*.csv")
    ts = F.to_timestamp(F.col("timestamp"))
    if source == SENSOR:
        long = raw.select(
            F.lit(SENSOR).alias("source"), F.col("device"), F.col("metric"),
            F.coalesce(F.col("tags"), F.lit("")).alias("tags"), F.col("timestamp"), ts.alias("ts"),
            F.col("value").cast("double").alias("value"),
        )
    else:
        fields = [c.name for c in HOST_SCHEMA.numeric]
        stacked = ", ".join(f"'host.{name}', `{name}`" for name in fields)
        long = raw.select(
            F.lit(HOST).alias("source"), F.col("host").alias("device"), F.col("timestamp"), ts.alias("ts"),
            F.expr(f"stack({len(fields)}, {stacked}) as (metric, text)"),
        ).select("source", "device", "metric", F.lit("").alias("tags"), "timestamp", "ts",
                 F.col("text").cast("double").alias("value"))
    return (
        long.where(F.col("ts").isNotNull() & F.col("value").isNotNull() & F.col("device").isNotNull()
                   & ~F.isnan("value"))
        .withColumn("epoch", F.unix_micros("ts") / 1e6)
        .drop("ts")
    )


def completed_days(start: datetime, end: datetime) -> list[datetime]:
    """UTC days D whose end falls in (start, end]: the window completes them."""
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day < end:
        if start < day + timedelta(days=1) <= end:
            out.append(day)
        day += timedelta(days=1)
    return out


def run_source(spark: SparkSession, landing: LandingZone, config: JobConfig, source: str) -> SourceResult:
    """Anomalies and daily aggregates of one source; the result document (see :func:`result_key`)."""
    from pyspark.sql import functions as F

    days = completed_days(config.start, config.end)
    read_start = min([config.start, *days])
    files = window_files(landing, source, read_start, config.end)
    result: SourceResult = {
        "source": source,
        "window": {"start": format_timestamp(config.start), "end": format_timestamp(config.end)},
        "method": config.method.describe(),
        "files": len(files.keys),
        "skipped": files.skipped,
        "rows": 0,
        "series": 0,
        "anomalies": [],
        "daily_days": [d.strftime("%Y-%m-%d") for d in days],
        "daily": [],
    }
    if not files.keys:
        log.info("%s: no files for [%s, %s): zero anomalies", source, format_timestamp(read_start), format_timestamp(config.end))
        return result
    readings = read_readings(spark, source, files.paths).cache()
    lo, hi = config.start.timestamp(), config.end.timestamp()
    window = readings.where((F.col("epoch") >= lo) & (F.col("epoch") < hi))
    counts = window.agg(F.count("*").alias("rows"), F.countDistinct(*SERIES).alias("series")).first()
    if counts is None:  # an aggregate without grouping always has one row; pyspark's types allow none
        raise RuntimeError(f"{source}: Spark returned no row counting the window")
    result["rows"], result["series"] = int(counts["rows"]), int(counts["series"])
    found = find_anomalies(window, config.method).orderBy(*SERIES, "epoch").collect()
    result["anomalies"] = [
        {"device": r["device"], "metric": r["metric"], "tags": r["tags"], "timestamp": r["timestamp"],
         "epoch": r["epoch"], "value": r["value"], "expected": r["expected"], "low": r["low"], "high": r["high"],
         "score": r["score"], "bucket_points": r["bucket_points"]}
        for r in found
    ]
    if days:
        first, last = days[0].timestamp(), (days[-1] + timedelta(days=1)).timestamp()
        in_days = readings.where((F.col("epoch") >= first) & (F.col("epoch") < last))
        result["daily"] = [
            {"day": r["day"], "device": r["device"], "metric": r["metric"], "tags": r["tags"], "count": r["count"],
             "min": r["min"], "max": r["max"], "mean": r["mean"], "p95": r["p95"]}
            for r in daily_aggregates(in_days).orderBy("day", *SERIES).collect()
        ]
    readings.unpersist()
    log.info("%s: %d rows, %d series, %d anomalies, %d daily aggregates from %d files (%d skipped)",
             source, result["rows"], result["series"], len(result["anomalies"]), len(result["daily"]),
             len(files.keys), len(files.skipped))
    return result


def run(spark: SparkSession, landing: LandingZone, config: JobConfig) -> dict[str, Any]:
    """Run every source and write each result into the landing zone; the summary."""
    summary: dict[str, Any] = {"window": {"start": format_timestamp(config.start), "end": format_timestamp(config.end)}, "sources": {}}
    for source in config.sources:
        t0 = time.monotonic()
        result = run_source(spark, landing, config, source)
        key = result_key(source, config.start, config.end)
        landing.put(key, orjson.dumps(result), {"kind": "anomaly-result"})
        summary["sources"][source] = {
            "result": key, "files": result["files"], "skipped": len(result["skipped"]), "rows": result["rows"],
            "anomalies": len(result["anomalies"]), "daily": len(result["daily"]),
            "seconds": round(time.monotonic() - t0, 3),
        }
    return summary


def parse_time(text: str) -> datetime:
    """A window bound as an aware UTC datetime (ContractError, a ValueError, saying what is expected)."""
    return parse_iso_utc(text)


def resolve_window(params: Mapping[str, Any], interval_start: datetime | None, interval_end: datetime | None) -> Window:
    """``{"start", "end"}`` (ISO-8601 UTC) of a run: params ``start``/``end`` when given, else the data interval.

    ValueError naming the param when only one is given or they are not times.
    """
    start_text, end_text = (params.get("start") or "").strip(), (params.get("end") or "").strip()
    if bool(start_text) != bool(end_text):
        raise ValueError("give both params start and end (ISO-8601 UTC), or neither for the data interval")
    if start_text:
        start, end = parse_time(start_text), parse_time(end_text)
    else:
        if interval_start is None or interval_end is None:
            raise ValueError("no data interval and no params start/end: nothing to run")
        start, end = interval_start.astimezone(timezone.utc), interval_end.astimezone(timezone.utc)
    if end <= start:
        raise ValueError(f"end {format_timestamp(end)} is not after start {format_timestamp(start)}")
    return {"start": format_timestamp(start), "end": format_timestamp(end)}


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> JobConfig:
    p = argparse.ArgumentParser(prog="spark-submit include/anomaly/job.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--start", required=True, help="window start, ISO-8601 UTC (inclusive)")
    p.add_argument("--end", required=True, help="window end, ISO-8601 UTC (exclusive)")
    p.add_argument("--landing", default=environ.get("SLUICE_LANDING_URL", ""), help="landing URL (default: $SLUICE_LANDING_URL)")
    p.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: host,sensor")
    p.add_argument("--bucket-seconds", type=int, default=Method.bucket_seconds)
    p.add_argument("--threshold", type=float, default=Method.threshold)
    p.add_argument("--min-points", type=int, default=Method.min_points)
    a = p.parse_args(argv)
    if not a.landing:
        raise ValueError("no landing zone: pass --landing or set SLUICE_LANDING_URL")
    return JobConfig(
        landing_url=a.landing, start=parse_time(a.start), end=parse_time(a.end),
        sources=tuple(s.strip() for s in a.sources.split(",") if s.strip()),
        method=Method(bucket_seconds=a.bucket_seconds, threshold=a.threshold, min_points=a.min_points),
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = parse_args(argv, environ)
        landing = open_landing(config.landing_url)
        conf = s3a_conf(environ) if config.landing_url.startswith("s3://") else {}
        spark = start_spark(f"sluice_anomaly {format_timestamp(config.start)}..{format_timestamp(config.end)}", conf)
    except (ValueError, SparkStartError) as exc:
        print(f"sluice anomaly job: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run(spark, landing, config)
    finally:
        spark.stop()
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    # spark-submit runs this file as a script: the repository root must be importable.
    raise SystemExit(main())
