"""Fixtures of the pipeline tests: a private landing prefix on the real MinIO and
a private index prefix on the real Elasticsearch, both removed afterwards."""

from __future__ import annotations

import uuid

import pytest

from include import elasticsearch as es_mod
from include import sinks
from include.landing import S3Landing
from stack.config import LANDING_BUCKET


@pytest.fixture()
def landing(minio):
    """A private prefix through MinIO's root account, on purpose: the tests play every writer
    (collector and DAG) on one zone and delete the prefix afterwards, which no Sluice user may.
    What each user may do is tested on the real MinIO in tests/stack/test_minio_smoke.py."""
    zone = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-pipeline-{uuid.uuid4().hex[:8]}")
    yield zone
    for info in list(zone.list("")):
        zone.delete(info.key)


@pytest.fixture()
def sink(elasticsearch):
    # Admin: these tests count and inspect through the sink's client; the loader role's own
    # rights are tested in tests/stack/test_elasticsearch_smoke.py and by the stream and e2e tests.
    client = elasticsearch.admin()
    prefix = f"sluicetest-{uuid.uuid4().hex[:8]}"
    yield sinks.ElasticsearchSink(client, prefix=prefix)
    es_mod.drop_prefix(client, prefix)
    client.close()
