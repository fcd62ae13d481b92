"""MQTT collector and Kafka bridge: sensor readings -> minute files + Kafka.

``python -m collectors.mqtt --help`` lists every option. The collector
subscribes to the configured topic filters with QoS 1 in a persistent MQTT v5
session (fixed client id, clean start off, a session expiry interval), so the
broker keeps what devices publish while the collector is down. It connects with
TLS (port 8883, ``--mqtt-ca-file`` the CA that signed the broker's certificate)
as a user of its own whose name is its client id; the password comes from a file
(``--mqtt-password-file`` / ``SLUICE_MQTT_PASSWORD_FILE``), never the command
line (docs/security.md). Each message:

1. is parsed (include/sensors.py); the device is a level of the topic;
2. its valid readings are appended to the journal of their minute, its
   rejects (with the payload and the reason) to the dead-letter journal of
   the receive minute;
3. the original payload bytes go to Kafka ``sluice.sensors.raw`` unchanged
   (key: device; headers: ``mqtt_topic``, ``received_at``) or, when no
   reading is valid, to ``sluice.deadletter`` with a ``reason`` header;
4. the message is acknowledged (PUBACK) only once the journal holding its
   readings was flushed and Kafka confirmed the record (or, while Kafka is
   down, the record is flushed to the local Kafka backlog, see
   collectors/kafka_bridge.py). Anything not acknowledged is redelivered by
   the broker, so the chain is at-least-once; minute files deduplicate by
   row identity when they are merged, Kafka consumers by reading id.

A minute is closed ``close_delay`` seconds after it ended: its journal
becomes one file for this collector instance (the *writer*, named by its
client id), ``raw/sensor/…/minute=MM/{client_id}.csv``, holding the rows of
every device (the dead letters go to ``deadletter/sensor/…/{client_id}.jsonl``
and then the minute's manifest to ``manifests/sensor/…/{client_id}.json``),
which land through the spool, merged with whatever is already there. Beside
the journal the collector keeps each open minute's rows as CSV lines
(:class:`OpenMinutes`), so closing a minute of 5,000 devices is a sort and a
join rather than decoding 900,000 journal records; the journal remains what a
restart lands from (collectors/journal.py).

The message handler is total: whatever a payload holds, it becomes readings
or a dead letter with its reason, and an unexpected exception becomes a dead
letter ``internal: …``, a counter and one log line, never an exception in
paho's network thread. A payload larger than :data:`KAFKA_VALUE_MAX` or
rejected as oversized reaches the Kafka dead-letter topic as metadata only.

Backpressure, not loss: while the journal, the spool or the Kafka backlog is
at its byte cap the collector holds its acknowledgements. The broker then
stops sending after ``mqtt_receive_maximum`` unacknowledged messages and keeps
the rest in the session; when the cap clears, acknowledging resumes. The
metric ``sluice_collector_backpressure`` and the log say so, and ``/healthz``
names the cap.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import operator
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from functools import partial

import orjson
from prometheus_client import Gauge

from collectors.common import (
    MQTT_TLS_PORT, CapWatch, Clock, CollectorMetrics, CommonConfig, Heartbeater, secure_client, start_cli,
    start_minute_store,
)
from collectors.config import CliOptions, ConfigError, describe, option, require
from collectors.journal import MinuteStore, decode_rows, encode_record, row_problem, rows_safe
from include import kafka as topics
from include.contract import (
    HEADER_DEADLETTER_KIND, HEADER_REASON_CODE, HEADER_STAGE, INTERNAL, PAYLOAD, REASON_MAX, check_writer, reason_code, internal_reason, minute_key, payload_deadletter_key, payload_deadletter_line,
    timestamp_text,
)
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.sensors import (
    SENSOR_TOPIC_PREFIX, DeviceError, Limits, Parsed, Reject, csv_row, device_from_topic, parse_payload,
)
from include.spool import DEADLETTER, canonical_file, canonical_sensor_fields, manifest_entry

log = logging.getLogger(__name__)

#: Kafka's default largest record (message.max.bytes, about 1 MB): a larger payload
#: goes to the dead-letter topic as metadata only, never whole.
KAFKA_VALUE_MAX = 1_000_000
#: The journal stream counting each handled payload by receive minute (one JSON list
#: of reject codes per payload), from which the minute manifest takes its tallies.
TALLY = "tally"
_WIDTH = len(SENSOR_SCHEMA.names)
#: A share name (MQTT v5, 4.8.2): no "/", "+" or "#"; control characters and spaces refused too.
_SHARE_GROUP = re.compile(r"[^/+#\x00-\x20\x7f]{1,128}")
_DEVICE_COLUMN = SENSOR_SCHEMA.names.index("device")
#: The tally record of a payload without rejects (most of them).
_NO_REJECTS = orjson.dumps([]) + b"\n"
#: While messages flow, paho's network thread runs the pump itself at most this often (seconds);
#: the pump thread takes over once it has not for :data:`PUMP_IDLE` (no traffic).
PUMP_INTERVAL = 0.005
PUMP_IDLE = 0.02
#: Tag texts :class:`OpenMinutes` remembers as canonical (some 3 per device), at most.
_CANONICAL_TAGS_KEPT = 200_000
#: The sensor CSV header, as every minute file starts.
_HEADER = (",".join(SENSOR_SCHEMA.names) + "\n").encode()
#: A row's identity within one (timestamp, device): metric and tags (include.contract.row_identity).
_METRIC_TAGS = operator.itemgetter(SENSOR_SCHEMA.names.index("metric"), SENSOR_SCHEMA.names.index("tags"))


@dataclass(frozen=True)
class MqttConfig(CommonConfig, CliOptions):
    prog = "collectors.mqtt"

    mqtt_host: str = option("127.0.0.1", "MQTT broker host.")
    mqtt_port: int = option(MQTT_TLS_PORT, "MQTT broker port (8883: TLS).")
    mqtt_client_id: str = option("sluice-mqtt-collector", "Fixed MQTT client id: the persistent session is keyed by it.")
    mqtt_topics: tuple[str, ...] = option((f"{SENSOR_TOPIC_PREFIX}/+",), "Comma-separated topic filters to subscribe to with QoS 1.")
    mqtt_shared_group: str = option(
        "", "MQTT v5 shared subscription group (empty: none): every filter becomes $share/<group>/<filter>, "
            "so collectors of one group split the devices' messages between them.")
    # -- MQTT security (issue 15): TLS on by default, a user of its own, the password from a file.
    mqtt_username: str = option("", "MQTT user name (empty: the client id; Sluice's broker makes the user name "
                                    "the client id, so one user per collector instance).")
    mqtt_password: str = option("", "MQTT password of the user.", secret=True)
    mqtt_tls: bool = option(True, "Connect with TLS (off only for a plaintext demo listener on loopback).")
    mqtt_ca_file: str = option("", "PEM file of the CA that signed the broker's certificate (empty: the system's CAs).")
    mqtt_session_expiry: int = option(7 * 86400, "Seconds the broker keeps the session (and queues messages) while disconnected.")
    mqtt_receive_maximum: int = option(1000, "Unacknowledged QoS 1 messages the broker may have in flight to us.")
    device_topic_level: int = option(-1, "Topic level holding the device id (negative counts from the end).")
    kafka_bootstrap: str = option("127.0.0.1:9092", "Kafka bootstrap servers (empty: no Kafka forwarding).")
    kafka_topic: str = option(topics.SENSORS_RAW, "Kafka topic for the original payloads.")
    kafka_deadletter_topic: str = option(topics.DEADLETTER, "Kafka topic for payloads without a valid reading.")
    kafka_retry_interval: float = option(5.0, "Seconds between probes of Kafka while its backlog is not empty.")
    kafka_backlog_max_bytes: int = option(1024 * 2**20, "Byte cap of the local Kafka backlog (0: none); backpressure at the cap.")
    max_payload_bytes: int = option(65536, "Larger payloads are dead-lettered.")
    max_readings: int = option(1000, "Payloads with more readings are dead-lettered.")
    max_timestamp_age: float = option(7 * 86400.0, "Readings older than this many seconds are dead-lettered.")
    max_timestamp_future: float = option(300.0, "Readings this many seconds in the future are dead-lettered.")
    close_delay: float = option(2.0, "Seconds after a minute ends before its files are closed (late readings).")
    metrics_port: int = option(9109, "Port of the Prometheus /metrics endpoint (0: any free port, -1: off).")

    collector = "mqtt"

    def validate(self) -> None:
        self.validate_common()
        require(bool(self.mqtt_topics), "mqtt_topics", "name at least one topic filter")
        for f in self.mqtt_topics:
            require(all(part in ("+", "#") or ("+" not in part and "#" not in part) for part in f.split("/"))
                    and ("#" not in f or f.endswith("#")), "mqtt_topics", f"{f!r} is not a valid topic filter")
        require(self.mqtt_shared_group == "" or _SHARE_GROUP.fullmatch(self.mqtt_shared_group) is not None,
                "mqtt_shared_group", f"{self.mqtt_shared_group!r} is not a share name: 1-128 characters, none of / + # "
                "or a control character (MQTT v5, 4.8.2)")
        require(1 <= self.mqtt_port <= 65535, "mqtt_port", "must be 1..65535")
        require(not self.mqtt_ca_file or Path(self.mqtt_ca_file).is_file(), "mqtt_ca_file",
                f"{self.mqtt_ca_file!r} is not a readable file; give the CA certificate (PEM) that signed the broker's")
        require(self.mqtt_tls or not self.mqtt_ca_file, "mqtt_ca_file", "a CA file needs --mqtt-tls")
        try:
            check_writer(self.mqtt_client_id)
        except ValueError as exc:
            raise ConfigError(f"{describe('mqtt_client_id')}: {exc}") from None
        require(self.mqtt_session_expiry > 0, "mqtt_session_expiry",
                "must be > 0 seconds, or the broker drops the session (and queued messages) at disconnect")
        require(1 <= self.mqtt_receive_maximum <= 65535, "mqtt_receive_maximum", "must be 1..65535")
        require(self.max_payload_bytes > 0, "max_payload_bytes", "must be > 0")
        require(self.max_readings > 0, "max_readings", "must be > 0")
        require(self.max_timestamp_age > 0 and self.max_timestamp_future >= 0, "max_timestamp_age",
                "age must be > 0 and future >= 0 seconds")
        require(0 <= self.close_delay < 60, "close_delay", "must be 0..60 seconds")
        require(self.kafka_retry_interval > 0, "kafka_retry_interval", "must be > 0 seconds")
        require(-1 <= self.metrics_port <= 65535, "metrics_port", "must be -1..65535")
        require(self.kafka_backlog_max_bytes >= 0, "kafka_backlog_max_bytes", "must be >= 0 bytes (0: no cap)")
        self.validate_kafka()  # last: the other options' errors come first

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The filters as subscribed: ``$share/<group>/<filter>`` with a shared group."""
        if not self.mqtt_shared_group:
            return self.mqtt_topics
        return tuple(f"$share/{self.mqtt_shared_group}/{f}" for f in self.mqtt_topics)

    @property
    def mqtt_user(self) -> str:
        """The user name the collector logs in with (the client id unless set)."""
        return self.mqtt_username or self.mqtt_client_id

    @property
    def limits(self) -> Limits:
        return Limits(self.max_payload_bytes, self.max_readings, self.max_timestamp_age, self.max_timestamp_future)


