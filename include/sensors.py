"""MQTT sensor payloads -> rows of the sensor CSV (long format), with reasons for rejects.

Two payload shapes are accepted (docs/architecture.md, "Sensor payloads"):

* the Arduino payload of ``seeds/000``: one object or a JSON array of objects
  ``{"metric": str, "timestamp": int, "value": number, "tags": {k: v}}``
  (other keys, such as the ``"type": "Metric"`` the OpenTSDB Kafka plugin
  wanted, are ignored). A missing timestamp means the receive time (to the ms);
* a flat object of readings ``{"temperature": 22.5, "humidity": 40, ...}``:
  each number is one reading whose metric is its key; string values become
  tags; an optional ``timestamp`` (or ``ts``) key gives the time. It obeys
  ``max_readings`` like an array does.

Timestamps are epoch seconds, milliseconds from 1e11 (OpenTSDB's rule) or
microseconds from 1e14; they are written as the contract's timestamp text
(:func:`include.contract.timestamp_text`) and never shifted for a time zone
(the seed subtracted nine hours by hand). The device is a level of the MQTT
topic, not a field of the payload.

Validation is per reading: the valid readings of a payload are kept and each
invalid one gets a reason; a payload that is not JSON, too large, or of
another shape is rejected whole, as is one nested deeper than 1,024 levels.
Names of metrics and tags are :func:`include.contract.check_name` names
(OpenTSDB's alphabet, whole string), which also keeps CSV fields free of
quotes, commas and newlines. Values and timestamps must be finite numbers
(NaN, infinities and integers beyond the float range are refused).

The stream loader parses the Kafka copy of a payload with the same function,
so both paths derive the same readings from the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from include.contract import (
    ContractError,
    check_device,
    format_tags,
    internal_reason,
    is_name,
    timestamp_text,
)

#: Epoch timestamps at or above this are milliseconds, at or above :data:`_US_THRESHOLD` microseconds.
#: Devices publish to ``<prefix>/<device id>``; the broker's ACL lets a device write its own
#: topic only (stack/services/mosquitto.py), and the collector subscribes ``<prefix>/+``.
SENSOR_TOPIC_PREFIX = "sluice/sensors"

_MS_THRESHOLD = 1e11
_US_THRESHOLD = 1e14
#: orjson refuses documents nested deeper than this; the reason says so instead of recursing.
MAX_DEPTH = 1024
_BAD_NAME = "uses characters outside letters, digits and -_./ or is longer than 200"
#: Integers with more digits than this cannot be a tag value (a name has at most 200 characters).
_TAG_INT_MAX = 10**200


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
    except ContractError as exc:
        raise DeviceError(str(exc)) from None


def _strict_loads_reason(payload: bytes) -> str:
    """Why ``payload`` is not JSON, naming NaN/Infinity which plain JSON forbids.

    Bounded: a document nested deeper than :data:`MAX_DEPTH` is named as such
    (the standard decoder would recurse until RecursionError).
    """

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a finite number (JSON has no NaN or Infinity)")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:40]} is beyond the range of a 64-bit float")
        return value

    depth = _depth(payload)
    if depth > MAX_DEPTH:
        return f"nested {depth} levels deep, more than {MAX_DEPTH}"
    try:
        json.loads(payload, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError) as exc:
        return str(exc)[:200]
    return "not valid JSON"


def _depth(payload: bytes) -> int:
    """Deepest bracket nesting of ``payload`` outside strings (a cheap scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _finite(raw: int | float) -> float | None:
    """``raw`` as a finite float, or None (NaN, infinities, integers beyond float range)."""
    try:
        number = float(raw)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _epoch(raw: object, received: float, limits: Limits, where: str) -> float | Reject:
    """Epoch seconds of a timestamp in seconds, milliseconds (>= 1e11) or microseconds (>= 1e14)."""
    if raw is None:
        # The receive time to the millisecond: the Kafka copy carries it so (received_at header).
        return round(received, 3)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return Reject("wrong_type", f"{where}timestamp {_short(raw)} is not a number of epoch seconds")
    number = _finite(raw)
    if number is None:
        return Reject("not_finite", f"{where}timestamp {_short(raw)} is not a finite number")
    if number >= _US_THRESHOLD:
        epoch = number / 1e6
    elif number >= _MS_THRESHOLD:
        epoch = number / 1e3
    else:
        epoch = number
    if epoch < received - limits.max_age or epoch > received + limits.max_future:
        return Reject(
            "timestamp_out_of_range",
            f"{where}timestamp {_short(raw)} is outside [receive time - {limits.max_age:g} s, "
            f"+ {limits.max_future:g} s]",
        )
    return epoch


def _value(raw: object, where: str) -> int | float | Reject:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return Reject("wrong_type", f"{where}value {_short(raw)} is not a number")
    if _finite(raw) is None:
        return Reject("not_finite", f"{where}value {_short(raw)} is not a finite number")
    return raw


def _short(value: object, limit: int = 80) -> str:
    """A bounded ``repr`` for reasons (a huge integer or name stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _TAG_INT_MAX:
        return "<integer of more than 200 digits>"
    if isinstance(value, (dict, list)):  # never repr a container: it may nest thousands of levels
        return f"<JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Checked tag text of recent all-string tag objects: a device sends the same tags in every
#: message, and checking and sorting them was a tenth of the MQTT handler's time (profiled).
#: Only string values are cached: 1, 1.0 and True are equal keys but different tags.
_TAGS_SEEN: dict[tuple[tuple[str, str], ...], str] = {}
_TAGS_SEEN_MAX = 65536


def _tags(raw: object, where: str) -> str | Reject:
    if raw is None:
        return ""
    if not isinstance(raw, dict):
        return Reject("wrong_type", f"{where}tags must be an object of names to values")
    key = tuple(raw.items())
    try:
        seen = _TAGS_SEEN.get(key)
    except TypeError:  # a list or object as a tag value: unhashable, and refused below
        seen = None
    if seen is not None:
        return seen
    text = _checked_tags(raw, where)
    if not isinstance(text, Reject) and all(type(v) is str for v in raw.values()):
        if len(_TAGS_SEEN) >= _TAGS_SEEN_MAX:
            _TAGS_SEEN.clear()
        _TAGS_SEEN[key] = text
    return text


def _checked_tags(raw: dict[Any, Any], where: str) -> str | Reject:
    tags = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return Reject("wrong_type", f"{where}tag {_short(key)} has a value of type {type(value).__name__}")
        if isinstance(value, int) and abs(value) >= _TAG_INT_MAX:
            return Reject("bad_name", f"{where}tag {_short(key)} has a value of more than 200 digits")
        text = value if isinstance(value, str) else str(value)
        if not is_name(key) or not is_name(text):
            return Reject("bad_name", f"{where}tag {_short(key)}={_short(text)} {_BAD_NAME}")
        tags[key] = text
    return format_tags(tags)


def _seed_reading(obj: dict[str, Any], received: float, limits: Limits, where: str) -> Reading | Reject:
    metric = obj.get("metric")
    if not isinstance(metric, str):
        return Reject("wrong_type" if "metric" in obj else "missing_metric", f"{where}metric must be a string")
    if not is_name(metric):
        return Reject("bad_name", f"{where}metric {_short(metric)} {_BAD_NAME}")
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


def _flat_readings(obj: dict[str, Any], received: float, limits: Limits, parsed: Parsed) -> None:
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
    fields = [(k, v) for k, v in obj.items() if k not in ("timestamp", "ts") and not isinstance(v, str)]
    if len(fields) > limits.max_readings:
        parsed.rejects.append(Reject("oversized", f"{len(fields)} readings exceed {limits.max_readings} per payload"))
        return
    for key, raw in fields:
        where = f"field {_short(key)}: "
        if not is_name(key):
            parsed.rejects.append(Reject("bad_name", f"{where}name {_BAD_NAME}"))
            continue
        value = _value(raw, where)
        if isinstance(value, Reject):
            parsed.rejects.append(value)
            continue
        parsed.readings.append(Reading(epoch, key, value, tags))
    if not parsed.readings and not parsed.rejects:
        parsed.rejects.append(Reject("no_readings", "the object holds no numeric reading"))


def parse_payload(
    payload: bytes, received: float, limits: Limits = Limits(), *, loads: Callable[[bytes], Any] | None = None
) -> Parsed:
    """Readings of one MQTT payload received at ``received`` (epoch seconds).

    Never raises: every problem becomes a :class:`Reject`, and an unexpected
    exception becomes one with code ``internal`` (reason ``internal: …``).
    ``loads`` is the JSON decoder (orjson's by default, the standard one if
    orjson is missing); anything it refuses is explained with the standard
    decoder so the reason names NaN and friends, or the nesting depth.
    """
    try:
        return _parse(payload, received, limits, loads or _default_loads())
    except Exception as exc:  # the boundary is total: a bug here must not end the caller's thread
        return Parsed(rejects=[Reject("internal", internal_reason(exc))])


def _parse(payload: bytes, received: float, limits: Limits, loads: Callable[[bytes], Any]) -> Parsed:
    parsed = Parsed()
    if len(payload) > limits.max_bytes:
        parsed.rejects.append(Reject("oversized", f"payload of {len(payload)} bytes exceeds {limits.max_bytes} bytes"))
        return parsed
    try:
        doc = loads(payload)
    except Exception:  # every decoder error (RecursionError included) means "not JSON"
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
            if isinstance(result, Reject):
                parsed.rejects.append(result)
            else:
                parsed.readings.append(result)
    elif isinstance(doc, dict):
        if "metric" in doc or "value" in doc:
            result = _seed_reading(doc, received, limits, "")
            if isinstance(result, Reject):
                parsed.rejects.append(result)
            else:
                parsed.readings.append(result)
        else:
            _flat_readings(doc, received, limits, parsed)
    else:
        parsed.rejects.append(Reject("wrong_type", f"payload is a JSON {type(doc).__name__}, not an array or object"))
    return parsed


def _default_loads() -> Callable[[bytes], Any]:
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover - orjson is pinned in requirements.txt
        return _stdlib_loads


def _stdlib_loads(payload: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    if _depth(payload) > MAX_DEPTH:
        raise ValueError("nested too deep")
    return json.loads(payload, parse_constant=refuse)


def format_value(value: int | float) -> str:
    """The CSV text of a value: an int as its digits, a float as its shortest round-trip repr."""
    return str(value) if isinstance(value, int) else repr(float(value))


@lru_cache(maxsize=4096)
def reading_stamp(epoch: float) -> str:
    """The canonical timestamp text of a reading's epoch (readings of one payload share it: made once)."""
    return timestamp_text(epoch)


def csv_row(device: str, reading: Reading) -> list[str]:
    """The sensor CSV row (SENSOR_SCHEMA order) of one reading."""
    return [reading_stamp(reading.epoch), device, reading.metric, format_value(reading.value), reading.tags]


def csv_line(device: str, reading: Reading) -> str:
    """:func:`csv_row` as one CSV line with newline.

    No field needs quoting: names are :func:`include.contract.check_name` names
    (``[\\w./-]``, whole string), the device a :func:`include.contract.check_device`
    id, tags are joined by single spaces.
    """
    return ",".join(csv_row(device, reading)) + "\n"
