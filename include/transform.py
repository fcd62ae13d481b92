"""CSV minute files -> JSON documents and OpenTSDB datapoints: pure functions.

Two layers, one meaning:

* **Row functions** (:func:`host_document`, :func:`sensor_document`,
  :func:`document_id`, :func:`document_datapoints`) turn one CSV row, as a
  mapping of column name to text, into one typed document. The Kafka stream
  loader reuses them for single readings, and the file transform uses them to
  name the reason a row is rejected.
* **File functions** (:func:`transform_file`) turn the bytes of one minute file
  into documents with the columnar engine (polars): every column is read as
  text, cast with ``strict=False`` and checked, so a bad value rejects its row
  (with the reason the row function gives) and the rest of the file loads.
  :func:`transform_file_rows` does the same row by row with the csv module; it
  is the reference the tests compare the columnar path with, the fallback for
  files polars cannot split (ragged rows) and the baseline of the benchmark.

A document is one CSV row: ``@timestamp`` (ISO-8601 UTC, canonical form, see
:func:`include.contract.canonical_timestamp`), then the row's columns with numbers as numbers.
A sensor row's ``tags`` (``k=v k=v``) becomes an object of strings. Its id is
:func:`include.contract.reading_id` of (source, device, timestamp, metric, tags);
a host row is one document under the metric ``"host"`` (:data:`HOST_DOC_METRIC`).

File-level faults (no header, a header the schema refuses, no data rows) raise
:class:`FileRejected`: the caller quarantines the whole file. Row-level faults
(a value that is not a number, a bad timestamp, a row with too few or too many
fields) become :class:`RowError` entries and reject only that row.
"""

from __future__ import annotations

import csv
import io
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from include.contract import (
    ES_TIME_FIELD,
    HOST_DOC_METRIC,
    ID_SEPARATOR,
    POLARS_TIMESTAMP_FORMAT,
    TIMESTAMP_PATTERN,
    ID_PATTERN,
    SIDECAR_SUFFIX,
    ContractError,
    canonical_timestamp,
    check_device,
    check_name,
    check_writer,
    format_tags,
    hash_identity,
    parse_tags,
    reading_id,
)
from include.schemas import HOST, HOST_METRICS, REQUIRED, SCHEMAS, SENSOR, SOURCES

if TYPE_CHECKING:  # polars is imported where it is used: the stream loader and the DAGs' parse never need it
    import polars as pl

TIME_FIELD = ES_TIME_FIELD

#: Numbers of the CSV, ASCII digits only (``\d`` would take Arabic-Indic digits too), unanchored:
#: Python matches them whole (fullmatch), polars anchored ``^…$``.
_INT_PATTERN = r"[+-]?[0-9]+"
_FLOAT_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_INT = re.compile(_INT_PATTERN)
_FLOAT = re.compile(_FLOAT_PATTERN)
_INT64 = (-(2**63), 2**63 - 1)
#: Column name -> kind ("int", "float", "str", ...) per source.
_KINDS = {source: {c.name: c.kind for c in schema.columns} for source, schema in SCHEMAS.items()}