def sensor_splitter(writer: str):
    """The splitter of the MQTT collector ``writer`` (its client id): one minute's journal -> spool entries.

    Entries, in landing order: the writer's minute file (every device's rows),
    the dead letters of the receive minute, the minute manifest. Total: a
    journal record that is not a usable row becomes a dead letter
    ``internal: …`` (counted in the manifest), never an exception.
    """

    def split(minute: int, streams: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
        rows, bad = decode_rows(streams.get(SENSOR, b""), _WIDTH, device_column=_DEVICE_COLUMN)
        body, per_device = canonical_file(SENSOR_SCHEMA, rows) if rows else (None, Counter())
        letters = streams.get(DEADLETTER, b"")
        for lineno, reason, raw in bad:
            letters += payload_deadletter_line(topic=f"journal:{SENSOR}.{minute} line {lineno}", payload=raw,
                                               received=minute, reason=reason, codes=[INTERNAL], accepted_readings=0)
        tally = streams.get(TALLY)
        received, codes = _count_tally(tally or b"")
        if bad:
            codes[INTERNAL] += len(bad)
        return minute_entries(writer, minute, body, per_device, letters, received, codes,
                              manifest=bool(rows or bad or tally is not None))

    return split


def minute_entries(writer: str, minute: int, body: bytes | None, per_device: Counter, letters: bytes,
                   received: int, codes: Counter, *, manifest: bool) -> list[tuple[str, str, bytes]]:
    """A closed minute's spool entries, in landing order: its file, its dead letters, its manifest.

    One builder for both ways a minute closes (from the journal, from
    :class:`OpenMinutes`), so the two give the same bytes.
    """
    at = datetime.fromtimestamp(minute, timezone.utc)
    data_key = minute_key(SENSOR, at, writer)
    entries = []
    if body is not None:
        entries.append((data_key, SENSOR, body))
    if letters.strip():
        entries.append((payload_deadletter_key(at, writer), DEADLETTER, letters))
    if manifest:
        entries.append(manifest_entry(SENSOR, writer, minute, data_key, SENSOR, received=received,
                                      deadletters=dict(sorted(codes.items())), rows=dict(sorted(per_device.items()))))
    return entries


def _count_tally(data: bytes) -> tuple[int, Counter]:
    """(payloads, dead letters per reason code) of a tally journal; a torn line counts as one payload."""
    clean = data.count(_NO_REJECTS)
    if clean * len(_NO_REJECTS) == len(data):  # the usual minute: no payload had a reject
        return clean, Counter()
    received, codes = 0, Counter()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        received += 1
        try:
            codes.update(str(c) for c in orjson.loads(line))
        except (orjson.JSONDecodeError, TypeError):
            continue
    return received, codes


@dataclass(slots=True)
class _OpenMinute:
    """One open minute of :class:`OpenMinutes`: the records of its journal files, in the minute file's form."""

    #: (b"timestamp,device", the CSV lines of that timestamp and device), in journal order.
    groups: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Rows per device, over ``groups``.
    devices: Counter = field(default_factory=Counter)
    #: Distinct timestamp and tag texts, to check they are the contract's canonical forms.
    timestamps: set = field(default_factory=set)
    tagsets: set = field(default_factory=set)
    #: The tally: payloads received in this minute and their reject codes; their dead-letter lines.
    received: int = 0
    codes: Counter = field(default_factory=Counter)
    letters: list = field(default_factory=list)


class OpenMinutes:
    """The collector's open minutes as CSV lines, kept beside the journal (a :class:`collectors.journal.MinuteMemo`).

    :func:`journal_message` updates it under the journal's lock with exactly
    the records it journals. Rows are kept as already-encoded CSV lines, one
    bytes per (timestamp, device) of a message, so a minute of 5,000 devices
    (300,000 messages, 900,000 rows) is some 110 MB in memory and its close is
    a stable sort of 300,000 short keys and a join. :meth:`entries` gives the
    bytes the journal split gives (the property test in
    tests/collectors/test_open_minutes.py holds the two side by side); where it
    cannot (a timestamp or tag text not in canonical form, a failed update),
    it declines and the minute is split from the journal.
    """

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self._minutes: dict[int, _OpenMinute] = {}
        self._broken: set[int] = set()
        #: Tag texts already found canonical: devices send the same tags minute after minute, and
        #: checking 15,000 of them (5,000 devices) cost 2.5 s a close. Only :meth:`entries` uses it.
        self._canonical_tags: set[str] = set()

    def add(self, rows_by_minute: list[tuple[int, list[list[str]]]], receive_minute: int, codes: list[str],
            letter: bytes | None) -> None:
        """One message's records as journalled: its rows per minute (checked safe), its tally, its dead letter.

        Never raises: a failure marks the minutes touched, which then close
        from the journal.
        """
        try:
            minutes = self._minutes
            for minute, rows in rows_by_minute:
                m = minutes.get(minute) or minutes.setdefault(minute, _OpenMinute())
                self._add_rows(m, rows)
            m = minutes.get(receive_minute) or minutes.setdefault(receive_minute, _OpenMinute())
            m.received += 1
            if codes:
                m.codes.update(codes)
            if letter is not None:
                m.letters.append(letter)
        except Exception:
            log.exception("keeping a message in memory failed; its minutes close from the journal")
            self._broken.update([minute for minute, _ in rows_by_minute] + [receive_minute])

    @staticmethod
    def _add_rows(m: _OpenMinute, rows: list[list[str]]) -> None:
        first = rows[0]
        if all(r[0] == first[0] and r[1] == first[1] for r in rows):  # the usual message: one timestamp, one device
            groups = [rows]
        else:
            by_key: dict[tuple[str, str], list[list[str]]] = {}
            for r in rows:
                by_key.setdefault((r[0], r[1]), []).append(r)
            groups = list(by_key.values())
        for group in groups:
            if len(group) > 1:
                group = _first_of_each_identity(group)
            ts, device = group[0][0], group[0][1]
            m.groups.append(((ts + "," + device).encode(), "".join([",".join(r) + "\n" for r in group]).encode()))
            m.devices[device] += len(group)
            m.timestamps.add(ts)
            m.tagsets.update([r[4] for r in group])

    def take(self, minute: int) -> _OpenMinute | None:
        broken = minute in self._broken
        self._broken.discard(minute)
        held = self._minutes.pop(minute, None)
        return None if broken else held

    def entries(self, minute: int, taken: _OpenMinute) -> list[tuple[str, str, bytes]] | None:
        """The minute's spool entries, byte for byte what :func:`sensor_splitter` makes of its journal."""
        new_tags = taken.tagsets - self._canonical_tags
        if not canonical_sensor_fields(taken.timestamps, new_tags):
            return None  # identities would need the contract's normalising: the journal split does that
        if len(self._canonical_tags) + len(new_tags) > _CANONICAL_TAGS_KEPT:
            self._canonical_tags.clear()
        self._canonical_tags |= new_tags
        groups, devices = taken.groups, taken.devices
        # The file's order is (timestamp, device, metric, tags): the groups are sorted by
        # b"timestamp,device", which orders as the pair does (a canonical timestamp ends in
        # its only "Z", so it is never a prefix of another), and each group's lines by
        # (metric, tags). Stable, so of repeated identities the first journalled stays first.
        groups.sort(key=operator.itemgetter(0))
        keys = list(map(operator.itemgetter(0), groups))
        if any(map(operator.eq, keys, itertools.islice(keys, 1, None))):  # a device sent a timestamp twice
            groups, devices = _merge_repeats(groups)
        body = _HEADER + b"".join(map(operator.itemgetter(1), groups)) if groups else None
        return minute_entries(self.writer, minute, body, devices, b"".join(taken.letters), taken.received,
                              taken.codes, manifest=bool(groups or taken.received))


def _first_of_each_identity(rows: list[list[str]]) -> list[list[str]]:
    """Rows of one (timestamp, device) sorted by (metric, tags), the first row of each identity only."""
    rows = sorted(rows, key=_METRIC_TAGS)  # stable: the first journalled of equal identities stays first
    kept = [rows[0]]
    for r in rows[1:]:
        if _METRIC_TAGS(r) != _METRIC_TAGS(kept[-1]):
            kept.append(r)
    return kept


def _merge_repeats(groups: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], Counter]:
    """Sorted groups with each repeated (timestamp, device) merged into one, and the rows per device again."""
    merged: list[tuple[bytes, bytes]] = []
    devices: Counter = Counter()
    for key, run in itertools.groupby(groups, key=operator.itemgetter(0)):
        run = list(run)
        if len(run) == 1:
            lines = run[0][1]
            rows = lines.count(b"\n")
        else:
            kept = _first_of_each_identity([line.split(",") for _, lines in run for line in lines.decode().splitlines()])
            lines = "".join([",".join(r) + "\n" for r in kept]).encode()
            rows = len(kept)
        merged.append((key, lines))
        devices[key.split(b",", 1)[1].decode()] += rows
    return merged, devices


