"""The reading contract of Sluice: what a reading is, what it is called and where it lands.

Every other module calls this one; none defines these things again
(docs/architecture.md, "The reading contract", describes them for people):

* **Names.** A metric, a tag key, a tag value and a flat payload key are
  :func:`check_name` names: 1-200 characters of letters, digits and ``-_./``
  (unicode letters allowed, as OpenTSDB allows them). A device id and a writer
  id (the collector instance that writes a file) are :func:`check_device` /
  :func:`check_writer` ids: 1-128 ASCII letters, digits and ``._-``, starting
  with a letter or digit, because they become file names. Every check is a
  whole-string match (``fullmatch``): a name ending in ``"\\n"`` is refused
  (``$`` would have matched before it), and no control character passes.
* **Timestamps.** The one text form is ISO-8601 UTC with ``Z``; whole seconds
  carry no fraction, otherwise milliseconds when they suffice, else
  microseconds (:func:`format_timestamp`, :func:`timestamp_text`,
  :func:`canonical_timestamp`). Ids hash this form.
* **Identity.** A reading is (source, device, timestamp, metric, sorted tags);
  :func:`reading_id` hashes it with BLAKE2b-128. A host row is one reading under
  the metric ``"host"``. The spool merge keys rows by :func:`row_identity`, the
  same identity, so "the same row" means the same thing when a file is merged
  and when a document is loaded.
* **Keys.** Every key of the landing zone: the minute files (whose last
  component is the *writer*), the load, staged and dead-letter records, the
  payload dead letters, manifests, heartbeats and state.
* **Dead letters.** One name per kind (:data:`PAYLOAD`, :data:`RECORD`,
  :data:`FILE`), one Kafka topic (:data:`DEADLETTER_TOPIC`) with the kind in a
  header, one landing folder per kind under ``deadletter/``.
* **Index names.** ``{prefix}-{source}-YYYY.MM.DD`` with the prefix of
  ``SLUICE_ES_INDEX_PREFIX`` (:func:`index_prefix`); loaders, index templates,
  Grafana data sources and Kibana data views all take it from here.

Checks raise :class:`ContractError` (a ValueError) whose message names the
value and says what is allowed; boundaries turn it into a reject with that
reason.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson

from include.schemas import HOST, SCHEMAS, SENSOR, SOURCES


class ContractError(ValueError):
    """A value breaks the contract; the message names the value and what is allowed."""


# --- Names and ids -----------------------------------------------------------------------------

#: Longest metric, tag key or tag value (characters).
NAME_MAX: Final = 200
#: OpenTSDB's alphabet: letters (unicode allowed), digits, ``-_./``. No space, comma, quote or control character.
_NAME: Final = re.compile(rf"[\w./-]{{1,{NAME_MAX}}}")
#: Longest device or writer id (characters).
ID_MAX: Final = 128
#: Device and writer ids become file names: a portable, unambiguous ASCII alphabet (unanchored:
#: Python matches it whole, polars anchored ``^…$``; plus: not ending in :data:`SIDECAR_SUFFIX`).
ID_PATTERN: Final = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{ID_MAX - 1}}}"
_ID: Final = re.compile(ID_PATTERN)
#: The file store's metadata sidecar suffix; an id ending in it would shadow a sidecar.
SIDECAR_SUFFIX: Final = ".meta.json"


def is_name(text: object) -> bool:
    """Whether ``text`` is a usable metric, tag key or tag value (see :func:`check_name`)."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def check_name(text: object, what: str = "name") -> str:
    """Return ``text`` when it is a usable metric/tag name or value; else raise ContractError.

    ``what`` names the field in the message (``"metric"``, ``"tag key"`` ...).
    """
    if not isinstance(text, str):
        raise ContractError(f"{what} {text!r} is not a string")
    if _NAME.fullmatch(text) is None:
        raise ContractError(
            f"{what} {_shown(text)} uses characters outside letters, digits and -_./ "
            f"or is not 1-{NAME_MAX} characters long"
        )
    return text


def _check_id(text: object, what: str) -> str:
    if not isinstance(text, str) or _ID.fullmatch(text) is None or text.endswith(SIDECAR_SUFFIX):
        raise ContractError(
            f"{what} {_shown(text)} is not usable in a file name: use letters, digits, '.', '_' or '-' "
            f"(at most {ID_MAX}, starting with a letter or digit)"
        )
    return text