class FileRejected(ValueError):
    """The whole file is unusable (header or no rows); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RowError:
    """A rejected row: its line in the file (header is line 1), why, and its text."""

    line: int
    reason: str
    row: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "row": self.row}


@dataclass
class FileDocuments:
    """What one file (or a batch of files) became.

    ``documents[i]`` is the JSON of one accepted row, ``ids[i]`` its document id
    and ``timestamps[i]`` its canonical ``@timestamp`` (which picks the daily
    index). ``rows_read`` counts data rows, accepted or not.
    """

    source: str
    rows_read: int = 0
    documents: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    timestamps: list[str] = field(default_factory=list)
    row_errors: list[RowError] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.documents)

    @property
    def rejected(self) -> int:
        return len(self.row_errors)


# --- Values --------------------------------------------------------------------------------


def parse_int(column: str, text: str) -> int:
    """A signed 64-bit integer written in decimal digits; ContractError otherwise."""
    if not _INT.fullmatch(text):
        raise ContractError(f"column {column}: {text!r} is not an integer")
    value = int(text)
    if not _INT64[0] <= value <= _INT64[1]:
        raise ContractError(f"column {column}: {text!r} does not fit in 64 bits")
    return value


def parse_float(column: str, text: str) -> float:
    """A finite decimal number (``1``, ``-2.5``, ``1e3``) in ASCII digits; ContractError otherwise.

    NaN and infinities, spelled out or out of range (``1e999``), are refused:
    JSON has no spelling for them and a sink would store them as null or fail.
    """
    if text.lstrip("+-").lower() in ("nan", "inf", "infinity"):
        raise ContractError(f"column {column}: {text!r} is not a finite number")
    if not _FLOAT.fullmatch(text):
        raise ContractError(f"column {column}: {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ContractError(f"column {column}: {text!r} is not a finite number")
    return value


# --- Rows ------------------------------------------------------------------------------------


def _field(row: Mapping[str, str | None], column: str) -> str:
    value = row.get(column)
    if value is None or value == "":
        raise ContractError(f"column {column}: no value")
    return value


def host_document(row: Mapping[str, str | None], columns: Sequence[str] | None = None) -> dict[str, Any]:
    """One host row -> its document: ``@timestamp``, ``host``, numeric fields as numbers.

    ``columns`` are the file's header (default: the row's keys); every one of
    them must have a value. Raises ContractError naming the first bad value.
    """
    kinds = _KINDS[HOST]
    names = list(columns) if columns is not None else list(row.keys())
    for column in REQUIRED[HOST]:  # a Kafka host record may lack any of them; a file header cannot
        if column not in names:
            raise ContractError(f"column {column}: no value")
    doc: dict[str, Any] = {TIME_FIELD: canonical_timestamp(_field(row, "timestamp"))}
    for column in names:
        if column == "timestamp":
            continue
        kind = kinds.get(column)
        if kind is None:
            raise ContractError(f"column {column} is not in the host schema")
        text = _field(row, column)
        if kind == "int":
            doc[column] = parse_int(column, text)
        elif kind == "float":
            doc[column] = parse_float(column, text)
        elif column == "host":
            doc[column] = _checked(check_writer, column, text)
        else:
            doc[column] = text
    return doc


def _checked(check: Callable[[str], str], column: str, text: str) -> str:
    try:
        return check(text)
    except ContractError as exc:
        raise ContractError(f"column {column}: {exc}") from None


def sensor_document(row: Mapping[str, str | None]) -> dict[str, Any]:
    """One sensor row -> ``{"@timestamp", "device", "metric", "value", "tags": {k: v}}``.

    ``tags`` may be empty; a tag without ``=`` rejects the row (ContractError).
    """
    return sensor_document_of(
        canonical_timestamp(_field(row, "timestamp")), _field(row, "device"), _field(row, "metric"),
        parse_float("value", _field(row, "value")), row.get("tags") or "",
    )


def sensor_document_of(stamp: str, device: str, metric: str, value: float, tags_text: str) -> dict[str, Any]:
    """The sensor document of checked parts (a canonical timestamp, a finite value); the row engine,
    the columnar engine and the stream loader all build it here."""
    try:
        tags = parse_tags(tags_text)
    except ContractError as exc:
        raise ContractError(f"column tags: {exc}") from None
    return {
        TIME_FIELD: stamp,
        "device": _checked(check_device, "device", device),
        "metric": _checked(lambda t: check_name(t, "metric"), "metric", metric),
        "value": value,
        "tags": tags,
    }


def row_document(
    source: str, row: Mapping[str, str | None], columns: Sequence[str] | None = None
) -> dict[str, Any]:
    """:func:`host_document` or :func:`sensor_document` by source."""
    if source == HOST:
        return host_document(row, columns)
    if source == SENSOR:
        return sensor_document(row)
    raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")


def document_id(source: str, doc: Mapping[str, Any]) -> str:
    """Deterministic id of a document (see :func:`include.contract.reading_id`).

    A host document is keyed by (host, timestamp) under the metric ``"host"``;
    a sensor document by (device, timestamp, metric, sorted tags). Re-running a
    minute therefore overwrites the same documents.
    """
    if source == HOST:
        return reading_id(HOST, doc["host"], doc[TIME_FIELD], HOST_DOC_METRIC, "")
    if source == SENSOR:
        return reading_id(SENSOR, doc["device"], doc[TIME_FIELD], doc["metric"], format_tags(doc.get("tags") or {}))
    raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")


@lru_cache(maxsize=4096)
def opentsdb_timestamp(timestamp: str) -> int:
    """Epoch seconds of a canonical timestamp, or milliseconds when it has a fraction.

    OpenTSDB tells the two apart by their size (10 vs 13 digits). Cached: the readings of a
    payload, and the rows of a second, share their timestamp.
    """
    # fromisoformat, not strptime: the same result for the canonical form, 8x faster (the stream loader's hot path).
    dt = datetime.fromisoformat(timestamp[:19]).replace(tzinfo=timezone.utc)
    seconds = int(dt.timestamp())
    if len(timestamp) == 20:  # "YYYY-MM-DDTHH:MM:SSZ"
        return seconds
    millis = int(timestamp[20:-1].ljust(3, "0")[:3])
    return seconds * 1000 + millis


def document_datapoints(source: str, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenTSDB datapoints ``{"metric", "timestamp", "value", "tags"}`` of one document.

    A host document gives one datapoint per numeric field, metric
    ``host.<field>`` (:data:`include.schemas.HOST_METRICS`) tagged
    ``host=<name>``; a sensor document gives one datapoint with its metric and
    tags plus ``device=<device>``.
    """
    ts = opentsdb_timestamp(doc[TIME_FIELD])
    if source == HOST:
        # One tags mapping shared by the row's ~28 datapoints: a host-day is 2.4 million of them,
        # and nothing downstream mutates a datapoint (the OpenTSDB client sends them as given).
        tags = {"host": doc["host"]}
        return [
            {"metric": HOST_METRICS[name], "timestamp": ts, "value": value, "tags": tags}
            for name, value in doc.items()
            if name in HOST_METRICS
        ]
    if source == SENSOR:
        tags = {**(doc.get("tags") or {}), "device": doc["device"]}
        return [{"metric": doc["metric"], "timestamp": ts, "value": doc["value"], "tags": tags}]
    raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")


