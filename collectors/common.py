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

from prometheus_client import CollectorRegistry, Counter, Gauge

from collectors.config import ConfigError, default_state_dir, describe, option, require
from include.landing import LandingZone, open_landing
from include.spool import LanderMetrics, Spool, SpoolEntry

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
class CommonConfig:
    """Options both collectors take. Subclasses add their own."""

    landing_url: str = option(DEFAULT_LANDING, "Landing zone: s3://bucket[/prefix] or file:///absolute/path.")
    state_dir: str = option("", "Folder for the journal and the spool (default: ~/.local/state/sluice/<collector>).")
    s3_endpoint_url: str = option("", "S3 endpoint for s3:// landing URLs, e.g. http://127.0.0.1:9000 for MinIO (empty: AWS).")
    s3_region: str = option("us-east-1", "S3 region.")
    s3_access_key: str = option("", "S3 access key id (else the AWS_* environment/boto3 chain).", secret=True)
    s3_secret_key: str = option("", "S3 secret access key (else the AWS_* environment/boto3 chain).", secret=True)
    kafka_message_timeout: float = option(30.0, "Seconds librdkafka tries to deliver a record before reporting failure.")
    metrics_addr: str = option("127.0.0.1", "Address the Prometheus /metrics endpoint listens on.")
    retry_initial: float = option(1.0, "Seconds before the first retry of a failed upload; doubles per failure.")
    retry_max: float = option(60.0, "Longest wait between upload retries, seconds.")
    shutdown_timeout: float = option(10.0, "Seconds to keep trying to land spooled files and deliver to Kafka on stop.")
    fsync_interval: float = option(1.0, "Seconds between fsyncs of the journal (0: fsync before every acknowledgement).")

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
        require(bool(self.s3_access_key) == bool(self.s3_secret_key), "s3_access_key",
                "give both the access key and the secret key, or neither")
        require(self.kafka_message_timeout > 0, "kafka_message_timeout", "must be > 0 seconds")
        require(0 < self.retry_initial <= self.retry_max, "retry_initial",
                f"need 0 < retry_initial ({self.retry_initial}) <= retry_max ({self.retry_max})")
        require(self.shutdown_timeout >= 0, "shutdown_timeout", "must be >= 0 seconds")
        require(self.fsync_interval >= 0, "fsync_interval", "must be >= 0 seconds")
        try:
            self.state_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{describe('state_dir')}: cannot create {self.state_path}: {exc.strerror}") from None


def open_store(config: CommonConfig) -> LandingZone:
    """The landing zone of ``config``; for s3:// a boto3 client that fails fast.

    One attempt per call and short timeouts: the Lander retries with backoff
    itself, and a collector must not hang on a store that is down.
    """
    if not config.landing_url.startswith("s3://"):
        return open_landing(config.landing_url)
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=config.s3_endpoint_url or None,
        region_name=config.s3_region,
        aws_access_key_id=config.s3_access_key or None,
        aws_secret_access_key=config.s3_secret_key or None,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=10),
    )
    return open_landing(config.landing_url, s3_client=client)


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
        threading.Thread(target=self._server.serve_forever, name="metrics-endpoint", daemon=True).start()
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class CollectorMetrics(LanderMetrics, MetricsEndpoint):
    """Prometheus self-metrics of a collector, in a registry of its own.

    Served over HTTP by :meth:`serve` (pull model: Prometheus scrapes, the
    collector never pushes).
    """

    def __init__(self, collector: str, spool: Spool, clock: Clock) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._spool = spool
        r = self.registry
        p = "sluice_collector_"
        self.readings = Counter(p + "readings_received", "Readings received (host samples or sensor readings).", registry=r)
        self.rows = Counter(p + "rows_written", "Rows landed in minute files (after merge).", registry=r)
        self.files = Counter(p + "files_landed", "Minute files landed in the landing zone.", registry=r)
        self.upload_failures = Counter(p + "upload_failures", "Failed attempts to land a file.", registry=r)
        self.deadletters = Counter(p + "deadletters", "Payloads dead-lettered, by reason code.", ["reason"], registry=r)
        self.last_flush = Gauge(p + "last_flush_timestamp_seconds", "Wall-clock time of the last minute flushed to the spool.", registry=r)
        self.skipped_ticks = Counter(p + "skipped_ticks", "Sampling ticks skipped because the loop ran late.", registry=r)
        self.kafka_delivered = Counter(p + "kafka_delivered", "Records Kafka confirmed.", registry=r)
        self.kafka_failed = Counter(p + "kafka_delivery_failures", "Records Kafka did not confirm in time.", registry=r)
        depth = Gauge(p + "spool_depth", "Files waiting in the spool.", registry=r)
        depth.set_function(spool.depth)
        age = Gauge(p + "spool_oldest_age_seconds", "Age of the oldest spooled file, seconds (0 when empty).", registry=r)
        age.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = self._spool.oldest()
        return max(0.0, self._clock.time() - oldest.created) if oldest else 0.0

    def landed(self, entry: SpoolEntry, rows: int) -> None:
        self.files.inc()
        self.rows.inc(rows)

    def failed(self, entry: SpoolEntry, exc: BaseException) -> None:
        self.upload_failures.inc()



def start_minute_store(config: CommonConfig, collector: str, splitter, *, landing=None, clock: Clock):
    """A collector's journal and spool (``MinuteStore``) and its /metrics endpoint.

    Built from the options every collector shares; ``landing`` defaults to the
    configured landing zone. Returns ``(store, metrics, metrics_port)``; the
    store is not started yet.
    """
    from collectors.journal import MinuteStore

    store = MinuteStore(
        config.state_path, landing if landing is not None else open_store(config), splitter,
        fsync_interval=config.fsync_interval, retry_initial=config.retry_initial, retry_max=config.retry_max,
        wall_clock=clock.time, wait=clock.wait,
    )
    metrics = CollectorMetrics(collector, store.spool, clock)
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