def check_device(device: object) -> str:
    """Return ``device`` unchanged when it is a usable device id; else raise ContractError."""
    return _check_id(device, "device id")


def check_writer(writer: object) -> str:
    """Return ``writer`` (a host name or collector instance id) when usable in a key; else ContractError."""
    return _check_id(writer, "writer id")


def check_source(source: str) -> str:
    """Return ``source`` when it is one of :data:`include.schemas.SOURCES`; else raise ContractError."""
    if source not in SOURCES:
        raise ContractError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    return source


def _shown(text: object, limit: int = 80) -> str:
    """``repr`` of a value cut to ``limit`` characters, so a 1 MB name makes a readable reason."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def format_tags(tags: Mapping[str, str]) -> str:
    """OpenTSDB style ``k=v k=v``, sorted by key so equal tag sets compare equal."""
    return " ".join(f"{k}={tags[k]}" for k in sorted(tags))


def parse_tags(text: str) -> dict[str, str]:
    """Inverse of :func:`format_tags`; ContractError on a pair that is not ``name=name``."""
    return dict(_tag_pairs(text))


@lru_cache(maxsize=4096)
def _tag_pairs(text: str) -> tuple[tuple[str, str], ...]:
    # A device sends the same tags in every reading: checked once (a tuple, so no caller shares a dict).
    tags: dict[str, str] = {}
    for pair in text.split(" ") if text else ():
        key, sep, value = pair.partition("=")
        if not sep or not is_name(key) or not is_name(value):
            raise ContractError(f"tag {_shown(pair)} is not of the form key=value with names of letters, digits, -_./")
        if key in tags:
            raise ContractError(f"tag key {key!r} appears twice")
        tags[key] = value
    return tuple(tags.items())


# --- Timestamps --------------------------------------------------------------------------------

#: The one timestamp form, unanchored (Python uses it with fullmatch, polars anchored ``^…$``):
#: ISO-8601, UTC, ``Z``, 0-9 decimals, ASCII digits only.
TIMESTAMP_PATTERN: Final = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)
_TIMESTAMP: Final = re.compile(TIMESTAMP_PATTERN)
#: The canonical form as a chrono/polars format: ``%.f`` writes 0, 3 or 6 decimals as needed.
POLARS_TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.fZ"
_EPOCH: Final = datetime(1970, 1, 1)


def format_timestamp(dt: datetime) -> str:
    """Canonical text of a datetime (naive means UTC): no fraction, or ms, or µs."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    base = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if dt.microsecond == 0:
        return base + "Z"
    if dt.microsecond % 1000 == 0:
        return f"{base}.{dt.microsecond // 1000:03d}Z"
    return f"{base}.{dt.microsecond:06d}Z"


def timestamp_text(epoch: float) -> str:
    """Canonical text of epoch seconds (UTC), to the microsecond (rounded).

    Raises ContractError when the time is not finite or outside years 1-9999.
    """
    try:
        micros = round(epoch * 1_000_000)
        return format_timestamp(_EPOCH + timedelta(microseconds=micros))
    except (OverflowError, ValueError):
        raise ContractError(f"time {epoch!r} s since the epoch is not a date of years 1-9999") from None


def parse_timestamp(text: str) -> datetime:
    """The aware UTC datetime of contract timestamp text (digits beyond µs dropped); ContractError otherwise."""
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ContractError(f"timestamp {_shown(text)} is not ISO-8601 UTC of the form YYYY-MM-DDTHH:MM:SS[.fff]Z")
    year, month, day, hour, minute, second, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, timezone.utc)
    except ValueError as exc:
        raise ContractError(f"timestamp {text!r} is not a real date and time: {exc}") from None


def parse_iso_utc(text: str) -> datetime:
    """A time a person or a config gave (ISO-8601 with ``Z`` or an offset) as an aware UTC datetime.

    Looser than :func:`parse_timestamp` (which reads the contract's own text): any
    ISO-8601 form Python reads, as long as it names its time zone. ContractError says
    what is expected otherwise.
    """
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ContractError(f"{_shown(text)} is not an ISO-8601 time such as 2026-11-22T00:00:00Z") from None
    if value.tzinfo is None:
        raise ContractError(f"{text!r} has no time zone; give UTC, e.g. 2026-11-22T00:00:00Z")
    return value.astimezone(timezone.utc)


