"""Dead letters of the stream loader: what is produced to the dead-letter topic, and how.

A record that cannot be decoded (stage ``decode``) or whose documents a sink
refused for good (stage ``sink:<name>``) is a dead letter of the contract's
kind :data:`include.contract.RECORD`: it is produced to the dead-letter topic
with its key and value unchanged and the contract's headers
(``deadletter_kind``, ``reason``, ``reason_code``, ``stage``,
``source_topic``, ``source_partition``, ``source_offset``), plus
``source_value_bytes``, beside the record's own headers. A record larger than
the payload limit sends only its metadata: the headers, with an empty value
(and no key when the key is large too), so a 2 MB pill cannot make the
dead-letter topic refuse it and block its partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from include.contract import (
    HEADER_DEADLETTER_KIND,
    HEADER_REASON,
    HEADER_REASON_CODE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
    REASON_MAX,
    RECORD,
)

log = logging.getLogger(__name__)

#: Size of the refused record's value, bytes: the one trace of a value left off (metadata only).
HEADER_SOURCE_VALUE_BYTES = "source_value_bytes"
STAGE_DECODE = "decode"
#: Longest key kept on a dead letter, bytes (a device id is at most 128 characters).
KEY_MAX = 1024
#: Own headers of the record larger than this (bytes, all together) are left off the dead letter.
HEADERS_MAX = 16384
_OWN = frozenset({HEADER_DEADLETTER_KIND, HEADER_REASON, HEADER_REASON_CODE, HEADER_STAGE, HEADER_SOURCE_TOPIC,
                  HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET, HEADER_SOURCE_VALUE_BYTES})


def sink_stage(sink: str) -> str:
    return f"sink:{sink}"


@dataclass
class DeadLetter:
    """One record for the dead-letter topic: the Kafka message, its stage, reason code and reason."""

    message: object
    stage: str
    code: str
    reason: str


def record_of(dl: DeadLetter, max_value_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the dead letter of ``dl``; metadata only when the value exceeds ``max_value_bytes``."""
    msg = dl.message
    key, value = msg.key(), msg.value()
    size = len(value or b"")
    own = [(k, v) for k, v in (msg.headers() or []) if k not in _OWN]
    if sum(len(k) + len(v or b"") for k, v in own) > HEADERS_MAX:
        own = []
    headers = own + [
        (HEADER_DEADLETTER_KIND, RECORD.encode()),
        (HEADER_REASON, dl.reason[:REASON_MAX].encode("utf-8", "replace")),
        (HEADER_REASON_CODE, dl.code.encode()),
        (HEADER_STAGE, dl.stage.encode()),
        (HEADER_SOURCE_TOPIC, msg.topic().encode()),
        (HEADER_SOURCE_PARTITION, str(msg.partition()).encode()),
        (HEADER_SOURCE_OFFSET, str(msg.offset()).encode()),
        (HEADER_SOURCE_VALUE_BYTES, str(size).encode()),
    ]
    if size > max_value_bytes:
        value = None
    if key is not None and len(key) > KEY_MAX:
        key = None
    return key, value, headers


class DeadLetterWriter:
    """Produces dead letters and waits for Kafka to confirm them (``producer`` is a confluent_kafka Producer)."""

    def __init__(self, producer, topic: str, *, max_value_bytes: int, timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s

    def send(self, letters: Iterable[DeadLetter]) -> str | None:
        """Produce ``letters`` and wait; None when Kafka confirmed all, else what failed (the caller retries)."""
        from confluent_kafka import KafkaError, KafkaException

        errors: list[str] = []

        def delivered(err, _msg) -> None:
            if err is not None:
                errors.append(err.str())

        for dl in letters:
            key, value, headers = record_of(dl, self.max_value_bytes)
            while True:
                try:
                    self.producer.produce(self.topic, key=key, value=value, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or value is None:
                        raise
                    value = None  # larger than the producer takes: its metadata still go
        left = self.producer.flush(self.timeout_s)
        if left:
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.poll(0)
        if left or errors:
            detail = f": {errors[0]}" if errors else ""
            return f"dead-letter topic {self.topic} unavailable ({left + len(errors)} record(s) not confirmed{detail})"
        return None

    def flush(self, timeout_s: float) -> int:
        return self.producer.flush(timeout_s)
