"""Stream loader: Kafka -> OpenTSDB and Elasticsearch, continuously, at least once.

``python -m collectors.stream --help`` lists every option. The loader is the
role the opentsdb-rpc-kafka plugin plays in ``seeds/000``, for both sinks and
with the batch path's meaning: it joins the consumer group
``sluice-stream-loader``, reads ``sluice.sensors.raw`` (original MQTT payloads,
key = device, headers ``mqtt_topic`` and ``received_at``) and
``sluice.host.metrics`` (one JSON object per host CSV row, key = host), and
turns each record into documents with the batch path's own functions:

* a sensor payload goes through :func:`include.sensors.parse_payload` with the
  receive time of its ``received_at`` header (the Kafka timestamp when absent),
  each reading through :func:`include.sensors.csv_row` and
  :func:`include.transform.sensor_document`, so a reading gets the same
  document and id whether it arrives by file or by stream;
* a host object is turned back into its CSV row and goes through
  :func:`include.transform.host_document`.

Batches and commits. Records are gathered until ``batch_messages`` records or
``batch_wait`` seconds after the first one; the batch's documents are written
to every configured sink (``SLUICE_SINKS``) concurrently. Only when every sink
accepted the batch, and the dead-letter records of the batch were confirmed by
Kafka, are the offsets committed (synchronously, the next offset of each
partition). A crash anywhere before that replays the batch, which the
deterministic ids make harmless: Elasticsearch overwrites the same ``_id``,
OpenTSDB the same cell.

Dead letters. A record that cannot be decoded (not JSON, no valid reading,
no usable device key, a host row the schema refuses) and a record whose
documents a sink refused for good (a mapping conflict, a datapoint OpenTSDB
rejects) is produced unchanged to ``sluice.deadletter`` with headers
``reason``, ``reason_code``, ``stage`` (``decode`` or ``sink:<name>``),
``source_topic``, ``source_partition``, ``source_offset`` and the record's own
headers, and committed past: it never blocks its partition.

Sink outages. When a sink cannot be reached (or keeps answering 429/5xx), the
loader pauses every assigned partition, keeps the batch, and retries the sinks
that have not accepted it yet with exponential backoff (``retry_initial`` to
``retry_max`` seconds), polling Kafka meanwhile so it stays in the group. When
the sink accepts, consumption resumes where it paused; nothing is skipped.

Shutdown. SIGTERM/SIGINT stop taking records; the batch in hand is loaded and
committed (given up after ``shutdown_timeout`` seconds if a sink is down: it
is replayed at the next start), the dead-letter producer is flushed and the
consumer leaves the group. Self-metrics are served for Prometheus at
``metrics_addr:metrics_port``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collectors.common import Clock, MetricsEndpoint, start_cli
from collectors.config import CliOptions, option, require
from include import kafka as topics
from include.contract import ES_INDEX_PREFIX, ContractError, check_device
from include.pipeline import DEFAULT_SINKS, ELASTICSEARCH, KNOWN_SINKS, OPENTSDB
from include.schemas import HOST, HOST_SCHEMA, SENSOR, SENSOR_SCHEMA
from include.sensors import Limits, csv_row, parse_payload
from include.transform import TIME_FIELD, FileDocuments, document_id, host_document, sensor_document

log = logging.getLogger(__name__)

#: Header names the loader adds to a dead-lettered record.
HEADER_REASON_CODE = "reason_code"
HEADER_STAGE = "stage"
HEADER_SOURCE_TOPIC = "source_topic"
HEADER_SOURCE_PARTITION = "source_partition"
HEADER_SOURCE_OFFSET = "source_offset"
#: Longest reason text put in a header, characters.
REASON_MAX = 1000
_HOST_COLUMNS = frozenset(HOST_SCHEMA.names)
_SENSOR_NAMES = SENSOR_SCHEMA.names


@dataclass(frozen=True)
class StreamConfig(CliOptions):
    """Options of the stream loader (flags ``--name``, environment ``SLUICE_NAME``)."""

    prog = "collectors.stream"

    kafka_bootstrap: str = option("127.0.0.1:9092", "Kafka bootstrap servers.")
    kafka_group: str = option("sluice-stream-loader", "Consumer group; the lag DAG watches it.")
    kafka_instance_id: str = option("", "Static group membership id (group.instance.id): a restarted loader takes "
                                        "its partitions back at once instead of after the session timeout. Empty: dynamic.")
    kafka_session_timeout: float = option(10.0, "Seconds without heartbeat before the group gives a dead loader's partitions away.")
    sensor_topic: str = option(topics.SENSORS_RAW, "Topic of the original MQTT payloads (empty: not read).")
    host_topic: str = option(topics.HOST_METRICS, "Topic of the host rows as JSON (empty: not read).")
    deadletter_topic: str = option(topics.DEADLETTER, "Topic for records that cannot be decoded or that a sink refused.")
    sinks: tuple[str, ...] = option(DEFAULT_SINKS, "Comma-separated sinks to load: elasticsearch, opentsdb.")
    elasticsearch_url: str = option("http://127.0.0.1:9200", "Elasticsearch URL.")
    elasticsearch_username: str = option("", "Elasticsearch user (empty: no authentication).")
    elasticsearch_password: str = option("", "Elasticsearch password.", secret=True)
    es_index_prefix: str = option(ES_INDEX_PREFIX, "Prefix of the daily indices {prefix}-{source}-YYYY.MM.DD.")
    opentsdb_url: str = option("http://127.0.0.1:4242", "OpenTSDB URL.")
    opentsdb_username: str = option("", "OpenTSDB basic-auth user (empty: none).")
    opentsdb_password: str = option("", "OpenTSDB basic-auth password.", secret=True)
    opentsdb_batch_size: int = option(5000, "Datapoints per OpenTSDB /api/put request.")
    batch_messages: int = option(5000, "Most Kafka records in one batch.")
    batch_wait: float = option(0.2, "Seconds a batch waits for more records after its first one.")
    sink_timeout: float = option(15.0, "Seconds a sink request may take before it counts as an outage.")
    retry_initial: float = option(0.5, "Seconds before the first retry of a sink that is down; doubles per failure.")
    retry_max: float = option(30.0, "Longest wait between retries of a sink that is down, seconds.")
    shutdown_timeout: float = option(10.0, "Seconds to keep trying to load the last batch on stop.")
    max_payload_bytes: int = option(65536, "Larger payloads are dead-lettered (as the MQTT collector does).")
    max_readings: int = option(1000, "Payloads with more readings are dead-lettered.")
    max_timestamp_age: float = option(7 * 86400.0, "Readings older than this many seconds before their receive time are rejected.")
    max_timestamp_future: float = option(300.0, "Readings this many seconds after their receive time are rejected.")
    metrics_addr: str = option("127.0.0.1", "Address the Prometheus /metrics endpoint listens on.")
    metrics_port: int = option(9110, "Port of the Prometheus /metrics endpoint (0: any free port, -1: off).")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        require(bool(self.kafka_bootstrap), "kafka_bootstrap", "name at least one broker")
        require(bool(self.kafka_group), "kafka_group", "must not be empty")
        require(6.0 <= self.kafka_session_timeout <= 300.0, "kafka_session_timeout", "must be 6..300 seconds")
        require(bool(self.sensor_topic or self.host_topic), "sensor_topic", "give a sensor or a host topic (or both)")
        require(self.sensor_topic != self.host_topic, "host_topic", "must differ from the sensor topic")
        require(bool(self.deadletter_topic) and self.deadletter_topic not in (self.sensor_topic, self.host_topic),
                "deadletter_topic", "must be set and differ from the topics read")
        require(bool(self.sinks), "sinks", "name at least one sink")
        for name in self.sinks:
            require(name in KNOWN_SINKS, "sinks", f"{name!r} is not one of {', '.join(KNOWN_SINKS)}")
        for name in ("elasticsearch_url", "opentsdb_url"):
            require(getattr(self, name).startswith(("http://", "https://")), name, "must be an http(s):// URL")
        require(bool(self.es_index_prefix) and self.es_index_prefix == self.es_index_prefix.lower()
                and "*" not in self.es_index_prefix, "es_index_prefix", "must be a lower-case index name prefix")
        require(bool(self.elasticsearch_username) == bool(self.elasticsearch_password), "elasticsearch_username",
                "give both the user and the password, or neither")
        require(bool(self.opentsdb_username) == bool(self.opentsdb_password), "opentsdb_username",
                "give both the user and the password, or neither")
        require(self.opentsdb_batch_size >= 1, "opentsdb_batch_size", "must be >= 1")
        require(1 <= self.batch_messages <= 100_000, "batch_messages", "must be 1..100000")
        require(0 <= self.batch_wait <= 60, "batch_wait", "must be 0..60 seconds")
        require(self.sink_timeout > 0, "sink_timeout", "must be > 0 seconds")
        require(0 < self.retry_initial <= self.retry_max, "retry_initial",
                f"need 0 < retry_initial ({self.retry_initial}) <= retry_max ({self.retry_max})")
        require(self.shutdown_timeout >= 0, "shutdown_timeout", "must be >= 0 seconds")
        require(self.max_payload_bytes > 0 and self.max_readings > 0, "max_payload_bytes", "limits must be > 0")
        require(self.max_timestamp_age > 0 and self.max_timestamp_future >= 0, "max_timestamp_age",
                "age must be > 0 and future >= 0 seconds")
        require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1..65535")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_payload_bytes, self.max_readings, self.max_timestamp_age, self.max_timestamp_future)

    @property
    def topics(self) -> list[str]:
        return [t for t in (self.sensor_topic, self.host_topic) if t]


# --- decoding --------------------------------------------------------------------------------


class Undecodable(ValueError):
    """A record the loader cannot turn into documents; ``code`` is short and stable."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def received_time(headers: Sequence[tuple[str, bytes]] | None, kafka_timestamp_ms: int | None) -> float:
    """Receive time (epoch seconds) of a forwarded MQTT payload.

    The ``received_at`` header the MQTT collector set (ISO-8601 UTC, whole
    milliseconds), else the record's Kafka timestamp: both are fixed per
    record, so a replay decodes to the same readings.
    """
    for name, value in headers or ():
        if name == topics.HEADER_RECEIVED_AT and value:
            try:
                return datetime.fromisoformat(value.decode()).timestamp()
            except (UnicodeDecodeError, ValueError):
                break
    if kafka_timestamp_ms is not None and kafka_timestamp_ms > 0:
        return kafka_timestamp_ms / 1000.0
    raise Undecodable("no_receive_time", "record has neither a valid received_at header nor a Kafka timestamp")