def canonical_timestamp(text: str) -> str:
    """The canonical form of contract timestamp text: ``…:05.500Z`` and ``…:05.5Z`` are one reading."""
    return format_timestamp(parse_timestamp(text))


def now_text() -> str:
    """The current time, whole seconds, as contract text (records' ``loaded_at`` and the like)."""
    return format_timestamp(datetime.now(timezone.utc).replace(microsecond=0))


def floor_minute(ts: datetime) -> datetime:
    """The UTC minute containing an aware datetime; ContractError for a naive one."""
    if ts.tzinfo is None:
        raise ContractError(f"{ts!r} has no time zone; landing-zone times are UTC")
    return ts.astimezone(timezone.utc).replace(second=0, microsecond=0)


def minutes(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every minute in [start, end), UTC."""
    m = floor_minute(start)
    while m < end:
        yield m
        m += timedelta(minutes=1)


# --- Identity ----------------------------------------------------------------------------------

#: The metric part of a host row's identity: a host row (one second of one host) is one reading.
HOST_DOC_METRIC: Final = "host"
#: Joins the parts of an identity before hashing; no name or timestamp can contain it.
ID_SEPARATOR: Final = "\x1f"
def identity_key(source: str, device: str, timestamp: str, metric: str, tags: str = "") -> bytes:
    """The bytes :func:`reading_id` hashes; the columnar engine builds the same bytes with polars."""
    return ID_SEPARATOR.join((source, device, timestamp, metric, tags)).encode()


def hash_identity(key: bytes) -> str:
    """The id of an :func:`identity_key`: BLAKE2b, 16 bytes, hex."""
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def reading_id(source: str, device: str, timestamp: str, metric: str, tags: str = "") -> str:
    """Deterministic id of one reading, shared by the batch and the stream path.

    The sorted tags (``format_tags``) are part of it: one Arduino payload sends
    temperature, humidity and dust under the same metric and timestamp, told
    apart only by ``type=``. ``timestamp`` must be canonical.
    """
    return hash_identity(identity_key(source, device, timestamp, metric, tags))


class RowIdentity(NamedTuple):
    """The identity of one reading, in the order rows are written (time first, then name).

    Its hash is the reading's id (:attr:`id`); two CSV rows with equal
    identities are the same reading.
    """

    timestamp: str
    device: str
    metric: str
    tags: str
    source: str

    @property
    def id(self) -> str:
        return reading_id(self.source, self.device, self.timestamp, self.metric, self.tags)


def row_identity(source: str, row: Sequence[str]) -> RowIdentity:
    """The identity of one CSV row in its schema's column order (the spool merge's key).

    The same identity as :func:`reading_id` of the row's document: timestamp in
    canonical form and tags sorted, so ``…:05.5Z`` and ``…:05.500Z`` are one row.
    Total: text the contract refuses is taken as it is (such a row is refused
    at load time with its reason; the merge only needs it to be stable).
    """
    names = SCHEMAS[check_source(source)].names
    fields = dict(zip(names, row, strict=False))  # total: a short row keeps what it has
    raw_ts = fields.get("timestamp", "")
    try:
        stamp = canonical_timestamp(raw_ts)
    except ContractError:
        stamp = raw_ts
    if source == HOST:
        return RowIdentity(stamp, fields.get("host", ""), HOST_DOC_METRIC, "", HOST)
    tags = fields.get("tags", "")
    try:
        tags = format_tags(parse_tags(tags))
    except ContractError:
        pass
    return RowIdentity(stamp, fields.get("device", ""), fields.get("metric", ""), tags, SENSOR)


# --- Landing keys ------------------------------------------------------------------------------
#
#   raw/{source}/date=D/hour=H/minute=M/{writer}.csv                       a minute file (one per writer)
#   loaded/{source}/date=D/hour=H/minute=M/{writer}.csv@{etag}.json        its load record
#   staged/{source}/date=D/hour=H/minute=M/{writer}.ndjson                 its JSON documents
#   deadletter/file/{source}/date=D/hour=H/minute=M/{writer}.csv@{etag}.json   rows/the file the DAG refused
#   deadletter/payload/sensor/date=D/hour=H/minute=M/{writer}.jsonl        MQTT payloads the collector refused
#   manifests/{source}/date=D/hour=H/minute=M/{writer}.json                what a writer wrote that minute
#   heartbeats/{source}/{writer}.json                                      that a writer is alive
#   state/{name}.json                                                      checkpoints of the DAGs
#   anomaly/{source}/{start}_{end}.json                                    the Spark anomaly job's results

RAW: Final = "raw/"
LOADED: Final = "loaded/"
STAGED: Final = "staged/"
DEADLETTERS: Final = "deadletter/"
MANIFESTS: Final = "manifests/"
HEARTBEATS: Final = "heartbeats/"
STATE: Final = "state/"
ANOMALY_RESULTS: Final = "anomaly/"
CSV_SUFFIX: Final = ".csv"

_RAW_KEY: Final = re.compile(
    r"(?:(?P<prefix>.*)/)?raw/(?P<source>[a-z]+)/date=(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})/hour=(?P<hour>[0-9]{2})/"
    r"minute=(?P<minute>[0-9]{2})/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)"
)


def minute_path(minute: datetime) -> str:
    """``date=YYYY-MM-DD/hour=HH/minute=MM/`` of the UTC minute containing ``minute``."""
    m = floor_minute(minute)
    return f"date={m:%Y-%m-%d}/hour={m:%H}/minute={m:%M}/"


def minute_prefix(source: str, minute: datetime) -> str:
    """``raw/{source}/date=…/hour=…/minute=…/``: every writer's file of the minute is under it."""
    return f"{RAW}{check_source(source)}/{minute_path(minute)}"


