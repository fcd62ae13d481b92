"""Airflow hook for Kibana (no official provider): a Connection to an include.kibana client.

Connection ``kibana_default`` (type ``http``): host, port, schema. Auth: an
API key (the base64 ``id:api_key`` Kibana shows) in extra ``api_key`` or in
the password with the login empty; otherwise login and password (basic
auth). Extra ``space`` selects a Kibana space (default: the default space).
"""

from __future__ import annotations

from airflow.sdk import BaseHook

from grafana_hook import connection_url
from include.kibana import KibanaClient


class KibanaHook(BaseHook):
    conn_name_attr = "kibana_conn_id"
    default_conn_name = "kibana_default"
    conn_type = "http"
    hook_name = "Kibana"

    def __init__(self, kibana_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.kibana_conn_id = kibana_conn_id

    def get_conn(self) -> KibanaClient:
        conn = self.get_connection(self.kibana_conn_id)
        extra = conn.extra_dejson
        api_key = extra.get("api_key") or (conn.password if not conn.login else None)
        return KibanaClient(
            connection_url(conn, default_port=5601),
            api_key=api_key or None,
            username=None if api_key else conn.login,
            password=None if api_key else conn.password,
            space=extra.get("space"),
            conn_id=self.kibana_conn_id,
        )