# --- Files -----------------------------------------------------------------------------------


def _header(source: str, data: bytes) -> list[str]:
    """The checked header row of a file; FileRejected when empty or refused."""
    if source not in SCHEMAS:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.strip():
        raise FileRejected("empty file: no header row")
    try:
        header = next(csv.reader([first.decode("utf-8")]))
    except UnicodeDecodeError as exc:
        raise FileRejected(f"header is not UTF-8: {exc}") from None
    try:
        SCHEMAS[source].check_header(header)
    except ValueError as exc:
        raise FileRejected(str(exc)) from None
    return header


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRejected(f"file is not UTF-8: {exc}") from None


def transform_file_rows(source: str, data: bytes) -> FileDocuments:
    """Transform one minute file row by row (csv module + orjson).

    The reference implementation: same documents, ids and row errors as
    :func:`transform_file`. It reads every layout the csv module reads
    (quotes, ``\r\n``, blank lines); a line the csv module refuses is a row
    error, never an exception. Raises FileRejected.
    """
    header = _header(source, data)
    reader = csv.reader(io.StringIO(_decode(data), newline=""))
    next(reader)
    out = FileDocuments(source)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.rows_read += 1
            out.row_errors.append(RowError(reader.line_num, f"row is not valid CSV: {exc}", ""))
            continue
        if not row:  # a blank line is no row
            continue
        out.rows_read += 1
        result = _row_result(source, header, row)
        if isinstance(result, str):
            out.row_errors.append(RowError(reader.line_num, result, ",".join(row)))
            continue
        out.documents.append(orjson.dumps(result))
        out.ids.append(document_id(source, result))
        out.timestamps.append(result[TIME_FIELD])
    if out.rows_read == 0:
        raise FileRejected("no data rows after the header")
    return out


