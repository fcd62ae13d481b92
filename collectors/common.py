"""What both collectors share: options, clocks, self-metrics, the landing store.

The pieces a collector is built from are injected so tests need no patching:
a :class:`Clock` (``ScaledClock`` runs minutes in seconds), the landing zone
(``open_store``), a Prometheus registry of its own (no module-level state).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from collectors.config import ConfigError, KafkaClientOptions, default_state_dir, describe, option, require
from include.landing import LandingZone, MinioLanding, open_landing, s3_location
from include.spool import LanderMetrics, SpoolEntry

if TYPE_CHECKING:
    from collectors.journal import MinuteStore

log = logging.getLogger(__name__)

DEFAULT_LANDING = "file:///var/tmp/sluice/landing"


class Clock:
    """Wall-clock and monotonic time in seconds, and a wait that an event cuts short."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` (clock seconds); True when ``event`` was set."""
        return event.wait(max(0.0, seconds))


class ScaledClock(Clock):
    """A clock running ``factor`` times faster than real time, for tests and demos.

    ``start`` is the wall-clock time (epoch seconds) the clock shows when
    created; waits last ``seconds / factor`` real seconds.
    """

    def __init__(self, factor: float, start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"clock factor must be > 0, got {factor}")
        self.factor = factor
        self._real0 = time.monotonic()
        self._start = time.time() if start is None else start

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self.factor

    def time(self) -> float:
        return self._start + self.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.factor)


@dataclass(frozen=True)
class CommonConfig(KafkaClientOptions):
    """Options both collectors take (the Kafka login among them). Subclasses add their own."""

    landing_url: str = option(DEFAULT_LANDING, "Landing zone: s3://bucket[/prefix] or file:///absolute/path.")
    state_dir: str = option("", "Folder for the journal and the spool (default: ~/.local/state/sluice/<collector>).")
    s3_endpoint_url: str = option("", "S3 endpoint for s3:// landing URLs, e.g. https://127.0.0.1:9000 for the local stack's MinIO (with --s3-ca-bundle; empty: AWS).")
    s3_region: str = option("us-east-1", "S3 region.")
    s3_access_key: str = option("", "S3 access key id (else the AWS chain: AWS_* variables, the AWS files, the instance role).", secret=True)
    s3_secret_key: str = option("", "S3 secret access key (else the AWS chain).", secret=True)
    s3_ca_bundle: str = option("", "CA certificate (PEM) the S3 endpoint's TLS certificate is verified with, e.g. the local stack's runtime/tls/ca.crt (empty: the system's trust store).")
    kafka_message_timeout: float = option(30.0, "Seconds librdkafka tries to deliver a record before reporting failure.")
    metrics_addr: str = option("127.0.0.1", "Address the Prometheus /metrics endpoint listens on.")
    retry_initial: float = option(1.0, "Seconds before the first retry of a failed upload; doubles per failure.")
    retry_max: float = option(60.0, "Longest wait between upload retries, seconds.")
    shutdown_timeout: float = option(10.0, "Seconds to keep trying to land spooled files and deliver to Kafka on stop.")
    fsync_interval: float = option(1.0, "Seconds between fsyncs of the journal (0: fsync before every acknowledgement).")
    journal_max_bytes: int = option(512 * 2**20, "Byte cap of the journal of open minutes (0: none); a warning at four fifths, backpressure at the cap.")
    spool_max_bytes: int = option(2 * 2**30, "Byte cap of the spool of files waiting to land (0: none); a warning at four fifths, backpressure at the cap.")
    heartbeat_interval: float = option(10.0, "Seconds between heartbeats written to heartbeats/<source>/<writer>.json (0: none).")
    health_idle_after: float = option(60.0, "Seconds traffic may go unhandled before /healthz answers 503.")

    collector = "collector"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir(self.collector)

    def validate_common(self) -> None:
        scheme = self.landing_url.split("://", 1)[0] if "://" in self.landing_url else ""
        require(scheme in ("s3", "file"), "landing_url", f"{self.landing_url!r} must start with s3:// or file://")
        if scheme == "file":
            require(self.landing_url.startswith("file:///"), "landing_url", "file URLs take an absolute path: file:///path")
        else:
            require(len(self.landing_url) > len("s3://"), "landing_url", "names no bucket; use s3://bucket[/prefix]")
        if self.s3_endpoint_url:
            require(self.s3_endpoint_url.startswith(("http://", "https://")), "s3_endpoint_url", "must be an http(s):// URL")
        if self.s3_ca_bundle:
            require(Path(self.s3_ca_bundle).is_file(), "s3_ca_bundle", f"{self.s3_ca_bundle} is not a readable file")
        require(bool(self.s3_access_key) == bool(self.s3_secret_key), "s3_access_key",
                "give both the access key and the secret key, or neither")
        require(self.kafka_message_timeout > 0, "kafka_message_timeout", "must be > 0 seconds")
        require(0 < self.retry_initial <= self.retry_max, "retry_initial",
                f"need 0 < retry_initial ({self.retry_initial}) <= retry_max ({self.retry_max})")
        require(self.shutdown_timeout >= 0, "shutdown_timeout", "must be >= 0 seconds")
        require(self.fsync_interval >= 0, "fsync_interval", "must be >= 0 seconds")
        require(self.journal_max_bytes >= 0, "journal_max_bytes", "must be >= 0 bytes (0: no cap)")
        require(self.spool_max_bytes >= 0, "spool_max_bytes", "must be >= 0 bytes (0: no cap)")
        require(self.heartbeat_interval >= 0, "heartbeat_interval", "must be >= 0 seconds (0: no heartbeat)")
        require(self.health_idle_after > 0, "health_idle_after", "must be > 0 seconds")
        try:
            self.state_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{describe('state_dir')}: cannot create {self.state_path}: {exc.strerror}") from None


