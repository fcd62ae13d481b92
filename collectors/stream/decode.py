"""Pure decoding of one Kafka record into documents, or into a reject with a reason. No I/O.

:func:`decode_record` is total: whatever the bytes of a record (not JSON,
not UTF-8, empty, nested thousands of levels deep, huge, of the wrong shape,
a host row without its host, numbers that are NaN or overflow), it returns
:class:`Decoded` or :class:`Rejected`, never raises. An exception nobody
foresaw becomes ``Rejected(INTERNAL, "internal: <what>")`` so the loader
dead-letters the record, counts it and logs one line instead of dying and
replaying the same offset forever.

A sensor record is the MQTT payload as forwarded (key = device, header
``received_at``); it goes through :func:`include.sensors.parse_payload` as the
collector's files do, and :func:`reading_document` gives each reading the
document and id :func:`include.transform.sensor_document` gives its CSV row,
so a reading is the same whether it arrives by file or by stream. A host record is one host CSV row as a JSON object; it becomes the
row's text again and goes through :func:`include.transform.host_document`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from include import kafka as topics
from include.contract import (
    INTERNAL,
    RECEIVED_AT_MAX_AHEAD_S,
    RECEIVED_AT_MAX_BEHIND_S,
    ContractError,
    check_device,
    internal_reason,
    parse_timestamp,
    reading_id,
)
from include.schemas import HOST, HOST_SCHEMA, REQUIRED, SENSOR
from include.sensors import Limits, Reading, parse_payload, reading_stamp
from include.transform import document_id, host_document, sensor_document_of

_HOST_COLUMNS = frozenset(HOST_SCHEMA.names)
#: The reject tally of a payload whose readings all passed (most of them), shared: never written to.
_NO_REJECTS: Tally = Tally()


class Undecodable(ValueError):
    """A record the loader cannot turn into documents; ``code`` is short and stable."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class DecodeRules:
    """Which topic carries which source, the payload limits the MQTT collector applies too, and how far
    a ``received_at`` header may be from the record's Kafka timestamp (:func:`received_time`)."""

    sensor_topic: str
    host_topic: str
    limits: Limits = Limits()
    received_at_max_ahead: float = RECEIVED_AT_MAX_AHEAD_S
    received_at_max_behind: float = RECEIVED_AT_MAX_BEHIND_S


#: Why a ``received_at`` header was set aside for the Kafka timestamp (counted by the loader's metrics).
RECEIVED_AT_INVALID = "invalid"
RECEIVED_AT_AHEAD = "ahead_of_kafka_timestamp"
RECEIVED_AT_BEHIND = "behind_kafka_timestamp"


@dataclass
class Decoded:
    """The documents of one record: ``(document id, document)`` pairs, and reject codes of readings left out."""

    source: str
    docs: list[tuple[str, dict]]
    rejected: Tally = field(default_factory=Tally)
    #: Why the record's received_at header was not trusted (RECEIVED_AT_*), None when it was or there was none.
    untrusted_received_at: str | None = None
    #: The record's receive time (:func:`received_time`) when decoding needed it (a sensor record), else None.
    received: float | None = None


@dataclass(frozen=True)
class Rejected:
    """Why a record gives no documents; ``code`` counts, ``reason`` explains (what, where, what to do)."""

    code: str
    reason: str


def decode_record(rules: DecodeRules, topic: str, key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes | None]] | None, kafka_timestamp_ms: int | None) -> Decoded | Rejected:
    """Documents of one Kafka record, or why there are none. Never raises."""
    try:
        if topic == rules.sensor_topic:
            received, untrusted = received_time(headers, kafka_timestamp_ms, rules)
            docs, rejects = sensor_documents(key, value, received, rules.limits)
            return Decoded(SENSOR, docs, rejects, untrusted, received)
        if topic == rules.host_topic:
            docs = host_documents(value, rules.limits)
            return Decoded(HOST, [(document_id(HOST, d), d) for d in docs])
        raise Undecodable("unknown_topic", f"topic {topic} is not one the loader reads")
    except Undecodable as exc:
        return Rejected(exc.code, exc.reason)
    except Exception as exc:  # the boundary is total: an unforeseen failure is a reject, never a dead loader
        return Rejected(INTERNAL, internal_reason(exc))


