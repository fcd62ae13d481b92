"""Airflow hook for Grafana (no official provider): a Connection to an include.grafana client.

Connection ``grafana_default`` (type ``http``): host, port, schema
(``http``/``https``). Auth, in order of preference:

- a service-account token in extra ``token``, or in the password with the login empty;
- otherwise login and password (basic auth).

Optional extras: ``org_id``; ``opentsdb_url`` / ``elasticsearch_url`` when
Grafana reaches those services under other addresses than Airflow does (by
default the data source URLs are built from ``opentsdb_default`` and
``elasticsearch_default``, which under docker-compose are the service names
Grafana also resolves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from include.contract import index_prefix
from include.dashboards.datasources import GrafanaDatasource, sluice_datasources
from include.grafana import GrafanaClient


def connection_url(conn: Any, *, default_port: int | None = None) -> str:
    """``schema://host:port`` of an Airflow Connection (schema defaults to http)."""
    if not conn.host:
        raise ValueError(f"connection {conn.conn_id} has no host; set it to the service's host name")
    host = conn.host
    if "://" in host:
        return host.rstrip("/")
    scheme = conn.schema or "http"
    port = conn.port or default_port
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


class GrafanaHook(BaseHook):
    conn_name_attr = "grafana_conn_id"
    default_conn_name = "grafana_default"
    conn_type = "http"
    hook_name = "Grafana"

    def __init__(self, grafana_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.grafana_conn_id = grafana_conn_id

    def get_conn(self) -> GrafanaClient:
        conn = self.get_connection(self.grafana_conn_id)
        extra = conn.extra_dejson
        token = extra.get("token") or (conn.password if not conn.login else None)
        org = extra.get("org_id")
        return GrafanaClient(
            connection_url(conn, default_port=3000),
            token=token or None,
            username=None if token else conn.login,
            password=None if token else conn.password,
            org_id=int(org) if org is not None else None,
            conn_id=self.grafana_conn_id,
        )

    def datasources(
        self, *, opentsdb_conn_id: str = "opentsdb_default", elasticsearch_conn_id: str = "elasticsearch_dashboards"
    ) -> list[GrafanaDatasource]:
        """The Sluice data sources with URLs (and Elasticsearch credentials) from the Connections.

        Elasticsearch's is the read-only dashboards role's connection: its API key
        and CA (extra ``api_key``, ``ca_certs``) go into Grafana's data sources.
        """
        extra = self.get_connection(self.grafana_conn_id).extra_dejson
        es = self.get_connection(elasticsearch_conn_id)
        opentsdb_url = extra.get("opentsdb_url") or connection_url(self.get_connection(opentsdb_conn_id), default_port=4242)
        es_url = extra.get("elasticsearch_url") or connection_url(es, default_port=9200)
        return sluice_datasources(
            opentsdb_url=opentsdb_url,
            elasticsearch_url=es_url,
            elasticsearch_user=es.login or "",
            elasticsearch_password=es.password or "",
            index_prefix=index_prefix(),
            elasticsearch_api_key=es.extra_dejson.get("api_key", ""),
            elasticsearch_ca_cert=Path(es.extra_dejson["ca_certs"]).read_text() if es.extra_dejson.get("ca_certs") else "",
        )