def hour_prefix(source: str, hour: datetime) -> str:
    """``raw/{source}/date=…/hour=…/``: the minute files of one hour (one listing)."""
    return minute_prefix(source, hour).split("minute=")[0]


def day_prefix(kind: str, source: str, day: datetime) -> str:
    """``{kind}{source}/date=…/`` for ``kind`` one of :data:`RAW`, :data:`LOADED` (one listing per day)."""
    return f"{kind}{check_source(source)}/" + minute_path(day).split("hour=")[0]


def minute_key(source: str, minute: datetime, writer: str, suffix: str = CSV_SUFFIX) -> str:
    """Key of ``writer``'s minute file: a host name for host files, a collector instance id for sensor files."""
    return minute_prefix(source, minute) + check_writer(writer) + suffix


@dataclass(frozen=True)
class MinuteFile:
    """What a minute file's key says: source, UTC minute, file name (``{writer}.csv``)."""

    source: str
    minute: datetime
    name: str

    @property
    def writer(self) -> str:
        return self.name.rsplit(".", 1)[0]


def parse_key(key: str) -> MinuteFile:
    """Split a minute file's key into source, minute (UTC) and file name; ContractError otherwise."""
    match = _RAW_KEY.fullmatch(key)
    if match is None or match["source"] not in SOURCES:
        raise ContractError(f"{key!r} is not a landing-zone minute key (raw/<source>/date=…/hour=…/minute=…/<file>)")
    try:
        minute = datetime.strptime(f"{match['date']} {match['hour']}:{match['minute']}", "%Y-%m-%d %H:%M")
    except ValueError:
        raise ContractError(f"{key!r} names no real minute") from None
    return MinuteFile(match["source"], minute.replace(tzinfo=timezone.utc), match["name"])


def _mirror(kind: str, raw_key: str, suffix: str) -> str:
    if not raw_key.startswith(RAW):
        raise ContractError(f"{raw_key!r} is not a key under {RAW}")
    parse_key(raw_key)
    return kind + raw_key[len(RAW):] + suffix


def loaded_key(raw_key: str, etag: str) -> str:
    """Key of the load record of one version (etag) of a minute file."""
    return _mirror(LOADED, raw_key, f"@{etag}.json")


def staged_key(raw_key: str) -> str:
    """Key of the staged JSON documents of a minute file (per-minute DAGs)."""
    return _mirror(STAGED, raw_key.removesuffix(CSV_SUFFIX), ".ndjson")


# --- Dead letters ------------------------------------------------------------------------------

