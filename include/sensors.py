"""MQTT sensor payloads -> rows of the sensor CSV (long format), with reasons for rejects.

Two payload shapes are accepted (ARCHITECTURE.md, "Sensor CSV"):

* the Arduino payload of ``seeds/000``: one object or a JSON array of objects
  ``{"metric": str, "timestamp": int, "value": number, "tags": {k: v}}``
  (other keys, such as the ``"type": "Metric"`` the OpenTSDB Kafka plugin
  wanted, are ignored). A missing timestamp means "now" (the receive time);
* a flat object of readings ``{"temperature": 22.5, "humidity": 40, ...}``:
  each number is one reading whose metric is its key; string values become
  tags; an optional ``timestamp`` (or ``ts``) key gives the time.

Timestamps are epoch seconds, or epoch milliseconds when larger than 1e11
(OpenTSDB's rule); they are written as ISO-8601 UTC with ``Z`` and never
shifted for a time zone (the seed subtracted nine hours by hand). The device
is a level of the MQTT topic, not a field of the payload.

Validation is per reading: the valid readings of a payload are kept and each
invalid one gets a reason; a payload that is not JSON, too large, or of
another shape is rejected whole. Names of metrics and tags are restricted to
OpenTSDB's alphabet (letters, digits, ``-_./``), which also keeps CSV fields
free of quotes and commas.

The stream loader parses the Kafka copy of a payload with the same function,
so both paths derive the same readings from the same bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from include.landing import check_device
from include.schemas import format_tags

#: OpenTSDB metric and tag characters (unicode letters allowed, as OpenTSDB does).
_NAME = re.compile(r"^[\w./-]{1,200}$")
_MS_THRESHOLD = 1e11


@dataclass(frozen=True)
class Limits:
    """What a payload may be. Sizes in bytes, times in seconds."""

    max_bytes: int = 65536
    max_readings: int = 1000
    #: A reading older than this relative to its receive time is rejected.
    max_age: float = 7 * 86400.0
    #: A reading this far in the future of its receive time is rejected.
    max_future: float = 300.0


@dataclass(frozen=True)
class Reading:
    #: Seconds since the epoch, UTC (milliseconds kept as a fraction).
    epoch: float
    metric: str
    #: The number as sent: an int stays an int in the CSV.
    value: int | float
    #: Tags formatted ``k=v k=v`` sorted by key.
    tags: str


@dataclass(frozen=True)
class Reject:
    #: A short stable code for counting (``not_json``, ``missing_value`` ...).
    code: str
    reason: str


@dataclass
class Parsed:
    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(r.reason for r in self.rejects)


class DeviceError(ValueError):
    pass


def device_from_topic(topic: str, level: int = -1) -> str:
    """The device id at topic level ``level`` (negative counts from the end).

    Raises DeviceError when the topic has no such level or the level is not a
    usable device id (see :func:`include.landing.check_device`).
    """
    parts = topic.split("/")
    try:
        device = parts[level]
    except IndexError:
        raise DeviceError(f"topic {topic!r} has no level {level} to take the device id from") from None
    try:
        return check_device(device)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None


def _strict_loads_reason(payload: bytes) -> str:
    """Why ``payload`` is not JSON, naming NaN/Infinity which plain JSON forbids."""

    def constant(name: str):
        raise ValueError(f"{name} is not a finite number (JSON has no NaN or Infinity)")

    try:
        json.loads(payload, parse_constant=constant)
    except ValueError as exc:
        return str(exc)
    return "not valid JSON"


def _epoch(raw, received: float, limits: Limits, where: str) -> float | Reject:
    if raw is None:
        return received
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return Reject("wrong_type", f"{where}timestamp {raw!r} is not a number of epoch seconds")
    if not math.isfinite(raw):
        return Reject("not_finite", f"{where}timestamp is not finite")
    epoch = raw / 1000.0 if raw > _MS_THRESHOLD else float(raw)
    if epoch < received - limits.max_age or epoch > received + limits.max_future:
        return Reject(
            "timestamp_out_of_range",
            f"{where}timestamp {raw!r} is outside [receive time - {limits.max_age:g} s, + {limits.max_future:g} s]",
        )
    return epoch


def _value(raw, where: str) -> int | float | Reject:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return Reject("wrong_type", f"{where}value {raw!r} is not a number")
    if not math.isfinite(raw):
        return Reject("not_finite", f"{where}value {raw!r} is not a finite number")
    return raw


def _tags(raw, where: str) -> str | Reject:
    if raw is None:
        return ""
    if not isinstance(raw, dict):
        return Reject("wrong_type", f"{where}tags must be an object of names to values")
    tags = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return Reject("wrong_type", f"{where}tag {key!r} has a value of type {type(value).__name__}")
        text = str(value)
        if not _NAME.match(key) or not _NAME.match(text):
            return Reject("bad_name", f"{where}tag {key}={text} uses characters outside letters, digits and -_./")
        tags[key] = text
    return format_tags(tags)


def _seed_reading(obj: dict, received: float, limits: Limits, where: str) -> Reading | Reject:
    metric = obj.get("metric")
    if not isinstance(metric, str):
        return Reject("wrong_type" if "metric" in obj else "missing_metric", f"{where}metric must be a string")
    if not _NAME.match(metric):
        return Reject("bad_name", f"{where}metric {metric!r} uses characters outside letters, digits and -_./")
    if "value" not in obj or obj["value"] is None:
        return Reject("missing_value", f"{where}value is missing")
    value = _value(obj["value"], where)
    if isinstance(value, Reject):
        return value
    epoch = _epoch(obj.get("timestamp"), received, limits, where)
    if isinstance(epoch, Reject):
        return epoch
    tags = _tags(obj.get("tags"), where)
    if isinstance(tags, Reject):
        return tags
    return Reading(epoch, metric, value, tags)


def _flat_readings(obj: dict, received: float, limits: Limits, parsed: Parsed) -> None:
    ts = obj.get("timestamp", obj.get("ts"))
    epoch = _epoch(ts, received, limits, "")
    if isinstance(epoch, Reject):
        parsed.rejects.append(epoch)
        return
    str_tags = {k: v for k, v in obj.items() if isinstance(v, str) and k not in ("timestamp", "ts")}
    tags = _tags(str_tags, "")
    if isinstance(tags, Reject):
        parsed.rejects.append(tags)
        return
    for key, raw in obj.items():
        if key in ("timestamp", "ts") or isinstance(raw, str):
            continue
        where = f"field {key!r}: "
        if not _NAME.match(key):
            parsed.rejects.append(Reject("bad_name", f"{where}name uses characters outside letters, digits and -_./"))
            continue
        value = _value(raw, where)
        if isinstance(value, Reject):
            parsed.rejects.append(value)
            continue
        parsed.readings.append(Reading(epoch, key, value, tags))
    if not parsed.readings and not parsed.rejects:
        parsed.rejects.append(Reject("no_readings", "the object holds no numeric reading"))


def parse_payload(payload: bytes, received: float, limits: Limits = Limits(), *, loads=None) -> Parsed:
    """Readings of one MQTT payload received at ``received`` (epoch seconds).

    Never raises for bad input: every problem becomes a :class:`Reject`.
    ``loads`` is the JSON decoder (orjson's by default, the standard one if
    orjson is missing); anything it refuses is explained with the standard
    decoder so the reason names NaN and friends.
    """
    parsed = Parsed()
    if len(payload) > limits.max_bytes:
        parsed.rejects.append(Reject("oversized", f"payload of {len(payload)} bytes exceeds {limits.max_bytes} bytes"))
        return parsed
    if loads is None:
        loads = _default_loads()
    try:
        doc = loads(payload)
    except Exception:  # every decoder error means "not JSON"
        parsed.rejects.append(Reject("not_json", f"not JSON: {_strict_loads_reason(payload)}"))
        return parsed
    if isinstance(doc, list):
        if not doc:
            parsed.rejects.append(Reject("no_readings", "the array is empty"))
        elif len(doc) > limits.max_readings:
            parsed.rejects.append(Reject("oversized", f"{len(doc)} readings exceed {limits.max_readings} per payload"))
        for i, item in enumerate(doc if len(doc) <= limits.max_readings else ()):
            where = f"reading {i}: "
            if not isinstance(item, dict):
                parsed.rejects.append(Reject("wrong_type", f"{where}is a {type(item).__name__}, not an object"))
                continue
            result = _seed_reading(item, received, limits, where)
            (parsed.rejects if isinstance(result, Reject) else parsed.readings).append(result)
    elif isinstance(doc, dict):
        if "metric" in doc or "value" in doc:
            result = _seed_reading(doc, received, limits, "")
            (parsed.rejects if isinstance(result, Reject) else parsed.readings).append(result)
        else:
            _flat_readings(doc, received, limits, parsed)
    else:
        parsed.rejects.append(Reject("wrong_type", f"payload is a JSON {type(doc).__name__}, not an array or object"))
    return parsed


def _default_loads():
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover - orjson is pinned in requirements.txt
        return lambda b: json.loads(b, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


_ISO_CACHE: dict[float, str] = {}


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with ``Z``; whole seconds without a fraction, else milliseconds."""
    text = _ISO_CACHE.get(epoch)
    if text is None:
        dt = datetime.fromtimestamp(epoch, timezone.utc)
        if epoch == int(epoch):
            text = dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            text = dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
        if len(_ISO_CACHE) > 4096:
            _ISO_CACHE.clear()
        _ISO_CACHE[epoch] = text
    return text


def format_value(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def csv_row(device: str, reading: Reading) -> list[str]:
    """The sensor CSV row (SENSOR_SCHEMA order) of one reading."""
    return [iso_utc(reading.epoch), device, reading.metric, format_value(reading.value), reading.tags]


def csv_line(device: str, reading: Reading) -> str:
    """:func:`csv_row` as one CSV line with newline.

    No field needs quoting: the names are restricted to ``[\\w./-]``, the
    device to :func:`check_device`'s alphabet, tags are joined by spaces.
    """
    return ",".join(csv_row(device, reading)) + "\n"