def _row_result(source: str, header: list[str], row: list[str]) -> dict[str, Any] | str:
    """The document of one CSV row, or why it is refused."""
    if len(row) != len(header):
        return f"row has {len(row)} fields, the header has {len(header)}"
    try:
        return row_document(source, dict(zip(header, row, strict=True)), header)
    except ContractError as exc:
        return str(exc)


def _plain(data: bytes) -> bool:
    """One row a line, fields split by commas: no quotes, carriage returns or blank lines.

    The collectors write only such files; the columnar engine reads only them,
    and every other layout goes to the row engine, so the two cannot differ in
    how they split a file.
    """
    return data.endswith(b"\n") and b"\n\n" not in data and b"\r" not in data and b'"' not in data


def transform_file(source: str, data: bytes) -> FileDocuments:
    """Transform one minute file with the columnar engine; raises FileRejected.

    See :func:`transform_files`; this is the one-file case.
    """
    (result,) = transform_files(source, [data])
    if isinstance(result, FileRejected):
        raise result
    return result


def transform_files(source: str, datas: Sequence[bytes]) -> list[FileDocuments | FileRejected]:
    """Transform many minute files of one source at once: one result per file, in order.

    Files with the same header and a plain layout (no quotes, blank lines or
    carriage returns) are concatenated and go through polars as one frame, so a
    host-day of 1,440 files costs about one call; others go one by one. Numbers
    are read typed when the whole batch parses, else as text and cast with
    ``strict=False``; a row with a value that did not survive (or a timestamp
    not of the contract's form) is rejected with the reason
    :func:`row_document` gives for it. Files polars cannot split (a row with
    more fields than the header) go through :func:`transform_file_rows`. A file
    refused as a whole yields its :class:`FileRejected` instead of documents.
    """
    results: list[FileDocuments | FileRejected | None] = [None] * len(datas)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, data in enumerate(datas):
        try:
            header = _header(source, data)
        except FileRejected as exc:
            results[i] = exc
            continue
        if _plain(data):
            groups.setdefault(tuple(header), []).append(i)
        else:
            results[i] = _row_engine(source, data)
    for names, indexes in groups.items():
        header = list(names)
        counts = {i: datas[i].count(b"\n") - 1 for i in indexes}  # plain layout: one row a line
        for i in indexes:
            if counts[i] == 0:
                results[i] = FileRejected("no data rows after the header")
        members = [i for i in indexes if results[i] is None]
        if not members:
            continue
        if len(members) == 1:  # no copy of a single (possibly large) file
            batch = datas[members[0]]
        else:
            batch = (",".join(header) + "\n").encode() + b"".join(datas[i].split(b"\n", 1)[1] for i in members)
        frame, typed = _read(source, batch, header)
        if frame is None:  # ragged rows somewhere: find them file by file
            for i in members:
                results[i] = _transform_one(source, datas[i], header)
            continue
        whole = _transform_frame(source, frame, header, typed)
        offset = 0
        for i in members:
            results[i] = whole.slice(offset, offset + counts[i], datas[i], header)
            offset += counts[i]
    return results  # type: ignore[return-value]


def _row_engine(source: str, data: bytes) -> FileDocuments | FileRejected:
    try:
        return transform_file_rows(source, data)
    except FileRejected as exc:
        return exc


