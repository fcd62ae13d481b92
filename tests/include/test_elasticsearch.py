"""The Elasticsearch sink against the real node: template, mappings, ids, refusals, an unreachable node."""

from __future__ import annotations

import threading
import uuid

import orjson
import pytest

from include import elasticsearch as es_mod
from include.contract import daily_index
from include.elasticsearch import ElasticsearchUnavailable, RetryableFailuresLeft, bulk_actions, bulk_index, ensure_index_template
from include.transform import transform_file

HOST_HEADER = (
    "timestamp,host,cpu_usage_percent,cpu_ctx_switches,cpu_interrupts,cpu_soft_interrupts,"
    "cpu_syscalls,mem_total,mem_available,mem_percent,mem_used,mem_free"
)


def host_csv(host: str, day: str, seconds: range) -> bytes:
    rows = [
        f"{day}T23:59:{s:02d}Z,{host},{s + 0.5},{1000 + s},{2000 + s},0,0,17084211200,{4082380800 - s},76.1,13001830400,4082380800"
        for s in seconds
    ]
    return ("\n".join([HOST_HEADER, *rows]) + "\n").encode()


@pytest.fixture()
def es(elasticsearch):
    """The admin: installs templates, inspects mappings, sets blocks, cleans up (never a pipeline client)."""
    client = elasticsearch.admin()
    yield client
    client.close()


@pytest.fixture()
def prefix(es):
    name = f"sluicetest-{uuid.uuid4().hex[:8]}"
    yield name
    es_mod.drop_prefix(es, name)


@pytest.fixture()
def loader(elasticsearch, prefix):
    """The loader role's API key for the test's prefix (its templates are installed as the key is made)."""
    client = elasticsearch.client("loader", prefix=prefix)
    yield client
    client.close()


