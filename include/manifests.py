"""Minute manifests and heartbeats: what each collector says it wrote, and that it is alive.

A collector instance (a *writer*: the host sampler of one host, one MQTT
collector instance) writes, after a minute's file has landed, that minute's
manifest beside the data::

    manifests/{source}/date=YYYY-MM-DD/hour=HH/minute=MM/{writer}.json

and every few seconds a heartbeat::

    heartbeats/{source}/{writer}.json

The minute DAG's sensor is done when every *live* writer (heartbeat younger
than ``misses`` intervals) has its manifest for the minute, so an intermittent
device no longer holds back the minute after it; a writer that stopped
heartbeating no longer counts, and its files are loaded after the grace.
Reconciliation takes the writers' own counts from the manifests.

Counting rules (``MinuteManifest``):

* ``rows``: device -> rows in the writer's file of that minute after the final
  merge (so a restarted writer that merged into its own file reports the whole).
* ``received``: payloads the writer handled whose *receive* time fell in the
  minute (accepted or rejected).
* ``deadletters``: reason code -> readings or payloads dead-lettered while the
  minute was the receive minute. A reason code is the text before the first
  ``:`` of the reject reason (``invalid-json``, ``internal``, ...).

Parsing a manifest or heartbeat from the store is a boundary: bad bytes give a
:class:`ManifestError` naming the key and what is wrong, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson

from include.contract import (
    ContractError,
    floor_minute,
    format_timestamp,
    heartbeat_key,
    heartbeat_prefix,
    manifest_key,
    manifest_prefix,
    parse_iso_utc,
)
from include.landing import LandingZone
from include.schemas import SOURCES

#: A writer whose heartbeat is older than this many intervals is taken as gone.
DEFAULT_MISSES = 3
_Parsed = TypeVar("_Parsed")


class ManifestError(ValueError):
    """A manifest or heartbeat in the store could not be read; the message names the key."""


def _time(text: Any, key: str, name: str) -> datetime:
    if not isinstance(text, str):
        raise ManifestError(f"{key}: {name} must be an ISO-8601 UTC string, got {text!r}")
    try:
        return parse_iso_utc(text)
    except ContractError as exc:
        raise ManifestError(f"{key}: {name}: {exc}") from None


def _counts(value: Any, key: str, name: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()
    ):
        raise ManifestError(f"{key}: {name} must map names to counts >= 0, got {value!r:.200}")
    return dict(value)


def _load(data: bytes, key: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"{key}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{key}: expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class MinuteManifest:
    source: str
    writer: str
    minute: datetime
    rows: Mapping[str, int]
    received: int
    deadletters: Mapping[str, int] = field(default_factory=dict)
    closed_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def key(self) -> str:
        return manifest_key(self.source, self.minute, self.writer)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source,
                "writer": self.writer,
                "minute": format_timestamp(floor_minute(self.minute)),
                "rows": dict(sorted(self.rows.items())),
                "received": self.received,
                "deadletters": dict(sorted(self.deadletters.items())),
                "closed_at": format_timestamp(self.closed_at),
            }
        )

    @classmethod
    def from_json(cls, data: bytes, key: str = "<manifest>") -> MinuteManifest:
        obj = _load(data, key)
        source, writer = obj.get("source"), obj.get("writer")
        if source not in SOURCES:
            raise ManifestError(f"{key}: source {source!r} is not one of {', '.join(SOURCES)}")
        if not isinstance(writer, str):
            raise ManifestError(f"{key}: writer must be a string, got {writer!r}")
        received = obj.get("received")
        if type(received) is not int or received < 0:
            raise ManifestError(f"{key}: received must be a count >= 0, got {received!r}")
        return cls(
            source=source,
            writer=writer,
            minute=_time(obj.get("minute"), key, "minute"),
            rows=_counts(obj.get("rows"), key, "rows"),
            received=received,
            deadletters=_counts(obj.get("deadletters", {}), key, "deadletters"),
            closed_at=_time(obj.get("closed_at"), key, "closed_at"),
        )


@dataclass(frozen=True)
class Heartbeat:
    source: str
    writer: str
    at: datetime
    interval_s: float
    started_at: datetime

    @property
    def key(self) -> str:
        return heartbeat_key(self.source, self.writer)

    def alive(self, now: datetime, *, misses: int = DEFAULT_MISSES) -> bool:
        """Whether the writer beat within ``misses`` intervals of ``now``."""
        return now - self.at <= timedelta(seconds=self.interval_s * misses)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source,
                "writer": self.writer,
                "at": format_timestamp(self.at),
                "interval_s": self.interval_s,
                "started_at": format_timestamp(self.started_at),
            }
        )

    @classmethod
    def from_json(cls, data: bytes, key: str = "<heartbeat>") -> Heartbeat:
        obj = _load(data, key)
        interval = obj.get("interval_s")
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not interval > 0:
            raise ManifestError(f"{key}: interval_s must be a number of seconds > 0, got {interval!r}")
        source, writer = obj.get("source"), obj.get("writer")
        if source not in SOURCES or not isinstance(writer, str):
            raise ManifestError(f"{key}: source/writer {source!r}/{writer!r} are not a source and a name")
        return cls(
            source=source,
            writer=writer,
            at=_time(obj.get("at"), key, "at"),
            interval_s=float(interval),
            started_at=_time(obj.get("started_at"), key, "started_at"),
        )


def write_manifest(landing: LandingZone, manifest: MinuteManifest) -> None:
    landing.put(manifest.key, manifest.to_json(), {"sluice-schema": "manifest"})


def write_heartbeat(landing: LandingZone, heartbeat: Heartbeat) -> None:
    landing.put(heartbeat.key, heartbeat.to_json(), {"sluice-schema": "heartbeat"})


def _read_all(
    landing: LandingZone, keys: Iterable[str], parse: Callable[[bytes, str], _Parsed]
) -> tuple[list[_Parsed], list[str]]:
    good, bad = [], []
    for key in keys:
        try:
            good.append(parse(landing.get(key), key))
        except (ManifestError, KeyError) as exc:
            bad.append(str(exc))
    return good, bad


def read_manifests(landing: LandingZone, source: str, minute: datetime) -> tuple[list[MinuteManifest], list[str]]:
    """The minute's manifests, and a reason per manifest that could not be read."""
    keys = [info.key for info in landing.list(manifest_prefix(source, minute)) if info.key.endswith(".json")]
    return _read_all(landing, keys, MinuteManifest.from_json)


def read_heartbeats(landing: LandingZone, source: str) -> tuple[list[Heartbeat], list[str]]:
    """Every writer's last heartbeat for ``source``, and a reason per heartbeat that could not be read."""
    keys = [info.key for info in landing.list(heartbeat_prefix(source)) if info.key.endswith(".json")]
    return _read_all(landing, keys, Heartbeat.from_json)


def live_writers(
    heartbeats: Iterable[Heartbeat], now: datetime, *, misses: int = DEFAULT_MISSES
) -> list[Heartbeat]:
    return [hb for hb in heartbeats if hb.alive(now, misses=misses)]
