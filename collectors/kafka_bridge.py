"""Forwarding MQTT payloads to Kafka with a durable local backlog for outages.

Normal mode: each payload is produced to Kafka; its token (the MQTT message
to acknowledge) is handed to ``on_done`` when Kafka confirmed the record.

When Kafka is unreachable (librdkafka reports all brokers down, or a record
is not confirmed within ``message.timeout.ms``), the bridge switches to
backlog mode: records go to an append-only backlog file on local disk instead
(written through a :class:`~collectors.journal.Journal`, so they are flushed
before their MQTT message is acknowledged), and records librdkafka still held
are purged into the backlog too. MQTT messages keep flowing and keep landing
in minute files while Kafka is down. Every ``retry_interval`` seconds the
bridge probes Kafka; once it answers, the backlog is produced oldest first,
each backlog file deleted only after Kafka confirmed all of its records, and
the bridge returns to normal mode when the backlog is empty. A crash during a
drain can only send records twice (at-least-once), never lose them.

All methods except :meth:`forward` run on one thread (the collector's pump).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from collectors.journal import CLOSING_SUFFIX, Journal

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
SEGMENT_SUFFIX = ".kbl"


def encode_record(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> bytes:
    meta = orjson.dumps({"topic": topic, "key": key.decode(), "headers": [[k, v.decode()] for k, v in headers]})
    return _LEN.pack(len(meta)) + meta + _LEN.pack(len(value)) + value


def decode_records(data: bytes):
    """Yield (topic, key, value, headers); a torn record at the end (crash mid-write) is dropped."""
    pos, end = 0, len(data)
    while pos + 4 <= end:
        (mlen,) = _LEN.unpack_from(data, pos)
        if pos + 4 + mlen + 4 > end:
            return
        meta = orjson.loads(data[pos + 4: pos + 4 + mlen])
        pos += 4 + mlen
        (vlen,) = _LEN.unpack_from(data, pos)
        if pos + 4 + vlen > end:
            return
        value = data[pos + 4: pos + 4 + vlen]
        pos += 4 + vlen
        yield meta["topic"], meta["key"].encode(), value, [(k, v.encode()) for k, v in meta["headers"]]


class KafkaBridge:
    def __init__(
        self,
        producer,
        backlog_dir: Path,
        on_done: Callable[[object, int], None],
        *,
        retry_interval: float = 1.0,
        monotonic: Callable[[], float],
        fsync_interval: float = 1.0,
        metrics=None,
    ) -> None:
        """``on_done(token, backlog_seq)``: the record of ``token`` is safe (in Kafka when
        ``backlog_seq`` is 0, else in the backlog once its flushed sequence reaches it)."""
        self.producer = producer
        self.backlog = Journal(backlog_dir, fsync_interval=fsync_interval)
        self.on_done = on_done
        self.retry_interval = retry_interval
        self._monotonic = monotonic
        self.metrics = metrics
        self._lock = threading.Lock()
        self._segment = 0
        self._purge = False
        self._next_probe = 0.0
        # A backlog left by a previous run means: drain it before anything else.
        leftovers = [n for n in os.listdir(self.backlog.directory) if n.endswith((SEGMENT_SUFFIX, CLOSING_SUFFIX))]
        self.down = bool(leftovers)
        if leftovers:
            self._segment = max(int(n.split(".")[0]) for n in leftovers) + 1
            log.info("Kafka backlog of a previous run: %d file(s) to drain", len(leftovers))

    # -- called on the MQTT thread ------------------------------------------------
    def forward(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], token) -> None:
        with self._lock:
            if not self.down:
                try:
                    self.producer.produce(topic, value=value, key=key, headers=headers,
                                          on_delivery=lambda err, msg: self._delivered(err, token, topic, key, value, headers))
                    return
                except BufferError:
                    self._go_down("librdkafka queue full")
            seq = self._park_locked(topic, key, value, headers)
        self.on_done(token, seq)

    # -- called on the pump thread ------------------------------------------------
    def poll(self, timeout: float) -> None:
        self.producer.poll(timeout)
        if self._purge:
            self._purge = False
            # Records librdkafka still holds come back with an error and are parked.
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.poll(0)
        if self.down and self._monotonic() >= self._next_probe:
            self._next_probe = self._monotonic() + self.retry_interval
            self._try_drain()

    def flush_backlog(self) -> int:
        return self.backlog.flush()

    def error(self, err) -> None:
        """librdkafka's error_cb: all brokers down means switch to the backlog now."""
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                self._go_down(err.str())

    def _go_down(self, why: str) -> None:
        if not self.down:
            log.warning("Kafka unavailable (%s): forwarding to the local backlog", why)
        self.down = True
        self._purge = True

    def _park_locked(self, topic, key, value, headers) -> int:
        if self.metrics is not None:
            self.metrics.kafka_failed.inc()
        return self.backlog.append(f"{self._segment:012d}{SEGMENT_SUFFIX}", encode_record(topic, key, value, headers))

    def _delivered(self, err, token, topic, key, value, headers) -> None:
        if err is None:
            if self.metrics is not None:
                self.metrics.kafka_delivered.inc()
            self.on_done(token, 0)
            return
        with self._lock:
            self._go_down(err.str())
            seq = self._park_locked(topic, key, value, headers)
        self.on_done(token, seq)

    def _try_drain(self) -> None:
        try:
            self.producer.list_topics(timeout=2)
        except Exception as exc:  # KafkaException: still unreachable
            log.debug("Kafka still unavailable: %s", exc)
            return
        while True:
            with self._lock:
                current = f"{self._segment:012d}{SEGMENT_SUFFIX}"
                self.backlog.seal(current)
                self._segment += 1
                sealed = self.backlog.closing_paths()
                leftovers = sorted(p for p in self.backlog.directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX)
                                   and p.name != f"{self._segment:012d}{SEGMENT_SUFFIX}")
                if not sealed and not leftovers:
                    self.down = False
                    log.info("Kafka backlog drained; forwarding directly again")
                    return
            for path in leftovers:  # unsealed files of a previous run
                path.rename(path.with_name(path.name + ".0" + CLOSING_SUFFIX))
            for path in sorted(self.backlog.closing_paths()):
                if not self._produce_file(path):
                    return

    def _produce_file(self, path: Path) -> bool:
        failed = []
        count = 0
        for topic, key, value, headers in decode_records(path.read_bytes()):
            count += 1
            while True:
                try:
                    self.producer.produce(topic, value=value, key=key, headers=headers,
                                          on_delivery=lambda err, msg: failed.append(err) if err else None)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        left = self.producer.flush(30)
        if failed or left:
            log.warning("draining %s: %d of %d record(s) not confirmed; retrying later", path.name, len(failed) + left, count)
            return False
        if self.metrics is not None:
            self.metrics.kafka_delivered.inc(count)
        path.unlink()
        log.info("drained %d record(s) of the Kafka backlog", count)
        return True

    def close(self, timeout: float) -> int:
        """Deliver what librdkafka holds within ``timeout`` seconds, park the rest; return records parked."""
        left = self.producer.flush(timeout)
        if left:
            with self._lock:
                self._go_down(f"{left} record(s) unconfirmed at shutdown")
            self._purge = False
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.poll(0)
        self.backlog.close()
        return left