def _transform_one(source: str, data: bytes, header: list[str]) -> FileDocuments | FileRejected:
    """One plain file through polars; the row engine when polars cannot split it."""
    frame, typed = _read(source, data, header)
    if frame is None:
        return _row_engine(source, data)
    if frame.height == 0:
        return FileRejected("no data rows after the header")
    return _transform_frame(source, frame, header, typed).slice(0, frame.height, data, header)


def _read(source: str, data: bytes, header: list[str]) -> tuple[pl.DataFrame | None, bool]:
    """``(frame, typed)``: numbers parsed by the CSV reader when every value allows, else all text.

    ``(None, False)`` when polars cannot split the rows, or the columns it
    found are not the header's (duplicate names, quoting surprises).
    """
    import polars as pl

    kinds = {c.name: c.kind for c in SCHEMAS[source].columns}
    dtypes = {"int": pl.Int64, "float": pl.Float64}
    schema = {name: dtypes.get(kinds[name], pl.String) for name in header}
    # The typed reader skips a leading space (" 5") that the row functions refuse: text path then.
    if len(schema) == len(header) and b", " not in data and b"\n " not in data:
        try:
            return pl.read_csv(data, schema=schema, has_header=True, raise_if_empty=False), True
        except pl.exceptions.PolarsError:
            pass
    try:
        frame = pl.read_csv(data, infer_schema=False, has_header=True, raise_if_empty=False)
    except pl.exceptions.PolarsError:
        return None, False
    if list(frame.columns) != header:
        return None, False
    return frame, False


@dataclass
class _Frame:
    """Documents of a concatenated batch, with the batch row of each, to be cut per file."""

    source: str
    rows: list[int]
    documents: list[bytes]
    ids: list[str]
    timestamps: list[str]
    bad_rows: set[int]

    def slice(self, start: int, stop: int, data: bytes, header: list[str]) -> FileDocuments:
        lo, hi = bisect_left(self.rows, start), bisect_left(self.rows, stop)
        out = FileDocuments(
            self.source, rows_read=stop - start, documents=self.documents[lo:hi], ids=self.ids[lo:hi],
            timestamps=self.timestamps[lo:hi],
        )
        bad = {r - start for r in self.bad_rows if start <= r < stop}
        if bad:
            out.row_errors = _explain_rows(self.source, data, header, bad)
        return out


#: Canonical whole-second timestamps need no reformatting, only a check that the date exists.
_WHOLE_SECOND = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"


