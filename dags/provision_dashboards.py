"""
### Provision dashboards (manual, safe to re-run)

Creates or updates, idempotently by uid/id:

1. the Elasticsearch index templates of `{prefix}-host-*`, `{prefix}-sensor-*`, `{prefix}-lag-*`
   (`SLUICE_ES_INDEX_PREFIX`, default `sluice`);
2. the Grafana folder **Sluice**, its data sources (OpenTSDB with the 2.4 setting, one
   Elasticsearch per index family, over the same prefix) and four dashboards: hosts, sensors,
   Kafka lag, freshness;
3. the Kibana data views `sluice-host`, `sluice-sensor`, `sluice-lag` (titles: the prefix's index
   patterns) and the dashboard **Sluice overview** (saved objects import).

A re-run with nothing changed writes nothing and reports *unchanged*. A changed definition in
`include/dashboards/` is updated in place. A dashboard edited in the UI is **drift**: it is left
as it is and the `report` task fails listing what differs, unless the run's `overwrite` param is
true, in which case it is replaced and reported *overwritten*.

Connections: `grafana_default`, `kibana_default`, `elasticsearch_provision` (index templates), `elasticsearch_default`, `opentsdb_default`
(data source URLs as Grafana sees them; see `plugins/grafana_hook.py`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, get_current_context, task


def _overwrite() -> bool:
    return bool(get_current_context()["params"]["overwrite"])


@dag(
    dag_id="provision_dashboards",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["sluice", "dashboards"],
    doc_md=__doc__,
    params={
        "overwrite": Param(
            False,
            type="boolean",
            description="Replace dashboards that were edited in the UI (drift). Off: report drift and keep the edits.",
        )
    },
)
def provision_dashboards():
    @task
    def elasticsearch_index_templates() -> list[dict]:
        from include.dashboards.index_templates import apply_index_templates
        from include.contract import index_prefix
        from sluice_airflow import ELASTICSEARCH_PROVISION_CONN_ID, elasticsearch_client

        return apply_index_templates(elasticsearch_client(ELASTICSEARCH_PROVISION_CONN_ID), prefix=index_prefix())

    @task
    def grafana_folder_and_datasources() -> list[dict]:
        from grafana_hook import GrafanaHook
        from include.dashboards.grafana_dashboards import FOLDER_TITLE, FOLDER_UID
        from include.dashboards.provision import provision_grafana_datasources, provision_grafana_folder

        hook = GrafanaHook()
        client = hook.get_conn()
        client.check_version()
        folder = provision_grafana_folder(client, uid=FOLDER_UID, title=FOLDER_TITLE)
        return [folder, *provision_grafana_datasources(client, hook.datasources(), overwrite=_overwrite())]

    @task
    def grafana_dashboards() -> list[dict]:
        from grafana_hook import GrafanaHook
        from include.dashboards.grafana_dashboards import FOLDER_UID, dashboard_models
        from include.dashboards.provision import provision_grafana_dashboards

        client = GrafanaHook().get_conn()
        return provision_grafana_dashboards(client, dashboard_models(), folder_uid=FOLDER_UID, overwrite=_overwrite())

    @task
    def kibana_data_views() -> list[dict]:
        from include.contract import index_prefix
        from include.dashboards.kibana_objects import data_views
        from include.dashboards.provision import provision_kibana_data_views
        from kibana_hook import KibanaHook

        client = KibanaHook().get_conn()
        client.check_version()
        return provision_kibana_data_views(client, list(data_views(index_prefix()).values()))

    @task
    def kibana_dashboard() -> list[dict]:
        from include.dashboards.provision import provision_kibana_dashboard
        from kibana_hook import KibanaHook

        return [provision_kibana_dashboard(KibanaHook().get_conn(), overwrite=_overwrite())]

    @task
    def report(*parts: list[dict]) -> dict:
        from include.dashboards.provision import summarize

        return summarize([r for part in parts for r in part])

    templates = elasticsearch_index_templates()
    sources = grafana_folder_and_datasources()
    boards = grafana_dashboards()
    views = kibana_data_views()
    kibana = kibana_dashboard()
    templates >> [sources, views]
    sources >> boards
    views >> kibana
    report(templates, sources, boards, views, kibana)


provision_dashboards()