def open_store(config: CommonConfig) -> LandingZone:
    """The landing zone of ``config``; for s3:// the MinIO client (light; see include/landing.py), failing fast.

    One attempt per call and short timeouts: the Lander retries with backoff
    itself, and a collector must not hang on a store that is down. Without
    keys the usual AWS chain applies (``AWS_*`` variables, the AWS files, the
    instance role).
    """
    if not config.landing_url.startswith("s3://"):
        return open_landing(config.landing_url)
    from urllib.parse import urlparse

    import certifi
    import urllib3
    from minio import Minio
    from minio.credentials import AWSConfigProvider, ChainedProvider, EnvAWSProvider, IamAwsProvider

    endpoint = urlparse(config.s3_endpoint_url or "https://s3.amazonaws.com")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False, maxsize=4,
                               cert_reqs="CERT_REQUIRED", ca_certs=config.s3_ca_bundle or certifi.where())
    keys = ({"access_key": config.s3_access_key, "secret_key": config.s3_secret_key} if config.s3_access_key
            else {"credentials": ChainedProvider([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider()])})
    client = Minio(endpoint.netloc, secure=endpoint.scheme == "https", region=config.s3_region, http_client=http, **keys)
    try:
        bucket, prefix = s3_location(config.landing_url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return MinioLanding(client, bucket, prefix)


class MetricsEndpoint:
    """The HTTP endpoint of one Prometheus registry (``self.registry``): ``/metrics`` and ``/healthz``.

    ``/healthz`` answers 200 ``ok`` or 503 with the reasons of ``self.health``
    (:class:`collectors.health.Health`); without one it answers 200 while the
    endpoint runs.
    """

    registry = None
    health = None
    _server = None

    def serve(self, addr: str, port: int) -> int:
        """Start the endpoint; return the port (``port`` 0 picks a free one, -1 serves nothing)."""
        if port < 0:
            return -1
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(endpoint.registry)
                elif path == "/healthz":
                    verdict = endpoint.health.check() if endpoint.health is not None else None
                    ok = verdict is None or verdict.healthy
                    status, ctype = (200 if ok else 503), "text/plain; charset=utf-8"
                    body = (verdict.text() if verdict is not None else "ok\n").encode()
                else:
                    status, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:  # scrapes every few seconds: keep the log quiet
                pass

        self._server = ThreadingHTTPServer((addr, port), Handler)
        self._server.daemon_threads = True
        # serve_forever wakes every poll_interval to look for shutdown(); its default (0.5 s) cost an
        # idle host sampler a fifth of its CPU. A request wakes it at once, so close() makes one.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 3600}, name="metrics-endpoint",
                         daemon=True).start()
        return self._server.server_port

    def close(self) -> None:
        if self._server is None:
            return
        import socket

        server, self._server = self._server, None
        stopper = threading.Thread(target=server.shutdown, name="metrics-endpoint-stop", daemon=True)
        stopper.start()
        while stopper.is_alive():  # until the loop has seen the request flag
            try:
                with socket.create_connection(server.server_address[:2], timeout=1):
                    pass
            except OSError:
                pass
            stopper.join(0.05)
        server.server_close()


