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

A record Kafka can never take (larger than the broker accepts, invalid) is
not retried forever: whether ``produce`` refuses it at once or its delivery
report says so, it is *quarantined*: appended, with its reason, to
``quarantine/records.kbl`` in the backlog folder, counted, logged once, and
its MQTT message acknowledged (its readings are in the minute files). The same
holds in the drain, which reads a segment record by record (never the whole
file at once) and quarantines a record it cannot decode or produce instead of
raising at every start. No exception from librdkafka ends the caller's thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from collectors.journal import CLOSING_SUFFIX, QUARANTINE, Journal

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
SEGMENT_SUFFIX = ".kbl"
#: A record meta or value longer than this in a backlog file means the file is corrupt.
_RECORD_MAX = 64 * 2**20


def _permanent(err) -> bool:
    """Whether a librdkafka error means the record can never be produced as it is."""
    from confluent_kafka import KafkaError

    return err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG,
                          KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG,
                          KafkaError._BAD_MSG)


class CorruptBacklog(ValueError):
    """A backlog file holds bytes that are not records (the message says where)."""


def encode_record(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> bytes:
    meta = orjson.dumps({"topic": topic, "key": key.decode(), "headers": [[k, v.decode()] for k, v in headers]})
    return _LEN.pack(len(meta)) + meta + _LEN.pack(len(value)) + value


def read_records(fh):
    """Yield (topic, key, value, headers) from an open backlog file, one record at a time.

    A torn record at the end (a crash mid-write) ends the file; bytes that
    cannot be a record raise :class:`CorruptBacklog` naming the offset.
    """
    while True:
        offset = fh.tell()
        head = fh.read(4)
        if len(head) < 4:
            return
        (mlen,) = _LEN.unpack(head)
        if mlen > _RECORD_MAX:
            raise CorruptBacklog(f"offset {offset}: a record header of {mlen} bytes")
        meta_bytes = fh.read(mlen)
        vhead = fh.read(4)
        if len(meta_bytes) < mlen or len(vhead) < 4:
            return
        (vlen,) = _LEN.unpack(vhead)
        if vlen > _RECORD_MAX:
            raise CorruptBacklog(f"offset {offset}: a record value of {vlen} bytes")
        value = fh.read(vlen)
        if len(value) < vlen:
            return
        try:
            meta = orjson.loads(meta_bytes)
            record = meta["topic"], meta["key"].encode(), value, [(k, v.encode()) for k, v in meta["headers"]]
        except Exception as exc:
            raise CorruptBacklog(f"offset {offset}: record metadata is not valid ({type(exc).__name__}: {exc})") from None
        yield record


def decode_records(data: bytes):
    """Yield the records of backlog bytes (see :func:`read_records`)."""
    import io

    yield from read_records(io.BytesIO(data))


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
        max_bytes: int = 0,
    ) -> None:
        """``on_done(token, backlog_seq)``: the record of ``token`` is safe (in Kafka when
        ``backlog_seq`` is 0, else in the backlog once its flushed sequence reaches it)."""
        self.producer = producer
        self.backlog = Journal(backlog_dir, fsync_interval=fsync_interval)
        self.max_bytes = max_bytes
        self.quarantined = 0
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
        """Produce, or park in the backlog; never raises (a refused record is quarantined)."""
        quarantined = False
        with self._lock:
            if not self.down:
                try:
                    self.producer.produce(topic, value=value, key=key, headers=headers,
                                          on_delivery=lambda err, msg: self._delivered(err, token, topic, key, value, headers))
                    return
                except BufferError:
                    self._go_down("librdkafka queue full")
                except Exception as exc:  # KafkaException (MSG_SIZE_TOO_LARGE, ...) or anything else
                    if self._refused(exc):
                        self._quarantine(topic, key, value, headers, f"produce refused: {exc}")
                        quarantined = True
                    else:
                        self._go_down(f"produce failed: {exc}")
            seq = 0 if quarantined else self._park_locked(topic, key, value, headers)
        self.on_done(token, seq)

    @staticmethod
    def _refused(exc: Exception) -> bool:
        from confluent_kafka import KafkaException

        return isinstance(exc, KafkaException) and _permanent(exc.args[0]) or isinstance(exc, (TypeError, ValueError))

    def _quarantine(self, topic: str, key: bytes, value: bytes, headers, reason: str) -> None:
        """Set aside a record Kafka can never take: written and fsynced before its message is acknowledged."""
        folder = self.backlog.directory / QUARANTINE
        folder.mkdir(exist_ok=True)
        meta_headers = [*headers, ("sluice_quarantine_reason", reason[:1000].encode())]
        try:
            record = encode_record(topic, key, value, meta_headers)
        except Exception:  # undecodable key or headers: keep the value and the reason
            record = encode_record(topic, key.decode("utf-8", "replace").encode(), value,
                                   [("sluice_quarantine_reason", reason[:1000].encode())])
        fd = os.open(folder / "records.kbl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.quarantined += 1
        if self.metrics is not None:
            self.metrics.kafka_quarantined.inc()
        log.error("Kafka record for %s (%d bytes) quarantined in %s: %s", topic, len(value), folder, reason)

    def over_cap(self) -> bool:
        return bool(self.max_bytes) and self.backlog.size() >= self.max_bytes

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
        if _permanent(err):  # retrying cannot help: set it aside, acknowledge the message
            with self._lock:
                self._quarantine(topic, key, value, headers, f"delivery refused: {err.str()}")
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
        """Produce one sealed backlog file record by record; True when it is done (and deleted)."""
        transient: list = []
        count = 0

        def report(err, record):
            if err is None:
                return
            if _permanent(err):
                self._quarantine(*record, f"delivery refused in the drain: {err.str()}")
            else:
                transient.append(err)

        with path.open("rb") as fh:
            records = read_records(fh)
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except CorruptBacklog as exc:
                    # The rest of the file cannot be read as records: keep it aside whole.
                    fh.seek(0)
                    self._quarantine_file(path, f"{path.name}: {exc}")
                    break
                count += 1
                topic, key, value, headers = record
                while True:
                    try:
                        self.producer.produce(topic, value=value, key=key, headers=headers,
                                              on_delivery=lambda err, msg, r=record: report(err, r))
                        break
                    except BufferError:
                        self.producer.poll(0.1)
                    except Exception as exc:
                        if self._refused(exc):
                            self._quarantine(topic, key, value, headers, f"produce refused in the drain: {exc}")
                            break
                        log.warning("draining %s: produce failed (%s); retrying later", path.name, exc)
                        self.producer.flush(5)
                        return False
        left = self.producer.flush(30)
        if transient or left:
            log.warning("draining %s: %d of %d record(s) not confirmed; retrying later", path.name, len(transient) + left, count)
            return False
        if self.metrics is not None:
            self.metrics.kafka_delivered.inc(count)
        self.backlog.discard(path)
        log.info("drained %d record(s) of the Kafka backlog", count)
        return True

    def _quarantine_file(self, path: Path, reason: str) -> None:
        folder = self.backlog.directory / QUARANTINE
        folder.mkdir(exist_ok=True)
        copy = folder / (path.name + ".corrupt")
        shutil.copyfile(path, copy)
        (folder / (copy.name + ".reason")).write_text(reason + "\n")
        self.quarantined += 1
        if self.metrics is not None:
            self.metrics.kafka_quarantined.inc()
        log.error("Kafka backlog file quarantined as %s: %s", copy, reason)

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
