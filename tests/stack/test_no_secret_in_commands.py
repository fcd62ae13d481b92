"""No service of the local stack gets a secret on its command line.

A command line shows in ``ps`` and ``/proc/<pid>/cmdline`` to every user of the
machine, and ``stack/service.py`` logs it at start ("starting <service>: <cmd>").
Secrets go through the environment or a 0600 file instead. This builds every
service's command in a fresh runtime folder, after each service module made its
credentials, and looks for every generated secret in it. Nothing is started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack import api
from stack.config import StackConfig


def _leaves(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaves(v)]
    return [value] if isinstance(value, str) else []


def generated_secrets(runtime: Path) -> set[str]:
    """Every value of 16 characters or more in the JSON files the stack generated (passwords, keys, tokens)."""
    found: set[str] = set()
    for path in runtime.rglob("*.json"):
        try:
            found.update(s for s in _leaves(json.loads(path.read_text())) if len(s) >= 16 and "/" not in s)
        except (ValueError, OSError):
            continue
    return found


def _make_credentials(services) -> None:
    for svc in services:
        for name in ("credentials", "password", "users", "admin_password"):
            method = getattr(svc, name, None)
            if callable(method):
                try:
                    method()
                except TypeError:
                    pass  # takes arguments: not a credential getter


@pytest.mark.parametrize("executor", ["local", "celery"])
def test_no_service_command_carries_a_generated_secret(tmp_path, executor):
    config = StackConfig.from_env({"SLUICE_RUNTIME": str(tmp_path), "SLUICE_EXECUTOR": executor,
                                   "SLUICE_CACHE": str(Path.home() / ".cache" / "sluice")})
    services = api.services(config, None)
    _make_credentials(services)
    secrets = generated_secrets(tmp_path)
    assert secrets, "the service modules generated no credentials: nothing was checked"
    for svc in services:
        line = " ".join(map(str, svc.command()))
        leaked = [s[:4] + "…" for s in secrets if s in line]
        assert not leaked, f"{svc.name}'s command line carries a secret ({leaked}); pass it by environment or file"


def test_the_search_finds_a_secret_in_a_command(tmp_path):
    (tmp_path / "x-credentials.json").write_text(json.dumps({"user": "sluice", "password": "p" * 20,
                                                            "nested": {"token": "t" * 24}, "path": "/a/" + "b" * 20}))
    assert generated_secrets(tmp_path) == {"p" * 20, "t" * 24}
