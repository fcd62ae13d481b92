"""Fingerprints and diffs that tell a changed definition from an edit in the UI.

Provisioning writes each dashboard with a fingerprint of its content in its
description (``sluice-fingerprint: <sha256>``). On the next run, with ``live``
what the server holds and ``desired`` what the code defines:

- live content equals desired content: **unchanged**, nothing is written;
- live content still hashes to the fingerprint it carries: nobody touched it
  since Sluice wrote it, so the definition changed: **updated** in place;
- otherwise someone edited it (or removed the fingerprint): **drift**. The
  caller reports :func:`diff` of the two and overwrites only when asked.

The fingerprint sits in the description because both Grafana and Kibana keep
a description through a UI save, while unknown keys may be dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MARKER = "sluice-fingerprint:"
_MARKER_RE = re.compile(r"\s*" + re.escape(MARKER) + r"\s*([0-9a-f]{64})\s*$")
UNCHANGED, CREATED, UPDATED, DRIFT, OVERWRITTEN = "unchanged", "created", "updated", "drift", "overwritten"


def fingerprint(content: Any) -> str:
    """sha256 of the canonical JSON of ``content`` (key order does not matter)."""
    raw = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def split_marker(description: str | None) -> tuple[str, str | None]:
    """``(text, fingerprint)`` of a description; fingerprint is None when absent."""
    text = description or ""
    m = _MARKER_RE.search(text)
    if not m:
        return text, None
    return text[: m.start()], m.group(1)


def with_marker(description: str | None, fp: str) -> str:
    text, _ = split_marker(description)
    return f"{text}\n\n{MARKER} {fp}" if text else f"{MARKER} {fp}"


def classify(desired: Any, live: Any, live_fingerprint: str | None) -> str:
    """UNCHANGED, UPDATED or DRIFT for normalised ``desired`` and ``live`` content."""
    if desired == live:
        return UNCHANGED
    if live_fingerprint is not None and live_fingerprint == fingerprint(live):
        return UPDATED
    return DRIFT


def diff(ours: Any, theirs: Any, path: str = "", *, limit: int = 50) -> list[str]:
    """Human-readable differences ``path: ours -> theirs``, at most ``limit`` lines.

    Lists of objects with an ``id``, ``refId`` or ``title`` are matched by it, so
    a moved or inserted panel reads as such instead of shifting every index.
    """
    out: list[str] = []
    _diff(ours, theirs, path or "$", out)
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more differences"]
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_of(items: list[Any]) -> str | None:
    for key in ("id", "refId", "title", "name"):
        if items and all(isinstance(i, dict) and key in i for i in items):
            values = [i[key] for i in items]
            if len(set(map(str, values))) == len(values):
                return key
    return None


def _diff(ours: Any, theirs: Any, path: str, out: list[str]) -> None:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in sorted(set(ours) | set(theirs), key=str):
            p = f"{path}.{k}"
            if k not in theirs:
                out.append(f"{p}: {_short(ours[k])} -> (removed)")
            elif k not in ours:
                out.append(f"{p}: (absent) -> {_short(theirs[k])}")
            else:
                _diff(ours[k], theirs[k], p, out)
        return
    if isinstance(ours, list) and isinstance(theirs, list):
        key = _key_of(ours) if _key_of(ours) == _key_of(theirs) else None
        if key:
            a = {str(i[key]): i for i in ours}
            b = {str(i[key]): i for i in theirs}
            for k in list(a) + [k for k in b if k not in a]:
                p = f"{path}[{key}={json.dumps((a[k] if k in a else b[k])[key])}]"
                if k not in b:
                    out.append(f"{p}: removed")
                elif k not in a:
                    out.append(f"{p}: added")
                else:
                    _diff(a[k], b[k], p, out)
            if [k for k in a if k in b] != [k for k in b if k in a]:
                out.append(f"{path}: order changed")
            return
        for i in range(max(len(ours), len(theirs))):
            p = f"{path}[{i}]"
            if i >= len(theirs):
                out.append(f"{p}: {_short(ours[i])} -> (removed)")
            elif i >= len(ours):
                out.append(f"{p}: (absent) -> {_short(theirs[i])}")
            else:
                _diff(ours[i], theirs[i], p, out)
        return
    if ours != theirs:
        out.append(f"{path}: {_short(ours)} -> {_short(theirs)}")
