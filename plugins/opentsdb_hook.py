"""Airflow hook for OpenTSDB: the ``opentsdb_default`` Connection -> an OpenTSDBClient.

OpenTSDB has no Airflow provider, so this small hook reads a Connection and
builds :class:`include.opentsdb.OpenTSDBClient`; all HTTP logic stays in
``include/``. Connection fields:

* ``host`` and ``port`` of the TSD (``host`` may also be a full URL);
* ``schema``: ``http`` (default) or ``https`` for TLS;
* ``login``/``password``: optional basic auth (for a proxy in front of the
  TSD; OpenTSDB 2.4 itself has none);
* ``extra`` (JSON), all optional: ``verify`` (``true``/``false`` or a CA
  bundle path, for TLS), ``batch_size``, ``compress``, ``sync_timeout``,
  ``timeout``, ``max_attempts``, ``backoff``, ``backoff_max``.

An unknown extra key or a bad schema raises ValueError naming it when the
client is built (``get_conn``), not at import or construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseHook

from include.opentsdb import OpenTSDBClient

#: Extra keys passed on to the client, with the type each must have.
CLIENT_EXTRAS: dict[str, tuple[type, ...]] = {
    "batch_size": (int,),
    "compress": (bool,),
    "sync_timeout": (int, float),
    "timeout": (int, float),
    "max_attempts": (int,),
    "backoff": (int, float),
    "backoff_max": (int, float),
}


def client_kwargs(
    *,
    conn_id: str,
    host: str | None,
    port: int | None,
    schema: str | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The url and options of an OpenTSDBClient from a Connection's fields (pure; see the module doc)."""
    if not host:
        raise ValueError(f"connection {conn_id!r} has no host")
    if "://" in host:
        url = host.rstrip("/")
    else:
        scheme = (schema or "http").lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"connection {conn_id!r}: schema {schema!r} is neither http nor https")
        url = f"{scheme}://{host}" + (f":{port}" if port else "")
    kwargs: dict[str, Any] = {"url": url}
    if login:
        kwargs["auth"] = (login, password or "")
    for key, value in extra.items():
        if key == "verify":
            if not isinstance(value, (bool, str)):
                raise ValueError(f"connection {conn_id!r}: extra verify={value!r} is neither a boolean nor a path")
            kwargs["verify"] = value
        elif key in CLIENT_EXTRAS:
            types = CLIENT_EXTRAS[key]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise ValueError(f"connection {conn_id!r}: extra {key}={value!r} is not a {types[0].__name__}")
            kwargs[key] = value
        else:
            known = ", ".join(["verify", *CLIENT_EXTRAS])
            raise ValueError(f"connection {conn_id!r}: unknown extra {key!r} (known: {known})")
    return kwargs


class OpenTSDBHook(BaseHook):
    """Builds an :class:`OpenTSDBClient` from an Airflow Connection; no I/O until ``get_conn``.

    ``client_options`` (keyword arguments of OpenTSDBClient) override the
    Connection's extras, e.g. a task's own ``batch_size``.
    """

    conn_name_attr = "opentsdb_conn_id"
    default_conn_name = "opentsdb_default"
    conn_type = "http"
    hook_name = "OpenTSDB"

    def __init__(self, opentsdb_conn_id: str = default_conn_name, **client_options: Any) -> None:
        super().__init__()
        self.opentsdb_conn_id = opentsdb_conn_id
        self.client_options = client_options

    def get_conn(self) -> OpenTSDBClient:
        conn = self.get_connection(self.opentsdb_conn_id)
        kwargs = client_kwargs(
            conn_id=self.opentsdb_conn_id,
            host=conn.host,
            port=conn.port,
            schema=conn.schema,
            login=conn.login,
            password=conn.password,
            extra=conn.extra_dejson,
        )
        kwargs.update(self.client_options)
        url = kwargs.pop("url")
        return OpenTSDBClient(url, **kwargs)