class CollectorMetrics(LanderMetrics, MetricsEndpoint):
    """Prometheus self-metrics of a collector, in a registry of its own.

    Served over HTTP by :meth:`serve` (pull model: Prometheus scrapes, the
    collector never pushes), beside ``/healthz`` (``self.health``).
    """

    def __init__(self, collector: str, store: MinuteStore, clock: Clock) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._spool = spool = store.spool
        r = self.registry
        p = "sluice_collector_"
        self.readings = Counter(p + "readings_received", "Readings received (host samples or sensor readings).", registry=r)
        self.rows = Counter(p + "rows_written", "Rows landed in minute files (after merge).", registry=r)
        self.files = Counter(p + "files_landed", "Minute files landed in the landing zone.", registry=r)
        self.upload_failures = Counter(p + "upload_failures", "Failed attempts to land a file.", registry=r)
        self.deadletters = Counter(p + "deadletters", "Payloads dead-lettered, by reason code.", ["reason"], registry=r)
        self.internal_errors = Counter(p + "internal_errors", "Unexpected exceptions caught at a boundary, by boundary.",
                                       ["boundary"], registry=r)
        self.quarantined_entries = Counter(p + "spool_quarantined", "Spool entries that can never land, set aside.", registry=r)
        self.last_flush = Gauge(p + "last_flush_timestamp_seconds", "Wall-clock time of the last minute flushed to the spool.", registry=r)
        self.skipped_ticks = Counter(p + "skipped_ticks", "Sampling ticks skipped because the loop ran late.", registry=r)
        self.kafka_delivered = Counter(p + "kafka_delivered", "Records Kafka confirmed.", registry=r)
        self.kafka_failed = Counter(p + "kafka_delivery_failures", "Records Kafka did not confirm in time.", registry=r)
        self.kafka_quarantined = Counter(p + "kafka_quarantined", "Records Kafka can never take (too large, invalid), set aside.", registry=r)
        self.heartbeat_failures = Counter(p + "heartbeat_failures", "Heartbeats the landing zone refused.", registry=r)
        self.backpressure = Gauge(p + "backpressure", "1 while a byte cap is reached and MQTT acknowledgements are held.", registry=r)
        depth = Gauge(p + "spool_depth", "Files waiting in the spool.", registry=r)
        depth.set_function(spool.depth)
        age = Gauge(p + "spool_oldest_age_seconds", "Age of the oldest spooled file, seconds (0 when empty).", registry=r)
        age.set_function(self._oldest_age)
        Gauge(p + "spool_bytes", "Bytes waiting in the spool.", registry=r).set_function(spool.size)
        Gauge(p + "journal_bytes", "Bytes in the journal of open minutes.", registry=r).set_function(store.journal.size)
        Gauge(p + "spool_max_bytes", "Byte cap of the spool (0: none).", registry=r).set(store.spool_max_bytes)
        Gauge(p + "journal_max_bytes", "Byte cap of the journal (0: none).", registry=r).set(store.journal_max_bytes)
        self.health = None

    def _oldest_age(self) -> float:
        oldest = self._spool.oldest()
        return max(0.0, self._clock.time() - oldest.created) if oldest else 0.0

    def landed(self, entry: SpoolEntry, rows: int) -> None:
        self.files.inc()
        self.rows.inc(rows)

    def failed(self, entry: SpoolEntry, exc: BaseException) -> None:
        self.upload_failures.inc()

    def quarantined(self, entry: SpoolEntry, reason: str) -> None:
        self.quarantined_entries.inc()


class CapWatch:
    """Byte caps with a warning at 80% and a log line when a cap is reached or clears.

    ``check(name, size, cap)`` returns the reason when ``size`` reached
    ``cap`` (``cap`` 0: no cap). Logs only on a change of state, not per call.
    """

    WARN_AT = 0.8

    def __init__(self) -> None:
        self._state: dict[str, int] = {}

    def check(self, name: str, size: int, cap: int) -> str | None:
        if not cap:
            return None
        state = 2 if size >= cap else 1 if size >= self.WARN_AT * cap else 0
        before = self._state.get(name, 0)
        if state != before:
            self._state[name] = state
            if state == 2:
                log.error("%s holds %d bytes, its cap is %d: backpressure until it drains", name, size, cap)
            elif state == 1 and before == 0:
                log.warning("%s holds %d bytes, over %d%% of its cap %d", name, size, int(self.WARN_AT * 100), cap)
            elif before == 2:
                log.info("%s is below its cap again (%d of %d bytes)", name, size, cap)
        return f"{name} holds {size} bytes, cap {cap}" if state == 2 else None


