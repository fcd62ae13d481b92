"""Elasticsearch is the real server, with security on: HTTPS from the stack's CA, API keys per role.

Create index, bulk, search, count as admin; then what each role may and may not do.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid

import pytest
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch, helpers

from include import elasticsearch as es_mod
from include.contract import daily_index
from include.transform import transform_file


def test_create_bulk_search_count(elasticsearch):
    es = elasticsearch.admin(request_timeout=30)
    # The Maven Central zip has no `rest-root` module, so GET / is not served;
    # the node's own info says which server this is.
    (node,) = es.nodes.info(node_id="_local")["nodes"].values()
    assert node["version"].startswith("9.")
    index = f"smoke-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=index, mappings={"properties": {
        "@timestamp": {"type": "date"}, "device": {"type": "keyword"}, "value": {"type": "double"},
    }})
    docs = [
        {"_index": index, "_id": f"d{i}", "@timestamp": f"2026-01-01T00:00:{i:02d}Z",
         "device": "arduino-1" if i % 2 else "arduino-2", "value": float(i)}
        for i in range(50)
    ]
    ok, errors = helpers.bulk(es, docs, refresh="wait_for")
    assert (ok, errors) == (50, [])

    assert es.count(index=index)["count"] == 50
    hits = es.search(index=index, query={"term": {"device": "arduino-1"}}, size=100)["hits"]
    assert hits["total"]["value"] == 25
    assert sorted(h["_source"]["value"] for h in hits["hits"]) == [float(i) for i in range(1, 50, 2)]
    # Re-indexing the same ids overwrites instead of adding.
    helpers.bulk(es, docs[:10], refresh="wait_for")
    assert es.count(index=index)["count"] == 50
    es.indices.delete(index=index)


def test_plain_http_is_refused(elasticsearch):
    """HTTP only speaks TLS: a plaintext request gets no answer of Elasticsearch's."""
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{elasticsearch.config.host}:{elasticsearch.port}/_cluster/health", timeout=10)


def test_a_request_without_credentials_gets_401(elasticsearch):
    context = ssl.create_default_context(cafile=str(elasticsearch.ca_certs))
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{elasticsearch.url}/_cluster/health", timeout=10, context=context)
    assert raised.value.code == 401
    anonymous = Elasticsearch(elasticsearch.url, ca_certs=str(elasticsearch.ca_certs))
    with pytest.raises(AuthenticationException):
        anonymous.count(index="sluice-*")


def test_a_wrong_key_gets_401(elasticsearch):
    client = es_mod.connect(elasticsearch.url, api_key="bm90OmFrZXk=", ca_certs=str(elasticsearch.ca_certs))
    with pytest.raises(AuthenticationException):
        client.count(index="sluice-*")


def test_an_unknown_ca_is_not_trusted(elasticsearch):
    """The client verifies the node's certificate: without the stack's CA the handshake fails."""
    context = ssl.create_default_context()  # the system's trust store only
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{elasticsearch.url}/_cluster/health", timeout=10, context=context)


@pytest.fixture()
def prefix(elasticsearch):
    name = f"sluicetest-{uuid.uuid4().hex[:8]}"
    yield name
    with elasticsearch.admin() as admin:
        es_mod.drop_prefix(admin, name)


SENSOR_CSV = b"timestamp,device,metric,value,tags\n2020-09-03T00:00:00Z,a1,m,1,type=dust\n2020-09-03T00:00:01Z,a1,m,2,\n"


def test_the_loader_writes_documents_but_cannot_delete_read_or_touch_other_indices(elasticsearch, prefix):
    loader = elasticsearch.client("loader", prefix=prefix)
    docs = transform_file("sensor", SENSOR_CSV)
    result = es_mod.bulk_index(loader, es_mod.bulk_actions("sensor", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
    assert (result.accepted, result.rejected) == (2, 0)
    index = daily_index("sensor", docs.timestamps[0], prefix=prefix)
    with pytest.raises(AuthorizationException) as raised:
        loader.indices.delete(index=index)
    assert raised.value.status_code == 403
    with pytest.raises(AuthorizationException):
        loader.delete(index=index, id=docs.ids[0])
    with pytest.raises(AuthorizationException):
        loader.search(index=index)
    # Another family of the same prefix, and another prefix's indices, are not the loader's.
    for other in (daily_index("lag", docs.timestamps[0], prefix=prefix), f"other{prefix}-sensor-2020.09.03"):
        with pytest.raises(AuthorizationException):
            loader.index(index=other, id="x", document={"@timestamp": docs.timestamps[0]})
    # Nor may it replace a template (cluster-wide: it could change every future index).
    with pytest.raises(AuthorizationException):
        loader.indices.put_index_template(name=f"{prefix}-sensor", index_patterns=[f"{prefix}-sensor-*"])
    with elasticsearch.admin() as admin:
        admin.indices.refresh(index=index)
        assert admin.count(index=index)["count"] == 2


def test_the_dashboards_key_reads_but_cannot_write(elasticsearch, prefix):
    loader = elasticsearch.client("loader", prefix=prefix)
    docs = transform_file("sensor", SENSOR_CSV)
    es_mod.bulk_index(loader, es_mod.bulk_actions("sensor", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
    index = daily_index("sensor", docs.timestamps[0], prefix=prefix)
    with elasticsearch.admin() as admin:
        admin.indices.refresh(index=index)
    dashboards = elasticsearch.client("dashboards", prefix=prefix)
    assert dashboards.count(index=f"{prefix}-*")["count"] == 2
    with pytest.raises(AuthorizationException):
        dashboards.index(index=index, id="x", document={"@timestamp": docs.timestamps[0]})
    with pytest.raises(AuthorizationException):
        dashboards.indices.delete(index=index)


def test_the_lag_key_writes_only_the_lag_indices(elasticsearch, prefix):
    lag = elasticsearch.client("lag", prefix=prefix)
    stamp = "2020-09-03T00:00:00.000Z"
    assert lag.index(index=daily_index("lag", stamp, prefix=prefix), id="p0", document={"@timestamp": stamp})["result"] == "created"
    with pytest.raises(AuthorizationException):
        lag.index(index=daily_index("sensor", stamp, prefix=prefix), id="x", document={"@timestamp": stamp})


def test_a_key_the_cluster_lost_is_made_again(elasticsearch, prefix):
    from include import elasticsearch_security as sec

    elasticsearch.api_key("dashboards", prefix=prefix)
    old = elasticsearch.stored_api_keys(prefix)["dashboards"]
    with elasticsearch.admin() as admin:
        assert sec.invalidate_api_keys(admin, [old["id"]]) == 1
    keys = elasticsearch.api_keys(prefix, verify=True)
    assert keys["dashboards"]["id"] != old["id"]
    assert elasticsearch.client("dashboards", prefix=prefix).count(index=f"{prefix}-*", allow_no_indices=True)["count"] == 0
