"""A batch of Kafka records on its way to the sinks: decoded documents, dead letters, what to commit.

Pure bookkeeping, no I/O: :meth:`Batch.of` decodes the records
(:func:`collectors.stream.decode.decode_record`), :meth:`Batch.drop` forgets
the records of partitions the group took away, :meth:`Batch.offsets` is what
to commit once every sink accepted the batch.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import orjson

from collectors.stream.deadletter import STAGE_DECODE, DeadLetter
from collectors.stream.decode import INTERNAL, Decoded, DecodeRules, Rejected, Undecodable, decode_record, received_time
from include.transform import TIME_FIELD, FileDocuments

Partition = tuple[str, int]


def partition_of(msg) -> Partition:
    return msg.topic(), msg.partition()


@dataclass
class Batch:
    """Records taken from Kafka, decoded, waiting for the sinks."""

    messages: list = field(default_factory=list)
    #: source -> documents (deduplicated by id; the last record with an id wins).
    docs: dict[str, FileDocuments] = field(default_factory=dict)
    #: document id -> indexes into ``messages`` of the records that produced it.
    owners: dict[str, list[int]] = field(default_factory=dict)
    deadletters: list[DeadLetter] = field(default_factory=list)
    #: Sinks that accepted this batch already (a retry after an outage skips them).
    done: set[str] = field(default_factory=set)
    started: float = 0.0
    #: What decoding saw, for the metrics: records per topic, reading reject codes, internal failures.
    per_topic: Tally = field(default_factory=Tally)
    rejected_readings: Tally = field(default_factory=Tally)
    internal: list[DeadLetter] = field(default_factory=list)
    #: Records whose received_at header gave way to their Kafka timestamp, by why (decode.RECEIVED_AT_*).
    untrusted_received_at: Tally = field(default_factory=Tally)
    #: Receive time of each record that has one (:func:`~collectors.stream.decode.received_time`), for the
    #: delay metric at commit: taken from decoding where it was parsed already (the header's text is not cheap).
    received: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, messages: Sequence, rules: DecodeRules, *, started: float = 0.0) -> Batch:
        batch = cls(messages=list(messages), started=started)
        positions: dict[str, dict[str, int]] = {}  # source -> id -> position in its FileDocuments
        for index, msg in enumerate(batch.messages):
            batch.per_topic[msg.topic()] += 1
            ts_type, ts = msg.timestamp()
            result = decode_record(rules, msg.topic(), msg.key(), msg.value(), msg.headers(), ts if ts_type else None)
            received = result.received if isinstance(result, Decoded) else None
            if received is None:
                try:
                    received, _ = received_time(msg.headers(), ts if ts_type else None, rules)
                except Undecodable:
                    pass  # neither a header nor a Kafka timestamp: no delay to observe
            if received is not None:
                batch.received.append(received)
            if isinstance(result, Rejected):
                dl = DeadLetter(msg, STAGE_DECODE, result.code, result.reason)
                batch.deadletters.append(dl)
                if result.code == INTERNAL:
                    batch.internal.append(dl)
                continue
            batch.rejected_readings.update(result.rejected)
            if result.untrusted_received_at:
                batch.untrusted_received_at[result.untrusted_received_at] += 1
            out = batch.docs.get(result.source)
            if out is None:
                out = batch.docs[result.source] = FileDocuments(result.source)
                positions[result.source] = {}
            seen = positions[result.source]
            for doc_id, doc in result.docs:
                encoded = orjson.dumps(doc)
                pos = seen.get(doc_id)
                if pos is None:
                    seen[doc_id] = len(out.ids)
                    out.ids.append(doc_id)
                    out.timestamps.append(doc[TIME_FIELD])
                    out.documents.append(encoded)
                else:  # the same reading twice (an MQTT redelivery): stored once, the later wins
                    out.documents[pos] = encoded
                batch.owners.setdefault(doc_id, []).append(index)
            out.rows_read += len(result.docs)
        return batch

    @property
    def documents(self) -> int:
        return sum(len(d.ids) for d in self.docs.values())

    def drop(self, gone: Collection[Partition], rules: DecodeRules) -> Batch:
        """This batch without the records of ``gone`` (revoked partitions): decoded again from the rest.

        Sinks that accepted the whole batch keep counting as done (they hold a
        superset); dead letters a sink caused stay for the records that remain.
        """
        keep = [m for m in self.messages if partition_of(m) not in gone]
        rest = Batch.of(keep, rules, started=self.started)
        rest.done = set(self.done)
        kept = {id(m) for m in keep}
        rest.deadletters += [d for d in self.deadletters if d.stage != STAGE_DECODE and id(d.message) in kept]
        return rest

    def offsets(self, owned: Collection[Partition] | None = None) -> dict[Partition, int]:
        """Next offset per partition to commit (only partitions in ``owned``, when given)."""
        last: dict[Partition, int] = {}
        for msg in self.messages:
            key = partition_of(msg)
            if owned is None or key in owned:
                last[key] = max(last.get(key, -1), msg.offset())
        return {key: offset + 1 for key, offset in last.items()}
