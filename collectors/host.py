"""Host sampler: psutil once a second, one CSV file per minute in the landing zone.

``python -m collectors.host --help`` lists every option. The sampler wakes on
a deadline of a monotonic clock aligned to wall-clock seconds, so it does not
drift over hours; when it wakes more than a second late (a suspended VM, a
stalled disk) the missed seconds are skipped and counted, never sampled in a
burst. Each row is journalled at once (see collectors/journal.py); when the
last second of a minute is sampled the minute is spooled and lands in the
background at ``raw/host/date=…/hour=…/minute=…/{host}.csv``, merged with any
file a previous run left for that minute. Optionally each row is also
published to Kafka ``sluice.host.metrics`` as JSON (best effort: librdkafka
buffers through short outages, the landing zone is the record).

Only system-wide counters are read (``/proc/stat``, ``/proc/meminfo``,
``/proc/diskstats``, ``/proc/net/dev``): no per-process scan runs in the loop.
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
    Clock, CollectorMetrics, CommonConfig, start_cli, start_minute_store,
)
from collectors.config import CliOptions, ConfigError, default_host, option, require
from collectors.journal import MinuteStore
from include.kafka import HOST_METRICS
from include.contract import check_writer, minute_key, timestamp_text
from include.schemas import HOST, HOST_SCHEMA

log = logging.getLogger(__name__)

_INT_COLUMNS = frozenset(c.name for c in HOST_SCHEMA.columns if c.kind == "int")


@dataclass(frozen=True)
class HostConfig(CommonConfig, CliOptions):
    prog = "collectors.host"

    host: str = option(default_host(), "Host name for the host column and the file name.")
    kafka_bootstrap: str = option("", "Kafka bootstrap servers; when set every row is also published to sluice.host.metrics.")
    metrics_port: int = option(9108, "Port of the Prometheus /metrics endpoint (0: any free port, -1: off).")

    collector = "host"

    def validate(self) -> None:
        self.validate_common()
        try:
            check_writer(self.host)
        except ValueError as exc:
            raise ConfigError(f"--host / SLUICE_HOST: {exc}") from None
        require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1..65535")


def sample_row(host: str, second: int) -> list[str]:
    """One CSV row (HOST_SCHEMA order) of system-wide counters for ``second`` (epoch seconds)."""
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
    header = (",".join(HOST_SCHEMA.names) + "\n").encode()

    def split(stream: str, minute: int, data: bytes) -> list[tuple[str, str, bytes]]:
        if not data.strip():
            return []
        key = minute_key(HOST, datetime.fromtimestamp(minute, timezone.utc), host)
        return [(key, HOST, header + data)]

    return split


class HostSampler:
    """Samples once a second and lands one file per minute.

    Build with injected pieces (``landing``, ``clock``, ``producer``) and call
    :meth:`run` with a stop event; the constructor does no I/O.
    """

    def __init__(self, config: HostConfig, *, landing=None, clock: Clock | None = None, producer=None,
                 sample=sample_row) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._landing = landing
        self._producer = producer
        self._sample = sample
        self.metrics: CollectorMetrics | None = None
        self.store: MinuteStore | None = None
        self.metrics_port = -1
        self.samples = 0

    def _start(self) -> None:
        c = self.config
        self.store, self.metrics, self.metrics_port = start_minute_store(
            c, "host", host_splitter(c.host), landing=self._landing, clock=self.clock
        )
        if self._producer is None and c.kafka_bootstrap:
            from confluent_kafka import Producer

            from include.kafka import ensure_topics, producer_config

            ensure_topics(c.kafka_bootstrap, [HOST_METRICS])
            self._producer = Producer(producer_config(c.kafka_bootstrap, client_id=f"sluice-host-{c.host}",
                                                      message_timeout_s=c.kafka_message_timeout))
        recovered = self.store.start()
        if recovered:
            log.info("spooled %d file(s) journalled by a previous run", recovered)
        psutil.cpu_percent(interval=None)  # the first call only sets the reference point

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
        self.store.append(HOST, minute, (",".join(row) + "\n").encode())
        self.store.flush()
        self.metrics.readings.inc()
        self.samples += 1
        if self._producer is not None:
            self._publish(row)
        if (second + 1) % 60 == 0:  # the last second of the minute: the minute is complete
            self.store.close_minutes(minute + 60)
            self.metrics.last_flush.set(self.clock.time())

    def _publish(self, row: list[str]) -> None:
        import orjson

        doc = {}
        for name, value in zip(HOST_SCHEMA.names, row):
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
        try:
            if self.store is not None:
                self.store.stop(c.shutdown_timeout)
                self.metrics.last_flush.set(self.clock.time())
        finally:
            if self._producer is not None:
                left = self._producer.flush(c.shutdown_timeout)
                if left:
                    log.warning("%d host row(s) not delivered to Kafka", left)
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
