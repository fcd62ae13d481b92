"""Entrypoint wrapper of the compose Airflow image: Connection credentials from Docker secrets.

Airflow reads its own sensitive settings from files natively
(``AIRFLOW__<SECTION>__<KEY>_CMD``, which docker-compose.yaml uses), but a
Connection given as ``AIRFLOW_CONN_<ID>`` JSON has no such form, and anything
in a container's environment shows in ``docker inspect``. So docker-compose.yaml
gives each Connection without its secret, plus

    SLUICE_CONN_<ID>__PASSWORD_FILE=/run/secrets/<name>      -> "password"
    SLUICE_CONN_<ID>__LOGIN_FILE=/run/secrets/<name>         -> "login"
    SLUICE_CONN_<ID>__EXTRA__<KEY>_FILE=/run/secrets/<name>  -> "extra": {"<key>": ...}

where a double underscore inside <KEY> stands for a dot, which a variable name
cannot hold: ``EXTRA__SASL__PASSWORD`` fills ``"sasl.password"`` (librdkafka's
setting, the Kafka connections' extra), ``EXTRA__API_KEY`` fills ``"api_key"``.

and this sets those fields in ``AIRFLOW_CONN_<ID>`` of this process's
environment only, then execs its arguments (the image's own entrypoint).

A variable naming a Connection that is not set, a file that cannot be read, or
JSON that does not parse stops the container at once with a message naming
the variable: better than an Airflow that starts and fails every task.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping

VARIABLE = re.compile(r"^SLUICE_CONN_(?P<conn>[A-Z0-9_]+?)__(?P<field>LOGIN|PASSWORD|EXTRA__[A-Z0-9_]+)_FILE$")


class SecretEnvError(ValueError):
    """A SLUICE_CONN_* variable that cannot be applied; the message names it."""


def apply(environ: MutableMapping[str, str]) -> list[str]:
    """Fill the Connections of ``environ`` from the files its SLUICE_CONN_* variables name; the fields set."""
    done = []
    conns: dict[str, dict] = {}
    for name in sorted(environ):
        match = VARIABLE.match(name)
        if not match:
            continue
        target = f"AIRFLOW_CONN_{match['conn']}"
        if target not in environ:
            raise SecretEnvError(f"{name}: {target} is not set; give the Connection's JSON without its secret")
        if target not in conns:
            try:
                conns[target] = json.loads(environ[target])
            except json.JSONDecodeError as exc:
                raise SecretEnvError(f"{target} is not JSON ({exc.msg} at {exc.pos})") from None
            if not isinstance(conns[target], dict):
                raise SecretEnvError(f"{target} is not a JSON object")
        try:
            with open(environ[name], encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise SecretEnvError(f"{name}: cannot read {environ[name]}: {exc.strerror}") from None
        field = match["field"]
        if field.startswith("EXTRA__"):
            extra = conns[target].setdefault("extra", {})
            if isinstance(extra, str):
                extra = conns[target]["extra"] = json.loads(extra or "{}")
            extra[field.removeprefix("EXTRA__").lower().replace("__", ".")] = value
        else:
            conns[target][field.lower()] = value
        done.append(f"{target}.{field.lower()}")
    for target, conn in conns.items():
        environ[target] = json.dumps(conn)
    return done


def main(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    if not argv:
        print("usage: secret_env.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    env = dict(os.environ if environ is None else environ)
    try:
        apply(env)
    except SecretEnvError as exc:
        print(f"secret_env: {exc}", file=sys.stderr)
        return 1
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
