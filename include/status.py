"""What the Sluice page and the alert checks read back: reconciliation, freshness, lag, dead letters.

Each function takes an Elasticsearch client (or the landing zone) and returns
plain dicts, newest first, for a time window; a missing index is an empty
answer, not an error (a fresh install has none yet). Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from include.contract import (
    ES_INDEX_PREFIX,
    ES_TIME_FIELD,
    FILE,
    LAG,
    LOADED,
    RAW,
    FileDeadLetter,
    deadletter_prefix,
    floor_minute,
    hour_prefix,
    minute_prefix,
    parse_key,
    reason_code,
    split_record_key,
)
from include.landing import LandingZone
from include.reconcile import reconcile_index_pattern
from include.schemas import SOURCES


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _search(client, index: str, **kwargs) -> list[dict]:
    resp = client.options(ignore_status=404).search(index=index, allow_no_indices=True, ignore_unavailable=True,
                                                     **kwargs)
    return [h["_source"] for h in resp.get("hits", {}).get("hits", [])]


def _window(start: datetime, end: datetime) -> dict:
    return {"range": {ES_TIME_FIELD: {"gte": _iso(start), "lt": _iso(end)}}}


def reconcile_grid(client, start: datetime, end: datetime, *, prefix: str = ES_INDEX_PREFIX) -> dict[tuple[str, str], dict]:
    """(source, minute ISO) -> the stored reconcile document, for minutes in [start, end)."""
    docs = _search(client, reconcile_index_pattern(prefix), size=10000,
                   query={"bool": {"filter": [{"term": {"kind": "reconcile"}}, _window(start, end)]}})
    return {(d["source"], d[ES_TIME_FIELD]): d for d in docs}


def freshness_series(client, start: datetime, end: datetime, *, prefix: str = ES_INDEX_PREFIX) -> dict[str, list[dict]]:
    """source -> SLA documents (minute, freshness_s, breach) in [start, end), oldest first."""
    docs = _search(client, reconcile_index_pattern(prefix), size=10000, sort=[{ES_TIME_FIELD: "asc"}],
                   query={"bool": {"filter": [{"term": {"kind": "sla"}}, _window(start, end)]}})
    out: dict[str, list[dict]] = {s: [] for s in SOURCES}
    for d in docs:
        out.setdefault(d["source"], []).append(d)
    return out


def latest_lag(client, *, now: datetime, within: timedelta = timedelta(minutes=10),
               prefix: str = ES_INDEX_PREFIX) -> list[dict]:
    """The newest lag document of every (group, topic, partition) of the last ``within``."""
    docs = _search(client, f"{prefix}-{LAG}-*", size=2000, sort=[{ES_TIME_FIELD: "desc"}],
                   query={"bool": {"filter": [_window(now - within, now + timedelta(minutes=1))]}})
    newest: dict[tuple, dict] = {}
    for d in docs:
        newest.setdefault((d.get("group"), d.get("topic"), d.get("partition")), d)
    return sorted(newest.values(), key=lambda d: (d.get("group") or "", d.get("topic") or "", d.get("partition") or 0))


def lag_history(client, start: datetime, end: datetime, *, prefix: str = ES_INDEX_PREFIX) -> list[dict]:
    """Every lag document in [start, end), oldest first (the page draws status over time)."""
    return _search(client, f"{prefix}-{LAG}-*", size=10000, sort=[{ES_TIME_FIELD: "asc"}],
                   query={"bool": {"filter": [_window(start, end)]}})


def deadletters(landing: LandingZone, start: datetime, end: datetime, *, device: str = "", reason: str = "",
                limit: int = 200) -> list[dict]:
    """The newest dead-lettered rows and files of [start, end), from ``deadletter/file/``; filter by device, reason code.

    One entry per refused row, file or document: minute, source, device (the
    row's device, else the file's writer), writer, reason code, reason text,
    the row when kept. ``reason`` matches the code (the text before the first
    ``:``) exactly. One listing per source and hour, newest records read first.
    """
    keys: list[tuple[datetime, str, str]] = []
    hour = floor_minute(start).replace(minute=0)
    while hour < end:
        for source in SOURCES:
            prefix = deadletter_prefix(FILE) + hour_prefix(source, hour)[len(RAW):]
            for info in landing.list(prefix):
                raw_key, _ = split_record_key(info.key)
                minute = parse_key(raw_key).minute
                if start <= minute < end:
                    keys.append((minute, source, info.key))
        hour += timedelta(hours=1)
    out: list[dict] = []
    for minute, source, key in sorted(keys, reverse=True):
        raw_key, _ = split_record_key(key)
        writer = parse_key(raw_key).writer
        for entry in _entries(FileDeadLetter.from_json(landing.get(key))):
            dev = entry.pop("device") or writer
            if (device and dev != device) or (reason and entry["code"] != reason):
                continue
            out.append({"minute": _iso(minute), "source": source, "device": dev, "writer": writer, "key": raw_key, **entry})
            if len(out) >= limit:
                return out
    return out


def _entries(dl: FileDeadLetter) -> Iterator[dict]:
    """One entry per refused row, file or document; the device of a row is its second CSV column."""
    if dl.quarantined:
        yield {"code": reason_code(dl.reason or "quarantined"), "reason": dl.reason or "", "row": "", "device": ""}
    for row in dl.rows:
        text, raw = str(row.get("reason", "")), row.get("row", "")
        fields = raw if isinstance(raw, list) else str(raw).split(",")
        device = str(fields[1]) if len(fields) > 1 else ""
        shown = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
        yield {"code": reason_code(text), "reason": text, "row": shown[:300], "device": device}
    for doc in dl.documents:
        yield {"code": f"sink:{doc.get('sink', '?')}", "reason": str(doc.get("reason", "")), "row": doc.get("id", ""),
               "device": ""}


def minute_links(source: str, minute: datetime) -> dict[str, str]:
    """Landing-zone prefixes of one minute: its raw files, load records and dead letters."""
    raw = minute_prefix(source, floor_minute(minute))
    return {"raw": raw, "loaded": LOADED + raw[len(RAW):], "deadletter": deadletter_prefix(FILE) + raw[len(RAW):]}


def listing(landing: LandingZone, prefix: str) -> list[dict]:
    """``{"key", "size", "etag"}`` of every object under ``prefix`` (the page lists a minute's files)."""
    return [{"key": i.key, "size": i.size, "etag": i.etag} for i in landing.list(prefix)]