def sensor_documents(key: bytes | None, value: bytes | None, received: float, limits: Limits) -> tuple[list[dict], Tally]:
    """Documents of one forwarded MQTT payload, and the reject codes of readings left out.

    Raises Undecodable when the key is no usable device id or no reading of
    the payload is valid (the reason is :attr:`include.sensors.Parsed.reason`).
    """
    try:
        device = check_device((key or b"").decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise Undecodable("bad_device", f"record key: {exc}") from None
    parsed = parse_payload(value or b"", received, limits)
    if not parsed.readings:
        code = parsed.rejects[0].code if parsed.rejects else "no_readings"
        raise Undecodable(code, parsed.reason or "no readings")
    docs = []
    for reading in parsed.readings:
        try:
            docs.append(sensor_document(dict(zip(_SENSOR_NAMES, csv_row(device, reading)))))
        except ContractError as exc:  # parse_payload's checks make this unreachable for its readings
            raise Undecodable("bad_row", str(exc)) from None
    return docs, Tally(r.code for r in parsed.rejects)


def host_row(value: bytes | None) -> tuple[dict[str, str], list[str]]:
    """The host CSV row (column -> text) and its columns of one ``sluice.host.metrics`` record.

    The host sampler publishes a row as a JSON object in HOST_SCHEMA order,
    numbers as numbers and missing values as null; the text is what the CSV
    holds (an empty field for null). Raises Undecodable.
    """
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise Undecodable("not_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Undecodable("wrong_type", f"host record is a JSON {type(obj).__name__}, not an object")
    row: dict[str, str] = {}
    for name, raw in obj.items():
        if name not in _HOST_COLUMNS:
            raise Undecodable("unknown_column", f"column {name} is not in the host schema")
        if raw is None:
            row[name] = ""
        elif isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise Undecodable("wrong_type", f"column {name}: {raw!r} is not a number or text")
        else:
            row[name] = raw if isinstance(raw, str) else repr(raw)
    columns = [n for n in HOST_SCHEMA.names if n in row]
    return row, columns


def host_documents(value: bytes | None) -> list[dict]:
    """The one document of a host record (:func:`include.transform.host_document`); raises Undecodable."""
    row, columns = host_row(value)
    try:
        return [host_document(row, columns)]
    except ContractError as exc:
        raise Undecodable("bad_row", str(exc)) from None


# --- sinks ----------------------------------------------------------------------------------


def build_sinks(config: StreamConfig) -> list:
    """The configured sinks, with short client time-outs: the loader retries outages itself."""
    from include.pipeline import ElasticsearchSink, OpenTSDBSink

    sinks = []
    for name in config.sinks:
        if name == ELASTICSEARCH:
            from include.elasticsearch import connect

            auth = (config.elasticsearch_username, config.elasticsearch_password) if config.elasticsearch_username else None
            client = connect(config.elasticsearch_url, basic_auth=auth, request_timeout=config.sink_timeout, max_retries=1)
            sinks.append(ElasticsearchSink(client, prefix=config.es_index_prefix, chunk_size=5000))
        elif name == OPENTSDB:
            from include.opentsdb import OpenTSDBClient

            auth = (config.opentsdb_username, config.opentsdb_password) if config.opentsdb_username else None
            client = OpenTSDBClient(config.opentsdb_url, batch_size=config.opentsdb_batch_size,
                                    sync_timeout=config.sink_timeout, timeout=config.sink_timeout,
                                    max_attempts=2, backoff=0.2, backoff_max=1.0, auth=auth)
            sinks.append(OpenTSDBSink(client))
    return sinks


# --- self-metrics ---------------------------------------------------------------------------


class StreamMetrics(MetricsEndpoint):
    """Prometheus self-metrics of the loader, in a registry of its own, served by :meth:`serve`."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = "sluice_stream_"
        self.records = Counter(p + "records_consumed", "Kafka records taken into batches, by topic.", ["topic"], registry=r)
        self.documents = Counter(p + "documents_decoded", "Documents decoded (one per reading or host row), by source.",
                                 ["source"], registry=r)
        self.loaded = Counter(p + "documents_loaded", "Documents a sink accepted, by sink.", ["sink"], registry=r)
        self.rejected_readings = Counter(p + "readings_rejected", "Invalid readings left out of payloads that had "
                                         "valid ones (the MQTT collector dead-letters them), by code.", ["code"], registry=r)
        self.deadletters = Counter(p + "deadletters", "Records sent to the dead-letter topic, by stage and code.",
                                   ["stage", "code"], registry=r)
        self.sink_failures = Counter(p + "sink_failures", "Failed attempts to load a batch, by sink.", ["sink"], registry=r)
        self.batches = Counter(p + "batches_committed", "Batches loaded and committed.", registry=r)
        self.commit_failures = Counter(p + "commit_failures", "Offset commits Kafka refused (the batch replays).", registry=r)
        self.paused = Gauge(p + "paused", "1 while consumption is paused for a sink outage.", registry=r)
        self.last_commit = Gauge(p + "last_commit_timestamp_seconds", "Wall-clock time of the last offset commit.", registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "Seconds from a batch's first record to its commit.",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.delay = Histogram(p + "delay_seconds", "Seconds from a record's receive time (received_at, else its "
                               "Kafka timestamp) to its batch's commit.",
                               buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=r)



# --- the loader -----------------------------------------------------------------------------


@dataclass
class DeadLetter:
    message: object
    stage: str
    code: str
    reason: str


@dataclass
class Batch:
    """Records taken from Kafka, decoded, waiting for the sinks."""

    messages: list = field(default_factory=list)
    #: source -> documents (deduplicated by id; the last record with an id wins).
    docs: dict[str, FileDocuments] = field(default_factory=dict)
    #: document id -> indexes into ``messages`` of the records that produced it.
    owners: dict[str, list[int]] = field(default_factory=dict)
    deadletters: list[DeadLetter] = field(default_factory=list)
    #: Sinks that accepted this batch already (a retry after an outage skips them).
    done: set[str] = field(default_factory=set)
    started: float = 0.0


class StreamLoader:
    """Consumes, decodes, loads, dead-letters, commits; see the module doc.

    The constructor does no I/O; ``consumer``, ``producer``, ``sinks`` and
    ``clock`` may be injected. :meth:`run` works until ``stop`` is set.
    """

    def __init__(self, config: StreamConfig, *, consumer=None, producer=None, sinks=None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.consumer = consumer
        self.producer = producer
        self.sinks = sinks
        self.metrics = StreamMetrics()
        self.metrics_port = -1
        self.limits = config.limits
        self.assigned = threading.Event()
        self.committed_batches = 0
        self._carry: list = []
        self._pool: ThreadPoolExecutor | None = None
        self._dl_errors: list[str] = []

    # -- life cycle ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            self._start()
            self._loop(stop)
        finally:
            self._stop()

    def _start(self) -> None:
        c = self.config
        self.metrics_port = self.metrics.serve(c.metrics_addr, c.metrics_port)
        if self.sinks is None:
            self.sinks = build_sinks(c)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sinks)), thread_name_prefix="sink")
        from confluent_kafka import Consumer, Producer

        from include.kafka import ensure_topics, producer_config

        try:
            ensure_topics(c.kafka_bootstrap, [*c.topics, c.deadletter_topic], timeout_s=10)
        except Exception as exc:  # Kafka down at start: the consumer waits for it
            log.warning("could not ensure Kafka topics (%s); consuming when they exist", exc)
        if self.producer is None:
            self.producer = Producer(producer_config(c.kafka_bootstrap, client_id=f"{c.kafka_group}-deadletter",
                                                     message_timeout_s=c.sink_timeout))
        if self.consumer is None:
            conf = {
                "bootstrap.servers": c.kafka_bootstrap,
                "group.id": c.kafka_group,
                "client.id": c.kafka_group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "session.timeout.ms": int(c.kafka_session_timeout * 1000),
                "heartbeat.interval.ms": max(1000, int(c.kafka_session_timeout * 1000) // 5),
                # A sink outage never holds poll(): the loop polls while paused.
                "max.poll.interval.ms": 300000,
                "log_level": 3,
            }
            if c.kafka_instance_id:
                conf["group.instance.id"] = c.kafka_instance_id
            self.consumer = Consumer(conf)
        self.consumer.subscribe(c.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("stream loader: group %s on %s -> %s (dead letters: %s)", c.kafka_group, ", ".join(c.topics),
                 ", ".join(s.name for s in self.sinks), c.deadletter_topic)

    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")
        self.assigned.set()

    def _on_revoke(self, consumer, partitions) -> None:
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")
        gone = {(p.topic, p.partition) for p in partitions}
        # Records not yet in a batch: the partition's next owner reads them from the committed offset.
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in gone]

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            batch = self._collect(stop)
            if batch.messages:
                self._deliver(batch, stop)

    def _stop(self) -> None:
        try:
            if self.producer is not None:
                left = self.producer.flush(self.config.shutdown_timeout)
                if left:
                    log.warning("%d dead-letter record(s) not confirmed at stop; their batch was not committed", left)
            if self.consumer is not None:
                self.consumer.close()  # leaves the group (a static member keeps its partitions until its session ends)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            for sink in self.sinks or ():
                close = getattr(getattr(sink, "client", None), "close", None)
                if close is not None:
                    close()
            self.metrics.close()

    # -- gathering -------------------------------------------------------------------------
    def _collect(self, stop: threading.Event) -> Batch:
        """Records until ``batch_messages`` or ``batch_wait`` seconds after the first one (or ``stop``)."""
        c = self.config
        messages, self._carry = self._carry[: c.batch_messages], self._carry[c.batch_messages:]
        deadline = self.clock.monotonic() + c.batch_wait if messages else None
        started = self.clock.monotonic()
        while len(messages) < c.batch_messages and not stop.is_set():
            timeout = 0.5 if deadline is None else deadline - self.clock.monotonic()
            if timeout <= 0:
                break
            if messages:
                # consume() returns when it has them all or at the time-out: the batch's deadline.
                got = self.consumer.consume(num_messages=c.batch_messages - len(messages), timeout=min(timeout, 0.5))
            else:
                # poll() returns with the first record: the batch's clock starts when it arrives.
                first = self.consumer.poll(timeout)
                got = [first] if first is not None else []
            for msg in got:
                if msg.error():
                    self._consumer_error(msg.error())
                    continue
                messages.append(msg)
            if messages and deadline is None:
                started = self.clock.monotonic()
                deadline = started + c.batch_wait
        batch = Batch(messages=messages, started=started)
        self._decode(batch)
        return batch

    def _consumer_error(self, err) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._PARTITION_EOF:
            return
        log.warning("Kafka consumer: %s", err.str())

    def _decode(self, batch: Batch) -> None:
        c, metrics = self.config, self.metrics
        seen: dict[str, dict[str, int]] = {}  # source -> id -> position in its FileDocuments
        rejected: Tally = Tally()
        per_topic: Tally = Tally()
        for index, msg in enumerate(batch.messages):
            topic = msg.topic()
            per_topic[topic] += 1
            try:
                if topic == c.sensor_topic:
                    source = SENSOR
                    received = received_time(msg.headers(), msg.timestamp()[1])
                    docs, rejects = sensor_documents(msg.key(), msg.value(), received, self.limits)
                    rejected.update(rejects)
                elif topic == c.host_topic:
                    source = HOST
                    docs = host_documents(msg.value())
                else:
                    raise Undecodable("unknown_topic", f"topic {topic} is not one the loader reads")
            except Undecodable as exc:
                batch.deadletters.append(DeadLetter(msg, "decode", exc.code, exc.reason))
                continue
            out = batch.docs.get(source)
            if out is None:
                out = batch.docs[source] = FileDocuments(source)
                seen[source] = {}
            positions = seen[source]
            for doc in docs:
                doc_id = document_id(source, doc)
                encoded = orjson.dumps(doc)
                pos = positions.get(doc_id)
                if pos is None:
                    positions[doc_id] = len(out.ids)
                    out.ids.append(doc_id)
                    out.timestamps.append(doc[TIME_FIELD])
                    out.documents.append(encoded)
                else:  # the same reading twice (an MQTT redelivery): stored once, the later wins
                    out.documents[pos] = encoded
                batch.owners.setdefault(doc_id, []).append(index)
            out.rows_read += len(docs)
        for topic, n in per_topic.items():
            metrics.records.labels(topic).inc(n)
        for source, docs in batch.docs.items():
            metrics.documents.labels(source).inc(docs.rows_read)
        for code, n in rejected.items():
            metrics.rejected_readings.labels(code).inc(n)

    # -- loading and committing --------------------------------------------------------------
    def _deliver(self, batch: Batch, stop: threading.Event) -> bool:
        """Load ``batch`` into every sink, dead-letter, commit. False when given up at stop."""
        c = self.config
        delay = c.retry_initial
        paused = False
        stop_seen: float | None = None
        try:
            while True:
                problem = self._load(batch)
                if problem is None:
                    problem = self._send_deadletters(batch)
                if problem is None:
                    break
                if stop.is_set():
                    stop_seen = stop_seen if stop_seen is not None else self.clock.monotonic()
                    if self.clock.monotonic() - stop_seen >= c.shutdown_timeout:
                        log.warning("stopping with a batch of %d record(s) not loaded (%s); it is replayed at the "
                                    "next start", len(batch.messages), problem)
                        return False
                if not paused:
                    paused = True
                    self._pause()
                log.warning("%s; consumption paused, retrying in %.1f s", problem, delay)
                self._wait(stop if stop_seen is None else threading.Event(), delay)
                delay = min(delay * 2, c.retry_max)
        finally:
            if paused:
                self._resume()
        self._commit(batch)
        return True

    def _load(self, batch: Batch) -> str | None:
        """Load into each sink that has not accepted the batch yet; a description of what failed, or None."""
        pending = [s for s in self.sinks if s.name not in batch.done]
        if not pending or not batch.docs:
            return None
        futures = {s.name: self._pool.submit(self._load_one, s, batch) for s in pending}
        problems = []
        for name, future in futures.items():
            try:
                refused = future.result()
            except Exception as exc:  # every sink error is an outage to wait out: nothing is dropped
                self.metrics.sink_failures.labels(name).inc()
                level = logging.ERROR if "Auth" in type(exc).__name__ else logging.DEBUG
                log.log(level, "%s load failed", name, exc_info=True)
                problems.append(f"{name} unavailable ({type(exc).__name__}: {str(exc)[:300]})")
                continue
            batch.done.add(name)
            accepted = sum(len(d.ids) for d in batch.docs.values()) - len(refused)
            self.metrics.loaded.labels(name).inc(accepted)
            for doc_id, reason in refused.items():
                for index in batch.owners.get(doc_id, ()):
                    batch.deadletters.append(DeadLetter(batch.messages[index], f"sink:{name}", "refused", reason))
        return "; ".join(problems) or None

    @staticmethod
    def _load_one(sink, batch: Batch) -> dict[str, str]:
        refused: dict[str, str] = {}
        for source, docs in batch.docs.items():
            for result in sink.load(source, [("stream", docs)]).values():
                refused.update(result.failed)
        return refused

    def _send_deadletters(self, batch: Batch) -> str | None:
        """Produce the batch's dead letters and wait for Kafka; a description of what failed, or None."""
        if not batch.deadletters:
            return None
        c = self.config
        # One record per (record, stage): a record two sinks refused is dead-lettered twice, once per sink.
        unique = {(id(d.message), d.stage): d for d in batch.deadletters}
        errors: list[str] = []
        for dl in unique.values():
            msg = dl.message
            headers = [(k, v) for k, v in (msg.headers() or []) if k not in _OWN_HEADERS]
            headers += [
                (topics.HEADER_REASON, dl.reason[:REASON_MAX].encode()),
                (HEADER_REASON_CODE, dl.code.encode()),
                (HEADER_STAGE, dl.stage.encode()),
                (HEADER_SOURCE_TOPIC, msg.topic().encode()),
                (HEADER_SOURCE_PARTITION, str(msg.partition()).encode()),
                (HEADER_SOURCE_OFFSET, str(msg.offset()).encode()),
            ]
            while True:
                try:
                    self.producer.produce(c.deadletter_topic, key=msg.key(), value=msg.value(), headers=headers,
                                          on_delivery=lambda err, m: errors.append(err.str()) if err else None)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        left = self.producer.flush(c.sink_timeout)
        if left or errors:
            if left:
                self.producer.purge(in_queue=True, in_flight=True)
                self.producer.poll(0)
            return f"dead-letter topic {c.deadletter_topic} unavailable ({left + len(errors)} record(s) not confirmed)"
        for dl in unique.values():
            self.metrics.deadletters.labels(dl.stage, dl.code).inc()
            log.warning("dead-lettered %s[%d]@%d (%s): %s", dl.message.topic(), dl.message.partition(),
                        dl.message.offset(), dl.stage, dl.reason[:200])
        batch.deadletters.clear()
        return None

    def _commit(self, batch: Batch) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for msg in batch.messages:
            key = (msg.topic(), msg.partition())
            last[key] = max(last.get(key, -1), msg.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False)
            failed = [tp for tp in result or () if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
        except KafkaException as exc:
            # The batch is in the sinks; its records replay after a rebalance, which the ids make harmless.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); the batch may be loaded again", exc)
            return
        now = self.clock.time()
        m = self.metrics
        m.batches.inc()
        m.last_commit.set(now)
        m.batch_seconds.observe(max(0.0, self.clock.monotonic() - batch.started))
        for msg in batch.messages:
            ts_type, ts = msg.timestamp()
            try:
                received = received_time(msg.headers(), ts if ts_type else None)
            except Undecodable:
                continue
            m.delay.observe(max(0.0, now - received))
        self.committed_batches += 1

    # -- pausing ---------------------------------------------------------------------------
    def _pause(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        self.metrics.paused.set(1)

    def _resume(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self.metrics.paused.set(0)
        log.info("sinks accept again; consumption resumed")

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` (cut short by ``stop``), polling Kafka so the group keeps us.

        Records a paused consumer still hands out (fetched before the pause,
        or of partitions assigned meanwhile) are kept, in order, for the next batch.
        """
        end = self.clock.monotonic() + seconds
        while not stop.is_set():
            left = end - self.clock.monotonic()
            if left <= 0:
                return
            for msg in self.consumer.consume(num_messages=1000, timeout=min(left, 0.2)):
                if msg.error():
                    self._consumer_error(msg.error())
                else:
                    self._carry.append(msg)
            if self._carry:
                # Newly assigned partitions are not paused yet.
                self._pause()


_OWN_HEADERS = frozenset({topics.HEADER_REASON, HEADER_REASON_CODE, HEADER_STAGE, HEADER_SOURCE_TOPIC,
                          HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET})


def main(argv: list[str] | None = None) -> int:
    config, stop = start_cli("collectors.stream", StreamConfig, argv)
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one INFO line per request otherwise
    loader = StreamLoader(config)
    started = time.monotonic()
    loader.run(stop)
    log.info("stream loader stopped after %d committed batch(es) in %.0f s", loader.committed_batches,
             time.monotonic() - started)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
