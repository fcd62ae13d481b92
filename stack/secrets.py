"""Secrets the local stack generates for itself: made once, kept mode 0600 under the runtime folder.

Nothing secret is committed: every password, key and token of the local stack is
created on first use by :func:`secret_json` and read back from then on. Files are
created with ``O_EXCL`` at mode 0600, so a second process racing the first reads
what the first wrote instead of overwriting it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_private(path: Path, data: bytes | str, *, replace: bool = False) -> None:
    """Write ``data`` to a file only its owner can read (mode 0600).

    A new file by default (FileExistsError when it exists); ``replace=True``
    rewrites an existing one, e.g. a config file made anew at every start.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)  # also when an older file had looser bits


def secret_json(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON object in ``path``; created from ``make()`` (mode 0600) when missing."""
    if not path.exists():
        try:
            write_private(path, (json.dumps(make()) + "\n").encode())
        except FileExistsError:
            pass  # another process made it first: use theirs
    return json.loads(path.read_text())


def new_password() -> str:
    """A generated password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)