#: An MQTT payload the collector refused (not JSON, no valid reading, too large ...).
PAYLOAD: Final = "payload"
#: A Kafka record the stream loader refused (undecodable, or refused by a sink for good).
RECORD: Final = "record"
#: A landed minute file, or some of its rows or documents, refused by the batch load.
FILE: Final = "file"
#: The Kafka topic of dead letters of kinds PAYLOAD and RECORD (the kind is in :data:`HEADER_DEADLETTER_KIND`).
DEADLETTER_TOPIC: Final = "sluice.deadletter"
#: Headers of a dead-letter record on Kafka (the original record's own headers are kept too).
HEADER_DEADLETTER_KIND: Final = "deadletter_kind"
HEADER_REASON: Final = "reason"
HEADER_REASON_CODE: Final = "reason_code"
#: Where it was refused: ``collector``, ``decode`` or ``sink:<name>``.
HEADER_STAGE: Final = "stage"
HEADER_SOURCE_TOPIC: Final = "source_topic"
HEADER_SOURCE_PARTITION: Final = "source_partition"
HEADER_SOURCE_OFFSET: Final = "source_offset"
#: Longest reason text kept in a header or record (characters).
REASON_MAX: Final = 1000

# --- How far the stream loader trusts a record's received_at header (issue 15) ------------------
#: Any producer may set the ``received_at`` header; the record's Kafka timestamp (set when it
#: was produced) bounds it. The header may be at most this many seconds *after* the timestamp:
#: the collector stamps receive time before it produces, so only clock skew explains more.
RECEIVED_AT_MAX_AHEAD_S: Final = 300.0
#: ... and at most this many seconds *before* it: the MQTT collector's Kafka backlog produces
#: late what it received during an outage, with its receive time; a day covers a long outage.
RECEIVED_AT_MAX_BEHIND_S: Final = 86400.0
#: The reason code of an unexpected exception at a boundary: the reason reads ``internal: <what>``.
INTERNAL: Final = "internal"


def deadletter_prefix(kind: str) -> str:
    """``deadletter/{kind}/``: one folder per kind, never beside ``raw/`` or ``loaded/``."""
    if kind not in (PAYLOAD, FILE):
        raise ContractError(f"dead letters of kind {kind!r} do not land; kinds that land: {PAYLOAD}, {FILE}")
    return f"{DEADLETTERS}{kind}/"


def file_deadletter_key(raw_key: str, etag: str) -> str:
    """Key of the dead-letter record of one version of a minute file (kind :data:`FILE`)."""
    return deadletter_prefix(FILE) + _mirror("", raw_key, f"@{etag}.json")


def payload_deadletter_key(minute: datetime, writer: str) -> str:
    """Key of a writer's payload dead letters (JSON lines) of one receive minute (kind :data:`PAYLOAD`)."""
    return f"{deadletter_prefix(PAYLOAD)}{SENSOR}/{minute_path(minute)}{check_writer(writer)}.jsonl"


def split_record_key(key: str) -> tuple[str, str]:
    """``(raw key, etag)`` of a load record or file dead-letter record key; ContractError otherwise."""
    for kind in (LOADED, deadletter_prefix(FILE)):
        if key.startswith(kind) and key.endswith(".json") and "@" in key:
            body, _, etag = key[len(kind):-len(".json")].rpartition("@")
            return RAW + body, etag
    raise ContractError(f"{key!r} is not a load or dead-letter record key")


@dataclass
class FileDeadLetter:
    """The dead-letter record of one version of a minute file (kind :data:`FILE`, JSON).

    Why the file (``quarantined`` with its ``reason``), some of its rows
    (``rows``: ``{"line", "reason", "row"}``, header is line 1) or documents
    (``documents``: ``{"id", "sink", "reason"}``) were refused.
    ``rejected_rows`` is exact; ``rows`` keeps at most the first 1,000.
    """

    key: str
    etag: str
    quarantined: bool
    reason: str | None
    rejected_rows: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    written_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> FileDeadLetter:
        return cls(**orjson.loads(data))


#: At most this many bytes of a refused payload are kept in its dead letter (the size is always exact).
PAYLOAD_KEPT_MAX: Final = 65536


