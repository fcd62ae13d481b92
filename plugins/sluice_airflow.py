"""Airflow-facing adapters of Sluice: Connections -> the clients ``include/`` takes.

DAG tasks call these at run time (never at parse time): the landing zone
behind ``SLUICE_LANDING_URL`` with the amazon provider's S3Hook client, an
Elasticsearch client from the elasticsearch provider's connection, and the
configured sinks. :func:`transform_and_load` is the task wiring the minute and
sweep DAGs share. Nothing here touches the network on import.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

AWS_CONN_ID = "aws_default"
# One Elasticsearch connection per role (include/elasticsearch_security.py): each task gets only its rights.
ELASTICSEARCH_CONN_ID = "elasticsearch_default"  # the loader: load_elasticsearch
ELASTICSEARCH_LAG_CONN_ID = "elasticsearch_lag"
ELASTICSEARCH_RECONCILE_CONN_ID = "elasticsearch_reconcile"
ELASTICSEARCH_ANOMALY_CONN_ID = "elasticsearch_anomaly"
ELASTICSEARCH_PROVISION_CONN_ID = "elasticsearch_provision"
ELASTICSEARCH_DASHBOARDS_CONN_ID = "elasticsearch_dashboards"
OPENTSDB_CONN_ID = "opentsdb_default"


class LandingNotConfigured(RuntimeError):
    """``SLUICE_LANDING_URL`` is not set where the task runs."""


def landing_zone():
    """The landing zone of ``SLUICE_LANDING_URL``; ``s3://`` uses the ``aws_default`` connection."""
    from include.landing import open_landing

    url = os.environ.get("SLUICE_LANDING_URL")
    if not url:
        raise LandingNotConfigured(
            "SLUICE_LANDING_URL is not set: export it (python -m stack env prints it for the local stack)"
        )
    if url.startswith("s3://"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return open_landing(url, s3_client=S3Hook(aws_conn_id=AWS_CONN_ID).get_conn())
    return open_landing(url)


def elasticsearch_client(conn_id: str = ELASTICSEARCH_CONN_ID):
    """An ``elasticsearch.Elasticsearch`` built by the provider's hook from ``conn_id``.

    The connection's extra carries ``api_key`` and ``ca_certs`` (the provider
    passes the extra to the client); the local stack and docker-compose set one
    connection per role, so pass the id of the role the task needs.

    Requests time out after 30 seconds and are retried twice on connection
    errors, so an unreachable cluster fails the task within about a minute.
    """
    from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook

    client = ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).get_conn().es
    return client.options(request_timeout=30, max_retries=2, retry_on_timeout=True)


def sink(name: str):
    """The :class:`include.sinks.Sink` called ``name``, built from its Airflow Connection."""
    from include import sinks
    from include.contract import index_prefix

    if name == sinks.ELASTICSEARCH:
        return sinks.ElasticsearchSink(elasticsearch_client(), prefix=index_prefix())
    if name == sinks.OPENTSDB:
        from opentsdb_hook import OpenTSDBHook

        return sinks.OpenTSDBSink(OpenTSDBHook(opentsdb_conn_id=OPENTSDB_CONN_ID).get_conn())
    raise sinks.UnknownSink(f"sink {name!r} is not one of {', '.join(sinks.KNOWN_SINKS)}")


def start_date() -> datetime:
    """First interval the scheduled DAGs catch up from: ``SLUICE_START_DATE`` (set it to when collection began)."""
    return datetime.fromisoformat(os.environ.get("SLUICE_START_DATE", "2026-11-22T00:00:00+00:00"))


def catchup() -> bool:
    """Whether an unpaused DAG catches up every interval since :func:`start_date` (``SLUICE_CATCHUP``;
    ``false`` runs only the latest: what ``python -m stack run`` sets for the running platform)."""
    return os.environ.get("SLUICE_CATCHUP", "true").lower() not in ("0", "false", "no")


def task_retries() -> int:
    """Retries of every Sluice task: ``SLUICE_TASK_RETRIES`` (default 3; tests set 0)."""
    return int(os.environ.get("SLUICE_TASK_RETRIES", "3"))


def transform_and_load(source: str, files: Any) -> Any:
    """The load steps the minute and sweep DAGs share: csv_to_json -> load_<sink> per sink -> record_loads.

    ``files`` is the XCom of :func:`include.pipeline.file_ref` dicts (a sensor's
    or a task's output); returns record_loads' XCom (the totals). One
    ``load_<sink>`` task per sink of ``SLUICE_SINKS``; each closes its sink.
    Builds tasks only: nothing runs or connects at parse time.
    """
    from airflow.sdk import task

    from include.sinks import configured_sinks

    @task
    def csv_to_json(refs: list[dict]) -> list[dict]:
        from include.pipeline import stage_files

        return [s.to_dict() for s in stage_files(landing_zone(), source, refs)]

    @task
    def record_loads(summaries: list[dict], results: dict[str, dict], run_id=None) -> dict:
        from include.pipeline import FileSummary
        from include.pipeline import record_loads as record

        return record(landing_zone(), [FileSummary.from_dict(s) for s in summaries], results, run_id=run_id)

    def load_task(name: str):
        @task(task_id=f"load_{name}")
        def load(summaries: list[dict]) -> dict:
            from include.pipeline import FileSummary, load_staged

            target = sink(name)
            try:
                return load_staged(landing_zone(), target, source, [FileSummary.from_dict(s) for s in summaries])
            finally:
                target.close()

        return load

    staged = csv_to_json(files)
    results = {name: load_task(name)(staged) for name in configured_sinks()}
    return record_loads(staged, results)


def kafka_consumer_factory(conn_id: str = "kafka_default"):
    """A factory of ``confluent_kafka.Consumer`` from the kafka provider's Connection (its extra is the config).

    The consumers are for counting (``assign``, never ``subscribe``): group
    ``sluice-reconcile`` (include.kafka.RECONCILE_GROUP), no auto-commit, so they never move a real group's offsets.
    """
    from airflow.sdk import BaseHook
    from confluent_kafka import Consumer

    from include.kafka import RECONCILE_GROUP

    config = dict(BaseHook.get_connection(conn_id).extra_dejson)
    config.update({"group.id": RECONCILE_GROUP, "enable.auto.commit": False, "enable.partition.eof": False,
                   "log_level": 3})
    return lambda: Consumer(config)