def _transform_frame(source: str, frame: pl.DataFrame, header: list[str], typed: bool) -> _Frame:
    import polars as pl

    kinds = _KINDS[source]
    ts = pl.col("timestamp")
    stamp: pl.Expr
    if frame["timestamp"].str.contains(_WHOLE_SECOND).all():
        stamp = pl.when(ts.str.to_datetime("%Y-%m-%dT%H:%M:%SZ", strict=False).is_not_null()).then(ts)
    else:
        stamp = (
            pl.when(ts.str.contains(f"^(?:{TIMESTAMP_PATTERN})$"))
            .then(ts.str.to_datetime(POLARS_TIMESTAMP_FORMAT, time_zone="UTC", strict=False))
            .dt.to_string(POLARS_TIMESTAMP_FORMAT)
        )
    exprs = [stamp.alias(TIME_FIELD)]
    for column in header[1:]:
        kind = kinds[column]
        col = pl.col(column)
        if kind == "int":
            exprs.append(col if typed else pl.when(col.str.contains(f"^(?:{_INT_PATTERN})$")).then(col.cast(pl.Int64, strict=False)))
        elif kind == "float":
            number = col if typed else pl.when(col.str.contains(f"^(?:{_FLOAT_PATTERN})$")).then(col.cast(pl.Float64, strict=False))
            exprs.append(pl.when(number.is_finite()).then(number).alias(column))
        elif kind == "tags":
            exprs.append(col.fill_null(""))
        elif source == HOST and column == "host":  # check_writer, vectorized (the sensor loop checks devices)
            exprs.append(pl.when(col.str.contains(f"^(?:{ID_PATTERN})$") & ~col.str.ends_with(SIDECAR_SUFFIX)).then(col))
        else:
            exprs.append(col)
    docs = frame.select([e.alias(n) for e, n in zip(exprs, [TIME_FIELD, *header[1:]], strict=True)]).with_row_index("_row")
    # A null anywhere is a rejected row: empty values, failed casts, short rows.
    bad = docs.select(pl.any_horizontal(pl.all().is_null()).alias("bad"))["bad"]
    bad_rows: set[int] = set(bad.arg_true().to_list()) if bad.any() else set()
    if bad_rows:
        docs = docs.filter(~bad)
    out = _Frame(source, docs["_row"].to_list(), [], [], [], bad_rows)
    if source == HOST:
        stamps = docs[TIME_FIELD].to_list()
        out.documents = _host_json(docs.drop("_row"), kinds) if docs.height else []
        # contract.identity_key(HOST, host, timestamp, HOST_DOC_METRIC, ""), joined by polars.
        sep = ID_SEPARATOR
        keys = docs.select(
            pl.concat_str([pl.lit(f"{HOST}{sep}"), pl.col("host"), pl.lit(sep), pl.col(TIME_FIELD),
                           pl.lit(f"{sep}{HOST_DOC_METRIC}{sep}")]).cast(pl.Binary).alias("key")
        )["key"].to_list()
        out.ids = [hash_identity(key) for key in keys]
        out.timestamps = stamps
        return out
    # Tags are free-form key=value pairs: build the objects row by row.
    keep: list[int] = []
    for index, stamp_text, device, metric, value, tags_text in docs.select(
        "_row", TIME_FIELD, "device", "metric", "value", "tags"
    ).iter_rows():
        try:
            doc = sensor_document_of(stamp_text, device, metric, value, tags_text)
        except ContractError:
            bad_rows.add(index)
            continue
        keep.append(index)
        out.documents.append(orjson.dumps(doc))
        out.ids.append(reading_id(SENSOR, device, stamp_text, metric, format_tags(doc["tags"])))
        out.timestamps.append(stamp_text)
    out.rows = keep
    return out


def _host_json(docs: pl.DataFrame, kinds: dict[str, str]) -> list[bytes]:
    """One JSON object per row, columns in order; numbers as JSON numbers, names as strings.

    No string needs a JSON escape: the timestamp is contract text and the host a
    checked writer id (ASCII letters, digits, ``._-``), so plain concatenation is JSON.
    """
    import polars as pl

    strings = [c for c in docs.columns if c == TIME_FIELD or kinds.get(c) not in ("int", "float")]
    parts: list[Any] = []
    for i, column in enumerate(docs.columns):
        lead = "{" if i == 0 else ","
        if column in strings:
            parts += [pl.lit(f'{lead}"{column}":"'), pl.col(column), pl.lit('"')]
        else:
            parts += [pl.lit(f'{lead}"{column}":'), pl.col(column).cast(pl.String)]
    parts.append(pl.lit("}"))
    rows: list[bytes] = docs.select(pl.concat_str(parts).cast(pl.Binary).alias("json"))["json"].to_list()
    return rows


def _explain_rows(source: str, data: bytes, header: list[str], indexes: set[int]) -> list[RowError]:
    """Row errors, with the row function's reason, for the rows at ``indexes`` (0-based data rows).

    Only plain files (:func:`_plain`) reach the columnar engine: row ``i`` is line ``i + 2``.
    """
    errors: list[RowError] = []
    lines = _decode(data).split("\n")
    for index in sorted(indexes):
        text = lines[index + 1]
        result = _row_result(source, header, text.split(","))
        why = result if isinstance(result, str) else "value refused by the columnar parser"
        errors.append(RowError(index + 2, why, text))
    return errors
