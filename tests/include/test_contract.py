"""The reading contract, table-driven: each kind of bad input and the reason it gets."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from include import contract
from include.contract import (
    ContractError,
    RowIdentity,
    canonical_timestamp,
    check_device,
    check_index_prefix,
    check_name,
    check_source,
    check_writer,
    daily_index,
    file_deadletter_key,
    format_tags,
    heartbeat_key,
    index_pattern,
    index_prefix,
    manifest_key,
    minute_key,
    parse_key,
    parse_tags,
    payload_deadletter_key,
    reading_id,
    row_identity,
    split_record_key,
    timestamp_text,
)

MINUTE = datetime(2020, 9, 3, 7, 11, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", ["mqtt.home.pcroom", "type.x", "a/b-c_d", "été", "x" * 200, "٣"])
def test_names_that_are_allowed(name):
    assert check_name(name) == name and contract.is_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("temp\n", "uses characters outside", id="trailing-newline"),
        pytest.param("temp\r", "uses characters outside", id="trailing-cr"),
        pytest.param("te\x00mp", "uses characters outside", id="nul"),
        pytest.param("te\x1bmp", "uses characters outside", id="escape"),
        pytest.param("a b", "uses characters outside", id="space"),
        pytest.param("a,b", "uses characters outside", id="comma"),
        pytest.param('a"b', "uses characters outside", id="quote"),
        pytest.param("a=b", "uses characters outside", id="equals"),
        pytest.param("", "1-200 characters", id="empty"),
        pytest.param("x" * 201, "1-200 characters", id="too-long"),
        pytest.param(5, "is not a string", id="not-a-string"),
    ],
)
def test_names_that_are_refused(name, reason):
    with pytest.raises(ContractError, match=reason):
        check_name(name, "metric")
    assert not contract.is_name(name)


@pytest.mark.parametrize("check", [check_device, check_writer])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("pc-1\n", id="trailing-newline"),
        pytest.param("-pc", id="leading-dash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("a/b", id="slash"),
        pytest.param("été", id="non-ascii"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("web.meta.json", id="sidecar-suffix"),
        pytest.param("", id="empty"),
    ],
)
def test_ids_that_are_refused(check, value):
    with pytest.raises(ContractError, match="not usable in a file name"):
        check(value)


def test_ids_that_are_allowed():
    assert check_device("arduino-1") == "arduino-1" and check_writer("mqtt.collector_2") == "mqtt.collector_2"
    assert check_source("host") == "host"
    with pytest.raises(ContractError, match="not one of host, sensor"):
        check_source("hosts")


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        pytest.param("", {}, id="none"),
        pytest.param("loc=pcroom type=dust", {"loc": "pcroom", "type": "dust"}, id="two"),
        pytest.param("type.x=1", {"type.x": "1"}, id="dotted-key"),
    ],
)
def test_tags_round_trip(text, tags):
    assert parse_tags(text) == tags and format_tags(tags) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("a", "not of the form key=value", id="no-equals"),
        pytest.param("a=", "not of the form key=value", id="no-value"),
        pytest.param("=b", "not of the form key=value", id="no-key"),
        pytest.param("a=b  c=d", "not of the form key=value", id="double-space"),
        pytest.param("a=b\n", "not of the form key=value", id="trailing-newline"),
        pytest.param("a=1 a=2", "appears twice", id="repeated-key"),
    ],
)
def test_tags_that_are_refused(text, reason):
    with pytest.raises(ContractError, match=reason):
        parse_tags(text)


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        pytest.param(1_699_999_990, "2023-11-14T22:13:10Z", id="seconds"),
        pytest.param(1_699_999_990.5, "2023-11-14T22:13:10.500Z", id="millis"),
        pytest.param(1_699_999_990.123456, "2023-11-14T22:13:10.123456Z", id="micros"),
        pytest.param(1_699_999_990.0000004, "2023-11-14T22:13:10Z", id="below-a-microsecond-rounds"),
    ],
)
def test_timestamp_text(epoch, text):
    assert timestamp_text(epoch) == text
    assert canonical_timestamp(text) == text


@pytest.mark.parametrize(
    ("epoch", "reason"),
    [
        pytest.param(float("nan"), "not a date", id="nan"),
        pytest.param(float("inf"), "not a date", id="inf"),
        pytest.param(1e15, "not a date", id="year-31-million"),
    ],
)
def test_timestamp_text_refuses(epoch, reason):
    with pytest.raises(ContractError, match=reason):
        timestamp_text(epoch)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("2023-11-14T22:13:10Z\n", "is not ISO-8601", id="trailing-newline"),
        pytest.param("٢٠٢٣-11-14T22:13:10Z", "is not ISO-8601", id="arabic-indic-digits"),
        pytest.param("2023-11-14T22:13:10+00:00", "is not ISO-8601", id="offset"),
        pytest.param("2023-11-14 22:13:10Z", "is not ISO-8601", id="space"),
        pytest.param("2023-02-30T00:00:00Z", "not a real date", id="february-30"),
        pytest.param("2023-11-14T24:00:00Z", "not a real date", id="hour-24"),
    ],
)
def test_timestamps_that_are_refused(text, reason):
    with pytest.raises(ContractError, match=reason):
        canonical_timestamp(text)


def test_reading_id_includes_the_sorted_tags():
    """One Arduino payload: three readings under one metric and timestamp, told apart by type=."""
    ts = "2023-11-14T22:13:10Z"
    ids = {reading_id("sensor", "pcroom", ts, "mqtt.home.pcroom", f"loc=pcroom type={t}") for t in ("a", "b", "c")}
    assert len(ids) == 3
    assert reading_id("sensor", "d", ts, "m", "") != reading_id("host", "d", ts, "m", "")


def test_row_identity_is_the_identity_documents_are_loaded_under():
    row = ["2023-11-14T22:13:10.5Z", "pcroom", "mqtt.home.pcroom", "22.5", "type=dust loc=pcroom"]
    same = ["2023-11-14T22:13:10.500Z", "pcroom", "mqtt.home.pcroom", "99", "loc=pcroom type=dust"]
    ident = row_identity("sensor", row)
    assert ident == row_identity("sensor", same)
    assert ident == RowIdentity("2023-11-14T22:13:10.500Z", "pcroom", "mqtt.home.pcroom", "loc=pcroom type=dust",
                                "sensor")
    assert ident.id == reading_id("sensor", "pcroom", "2023-11-14T22:13:10.500Z", "mqtt.home.pcroom",
                                  "loc=pcroom type=dust")
    # A row the contract refuses still has a stable identity (it is refused at load time, not lost at merge).
    assert row_identity("sensor", ["bad", "d", "m", "1", "a"]).timestamp == "bad"


def test_landing_keys_end_with_the_writer():
    key = minute_key("sensor", MINUTE, "mqtt-collector-1")
    assert key == "raw/sensor/date=2020-09-03/hour=07/minute=11/mqtt-collector-1.csv"
    parsed = parse_key(key)
    assert (parsed.source, parsed.minute, parsed.writer) == ("sensor", MINUTE.replace(second=0), "mqtt-collector-1")
    with pytest.raises(ContractError, match="not usable in a file name"):
        minute_key("sensor", MINUTE, "a\n")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("raw/host/web-1.csv", id="no-minute"),
        pytest.param("raw/hosts/date=2020-09-03/hour=07/minute=11/a.csv", id="unknown-source"),
        pytest.param("raw/host/date=2020-09-03/hour=07/minute=11/a.csv\n", id="trailing-newline"),
        pytest.param("raw/host/date=2020-02-30/hour=07/minute=11/a.csv", id="no-such-day"),
        pytest.param("raw/host/date=٢٠٢٠-09-03/hour=07/minute=11/a.csv", id="arabic-indic-digits"),
    ],
)
def test_keys_that_are_not_minute_files(key):
    with pytest.raises(ContractError, match="minute"):
        parse_key(key)


def test_each_kind_of_dead_letter_has_its_own_name_and_folder():
    raw = minute_key("host", MINUTE, "web-1")
    file_key = file_deadletter_key(raw, "abc")
    payload_key = payload_deadletter_key(MINUTE, "mqtt-1")
    assert file_key == "deadletter/file/host/date=2020-09-03/hour=07/minute=11/web-1.csv@abc.json"
    assert payload_key == "deadletter/payload/sensor/date=2020-09-03/hour=07/minute=11/mqtt-1.jsonl"
    assert split_record_key(file_key) == (raw, "abc")
    assert len({contract.PAYLOAD, contract.RECORD, contract.FILE, contract.DEADLETTER_TOPIC}) == 4
    with pytest.raises(ContractError, match="do not land"):
        contract.deadletter_prefix(contract.RECORD)


def test_manifest_and_heartbeat_keys():
    assert manifest_key("sensor", MINUTE, "mqtt-1") == "manifests/sensor/date=2020-09-03/hour=07/minute=11/mqtt-1.json"
    assert heartbeat_key("host", "web-1") == "heartbeats/host/web-1.json"
    with pytest.raises(ContractError):
        heartbeat_key("host", "web 1")


def test_index_names_follow_the_prefix():
    assert index_prefix({}) == "sluice"
    assert index_prefix({"SLUICE_ES_INDEX_PREFIX": "t42"}) == "t42"
    assert index_pattern("sensor", prefix="t42") == "t42-sensor-*"
    assert daily_index("lag", "2020-09-03T07:11:30Z", prefix="t42") == "t42-lag-2020.09.03"
    for bad in ("Sluice", "sl*", "-x", "a b", ""):
        with pytest.raises(ContractError, match="index prefix"):
            check_index_prefix(bad)
    with pytest.raises(ContractError, match="no indices"):
        index_pattern("state")


def test_internal_reasons_name_the_exception():
    reason = contract.internal_reason(KeyError("host"))
    assert reason == "internal: KeyError: 'host'" and contract.reason_code(reason) == contract.INTERNAL


def test_payload_dead_letter_line_keeps_the_start_of_a_large_payload():
    import orjson

    line = contract.payload_deadletter_line(
        topic="sensors/d", payload=b"x" * 70000, received=1_700_000_000.0004, reason="oversized: too big",
        codes=["oversized", "oversized"], accepted_readings=0,
    )
    entry = orjson.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert entry["received_at"] == "2023-11-14T22:13:20Z" and entry["codes"] == ["oversized"]
    assert entry["payload_bytes"] == 70000 and len(entry["payload"]) == contract.PAYLOAD_KEPT_MAX
    binary = orjson.loads(contract.payload_deadletter_line(
        topic="t", payload=b"\xff\xfe", received=0.0, reason="not_json: x", codes=["not_json"], accepted_readings=0))
    assert binary["payload_base64"] == "//4="
