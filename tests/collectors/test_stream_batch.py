"""Pure parts of the stream loader's loop: a batch after a revocation, and the health verdict of a sink outage."""

from __future__ import annotations

import orjson
from test_stream_decode import HEADERS, HOSTS, NOW, RAW, RULES, Record, seed

from collectors.stream.batch import Batch
from include.kafka import HEADER_RECEIVED_AT
from include.contract import timestamp_text
from collectors.stream.deadletter import DeadLetter, sink_stage
from collectors.stream.metrics import StreamMetrics


class PartRecord(Record):
    def __init__(self, partition: int, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._p = partition

    def partition(self):
        return self._p


def test_a_revoked_partition_leaves_the_batch_and_its_offsets():
    records = [PartRecord(0, RAW, b"dev0", seed(value=1.0), HEADERS, offset=10),
               PartRecord(1, RAW, b"dev1", seed(value=2.0), HEADERS, offset=20),
               PartRecord(1, RAW, b"dev1", b"{oops", HEADERS, offset=21),
               PartRecord(0, RAW, b"dev0", seed(value=3.0, metric="m.other"), HEADERS, offset=11)]
    batch = Batch.of(records, RULES)
    batch.done.add("elasticsearch")
    batch.deadletters.append(DeadLetter(records[3], sink_stage("opentsdb"), "refused", "no"))
    assert batch.offsets() == {(RAW, 0): 12, (RAW, 1): 22}
    rest = batch.drop({(RAW, 1)}, RULES)
    assert [m.offset() for m in rest.messages] == [10, 11]
    assert sorted(orjson.loads(d)["value"] for d in rest.docs["sensor"].documents) == [1.0, 3.0]
    assert rest.done == {"elasticsearch"}, "a sink that took the whole batch holds the rest too"
    assert [(d.message.offset(), d.stage) for d in rest.deadletters] == [(11, "sink:opentsdb")]
    assert rest.offsets() == {(RAW, 0): 12}
    assert batch.offsets(owned={(RAW, 0)}) == {(RAW, 0): 12}, "only owned partitions are committed"


def test_the_same_reading_twice_is_one_document_the_later_wins():
    first = PartRecord(0, RAW, b"dev0", seed(value=1.0), HEADERS, offset=1)
    again = PartRecord(0, RAW, b"dev0", seed(value=2.0), HEADERS, offset=2)
    batch = Batch.of([first, again, PartRecord(0, HOSTS, b"h", b"[]", None, offset=3)], RULES)
    docs = batch.docs["sensor"]
    assert len(docs.ids) == 1 and orjson.loads(docs.documents[0])["value"] == 2.0
    assert batch.owners[docs.ids[0]] == [0, 1] and len(batch.deadletters) == 1


def test_each_record_with_a_receive_time_gives_one_delay_at_commit():
    """The delay metric's receive times come from decoding: the header of a sensor record (already parsed
    there), else the Kafka timestamp; a record with neither gives no delay, and nothing fails."""
    kafka_ms = int((NOW - 5) * 1000)
    records = [PartRecord(0, RAW, b"dev0", seed(value=1.0), HEADERS, offset=1, timestamp_ms=kafka_ms),
               PartRecord(0, RAW, b"dev0", b"{oops", None, offset=2, timestamp_ms=kafka_ms),
               PartRecord(0, HOSTS, b"h", b"[]", None, offset=3, timestamp_ms=kafka_ms),
               PartRecord(0, RAW, b"dev0", b"{oops", None, offset=4)]
    batch = Batch.of(records, RULES)
    assert batch.received == [NOW, NOW - 5, NOW - 5]
    metrics = StreamMetrics(idle_after_s=30, clock=lambda: NOW)
    metrics.committed(batch, now=NOW + 10, elapsed=1.0)
    sample = metrics.registry.get_sample_value
    assert sample("sluice_stream_delay_seconds_count") == 3
    assert sample("sluice_stream_delay_seconds_sum") == 10 + 15 + 15
    assert sample("sluice_stream_records_committed_total") == 4


def test_hostile_received_at_headers_fall_back_to_the_kafka_time_and_the_next_device_still_loads():
    """A received_at header that is no timestamp (not UTF-8, a control character, a trailing newline,
    100 KB, a date that does not exist) gives way to the record's Kafka timestamp for the delay, the
    batch decodes, and a good record of another device after them still becomes a document."""
    kafka_ms = int((NOW - 5) * 1000)
    hostile = [b"\xff\xfe", b"2026-01-01T00:00:00\x00Z", timestamp_text(NOW).encode() + b"\n", b"9" * 100_000,
               b"2026-02-30T00:00:00Z"]
    records = [PartRecord(0, RAW, b"dev0", seed(value=float(i)), [(HEADER_RECEIVED_AT, h)], offset=i,
                          timestamp_ms=kafka_ms) for i, h in enumerate(hostile)]
    records.append(PartRecord(0, RAW, b"dev1", seed(value=9.0), HEADERS, offset=len(hostile), timestamp_ms=kafka_ms))
    batch = Batch.of(records, RULES)
    assert batch.received == [NOW - 5] * len(hostile) + [NOW]
    assert sum(batch.untrusted_received_at.values()) == len(hostile)
    values = sorted(orjson.loads(d)["value"] for d in batch.docs["sensor"].documents)
    assert 9.0 in values and not batch.internal


def test_health_names_a_sink_down_longer_than_the_limit():
    now = [100.0]
    metrics = StreamMetrics(idle_after_s=30, clock=lambda: now[0])
    health = metrics.health
    assert health.check().healthy
    health.traffic()
    metrics.outages.failing("opentsdb", "opentsdb unavailable (ConnectionError: refused)")
    now[0] += 20
    assert health.check().healthy, "within the limit"
    now[0] += 15
    verdict = health.check()
    assert not verdict.healthy
    assert any("nothing was handled for 35 s" in r for r in verdict.reasons)
    assert any(r.startswith("sinks: opentsdb down for 35 s (limit 30 s): opentsdb unavailable") for r in verdict.reasons)
    metrics.outages.ok("opentsdb")
    health.handled()
    assert health.check().healthy