def test_template_is_created_once_and_types_the_fields(es, prefix):
    assert ensure_index_template(es, "host", prefix=prefix) is True
    assert ensure_index_template(es, "host", prefix=prefix) is False
    assert ensure_index_template(es, "sensor", prefix=prefix) is True
    docs = transform_file("host", host_csv("web-1", "2020-09-03", range(2)))
    bulk_index(es, bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
    sensor = transform_file("sensor", b"timestamp,device,metric,value,tags\n2020-09-03T00:00:00Z,a1,m,1,type=dust room=pc\n")
    bulk_index(es, bulk_actions("sensor", sensor.ids, sensor.timestamps, sensor.documents, prefix=prefix))
    host_props = es.indices.get_mapping(index=f"{prefix}-host-2020.09.03")[f"{prefix}-host-2020.09.03"]["mappings"]["properties"]
    assert host_props["@timestamp"]["type"] == "date"
    assert host_props["cpu_ctx_switches"]["type"] == "long"
    assert host_props["mem_percent"]["type"] == "double"
    assert host_props["host"]["type"] == "keyword"
    sensor_props = es.indices.get_mapping(index=f"{prefix}-sensor-2020.09.03")[f"{prefix}-sensor-2020.09.03"]["mappings"]["properties"]
    assert sensor_props["tags"]["type"] == "flattened"
    assert sensor_props["value"]["type"] == "double"


def test_a_long_lived_sink_checks_the_template_once_in_a_while_and_puts_back_a_removed_one(es, prefix):
    from include.contract import template_name
    from include.sinks import ElasticsearchSink

    sink = ElasticsearchSink(es, prefix=prefix)
    docs = transform_file("host", host_csv("web-1", "2020-09-03", range(2)))
    name = template_name("host", prefix=prefix)
    sink.load("host", [("a", docs)])
    assert es.indices.exists_index_template(name=name)
    es.indices.delete_index_template(name=name)
    sink.load("host", [("a", docs)])
    assert not es.indices.exists_index_template(name=name), "checked a moment ago: not asked before every batch"
    sink.TEMPLATE_RECHECK_S = 0.0  # the check's time has come
    assert sink.load("host", [("a", docs)])["a"].accepted == 2
    assert es.indices.exists_index_template(name=name), "a removed template is put back at the next check"


def test_daily_indices_and_reloading_overwrites(es, prefix, loader):
    # 23:59:58 .. 00:00:01 the next day: two daily indices.
    data = host_csv("web-1", "2020-09-03", range(58, 60)) + host_csv("web-1", "2020-09-04", range(0, 2)).split(b"\n", 1)[1].replace(b"T23:59:", b"T00:00:")
    docs = transform_file("host", data)
    ensure_index_template(loader, "host", prefix=prefix)
    for _ in range(2):
        result = bulk_index(loader, bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
        assert (result.accepted, result.rejected) == (4, 0)
    es.indices.refresh(index=f"{prefix}-*")
    assert es.count(index=f"{prefix}-host-2020.09.03")["count"] == 2
    assert es.count(index=f"{prefix}-host-2020.09.04")["count"] == 2
    got = es.get(index=daily_index("host", docs.timestamps[0], prefix=prefix), id=docs.ids[0])["_source"]
    assert got == orjson.loads(docs.documents[0])
    assert got["cpu_usage_percent"] == 58.5 and got["mem_available"] == 4082380800 - 58


def test_a_refused_document_is_reported_with_its_reason_and_the_rest_load(es, prefix, loader):
    ensure_index_template(loader, "sensor", prefix=prefix)
    index = f"{prefix}-sensor-2020.09.03".encode()
    actions = [
        (b'{"index":{"_index":"%s","_id":"good"}}' % index, b'{"@timestamp":"2020-09-03T00:00:00Z","device":"a","metric":"m","value":1.5,"tags":{}}'),
        (b'{"index":{"_index":"%s","_id":"bad"}}' % index, b'{"@timestamp":"2020-09-03T00:00:00Z","device":"a","metric":"m","value":"warm","tags":{}}'),
    ]
    result = bulk_index(loader, actions)
    assert result.accepted == 1
    assert list(result.failed) == ["bad"]
    assert "status 400" in result.failed["bad"] and "value" in result.failed["bad"]


def test_an_unreachable_node_raises_unavailable_naming_it():
    client = es_mod.connect("http://127.0.0.1:9", request_timeout=2, max_retries=0)
    with pytest.raises(ElasticsearchUnavailable, match="127.0.0.1:9"):
        bulk_index(client, [(b'{"index":{"_index":"x","_id":"1"}}', b"{}")])


def _block(es, index: str, on: bool) -> None:
    # A read-only-allow-delete block is what a full disk sets: Elasticsearch answers 429 to writes.
    es.indices.put_settings(index=index, settings={"index.blocks.read_only_allow_delete": True if on else None})


def test_429_is_retried_with_backoff_until_accepted(es, prefix, loader):
    docs = transform_file("host", host_csv("web-1", "2020-09-03", range(10)))
    actions = list(bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
    ensure_index_template(loader, "host", prefix=prefix)
    bulk_index(loader, actions[:1])
    index = f"{prefix}-host-2020.09.03"
    _block(es, index, True)
    timer = threading.Timer(1.0, _block, args=(es, index, False))
    timer.start()
    try:
        result = bulk_index(loader, actions, max_retries=6, initial_backoff=0.5)
    finally:
        timer.join()
    assert (result.accepted, result.rejected) == (10, 0)
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 10


def test_429_still_answered_after_the_retries_raises_naming_it(es, prefix, loader):
    docs = transform_file("host", host_csv("web-1", "2020-09-03", range(3)))
    actions = list(bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
    ensure_index_template(loader, "host", prefix=prefix)
    bulk_index(loader, actions[:1])
    index = f"{prefix}-host-2020.09.03"
    _block(es, index, True)
    try:
        with pytest.raises(RetryableFailuresLeft, match="429"):
            bulk_index(loader, actions, max_retries=2, initial_backoff=0.1)
    finally:
        _block(es, index, False)


def test_odd_tag_keys_of_one_device_cannot_fail_other_devices_or_exhaust_the_field_limit(es, prefix, loader):
    """A device sending ``type.x`` and a new tag key per message, beside devices tagged ``type=``.

    With an object mapping, ``type.x`` makes ``tags.type`` an object and every later
    ``type=dust`` fails (or the reverse), and 1,000 distinct keys hit
    ``index.mapping.total_fields.limit``. The flattened ``tags`` field takes both.
    """
    ts = "2020-09-03T00:00:{:02d}.{:03d}Z"
    lines = ["timestamp,device,metric,value,tags"]
    for i in range(3000):
        lines.append(f"{ts.format(i // 1000, i % 1000)},odd-1,m,{i},type.x=1 key{i}=v{i}")
        lines.append(f"{ts.format(i // 1000, i % 1000)},good-1,m,{i},type=dust")
        if i % 500 == 0:
            lines.append(f"{ts.format(i // 1000, i % 1000)},odd-2,m,{i},type.x.y=deep")
    docs = transform_file("sensor", ("\n".join(lines) + "\n").encode())
    assert docs.rejected == 0
    ensure_index_template(loader, "sensor", prefix=prefix)
    result = bulk_index(loader, bulk_actions("sensor", docs.ids, docs.timestamps, docs.documents, prefix=prefix),
                        chunk_size=500)
    assert (result.accepted, result.failed) == (docs.accepted, {})
    index = daily_index("sensor", docs.timestamps[0], prefix=prefix)
    es.indices.refresh(index=index)
    assert es.count(index=index, query={"term": {"device": "good-1"}})["count"] == 3000
    assert es.count(index=index, query={"term": {"tags.type": "dust"}})["count"] == 3000
    assert es.count(index=index, query={"term": {"tags.type.x": "1"}})["count"] == 3000
    assert es.count(index=index, query={"term": {"tags.key2999": "v2999"}})["count"] == 1
    fields = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert len(fields) == 5 and fields["tags"]["type"] == "flattened"
    top = es.search(index=index, size=0, aggs={"t": {"terms": {"field": "tags.type"}}})["aggregations"]["t"]["buckets"]
    assert top == [{"key": "dust", "doc_count": 3000}]