def journal_message(store: MinuteStore, minutes: OpenMinutes, rows_by_minute: list[tuple[int, list[list[str]]]],
                    receive_minute: int, codes: list[str], letter: bytes | None) -> int:
    """Journal one message (its rows per minute, its dead letter, its tally) and keep it in ``minutes``.

    Returns the journal sequence number its acknowledgement waits for. The
    rows must have passed :func:`collectors.journal.rows_safe` /
    :func:`row_problem` (no field needs CSV quoting).
    """
    records = [(SENSOR, minute, b"".join([encode_record(row) for row in rows])) for minute, rows in rows_by_minute]
    if letter is not None:
        records.append((DEADLETTER, receive_minute, letter))
    records.append((TALLY, receive_minute, orjson.dumps(codes) + b"\n" if codes else _NO_REJECTS))
    return store.append_many(records, then=partial(minutes.add, rows_by_minute, receive_minute, codes, letter))


class MqttCollector:
    """Subscribes, journals, forwards, acknowledges; lands minute files.

    The constructor does no I/O. ``run(stop)`` connects, works until ``stop``
    is set and then, in a ``finally``: stops taking messages (unacknowledged
    ones are redelivered later), lets Kafka confirm what it holds, sends the
    last acknowledgements, disconnects (the session stays on the broker),
    spools the partial minute and lands what it can within ``shutdown_timeout``.
    """

    def __init__(self, config: MqttConfig, *, landing=None, clock: Clock | None = None, producer=None,
                 mqtt_client_factory=None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._landing = landing
        self._producer = producer
        self._client_factory = mqtt_client_factory
        self.limits = config.limits
        self.store: MinuteStore | None = None
        self.minutes = OpenMinutes(config.mqtt_client_id)
        self.metrics: CollectorMetrics | None = None
        self.bridge = None
        self.client = None
        self.metrics_port = -1
        self.connected = threading.Event()
        self.messages = 0
        self._accepting = False
        self._ready_lock = threading.Lock()
        #: (journal seq, backlog seq, mid, qos) waiting for the flushes they need.
        self._ready: list[tuple[int, int, int, int]] = []
        self._pump_stop = threading.Event()
        #: One pump round at a time, whichever thread runs it; when the last one ran (time.monotonic:
        #: it schedules CPU, so it is the machine's clock even under a test's fake one).
        self._pump_lock = threading.Lock()
        self._pumped_at = 0.0
        self._pump_thread: threading.Thread | None = None
        self.heartbeat: Heartbeater | None = None
        self._caps = CapWatch()
        #: Why acknowledgements are held (a byte cap reached), else None.
        self.holding: str | None = None
        self._paused = False
        #: Connection generation: a token of an earlier connection is never acknowledged on a later one.
        self._gen = 0
        self._connect_props = None

    # -- life cycle ----------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            self._start()
            self._loop(stop)
        finally:
            self._stop()

    def _start(self) -> None:
        c = self.config
        self.store, self.metrics, self.metrics_port = start_minute_store(
            c, "mqtt", sensor_splitter(c.mqtt_client_id), landing=self._landing, clock=self.clock, memo=self.minutes
        )
        health = self.metrics.health
        recovered = self.store.start()
        if recovered:
            log.info("spooled %d file(s) journalled by a previous run", recovered)
        health.watch("lander", self.store.thread)
        health.add_check("caps", lambda: self.holding)
        if c.kafka_bootstrap:
            self._start_bridge()
        self._pump_thread = threading.Thread(target=self._pump, name="pump", daemon=True)
        self._pump_thread.start()
        health.watch("pump", self._pump_thread)
        if c.heartbeat_interval > 0:
            self.heartbeat = Heartbeater(self.store.lander.landing, SENSOR, c.mqtt_client_id, c.heartbeat_interval,
                                         self.clock, self.metrics)
            self.heartbeat.start()
            health.watch("heartbeat", self.heartbeat.thread)
        self._connect()

    def _start_bridge(self) -> None:
        from collectors.kafka_bridge import KafkaBridge

        c = self.config
        holder = {}
        if self._producer is None:
            from confluent_kafka import Producer

            from include.kafka import ensure_topics, producer_config

            try:
                ensure_topics(c.kafka_bootstrap, [c.kafka_topic, c.kafka_deadletter_topic], timeout_s=5,
                              settings=c.kafka_settings())
            except Exception as exc:  # Kafka down at start: the backlog takes over, topics are made later
                log.warning("could not ensure Kafka topics (%s); continuing with the backlog", exc)
            self._producer = Producer(producer_config(
                c.kafka_bootstrap, client_id=c.mqtt_client_id, message_timeout_s=c.kafka_message_timeout,
                error_cb=lambda err: holder["bridge"].error(err), **c.kafka_settings()))
        self.bridge = holder["bridge"] = KafkaBridge(
            self._producer, c.state_path / "kafka-backlog", self._done,
            retry_interval=c.kafka_retry_interval, monotonic=self.clock.monotonic,
            fsync_interval=c.fsync_interval, metrics=self.metrics, max_bytes=c.kafka_backlog_max_bytes)
        Gauge("sluice_collector_kafka_backlog_bytes", "Bytes in the local Kafka backlog.",
              registry=self.metrics.registry).set_function(self.bridge.backlog.size)
        Gauge("sluice_collector_kafka_backlog_max_bytes", "Byte cap of the local Kafka backlog (0: none).",
              registry=self.metrics.registry).set(c.kafka_backlog_max_bytes)

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = self.config
        factory = self._client_factory or (lambda: mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=c.mqtt_client_id, protocol=mqtt.MQTTv5, manual_ack=True))
        client = factory()
        secure_client(client, user=c.mqtt_user, password=c.mqtt_password, tls=c.mqtt_tls, ca_file=c.mqtt_ca_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = c.mqtt_session_expiry
        props.ReceiveMaximum = c.mqtt_receive_maximum
        self.client = client
        self._connect_props = props
        self._open()

    def _open(self) -> None:
        c = self.config
        self._accepting = True
        self.client.connect_async(c.mqtt_host, c.mqtt_port, keepalive=30, clean_start=False,
                                  properties=self._connect_props)
        self.client.loop_start()
        thread = getattr(self.client, "_thread", None)
        if thread is not None and self.metrics is not None:  # paho's network loop: a dead one means a deaf collector
            self.metrics.health.watch("mqtt-network", thread)

    def _pause(self) -> None:
        """At a cap: leave the broker, which keeps the session and queues what devices send.

        Only disconnecting holds the broker back reliably: Mosquitto 2.0 kept
        sending past the Receive Maximum to a client that acknowledged from
        another thread and then stopped. Messages handled but not acknowledged
        are delivered again after the resume (the merge drops the repeats).
        """
        self._accepting = False
        self._paused = True
        # What is journalled is acknowledged before leaving: else, when a cap is reached faster than
        # a pump round comes, the broker delivers the same messages again after every resume, the
        # journal fills with them before any is acknowledged, and the collector never gets past them.
        try:
            self._pump_round(0)
        except Exception:  # the pause must happen all the same: the broker redelivers what is not acknowledged
            self.metrics.internal_errors.labels("pump").inc()
            log.exception("pump round before pausing failed; its messages are delivered again after the resume")
        with self._ready_lock:
            self._gen += 1
            self._ready.clear()
        self.metrics.health.unwatch("mqtt-network")
        log.warning("at a cap (%s): disconnected from MQTT; the broker keeps the messages until it clears",
                    self.holding)
        self.client.disconnect()
        self.client.loop_stop()

    def _resume(self) -> None:
        log.info("below every cap again: reconnecting to MQTT")
        self._paused = False
        self._open()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s:%s refused the connection: %s", self.config.mqtt_host, self.config.mqtt_port, reason_code)
            return
        log.info("connected to MQTT %s:%s (session present: %s)", self.config.mqtt_host, self.config.mqtt_port,
                 flags.session_present)
        # Subscribing again on a present session is harmless and covers a broker that lost it.
        client.subscribe([(f, 1) for f in self.config.subscriptions])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        granted = [str(rc) for rc in reason_codes]
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT broker refused a subscription of %s: %s", ",".join(self.config.subscriptions), granted)
        else:
            log.info("subscribed to %s (granted: %s)", ",".join(self.config.subscriptions), ", ".join(granted))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._accepting:
            log.warning("MQTT connection lost (%s); reconnecting", reason_code)

    def _loop(self, stop: threading.Event) -> None:
        """Close each minute ``close_delay`` seconds after it ended, until ``stop``."""
        clock, delay = self.clock, self.config.close_delay
        while True:
            now = clock.time()
            minute_end = (now - delay) // 60 * 60 + 60
            if clock.wait(stop, minute_end + delay - now):
                return
            self._close(int(minute_end))

    def _close(self, before: int) -> None:
        if self.store.close_minutes(before):
            self.metrics.last_flush.set(self.clock.time())

    def _stop(self) -> None:
        c = self.config
        self._accepting = False
        try:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            if self.bridge is not None:
                parked = self.bridge.close(c.shutdown_timeout)
                if parked:
                    log.warning("%d record(s) kept in the Kafka backlog for the next start", parked)
            self._pump_stop.set()
            if self._pump_thread is not None:
                self._pump_thread.join(timeout=10)
            self._pump_round(0)  # flush and acknowledge what is left
            if self.client is not None:
                self.client.disconnect()
                self.client.loop_stop()
        finally:
            if self.store is not None:
                self.store.stop(c.shutdown_timeout)
                self.metrics.last_flush.set(self.clock.time())
            if self.metrics is not None:
                self.metrics.close()

    # -- the message path (MQTT network thread) ------------------------------------
    def _on_message(self, client, userdata, msg) -> None:
        """paho's callback: total, whatever the message holds (see the module docstring)."""
        if not self._accepting:
            return  # not acknowledged: the broker delivers it again after we reconnect
        health = self.metrics.health
        health.traffic()
        # Whole milliseconds: the received_at header carries this time, and the stream
        # loader must derive the same reading (and id) for a timestamp-less payload.
        received = round(self.clock.time(), 3)
        gen = self._gen
        try:
            self._handle(msg, received, gen)
        except Exception as exc:  # a bug or a hostile payload we did not foresee: dead letter, never a dead thread
            self._internal(msg, received, exc, gen)
        self.messages += 1
        health.handled()
        if time.monotonic() - self._pumped_at >= PUMP_INTERVAL:
            self._pump_inline()

    def _handle(self, msg, received: float, gen: int) -> None:
        payload = msg.payload
        try:
            device = device_from_topic(msg.topic, self.config.device_topic_level)
            parsed = parse_payload(payload, received, self.limits)
        except DeviceError as exc:
            device, parsed = "", Parsed(rejects=[Reject("bad_device", str(exc))])
        # The hot path: each row is built once, the whole message is checked with one regex
        # pass, and its journal records go in under one lock (profiled: docs/collectors.md).
        rows_by_minute: list[tuple[int, list[list[str]]]] = []
        if parsed.readings:
            rows = [csv_row(device, reading) for reading in parsed.readings]
            if not rows_safe(rows):
                parsed, rows = self._checked_rows(parsed, rows)
            readings = parsed.readings
            if readings:
                minute = int(readings[0].epoch // 60 * 60)
                if all(int(r.epoch // 60 * 60) == minute for r in readings):  # the usual case: one minute
                    rows_by_minute.append((minute, rows))
                else:
                    by_minute: dict[int, list[list[str]]] = defaultdict(list)
                    for reading, row in zip(readings, rows, strict=True):
                        by_minute[int(reading.epoch // 60 * 60)].append(row)
                    rows_by_minute += by_minute.items()
                self.metrics.readings.inc(len(readings))
        receive_minute = int(received // 60 * 60)
        letter = None
        if parsed.rejects:
            letter = self._deadletter_line(msg.topic, payload, received, parsed)
            for reject in parsed.rejects:
                self.metrics.deadletters.labels(reject.code).inc()
        seq = journal_message(self.store, self.minutes, rows_by_minute, receive_minute,
                              [r.code for r in parsed.rejects], letter)
        self._forward(msg, device, received, parsed, seq, gen)

    @staticmethod
    def _checked_rows(parsed: Parsed, rows: list[list[str]]) -> tuple[Parsed, list[list[str]]]:
        """Move readings whose CSV row would be unsafe (a name ending in a newline, say) to the rejects."""
        keep, kept_rows, rejects = [], [], list(parsed.rejects)
        for reading, row in zip(parsed.readings, rows, strict=True):
            problem = row_problem(row)
            if problem is None:
                keep.append(reading)
                kept_rows.append(row)
            else:
                rejects.append(Reject("bad_name", f"reading {reading.metric!r}: {problem}"))
        return Parsed(readings=keep, rejects=rejects), kept_rows

    def _forward(self, msg, device: str, received: float, parsed: Parsed, seq: int, gen: int) -> None:
        if self.bridge is None:
            self._done((seq, msg.mid, msg.qos, gen), 0)
            return
        payload = msg.payload
        headers = [(topics.HEADER_MQTT_TOPIC, msg.topic.encode()), (topics.HEADER_RECEIVED_AT, timestamp_text(received).encode())]
        if parsed.readings:
            topic, value = self.config.kafka_topic, payload
            if len(payload) > KAFKA_VALUE_MAX:  # only with max_payload_bytes raised past Kafka's record limit
                topic, value = self.config.kafka_deadletter_topic, self._metadata_only(msg, received, "oversized for Kafka")
                headers.append((topics.HEADER_REASON, b"oversized: the payload is in the landing zone, not on Kafka"))
        else:
            topic, value = self.config.kafka_deadletter_topic, payload
            headers += [(topics.HEADER_REASON, parsed.reason[:REASON_MAX].encode()),
                        (HEADER_REASON_CODE, reason_code(parsed.reason).encode()),
                        (HEADER_DEADLETTER_KIND, PAYLOAD.encode()), (HEADER_STAGE, b"collector")]
            if len(payload) > KAFKA_VALUE_MAX or any(r.code == "oversized" for r in parsed.rejects):
                value = self._metadata_only(msg, received, parsed.reason)
        self.bridge.forward(topic, device.encode(), value, headers, (seq, msg.mid, msg.qos, gen))

    @staticmethod
    def _metadata_only(msg, received: float, reason: str) -> bytes:
        """What the dead-letter topic gets instead of an oversized payload: its size, hash and reason."""
        payload = msg.payload
        return orjson.dumps({
            "metadata_only": True, "reason": reason[:REASON_MAX], "topic": msg.topic, "received_at": timestamp_text(received),
            "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
        })

    def _internal(self, msg, received: float, exc: Exception, gen: int) -> None:
        """An unexpected exception in the handler: dead letter ``internal: …``, a counter, one log line, an ack."""
        reason = internal_reason(exc)
        self.metrics.deadletters.labels(INTERNAL).inc()
        self.metrics.internal_errors.labels("mqtt_message").inc()
        log.error("message on %r (%d bytes) dead-lettered: %s", msg.topic, len(msg.payload), reason)
        parsed = Parsed(rejects=[Reject(INTERNAL, reason)])
        receive_minute = int(received // 60 * 60)
        try:
            seq = journal_message(self.store, self.minutes, [], receive_minute, [INTERNAL],
                                  self._deadletter_line(msg.topic, msg.payload, received, parsed))
        except Exception:  # the journal itself failed: leave the message unacknowledged, the broker redelivers it
            log.exception("could not journal the dead letter of %r; it stays unacknowledged", msg.topic)
            return
        try:  # the dead-letter topic gets it too, like any payload without readings
            self._forward(msg, "", received, parsed, seq, gen)
        except Exception:
            self.metrics.internal_errors.labels("kafka_forward").inc()
            log.exception("could not forward the dead letter of %r to Kafka; it is in the landing zone", msg.topic)
            self._done((seq, msg.mid, msg.qos, gen), 0)

    @staticmethod
    def _deadletter_line(topic: str, payload: bytes, received: float, parsed: Parsed) -> bytes:
        return payload_deadletter_line(
            topic=topic, payload=payload, received=received, reason=parsed.reason,
            codes=[r.code for r in parsed.rejects], accepted_readings=len(parsed.readings),
        )

    def _done(self, token, backlog_seq: int) -> None:
        seq, mid, qos, gen = token
        with self._ready_lock:
            if gen == self._gen:  # else the broker delivers that message again on this connection
                self._ready.append((seq, backlog_seq, mid, qos))

    # -- the pump: flush journals, poll Kafka, acknowledge ---------------------------
    # While messages flow, paho's network thread pumps between messages (_pump_inline): its
    # acknowledgements are then queued inside paho's callback and written by the same loop
    # that reads, and the Kafka delivery callbacks run there too, instead of two threads
    # taking the GIL from each other for every message and waking paho's select for every
    # acknowledgement (alternating A/B: 260-298 -> 160-202 µs of CPU a message, docs/performance.md). The
    # pump thread checks the caps (pausing means stopping paho's thread, which only another
    # thread can) and pumps itself when the network thread has not lately: no traffic.
    def _pump(self) -> None:
        while not self._pump_stop.is_set():
            acked = False
            try:
                if time.monotonic() - self._pumped_at >= PUMP_IDLE:
                    acked = self._pump_round(PUMP_INTERVAL)
                self._check_caps()
            except Exception:  # never let the pump die: it is what acknowledges
                self.metrics.internal_errors.labels("pump").inc()
                log.exception("pump round failed; retrying")
            if not acked:
                self._pump_stop.wait(PUMP_INTERVAL)

    def _pump_inline(self) -> None:
        """A pump round on paho's network thread, unless one is running; total, like the handler."""
        if not self._pump_lock.acquire(blocking=False):
            return
        try:
            self._pump_round_locked(0)
        except Exception:
            self.metrics.internal_errors.labels("pump").inc()
            log.exception("pump round on the network thread failed; the pump thread retries")
        finally:
            self._pump_lock.release()

    def _over_cap(self) -> str | None:
        c, store = self.config, self.store
        reasons = [self._caps.check("journal", store.journal.size(), c.journal_max_bytes),
                   self._caps.check("spool", store.spool.size(), c.spool_max_bytes)]
        if self.bridge is not None:
            reasons.append(self._caps.check("Kafka backlog", self.bridge.backlog.size(), c.kafka_backlog_max_bytes))
        return "; ".join(r for r in reasons if r) or None

    def _check_caps(self) -> None:
        """Hold acknowledgements at a byte cap (disconnect), resume below every cap."""
        self.holding = self._over_cap()
        self.metrics.backpressure.set(1 if self.holding else 0)
        if self.holding and self._accepting and not self._paused:
            self._pause()
        elif not self.holding and self._paused and not self._pump_stop.is_set():
            self._resume()

    def _pump_round(self, poll_timeout: float) -> bool:
        with self._pump_lock:
            return self._pump_round_locked(poll_timeout)

    def _pump_round_locked(self, poll_timeout: float) -> bool:
        """Flush the journals, poll Kafka, acknowledge what is safe; True when something was."""
        self._pumped_at = time.monotonic()
        try:
            flushed = self.store.flush()
            flushed_backlog = self.bridge.flush_backlog() if self.bridge is not None else 0
        except OSError:
            log.exception("journal flush failed; holding acknowledgements")
            return False
        if self.bridge is not None:
            self.bridge.poll(poll_timeout)
        return self._ack_ready(flushed, flushed_backlog)

    def _ack_ready(self, flushed: int, flushed_backlog: int) -> bool:
        with self._ready_lock:
            ready, self._ready = self._ready, []
        waiting = []
        acked = 0
        for item in ready:
            seq, bseq, mid, qos = item
            if seq <= flushed and bseq <= flushed_backlog:
                if qos > 0 and self.client is not None:
                    self.client.ack(mid, qos)
                acked += 1
            else:
                waiting.append(item)
        if waiting:
            with self._ready_lock:
                self._ready[:0] = waiting
        return acked > 0


def main(argv: list[str] | None = None) -> int:
    config, stop = start_cli("collectors.mqtt", MqttConfig, argv)
    collector = MqttCollector(config)
    collector.run(stop)
    log.info("MQTT collector stopped after %d messages", collector.messages)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
