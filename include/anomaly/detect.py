"""The anomaly method and the daily aggregates, as Spark DataFrame transformations.

Method ``bucket-median-mad`` (robust z-score against the series' own time bucket)
------------------------------------------------------------------------------------
A *series* is one device's one metric with one tag set (``mqtt.home.pcroom``
with ``loc=room-0001 type=temperature``; ``host.cpu_usage_percent`` of one
host). Time is cut into buckets of ``bucket_seconds`` (default 900 s, the DAG's
15-minute window, aligned to the epoch so every run sees whole buckets). For
each series and bucket:

* **expected** value = the median of the bucket's readings;
* **scale** = 1.4826 × MAD (median absolute deviation from that median; the
  factor makes it the standard deviation for Gaussian noise), floored at
  ``max(MIN_SCALE, MIN_RELATIVE_SCALE × |median|)`` so a constant series
  (``mem_total``) does not divide by zero and a change in it stands out;
* **score** = |value − expected| / scale; a reading is an anomaly when
  score > ``threshold`` (default 6) and the bucket has at least
  ``min_points`` readings (default 10; fewer give no trustworthy spread);
* **expected range** = expected ± threshold × scale.

Why this one: the simulator's (and a room's) daily cycle moves a value by a few
units over hours, so within 15 minutes it is nearly flat; a bucket's median is
the cycle's level at that time of day and its MAD the noise, without fitting a
model or needing earlier days (a seasonal decomposition needs several whole
periods before its first answer, a rolling window per reading costs a sort per
reading). Median and MAD ignore up to half the bucket being spikes, so the
spikes do not hide themselves by inflating a mean or a standard deviation. Both
are two ``groupBy`` aggregations (``percentile_approx``) and a join, with no
Python UDF: executors on a cluster need nothing but Spark, and the cost grows
linearly with the rows. Limits: a level shift lasting longer than half a
bucket becomes the bucket's median and is not flagged; a series with fewer
than ``min_points`` readings per bucket (one reading a minute: widen the
bucket) is not judged at all.

For Gaussian noise and a 90-reading bucket, score > 6 happens by chance for
about one reading in 10⁸; the clean-day test measures the false-positive rate
on the simulator's data.
"""

from __future__ import annotations

from dataclasses import dataclass

METHOD = "bucket-median-mad"
#: 1 / Φ⁻¹(3/4): turns a MAD into a standard deviation for Gaussian noise.
MAD_TO_SIGMA = 1.4826
#: Smallest scale in the series' own unit (sensor values are sent with two decimals).
MIN_SCALE = 0.01
#: Smallest scale relative to the expected value (a constant series like mem_total).
MIN_RELATIVE_SCALE = 1e-3
#: Accuracy of percentile_approx: relative rank error 1/10000, exact for buckets below that size.
PERCENTILE_ACCURACY = 10000
#: The columns naming one series.
SERIES = ("source", "device", "metric", "tags")


@dataclass(frozen=True)
class Method:
    """Parameters of :data:`METHOD`; see the module doc."""

    bucket_seconds: int = 900
    threshold: float = 6.0
    min_points: int = 10

    def __post_init__(self) -> None:
        if self.bucket_seconds < 60 or self.bucket_seconds % 60:
            raise ValueError(f"bucket_seconds must be a whole number of minutes (>= 60), got {self.bucket_seconds}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.min_points < 3:
            raise ValueError(f"min_points must be >= 3, got {self.min_points}")

    def describe(self) -> dict:
        return {"name": METHOD, "bucket_seconds": self.bucket_seconds, "threshold": self.threshold,
                "min_points": self.min_points}


def find_anomalies(readings, method: Method = Method()):
    """Anomalous readings of a long DataFrame ``source, device, metric, tags, epoch, value``.

    ``epoch`` is seconds (double, milliseconds as a fraction). Returns one row
    per anomaly: the series columns, ``epoch``, ``value``, ``expected``,
    ``low``, ``high``, ``score``, ``scale``, ``bucket_points``.
    """
    from pyspark.sql import functions as F

    keys = [*SERIES, "bucket"]
    df = readings.withColumn("bucket", (F.floor(F.col("epoch") / method.bucket_seconds) * method.bucket_seconds).cast("long"))
    base = df.groupBy(*keys).agg(
        F.percentile_approx("value", 0.5, PERCENTILE_ACCURACY).alias("expected"),
        F.count("value").alias("bucket_points"),
    )
    dev = df.join(base, keys).withColumn("absdev", F.abs(F.col("value") - F.col("expected")))
    spread = dev.groupBy(*keys).agg(F.percentile_approx("absdev", 0.5, PERCENTILE_ACCURACY).alias("mad"))
    scale = F.greatest(
        F.col("mad") * MAD_TO_SIGMA, F.lit(MIN_SCALE), F.abs(F.col("expected")) * MIN_RELATIVE_SCALE
    )
    scored = (
        dev.join(spread, keys)
        .withColumn("scale", scale)
        .withColumn("score", F.col("absdev") / F.col("scale"))
    )
    return (
        scored.where((F.col("score") > method.threshold) & (F.col("bucket_points") >= method.min_points))
        .withColumn("low", F.col("expected") - method.threshold * F.col("scale"))
        .withColumn("high", F.col("expected") + method.threshold * F.col("scale"))
        .select(*SERIES, "timestamp", "epoch", "value", "expected", "low", "high", "score", "scale", "bucket_points")
    )


def daily_aggregates(readings):
    """Per UTC day, device and series: count, min, max, mean and p95 of ``value``.

    p95 is ``percentile_approx`` at accuracy :data:`PERCENTILE_ACCURACY`: the
    value at rank ⌈0.95·n⌉ of the sorted readings for series of up to 10,000
    readings a day (the nearest-rank definition the plain-Python check uses),
    within 1/10000 of the rank above that.
    """
    from pyspark.sql import functions as F

    day = F.date_format(F.timestamp_seconds(F.floor(F.col("epoch"))), "yyyy-MM-dd")  # session time zone is UTC
    return (
        readings.withColumn("day", day)
        .groupBy("day", *SERIES)
        .agg(
            F.count("value").alias("count"),
            F.min("value").alias("min"),
            F.max("value").alias("max"),
            F.avg("value").alias("mean"),
            F.percentile_approx("value", 0.95, PERCENTILE_ACCURACY).alias("p95"),
        )
    )