def payload_deadletter_line(
    *, topic: str, payload: bytes, received: float, reason: str, codes: Sequence[str], accepted_readings: int
) -> bytes:
    """One JSON line of a payload dead-letter file (kind :data:`PAYLOAD`).

    ``received_at`` (contract text, ms), the MQTT ``topic``, ``reason``,
    ``codes`` (sorted, distinct), ``accepted_readings`` (readings of the same
    payload that were kept), ``payload_bytes`` and the first
    :data:`PAYLOAD_KEPT_MAX` bytes as ``payload`` (UTF-8) or ``payload_base64``.
    """
    entry: dict[str, Any] = {
        "received_at": timestamp_text(round(received, 3)),
        "topic": topic,
        "reason": reason[:REASON_MAX],
        "codes": sorted(set(codes)),
        "accepted_readings": accepted_readings,
        "payload_bytes": len(payload),
    }
    kept = payload[:PAYLOAD_KEPT_MAX]
    try:
        entry["payload"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(kept).decode()
    return orjson.dumps(entry) + b"\n"


def reason_code(reason: str) -> str:
    """The code of a reject reason: the text before its first ``:`` (the whole text if none)."""
    return reason.split(":", 1)[0].strip() or "unknown"


def internal_reason(exc: BaseException) -> str:
    """The reason of an unexpected exception at a boundary: ``internal: <type>: <message>``."""
    return f"{INTERNAL}: {type(exc).__name__}: {str(exc)[:REASON_MAX]}"


# --- Manifests, heartbeats, state --------------------------------------------------------------


def manifest_prefix(source: str, minute: datetime) -> str:
    return f"{MANIFESTS}{check_source(source)}/{minute_path(minute)}"


def manifest_key(source: str, minute: datetime, writer: str) -> str:
    return manifest_prefix(source, minute) + check_writer(writer) + ".json"


def heartbeat_prefix(source: str) -> str:
    return f"{HEARTBEATS}{check_source(source)}/"


def heartbeat_key(source: str, writer: str) -> str:
    return heartbeat_prefix(source) + check_writer(writer) + ".json"


def state_key(name: str) -> str:
    """Key of a DAG's checkpoint (``state/kafka-lag/windows`` -> ``state/kafka-lag/windows.json``)."""
    return f"{STATE}{name}.json"


# --- Index names -------------------------------------------------------------------------------

#: Default prefix of every index, index template and data view; ``SLUICE_ES_INDEX_PREFIX`` overrides it.
ES_INDEX_PREFIX: Final = "sluice"
ES_INDEX_PREFIX_ENV: Final = "SLUICE_ES_INDEX_PREFIX"
ES_TIME_FIELD: Final = "@timestamp"
#: Source name of the Kafka consumer-lag documents (index ``{prefix}-lag-YYYY.MM.DD``).
LAG: Final = "lag"
#: Source name of the reconciliation and freshness documents (index ``{prefix}-reconcile-YYYY.MM.DD``).
RECONCILE: Final = "reconcile"
ES_SOURCES: Final = (HOST, SENSOR, LAG, RECONCILE)
_PREFIX: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def check_index_prefix(prefix: str) -> str:
    """Return ``prefix`` when usable as the start of an index name; else ContractError."""
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ContractError(
            f"index prefix {_shown(prefix)} must be 1-64 lower-case letters, digits or _.- "
            "starting with a letter or digit"
        )
    return prefix


def index_prefix(environ: Mapping[str, str] | None = None) -> str:
    """The index prefix: ``SLUICE_ES_INDEX_PREFIX`` or :data:`ES_INDEX_PREFIX`; ContractError if unusable."""
    env = os.environ if environ is None else environ
    return check_index_prefix(env.get(ES_INDEX_PREFIX_ENV) or ES_INDEX_PREFIX)


def _es_source(source: str) -> str:
    if source not in ES_SOURCES:
        raise ContractError(f"source {source!r} has no indices; sources with indices: {', '.join(ES_SOURCES)}")
    return source


def template_name(source: str, *, prefix: str = ES_INDEX_PREFIX) -> str:
    """The index template of a source's daily indices."""
    return f"{prefix}-{_es_source(source)}"


def index_pattern(source: str, *, prefix: str = ES_INDEX_PREFIX) -> str:
    """The wildcard matching every daily index of ``source`` (templates, data sources, data views)."""
    return f"{prefix}-{_es_source(source)}-*"


def daily_index(source: str, timestamp: str, *, prefix: str = ES_INDEX_PREFIX) -> str:
    """``{prefix}-{source}-YYYY.MM.DD`` of a canonical ``@timestamp`` (its UTC day)."""
    return f"{prefix}-{source}-{timestamp[0:4]}.{timestamp[5:7]}.{timestamp[8:10]}"
