"""Host sampler: psutil once a second, one CSV file per minute in the landing zone.

``python -m collectors.host --help`` lists every option. The sampler wakes on
a deadline of a monotonic clock aligned to wall-clock seconds, so it does not
drift over hours; when it wakes more than a second late (a suspended VM, a
stalled disk) the missed seconds are skipped and counted, never sampled in a
burst. Each row is journalled at once (see collectors/journal.py); when the
last second of a minute is sampled the minute is spooled and lands in the
background at ``raw/host/date=…/hour=…/minute=…/{host}.csv`` (the host is
the writer), merged with any file a previous run left for that minute, and
then the minute's manifest. A heartbeat is written every
``heartbeat_interval`` seconds. Optionally each row is also published to
Kafka ``sluice.host.metrics`` as JSON (best effort: librdkafka buffers
through outages, the landing zone is the record). Kafka being down, at start
or later, never stops sampling: the topic is ensured when Kafka answers, and
a produce error is counted, not raised.

The sampler cannot make its source wait, so at a byte cap it keeps sampling
(a row a second) and says so: the log, and ``/healthz`` names the cap.

Only system-wide counters are read (``/proc/stat``, ``/proc/meminfo``,
``/proc/diskstats``, ``/proc/net/dev``, by collectors/procfs.py on Linux and
psutil elsewhere): no per-process scan runs in the loop. What the sampler
costs the host it measures is measured beside collectd by
tests/benchmarks/host_bench.py.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil

from collectors.common import (
    CapWatch, Clock, CollectorMetrics, CommonConfig, Heartbeater, start_cli, start_minute_store,
)
from collectors.config import CliOptions, ConfigError, default_host, option, require
from collectors.journal import MinuteStore, decode_rows, encode_record
from include.kafka import HOST_METRICS
from include.contract import INTERNAL, check_writer, minute_key, timestamp_text
from include.schemas import HOST, HOST_SCHEMA
from include.spool import canonical_file, manifest_entry

log = logging.getLogger(__name__)

_INT_COLUMNS = frozenset(c.name for c in HOST_SCHEMA.columns if c.kind == "int")


@dataclass(frozen=True)
class HostConfig(CommonConfig, CliOptions):
    prog = "collectors.host"

    host: str = option(default_host(), "Host name for the host column and the file name.")
    kafka_bootstrap: str = option("", "Kafka bootstrap servers; when set every row is also published to sluice.host.metrics.")
    kafka_linger: float = option(5.0, "Seconds rows may wait to share one Kafka request (a row a second: five rows a request, a fifth less CPU than one each; 0: send each at once).")
    metrics_port: int = option(9108, "Port of the Prometheus /metrics endpoint (0: any free port, -1: off).")

    collector = "host"

    def validate(self) -> None:
        self.validate_common()
        try:
            check_writer(self.host)
        except ValueError as exc:
            raise ConfigError(f"--host / SLUICE_HOST: {exc}") from None
        require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1..65535")
        require(0 <= self.kafka_linger <= 60, "kafka_linger", "must be 0..60 seconds")
        self.validate_kafka()  # last: the other options' errors come first


def sample_row(host: str, second: int) -> list[str]:
    """One CSV row (HOST_SCHEMA order) of system-wide counters for ``second`` (epoch seconds), by psutil.

    The portable way; on Linux the sampler reads the same counters from /proc
    itself, four times cheaper (collectors/procfs.py).
    """
    cpu = psutil.cpu_stats()
    mem = psutil.virtual_memory()
    swap = psutil.swap_memory()
    load = os.getloadavg()
    disk = psutil.disk_io_counters(perdisk=False)
    net = psutil.net_io_counters(pernic=False)
    row = [
        timestamp_text(second), host, str(psutil.cpu_percent(interval=None)),
        str(cpu.ctx_switches), str(cpu.interrupts), str(cpu.soft_interrupts), str(cpu.syscalls),
        str(mem.total), str(mem.available), str(mem.percent), str(mem.used), str(mem.free),
        f"{load[0]:.2f}", f"{load[1]:.2f}", f"{load[2]:.2f}",
        str(swap.total), str(swap.used), str(swap.percent),
    ]
    row += [str(v) for v in (disk.read_bytes, disk.write_bytes, disk.read_count, disk.write_count)] if disk else [""] * 4
    row += [str(v) for v in (net.bytes_sent, net.bytes_recv, net.packets_sent, net.packets_recv,
                             net.errin, net.errout, net.dropin, net.dropout)] if net else [""] * 8
    return row


def host_splitter(host: str):
    """The splitter of the host sampler: a minute's journal -> the host's file, then the manifest.

    Total: a journal record that is not a host row is logged and left out
    (the host sampler writes its own rows; such a record is a torn line).
    """
    width = len(HOST_SCHEMA.names)

    def split(minute: int, streams: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
        rows, bad = decode_rows(streams.get(HOST, b""), width)
        for lineno, reason, _raw in bad:
            log.warning("host journal of minute %d, line %d left out: %s", minute, lineno, reason)
        if not rows:
            return []
        key = minute_key(HOST, datetime.fromtimestamp(minute, timezone.utc), host)
        body, per_host = canonical_file(HOST_SCHEMA, rows)
        return [(key, HOST, body),
                manifest_entry(HOST, host, minute, key, HOST, received_is_rows=True,
                               deadletters={INTERNAL: len(bad)} if bad else None, rows=dict(per_host))]

    return split


class HostSampler:
    """Samples once a second and lands one file per minute.

    Build with injected pieces (``landing``, ``clock``, ``producer``) and call
    :meth:`run` with a stop event; the constructor does no I/O.
    """

    def __init__(self, config: HostConfig, *, landing=None, clock: Clock | None = None, producer=None,
                 sample=None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._landing = landing
        self._producer = producer
        self._owns_producer = False
        self._sample = sample
        self.metrics: CollectorMetrics | None = None
        self.store: MinuteStore | None = None
        self.metrics_port = -1
        self.samples = 0
        self.heartbeat: Heartbeater | None = None
        self._caps = CapWatch()
        self._topic_ready = False
        self._stopping = threading.Event()
        self._last_tick = 0.0

    def _start(self) -> None:
        c = self.config
        self.store, self.metrics, self.metrics_port = start_minute_store(
            c, "host", host_splitter(c.host), landing=self._landing, clock=self.clock
        )
        if self._producer is None and c.kafka_bootstrap:
            from confluent_kafka import Producer

            from include.kafka import producer_config

            # No topic check here: Kafka may be down, and sampling must start anyway.
            settings = {**c.kafka_settings(), "linger.ms": int(c.kafka_linger * 1000)}
            self._producer = Producer(producer_config(c.kafka_bootstrap, client_id=f"sluice-host-{c.host}",
                                                      message_timeout_s=max(c.kafka_message_timeout, c.kafka_linger + 1),
                                                      **settings))
            self._owns_producer = True
            # Off the sampling thread: an unreachable Kafka must not delay a single sample.
            threading.Thread(target=self._ensure_topic, name="kafka-topic", daemon=True).start()
        else:
            self._topic_ready = True  # an injected producer: the caller made the topic
        recovered = self.store.start()
        if recovered:
            log.info("spooled %d file(s) journalled by a previous run", recovered)
        health = self.metrics.health
        health.watch("lander", self.store.thread)
        self._last_tick = self.clock.monotonic()
        health.add_check("sampling", self._sampling_stalled)
        health.add_check("caps", self._over_cap)
        if c.heartbeat_interval > 0:
            self.heartbeat = Heartbeater(self.store.lander.landing, HOST, c.host, c.heartbeat_interval,
                                         self.clock, self.metrics)
            self.heartbeat.start()
            health.watch("heartbeat", self.heartbeat.thread)
        if self._sample is None:
            from collectors import procfs

            self._sample = procfs.ProcSampler() if procfs.available() else sample_row
        if self._sample is sample_row:
            psutil.cpu_percent(interval=None)  # the first call only sets the reference point

    def _sampling_stalled(self) -> str | None:
        idle = self.clock.monotonic() - self._last_tick
        limit = self.config.health_idle_after
        return f"no sample for {idle:.0f} s (limit {limit:g} s)" if idle > limit else None

    def _over_cap(self) -> str | None:
        c, store = self.config, self.store
        reasons = [self._caps.check("journal", store.journal.size(), c.journal_max_bytes),
                   self._caps.check("spool", store.spool.size(), c.spool_max_bytes)]
        return "; ".join(r for r in reasons if r) or None

    def run(self, stop: threading.Event) -> None:
        """Sample until ``stop`` is set; then flush the partial minute and land what can land."""
        self._start()
        try:
            self._loop(stop)
        finally:
            self._stop()

    def _loop(self, stop: threading.Event) -> None:
        clock, store, metrics = self.clock, self.store, self.metrics
        wall = clock.time()
        second = math.floor(wall) + 1
        deadline = clock.monotonic() + (second - wall)
        while not clock.wait(stop, deadline - clock.monotonic()):
            late = clock.monotonic() - deadline
            if late >= 1.0:
                # Skip the seconds we slept through instead of sampling them in a burst.
                missed = int(late)
                metrics.skipped_ticks.inc(missed)
                log.warning("woke %.1f s late; skipping %d sample(s)", late, missed)
                deadline += missed
                second += missed
                store.close_minutes(second - second % 60)
            self._tick(second)
            second += 1
            deadline += 1.0
            if second % 60 == 0:
                # Once a minute, follow the wall clock if it was stepped or slewed
                # away from our monotonic schedule (NTP), by more than 50 ms.
                offset = clock.time() - clock.monotonic()
                drift = (second - offset) - deadline
                if abs(drift) > 0.05:
                    log.info("wall clock moved %.3f s against the monotonic clock; re-aligning", drift)
                    wall = clock.time()
                    second = math.floor(wall) + 1
                    deadline = clock.monotonic() + (second - wall)
                    store.close_minutes(second - second % 60)

    def _tick(self, second: int) -> None:
        row = self._sample(self.config.host, second)
        minute = second - second % 60
        self.store.append(HOST, minute, encode_record(row))
        self.store.flush()
        self.metrics.readings.inc()
        self.samples += 1
        self._last_tick = self.clock.monotonic()
        if self._producer is not None:
            try:
                self._publish(row)
            except Exception as exc:  # Kafka is best effort here: count it, keep sampling
                self.metrics.kafka_failed.inc()
                self.metrics.internal_errors.labels("host_kafka").inc()
                log.debug("host row not published: %s", exc)
        if (second + 1) % 60 == 0:  # the last second of the minute: the minute is complete
            self.store.close_minutes(minute + 60)
            self.metrics.last_flush.set(self.clock.time())
            self._over_cap()  # logs at 80% and at the cap

    def _ensure_topic(self) -> None:
        """Thread body: make the topic once Kafka answers (rows queue in librdkafka meanwhile)."""
        from include.kafka import ensure_topics

        while not self._stopping.is_set():
            try:
                ensure_topics(self.config.kafka_bootstrap, [HOST_METRICS], timeout_s=5,
                              settings=self.config.kafka_settings())
                self._topic_ready = True
                return
            except Exception as exc:  # still down: the files land regardless
                log.warning("Kafka topic %s not ensured yet (%s); trying again in 30 s", HOST_METRICS, exc)
            self._stopping.wait(30)

    def _publish(self, row: list[str]) -> None:
        import orjson

        doc = {}
        for name, value in zip(HOST_SCHEMA.names, row, strict=True):
            if value == "" or name in ("timestamp", "host"):
                doc[name] = value or None
            else:
                doc[name] = int(value) if name in _INT_COLUMNS else float(value)
        try:
            self._producer.produce(HOST_METRICS, key=self.config.host.encode(), value=orjson.dumps(doc),
                                   on_delivery=self._delivered)
        except BufferError:
            self.metrics.kafka_failed.inc()
        self._producer.poll(0)

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.metrics.kafka_delivered.inc()
        else:
            self.metrics.kafka_failed.inc()

    def _stop(self) -> None:
        c = self.config
        self._stopping.set()
        try:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            if self.store is not None:
                self.store.stop(c.shutdown_timeout)
                self.metrics.last_flush.set(self.clock.time())
        finally:
            if self._producer is not None:
                left = self._producer.flush(c.shutdown_timeout)
                if left:
                    log.warning("%d host row(s) not delivered to Kafka", left)
                if self._owns_producer:
                    self._producer = None  # let librdkafka close its connections (and retries) now
            if self.metrics is not None:
                self.metrics.close()


def main(argv: list[str] | None = None) -> int:
    config, stop = start_cli("collectors.host", HostConfig, argv)
    sampler = HostSampler(config)
    sampler.run(stop)
    log.info("host sampler stopped after %d samples", sampler.samples)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
