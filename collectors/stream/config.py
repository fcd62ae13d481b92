"""Stream loader: Kafka -> OpenTSDB and Elasticsearch, continuously, at least once, in a group of any size.

The options of ``python -m collectors.stream`` (flags ``--name``, environment
``SLUICE_NAME``); :mod:`collectors.stream` describes what the loader does.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from collectors.config import CliOptions, KafkaClientOptions, option, require
from collectors.stream.decode import DecodeRules
from include import kafka as topics
from include.contract import (
    ES_INDEX_PREFIX,
    RECEIVED_AT_MAX_AHEAD_S,
    RECEIVED_AT_MAX_BEHIND_S,
    ContractError,
    check_index_prefix,
)
from include.sinks import DEFAULT_SINKS, KNOWN_SINKS
from include.sensors import Limits

#: librdkafka's assignors; cooperative-sticky moves only the partitions a rebalance must move.
ASSIGNORS = ("cooperative-sticky", "range", "roundrobin")


def default_instance_id() -> str:
    """``<host>-<pid>``: unique per loader on one machine, and stable across restarts of a container
    (its hostname is the container id and the loader is pid 1), which is what static membership wants."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class StreamConfig(KafkaClientOptions, CliOptions):
    """Options of the stream loader (flags ``--name``, environment ``SLUICE_NAME``)."""

    prog = "collectors.stream"

    kafka_bootstrap: str = option("127.0.0.1:9092", "Kafka bootstrap servers.")
    kafka_group: str = option(topics.STREAM_GROUP, "Consumer group; every loader of one pipeline joins it, the lag DAG watches it.")
    kafka_instance_id: str = option("", "Static group membership id (group.instance.id), unique per loader: a restarted loader "
                                        "takes its partitions back at once. Empty: <host>-<pid>.")
    kafka_session_timeout: float = option(10.0, "Seconds without heartbeat before the group gives a dead loader's partitions away.")
    kafka_assignor: str = option("cooperative-sticky", "Partition assignment strategy; every loader of a group must use the same.",
                                 choices=ASSIGNORS)
    sensor_topic: str = option(topics.SENSORS_RAW, "Topic of the original MQTT payloads (empty: not read).")
    host_topic: str = option(topics.HOST_METRICS, "Topic of the host rows as JSON (empty: not read).")
    deadletter_topic: str = option(topics.DEADLETTER, "Topic for records that cannot be decoded or that a sink refused.")
    sinks: tuple[str, ...] = option(DEFAULT_SINKS, "Comma-separated sinks to load: elasticsearch, opentsdb.")
    elasticsearch_url: str = option("https://127.0.0.1:9200", "Elasticsearch URL.")
    # Elasticsearch: an API key of the loader role (include/elasticsearch_security.py), never a user's password.
    elasticsearch_api_key: str = option("", "Elasticsearch API key, encoded (the value after 'Authorization: ApiKey'); "
                                            "empty: no authentication.", secret=True)
    elasticsearch_ca_certs: str = option("", "PEM file of the CA that signed Elasticsearch's certificate (empty: the system's).")
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
    health_idle_after: float = option(120.0, "Seconds fetched records may wait unhandled (neither committed nor dead-lettered) "
                                             "before /healthz answers 503; a sink down that long is named.")
    max_payload_bytes: int = option(65536, "Larger payloads are dead-lettered, metadata only (as the MQTT collector does).")
    max_readings: int = option(1000, "Payloads with more readings are dead-lettered.")
    max_timestamp_age: float = option(7 * 86400.0, "Readings older than this many seconds before their receive time are rejected.")
    max_timestamp_future: float = option(300.0, "Readings this many seconds after their receive time are rejected.")
    received_at_max_ahead: float = option(RECEIVED_AT_MAX_AHEAD_S, "Seconds a received_at header may be after the "
                                          "record's Kafka timestamp; beyond, the Kafka timestamp is used (and counted).")
    received_at_max_behind: float = option(RECEIVED_AT_MAX_BEHIND_S, "Seconds a received_at header may be before the "
                                           "record's Kafka timestamp (a collector's backlog produces late); beyond, "
                                           "the Kafka timestamp is used (and counted).")
    metrics_addr: str = option("127.0.0.1", "Address the /metrics and /healthz endpoint listens on.")
    metrics_port: int = option(9110, "Port of the /metrics and /healthz endpoint (0: any free port, -1: off).")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        require(bool(self.kafka_bootstrap), "kafka_bootstrap", "name at least one broker")
        require(bool(self.kafka_group), "kafka_group", "must not be empty")
        require(len(self.instance_id) <= 249 and self.instance_id.isprintable(), "kafka_instance_id",
                "must be printable and at most 249 characters")
        require(6.0 <= self.kafka_session_timeout <= 300.0, "kafka_session_timeout", "must be 6..300 seconds")
        require(self.kafka_assignor in ASSIGNORS, "kafka_assignor", f"must be one of {', '.join(ASSIGNORS)}")
        require(bool(self.sensor_topic or self.host_topic), "sensor_topic", "give a sensor or a host topic (or both)")
        require(self.sensor_topic != self.host_topic, "host_topic", "must differ from the sensor topic")
        require(bool(self.deadletter_topic) and self.deadletter_topic not in (self.sensor_topic, self.host_topic),
                "deadletter_topic", "must be set and differ from the topics read")
        require(bool(self.sinks), "sinks", "name at least one sink")
        for name in self.sinks:
            require(name in KNOWN_SINKS, "sinks", f"{name!r} is not one of {', '.join(KNOWN_SINKS)}")
        for name in ("elasticsearch_url", "opentsdb_url"):
            require(getattr(self, name).startswith(("http://", "https://")), name, "must be an http(s):// URL")
        try:
            check_index_prefix(self.es_index_prefix)
        except ContractError as exc:
            require(False, "es_index_prefix", str(exc))
        require(not self.elasticsearch_ca_certs or os.path.isfile(self.elasticsearch_ca_certs), "elasticsearch_ca_certs",
                f"{self.elasticsearch_ca_certs} is not a file")
        require(self.elasticsearch_api_key.isprintable() and " " not in self.elasticsearch_api_key, "elasticsearch_api_key",
                "must be the encoded key (base64, one line)")
        require(bool(self.opentsdb_username) == bool(self.opentsdb_password), "opentsdb_username",
                "give both the user and the password, or neither")
        require(self.opentsdb_batch_size >= 1, "opentsdb_batch_size", "must be >= 1")
        require(1 <= self.batch_messages <= 100_000, "batch_messages", "must be 1..100000")
        require(0 <= self.batch_wait <= 60, "batch_wait", "must be 0..60 seconds")
        require(self.sink_timeout > 0, "sink_timeout", "must be > 0 seconds")
        require(0 < self.retry_initial <= self.retry_max, "retry_initial",
                f"need 0 < retry_initial ({self.retry_initial}) <= retry_max ({self.retry_max})")
        require(self.shutdown_timeout >= 0, "shutdown_timeout", "must be >= 0 seconds")
        require(self.health_idle_after > 0, "health_idle_after", "must be > 0 seconds")
        require(self.max_payload_bytes > 0 and self.max_readings > 0, "max_payload_bytes", "limits must be > 0")
        # A dead letter carries the payload up to this size: it must fit Kafka's default record limit (1 MB).
        require(self.max_payload_bytes <= 900_000, "max_payload_bytes", "must be at most 900000 bytes")
        require(self.max_timestamp_age > 0 and self.max_timestamp_future >= 0, "max_timestamp_age",
                "age must be > 0 and future >= 0 seconds")
        require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1..65535")
        require(self.received_at_max_ahead >= 0 and self.received_at_max_behind >= 0, "received_at_max_ahead",
                "the received_at bounds must be >= 0 seconds")
        self.validate_kafka()

    @property
    def instance_id(self) -> str:
        """This loader's ``group.instance.id``: the option, else :func:`default_instance_id`."""
        return self.kafka_instance_id or default_instance_id()

    @property
    def limits(self) -> Limits:
        return Limits(self.max_payload_bytes, self.max_readings, self.max_timestamp_age, self.max_timestamp_future)

    @property
    def rules(self) -> DecodeRules:
        return DecodeRules(sensor_topic=self.sensor_topic, host_topic=self.host_topic, limits=self.limits,
                           received_at_max_ahead=self.received_at_max_ahead,
                           received_at_max_behind=self.received_at_max_behind)

    @property
    def topics(self) -> list[str]:
        return [t for t in (self.sensor_topic, self.host_topic) if t]
