"""MQTT collector and Kafka bridge: sensor readings -> minute files + Kafka.

``python -m collectors.mqtt --help`` lists every option. The collector
subscribes to the configured topic filters with QoS 1 in a persistent MQTT v5
session (fixed client id, clean start off, a session expiry interval), so the
broker keeps what devices publish while the collector is down. Each message:

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

A minute is closed ``close_delay`` seconds after it ended: its journal is
split by device into ``raw/sensor/…/{device}.csv`` files (and the dead
letters into ``deadletter/sensor/…/{client_id}.jsonl``) which land through
the spool, merged with whatever is already there.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone


from collectors.common import (
    Clock, CollectorMetrics, CommonConfig, start_cli, start_minute_store,
)
from collectors.config import CliOptions, ConfigError, describe, option, require
from collectors.journal import MinuteStore
from include import kafka as topics
from include.contract import check_writer, minute_key, payload_deadletter_key, payload_deadletter_line, timestamp_text
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.sensors import DeviceError, Limits, Parsed, Reject, csv_line, device_from_topic, parse_payload
from include.spool import DEADLETTER

log = logging.getLogger(__name__)

_HEADER = (",".join(SENSOR_SCHEMA.names) + "\n").encode()


@dataclass(frozen=True)
class MqttConfig(CommonConfig, CliOptions):
    prog = "collectors.mqtt"

    mqtt_host: str = option("127.0.0.1", "MQTT broker host.")
    mqtt_port: int = option(1883, "MQTT broker port.")
    mqtt_client_id: str = option("sluice-mqtt-collector", "Fixed MQTT client id: the persistent session is keyed by it.")
    mqtt_topics: tuple[str, ...] = option(("sluice/sensors/+",), "Comma-separated topic filters to subscribe to with QoS 1.")
    mqtt_username: str = option("", "MQTT user name (empty: anonymous).")
    mqtt_password: str = option("", "MQTT password.", secret=True)
    mqtt_session_expiry: int = option(7 * 86400, "Seconds the broker keeps the session (and queues messages) while disconnected.")
    mqtt_receive_maximum: int = option(1000, "Unacknowledged QoS 1 messages the broker may have in flight to us.")
    device_topic_level: int = option(-1, "Topic level holding the device id (negative counts from the end).")
    kafka_bootstrap: str = option("127.0.0.1:9092", "Kafka bootstrap servers (empty: no Kafka forwarding).")
    kafka_topic: str = option(topics.SENSORS_RAW, "Kafka topic for the original payloads.")
    kafka_deadletter_topic: str = option(topics.DEADLETTER, "Kafka topic for payloads without a valid reading.")
    kafka_retry_interval: float = option(5.0, "Seconds between probes of Kafka while its backlog is not empty.")
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
        require(1 <= self.mqtt_port <= 65535, "mqtt_port", "must be 1..65535")
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

    @property
    def limits(self) -> Limits:
        return Limits(self.max_payload_bytes, self.max_readings, self.max_timestamp_age, self.max_timestamp_future)


def sensor_splitter(client_id: str):
    def split(stream: str, minute: int, data: bytes) -> list[tuple[str, str, bytes]]:
        at = datetime.fromtimestamp(minute, timezone.utc)
        if stream == DEADLETTER:
            key = payload_deadletter_key(at, client_id)
            return [(key, DEADLETTER, data)] if data.strip() else []
        by_device: dict[bytes, list[bytes]] = defaultdict(list)
        for line in data.splitlines(keepends=True):
            if line.strip():
                by_device[line.split(b",", 2)[1]].append(line)
        return [(minute_key(SENSOR, at, device.decode()), SENSOR, _HEADER + b"".join(lines))
                for device, lines in sorted(by_device.items())]

    return split


def deadletter_key(minute: int, client_id: str) -> str:
    """Landing key of the dead-letter file of a receive minute (outside ``raw/``, so loaders never read it)."""
    return sensor_splitter(client_id)(DEADLETTER, minute, b"x")[0][0]


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
        self._pump_thread: threading.Thread | None = None

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
            c, "mqtt", sensor_splitter(c.mqtt_client_id), landing=self._landing, clock=self.clock
        )
        recovered = self.store.start()
        if recovered:
            log.info("spooled %d file(s) journalled by a previous run", recovered)
        if c.kafka_bootstrap:
            self._start_bridge()
        self._pump_thread = threading.Thread(target=self._pump, name="pump", daemon=True)
        self._pump_thread.start()
        self._connect()

    def _start_bridge(self) -> None:
        from collectors.kafka_bridge import KafkaBridge

        c = self.config
        holder = {}
        if self._producer is None:
            from confluent_kafka import Producer

            from include.kafka import ensure_topics, producer_config

            try:
                ensure_topics(c.kafka_bootstrap, [c.kafka_topic, c.kafka_deadletter_topic], timeout_s=5)
            except Exception as exc:  # Kafka down at start: the backlog takes over, topics are made later
                log.warning("could not ensure Kafka topics (%s); continuing with the backlog", exc)
            self._producer = Producer(producer_config(
                c.kafka_bootstrap, client_id=c.mqtt_client_id, message_timeout_s=c.kafka_message_timeout,
                error_cb=lambda err: holder["bridge"].error(err)))
        self.bridge = holder["bridge"] = KafkaBridge(
            self._producer, c.state_path / "kafka-backlog", self._done,
            retry_interval=c.kafka_retry_interval, monotonic=self.clock.monotonic,
            fsync_interval=c.fsync_interval, metrics=self.metrics)

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = self.config
        factory = self._client_factory or (lambda: mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=c.mqtt_client_id, protocol=mqtt.MQTTv5, manual_ack=True))
        client = factory()
        if c.mqtt_username:
            client.username_pw_set(c.mqtt_username, c.mqtt_password or None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = c.mqtt_session_expiry
        props.ReceiveMaximum = c.mqtt_receive_maximum
        self.client = client
        self._accepting = True
        client.connect_async(c.mqtt_host, c.mqtt_port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s:%s refused the connection: %s", self.config.mqtt_host, self.config.mqtt_port, reason_code)
            return
        log.info("connected to MQTT %s:%s (session present: %s)", self.config.mqtt_host, self.config.mqtt_port,
                 flags.session_present)
        # Subscribing again on a present session is harmless and covers a broker that lost it.
        client.subscribe([(f, 1) for f in self.config.mqtt_topics])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        granted = [str(rc) for rc in reason_codes]
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT broker refused a subscription of %s: %s", ",".join(self.config.mqtt_topics), granted)
        else:
            log.info("subscribed to %s (granted: %s)", ",".join(self.config.mqtt_topics), ", ".join(granted))

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
            if self.bridge is not None:
                parked = self.bridge.close(c.shutdown_timeout)
                if parked:
                    log.warning("%d record(s) kept in the Kafka backlog for the next start", parked)
            self._pump_stop.set()
            if self._pump_thread is not None:
                self._pump_thread.join(timeout=10)
            self._pump_once(0)  # flush and acknowledge what is left
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
        if not self._accepting:
            return  # not acknowledged: the broker delivers it again after we reconnect
        # Whole milliseconds: the received_at header carries this time, and the stream
        # loader must derive the same reading (and id) for a timestamp-less payload.
        received = round(self.clock.time(), 3)
        payload = msg.payload
        try:
            device = device_from_topic(msg.topic, self.config.device_topic_level)
            parsed = parse_payload(payload, received, self.limits)
        except DeviceError as exc:
            device, parsed = "", Parsed(rejects=[Reject("bad_device", str(exc))])
        store = self.store
        seq = 0
        if parsed.readings:
            by_minute: dict[int, list[str]] = defaultdict(list)
            for reading in parsed.readings:
                by_minute[int(reading.epoch // 60 * 60)].append(csv_line(device, reading))
            for minute, lines in by_minute.items():
                seq = store.append(SENSOR, minute, "".join(lines).encode())
            self.metrics.readings.inc(len(parsed.readings))
        if parsed.rejects:
            seq = store.append(DEADLETTER, int(received // 60 * 60), self._deadletter_line(msg.topic, payload, received, parsed))
            for reject in parsed.rejects:
                self.metrics.deadletters.labels(reject.code).inc()
        self.messages += 1
        if self.bridge is not None:
            headers = [(topics.HEADER_MQTT_TOPIC, msg.topic.encode()), (topics.HEADER_RECEIVED_AT, timestamp_text(round(received, 3)).encode())]
            if parsed.readings:
                topic = self.config.kafka_topic
            else:
                topic = self.config.kafka_deadletter_topic
                headers.append((topics.HEADER_REASON, parsed.reason[:1000].encode()))
            self.bridge.forward(topic, device.encode(), payload, headers, (seq, msg.mid, msg.qos))
        else:
            self._done((seq, msg.mid, msg.qos), 0)

    @staticmethod
    def _deadletter_line(topic: str, payload: bytes, received: float, parsed: Parsed) -> bytes:
        return payload_deadletter_line(
            topic=topic, payload=payload, received=received, reason=parsed.reason,
            codes=[r.code for r in parsed.rejects], accepted_readings=len(parsed.readings),
        )

    def _done(self, token, backlog_seq: int) -> None:
        seq, mid, qos = token
        with self._ready_lock:
            self._ready.append((seq, backlog_seq, mid, qos))

    # -- the pump: flush journals, poll Kafka, acknowledge ---------------------------
    def _pump(self) -> None:
        while not self._pump_stop.is_set():
            if not self._pump_once(0.005):
                self._pump_stop.wait(0.005)

    def _pump_once(self, poll_timeout: float) -> bool:
        """One round; True when something was acknowledged."""
        try:
            flushed = self.store.flush()
            flushed_backlog = self.bridge.flush_backlog() if self.bridge is not None else 0
        except OSError:
            log.exception("journal flush failed; holding acknowledgements")
            return False
        if self.bridge is not None:
            self.bridge.poll(poll_timeout)
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
