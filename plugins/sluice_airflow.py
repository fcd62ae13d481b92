"""Airflow-facing adapters of Sluice: Connections -> the clients ``include/`` takes.

DAG tasks call these at run time (never at parse time): the landing zone
behind ``SLUICE_LANDING_URL`` with the amazon provider's S3Hook client, an
Elasticsearch client from the elasticsearch provider's connection, and the
configured sinks. Nothing here touches the network on import.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

AWS_CONN_ID = "aws_default"
ELASTICSEARCH_CONN_ID = "elasticsearch_default"
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

    Requests time out after 30 seconds and are retried twice on connection
    errors, so an unreachable cluster fails the task within about a minute.
    """
    from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook

    client = ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).get_conn().es
    return client.options(request_timeout=30, max_retries=2, retry_on_timeout=True)


def sink(name: str):
    """The :class:`include.pipeline.Sink` called ``name``, built from its Airflow Connection."""
    from include import pipeline
    from include.contract import index_prefix

    if name == pipeline.ELASTICSEARCH:
        return pipeline.ElasticsearchSink(elasticsearch_client(), prefix=index_prefix())
    if name == pipeline.OPENTSDB:
        from opentsdb_hook import OpenTSDBHook

        return pipeline.OpenTSDBSink(OpenTSDBHook(opentsdb_conn_id=OPENTSDB_CONN_ID).get_conn())
    raise pipeline.UnknownSink(f"sink {name!r} is not one of {', '.join(pipeline.KNOWN_SINKS)}")


def task_retries() -> int:
    """Retries of every Sluice task: ``SLUICE_TASK_RETRIES`` (default 3; tests set 0)."""
    return int(os.environ.get("SLUICE_TASK_RETRIES", "3"))
