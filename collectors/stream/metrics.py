"""Self-metrics and health of the stream loader, served at ``/metrics`` and ``/healthz``.

Health (:class:`collectors.health.Health`): the loader's batch loop is a
watched thread; *traffic* is a record fetched from Kafka, *handled* is a
batch committed (its records loaded or dead-lettered). The loader is
unhealthy when fetched records wait unhandled for ``health_idle_after``
seconds, and then names the cause when it is a sink (or the dead-letter
topic) that has been down that long: :class:`Outages`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collectors.common import MetricsEndpoint
from collectors.health import Health

log = logging.getLogger(__name__)


class Outages:
    """Since when each sink has been failing, for the health verdict; ``clock`` is monotonic seconds."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: dict[str, tuple[float, str]] = {}

    def failing(self, name: str, problem: str) -> None:
        with self._lock:
            since = self._since.get(name, (self._clock(), ""))[0]
            self._since[name] = (since, problem)

    def ok(self, name: str) -> None:
        with self._lock:
            self._since.pop(name, None)

    def check(self) -> str | None:
        """The sinks down longer than the limit, with their last error; None when there are none."""
        now = self._clock()
        with self._lock:
            items = sorted(self._since.items())
        long = [f"{name} down for {now - since:.0f} s (limit {self.limit_s:g} s): {problem}"
                for name, (since, problem) in items if now - since > self.limit_s]
        return "; ".join(long) or None


#: Buckets of one step of a batch (decoding it, one sink's load): a 5,000-record batch takes 0.1-1 s.
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class StreamMetrics(MetricsEndpoint):
    """Prometheus self-metrics of the loader, in a registry of its own, and its :class:`Health` (``health``)."""

    def __init__(self, *, idle_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.health = Health(idle_after_s=idle_after_s, clock=clock)
        self.outages = Outages(idle_after_s, clock)
        self.health.add_check("sinks", self.outages.check)
        p = "sluice_stream_"
        self.records = Counter(p + "records_consumed", "Kafka records taken into batches, by topic.", ["topic"], registry=r)
        self.documents = Counter(p + "documents_decoded", "Documents decoded (one per reading or host row), by source.",
                                 ["source"], registry=r)
        self.loaded = Counter(p + "documents_loaded", "Documents a sink accepted, by sink.", ["sink"], registry=r)
        self.rejected_readings = Counter(p + "readings_rejected", "Invalid readings left out of payloads that had "
                                         "valid ones (the MQTT collector dead-letters them), by code.", ["code"], registry=r)
        self.deadletters = Counter(p + "deadletters", "Records sent to the dead-letter topic, by stage and code.",
                                   ["stage", "code"], registry=r)
        self.untrusted_received_at = Counter(
            p + "received_at_untrusted", "Sensor records whose received_at header was invalid or too far from their "
            "Kafka timestamp, so the Kafka timestamp was used, by why.", ["why"], registry=r)
        self.internal_errors = Counter(p + "internal_errors", "Records whose decoding failed unexpectedly "
                                       "(dead-lettered with reason internal: ...).", registry=r)
        self.sink_failures = Counter(p + "sink_failures", "Failed attempts to load a batch, by sink.", ["sink"], registry=r)
        self.batches = Counter(p + "batches_committed", "Batches loaded and committed.", registry=r)
        self.committed_records = Counter(p + "records_committed", "Kafka records whose offsets were committed "
                                         "(loaded or dead-lettered).", registry=r)
        self.commit_failures = Counter(p + "commit_failures", "Offset commits Kafka refused (the batch replays).", registry=r)
        self.rebalances = Counter(p + "partitions_changed", "Partitions assigned or revoked by the group, by event.",
                                  ["event"], registry=r)
        self.dropped = Counter(p + "records_dropped_on_revoke", "Uncommitted records of revoked partitions dropped "
                               "(their new owner reads them again from the committed offset).", registry=r)
        self.assigned = Gauge(p + "partitions_assigned", "Partitions this loader owns now.", registry=r)
        self.paused = Gauge(p + "paused", "1 while consumption is paused for a sink outage.", registry=r)
        self.last_commit = Gauge(p + "last_commit_timestamp_seconds", "Wall-clock time of the last offset commit.", registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "Seconds from a batch's first record to its commit.",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        # Where a batch's time goes: decoding it (the loop's thread) and each sink's load (its own thread).
        self.decode_seconds = Histogram(p + "decode_seconds", "Seconds decoding a batch of records.",
                                        buckets=_STEP_BUCKETS, registry=r)
        self.sink_seconds = Histogram(p + "sink_load_seconds", "Seconds one sink took to load a batch, by sink.",
                                      ["sink"], buckets=_STEP_BUCKETS, registry=r)
        self.delay = Histogram(p + "delay_seconds", "Seconds from a record's receive time (received_at within its "
                               "bounds, else its Kafka timestamp) to its batch's commit.",
                               buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=r)

    def decoded(self, batch) -> None:
        """Count what decoding a batch saw; each record that failed unexpectedly gets one ERROR line."""
        for topic, n in batch.per_topic.items():
            self.records.labels(topic).inc(n)
        for source, docs in batch.docs.items():
            self.documents.labels(source).inc(docs.rows_read)
        for code, n in batch.rejected_readings.items():
            self.rejected_readings.labels(code).inc(n)
        for why, n in batch.untrusted_received_at.items():
            self.untrusted_received_at.labels(why).inc(n)
        for dl in batch.internal:
            self.internal_errors.inc()
            log.error("decoding %s[%d]@%d failed unexpectedly; dead-lettered: %s", dl.message.topic(),
                      dl.message.partition(), dl.message.offset(), dl.reason)

    def committed(self, batch, *, now: float, elapsed: float) -> None:
        """Count a committed batch (``now`` wall-clock, ``elapsed`` seconds since its first record)."""
        self.batches.inc()
        self.committed_records.inc(len(batch.messages))
        self.last_commit.set(now)
        self.batch_seconds.observe(max(0.0, elapsed))
        for received in batch.received:
            self.delay.observe(max(0.0, now - received))
