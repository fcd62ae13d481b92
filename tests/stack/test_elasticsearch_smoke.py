"""Elasticsearch is the real server: create index, bulk, search, count."""

from __future__ import annotations

import uuid

from elasticsearch import Elasticsearch, helpers


def test_create_bulk_search_count(elasticsearch):
    es = Elasticsearch(elasticsearch.config.url("elasticsearch"), request_timeout=30)
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