class Heartbeater:
    """A thread writing the writer's :class:`include.manifests.Heartbeat` every ``interval`` seconds.

    A refused heartbeat is counted and logged once per outage; the thread
    never ends on an error (it is watched by the health endpoint).
    """

    def __init__(self, landing: LandingZone, source: str, writer: str, interval: float, clock: Clock,
                 metrics: CollectorMetrics) -> None:
        self.landing, self.source, self.writer, self.interval = landing, source, writer, interval
        self.clock, self.metrics = clock, metrics
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        from datetime import datetime, timezone

        from include.manifests import Heartbeat, write_heartbeat

        started = datetime.fromtimestamp(self.clock.time(), timezone.utc)
        failing = False
        while True:
            try:
                write_heartbeat(self.landing, Heartbeat(self.source, self.writer,
                                                        datetime.fromtimestamp(self.clock.time(), timezone.utc),
                                                        self.interval, started))
                self.beats += 1
                if failing:
                    log.info("heartbeats are written again")
                failing = False
            except Exception as exc:  # the store is down: the next beat tries again
                self.metrics.heartbeat_failures.inc()
                if not failing:
                    log.warning("heartbeat to %s failed: %s", self.landing.url, exc)
                failing = True
            if self.clock.wait(self._stop, self.interval):
                return


#: The broker's TLS port (MQTT over TLS, IANA); 1883 is plaintext.
MQTT_TLS_PORT = 8883


def secure_client(client, *, user: str, password: str, tls: bool, ca_file: str) -> None:
    """Give a paho client its login and, with ``tls``, TLS that verifies the broker.

    paho's ``tls_set`` requires the broker's certificate to chain to ``ca_file`` (the
    system's CAs when empty) and to name the host dialled; the password goes in the
    CONNECT packet, inside TLS. Shared by the MQTT collector and the sensor simulator.
    """
    if user:
        client.username_pw_set(user, password or None)
    if tls:
        client.tls_set(ca_certs=ca_file or None)


def start_minute_store(config: CommonConfig, collector: str, splitter, *, landing=None, clock: Clock, memo=None):
    """A collector's journal and spool (``MinuteStore``), its /metrics + /healthz endpoint and health.

    Built from the options every collector shares; ``landing`` defaults to the
    configured landing zone; ``memo`` is the collector's
    :class:`collectors.journal.MinuteMemo`, if it keeps one. Returns ``(store, metrics, metrics_port)``; the
    store is not started yet. ``metrics.health`` is the collector's
    :class:`collectors.health.Health` (the lander is watched once started).
    """
    from collectors.health import Health
    from collectors.journal import MinuteStore

    store = MinuteStore(
        config.state_path, landing if landing is not None else open_store(config), splitter,
        fsync_interval=config.fsync_interval, retry_initial=config.retry_initial, retry_max=config.retry_max,
        wall_clock=clock.time, wait=clock.wait,
        journal_max_bytes=config.journal_max_bytes, spool_max_bytes=config.spool_max_bytes, memo=memo,
    )
    metrics = CollectorMetrics(collector, store, clock)
    metrics.health = Health(idle_after_s=config.health_idle_after)
    store.lander.metrics = metrics
    return store, metrics, metrics.serve(config.metrics_addr, config.metrics_port)


def start_cli(prog: str, config_cls, argv: list[str] | None):
    """Everything a collector's ``main()`` does before running: (config, stop event).

    Parses and validates the configuration (bad options exit with a message
    naming the option), sets up logging and makes SIGTERM/SIGINT set ``stop``.
    """
    from collectors.config import ConfigError

    try:
        config = config_cls.from_args(argv)
    except ConfigError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    setup_logging(getattr(config, "_log_level", None))
    stop = threading.Event()
    install_signal_handlers(stop)
    return config, stop


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT only set ``stop``; the collector's loop does the rest."""

    def handler(signum, frame):
        log.info("received signal %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def setup_logging(level: str | None) -> None:
    import os

    logging.basicConfig(
        level=(level or os.environ.get("SLUICE_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