def received_time(headers: Sequence[tuple[str, bytes | None]] | None, kafka_timestamp_ms: int | None,
                  rules: DecodeRules | None = None) -> tuple[float, str | None]:
    """Receive time (epoch seconds) of a forwarded MQTT payload, and why the header was set aside (or None).

    The ``received_at`` header the MQTT collector set (ISO-8601 UTC, whole
    milliseconds), as long as it is within ``rules``' bounds of the record's
    Kafka timestamp: at most ``received_at_max_ahead`` seconds after it and
    ``received_at_max_behind`` before it. Any producer can write that header;
    the timestamp is the one the record was produced with, so a header outside
    the bounds, or not a timestamp at all, gives way to the Kafka timestamp and
    a reason code (``RECEIVED_AT_*``) the loader counts. No header: the Kafka
    timestamp. Both are fixed per record, so a replay decodes to the same readings.
    """
    rules = rules or DecodeRules("", "")
    kafka = kafka_timestamp_ms / 1000.0 if kafka_timestamp_ms is not None and kafka_timestamp_ms > 0 else None
    untrusted = None
    for name, value in headers or ():
        if name == topics.HEADER_RECEIVED_AT and value:
            try:
                header = parse_timestamp(value.decode()).timestamp()
            except (UnicodeDecodeError, ContractError):
                untrusted = RECEIVED_AT_INVALID
                break
            if kafka is None:
                return header, None  # nothing to check it against (a broker without timestamps)
            if header - kafka > rules.received_at_max_ahead:
                untrusted = RECEIVED_AT_AHEAD
            elif kafka - header > rules.received_at_max_behind:
                untrusted = RECEIVED_AT_BEHIND
            else:
                return header, None
            break
    if kafka is not None:
        return kafka, untrusted
    raise Undecodable("no_receive_time", "record has neither a valid received_at header nor a Kafka timestamp")


def sensor_documents(key: bytes | None, value: bytes | None, received: float, limits: Limits) -> tuple[list[dict], Tally]:
    """``(document id, document)`` pairs of one forwarded MQTT payload, and the reject codes of readings left out.

    Raises Undecodable when the key is no usable device id or no reading of
    the payload is valid (the reason is :attr:`include.sensors.Parsed.reason`).
    """
    try:
        device = check_device((key or b"").decode())
    except (UnicodeDecodeError, ContractError) as exc:
        raise Undecodable("bad_device", f"record key: {exc}") from None
    parsed = parse_payload(value or b"", received, limits)
    if not parsed.readings:
        code = parsed.rejects[0].code if parsed.rejects else "no_readings"
        raise Undecodable(code, parsed.reason or "no readings")
    rejects = Tally(r.code for r in parsed.rejects) if parsed.rejects else _NO_REJECTS
    return [reading_document(device, r) for r in parsed.readings], rejects


def reading_document(device: str, reading: Reading) -> tuple[str, dict]:
    """``(document id, document)`` of one reading :func:`include.sensors.parse_payload` accepted.

    The same as :func:`include.transform.sensor_document` and ``document_id``
    make of the reading's CSV row (:func:`include.sensors.csv_row`), built by
    the same :func:`include.transform.sensor_document_of` without writing that
    text and reading it back, which was half of the loader's decoding
    (profiled): the timestamp is canonical as made, the value a finite number,
    the tags text sorted. ``test_stream_decode`` holds the two paths equal.
    """
    stamp = reading_stamp(reading.epoch)
    doc = sensor_document_of(stamp, device, reading.metric, float(reading.value), reading.tags)
    return reading_id(SENSOR, device, stamp, reading.metric, reading.tags), doc


def host_row(value: bytes | None, limits: Limits = Limits()) -> tuple[dict[str, str], list[str]]:
    """The host CSV row (column -> text) and its columns of one ``sluice.host.metrics`` record.

    The host sampler publishes a row as a JSON object in HOST_SCHEMA order,
    numbers as numbers and missing values as null; the text is what the CSV
    holds (an empty field for null). The columns a host file must have
    (:data:`include.schemas.REQUIRED`) must be there. Raises Undecodable.
    """
    data = value or b""
    if len(data) > limits.max_bytes:
        raise Undecodable("oversized", f"host record of {len(data)} bytes exceeds {limits.max_bytes} bytes")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Undecodable("not_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Undecodable("wrong_type", f"host record is a JSON {type(obj).__name__}, not an object")
    row: dict[str, str] = {}
    for name, raw in obj.items():
        if name not in _HOST_COLUMNS:
            raise Undecodable("unknown_column", f"column {name!r} is not in the host schema")
        if raw is None:
            row[name] = ""
        elif isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise Undecodable("wrong_type", f"column {name}: {str(raw)[:100]!r} is not a number or text")
        else:
            row[name] = raw if isinstance(raw, str) else repr(raw)
    missing = [n for n in REQUIRED[HOST] if n not in row]
    if missing:
        raise Undecodable("missing_column", f"host record lacks column(s) {', '.join(missing)}; "
                                            f"a host row needs at least {', '.join(REQUIRED[HOST])}")
    try:
        check_device(row["host"])
    except ContractError as exc:
        raise Undecodable("bad_device", f"column host: {exc}") from None
    return row, [n for n in HOST_SCHEMA.names if n in row]


def host_documents(value: bytes | None, limits: Limits = Limits()) -> list[dict]:
    """The one document of a host record (:func:`include.transform.host_document`); raises Undecodable."""
    row, columns = host_row(value, limits)
    try:
        return [host_document(row, columns)]
    except ContractError as exc:
        raise Undecodable("bad_row", str(exc)) from None
