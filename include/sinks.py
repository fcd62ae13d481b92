"""The sinks documents are loaded into: Elasticsearch and OpenTSDB, behind one small protocol.

A sink has a ``name`` (one of :data:`KNOWN_SINKS`), a ``load(source,
batches)`` method that takes ``(raw key, FileDocuments)`` pairs and returns a
:class:`SinkFileResult` per key, and a ``close()`` that releases its client.
``load`` raises when the sink is unreachable or refuses retryably (the task
fails and its retry loads again: ids are deterministic); documents refused for
good are returned in :attr:`SinkFileResult.failed` with the sink's reason.

Which sinks run is configuration (:func:`configured_sinks`, ``SLUICE_SINKS``).
The batch DAGs and the stream loader use the same classes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from include.contract import ES_INDEX_PREFIX
from include.transform import FileDocuments

#: Sink names, as ``SLUICE_SINKS`` spells them and as load records key their results.
ELASTICSEARCH = "elasticsearch"
OPENTSDB = "opentsdb"
KNOWN_SINKS = (ELASTICSEARCH, OPENTSDB)
DEFAULT_SINKS = (ELASTICSEARCH,)


class UnknownSink(ValueError):
    """A sink name in the configuration that Sluice does not have."""


def configured_sinks(value: str | None = None) -> tuple[str, ...]:
    """The sink names to load, from ``value`` or ``SLUICE_SINKS`` (``elasticsearch,opentsdb``).

    Unset or empty means :data:`DEFAULT_SINKS`. Raises UnknownSink naming the
    first name that is not in :data:`KNOWN_SINKS`.
    """
    text = value if value is not None else os.environ.get("SLUICE_SINKS", "")
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in KNOWN_SINKS:
            raise UnknownSink(f"sink {name!r} in SLUICE_SINKS is not one of {', '.join(KNOWN_SINKS)}")
    return names or DEFAULT_SINKS


@dataclass
class SinkFileResult:
    """What one sink did with one file's documents; ``failed`` maps document id -> reason."""

    accepted: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": len(self.failed), "failed": self.failed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkFileResult:
        return cls(accepted=data["accepted"], failed=dict(data.get("failed") or {}))


Batches = Sequence[tuple[str, FileDocuments]]


class Sink(Protocol):
    name: str

    def load(self, source: str, batches: Batches) -> dict[str, SinkFileResult]:
        """Load every batch; raise when the sink is unreachable or refuses retryably."""
        ...

    def close(self) -> None:
        """Release the sink's client (connections); the sink is not used afterwards."""
        ...


class ElasticsearchSink:
    """Bulk-loads documents into the daily indices, creating the index template when missing.

    ``client`` is an ``elasticsearch.Elasticsearch``.
    """

    name = ELASTICSEARCH

    #: Seconds a source's index template counts as checked: a long-lived sink (the stream loader's)
    #: asks once in a while, not before every batch (a round trip that was 4% of its load, profiled),
    #: and still puts back a template someone removed.
    TEMPLATE_RECHECK_S = 300.0

    def __init__(self, client: Any, *, prefix: str = ES_INDEX_PREFIX, chunk_size: int = 2000) -> None:
        self.client = client
        self.prefix = prefix
        self.chunk_size = chunk_size
        self._template_checked: dict[str, float] = {}  # source -> time.monotonic() of the last check

    def load(self, source: str, batches: Batches) -> dict[str, SinkFileResult]:
        from include import elasticsearch as es

        results = {key: SinkFileResult() for key, _ in batches}
        if not any(docs.documents for _, docs in batches):
            return results
        checked = self._template_checked.get(source)
        if checked is None or time.monotonic() - checked >= self.TEMPLATE_RECHECK_S:
            es.ensure_index_template(self.client, source, prefix=self.prefix)
            self._template_checked[source] = time.monotonic()
        owner: dict[str, str] = {}
        for key, docs in batches:
            owner.update(dict.fromkeys(docs.ids, key))

        def actions() -> Iterator[tuple[bytes, bytes]]:
            for _, docs in batches:
                yield from es.bulk_actions(source, docs.ids, docs.timestamps, docs.documents, prefix=self.prefix)

        outcome = es.bulk_index(self.client, actions(), chunk_size=self.chunk_size)
        for doc_id, reason in outcome.failed.items():
            results[owner.get(doc_id, batches[0][0])].failed[doc_id] = reason
        for key, docs in batches:
            # A row repeated within a file (same id) is accepted twice and stored once.
            results[key].accepted = len(docs.ids) - len(results[key].failed)
        return results

    def close(self) -> None:
        self.client.close()


class OpenTSDBSink:
    """Puts each document's datapoints (:func:`include.transform.document_datapoints`).

    ``client`` is an :class:`include.opentsdb.OpenTSDBClient`. A document is
    accepted when every one of its datapoints was stored; otherwise it is
    failed with OpenTSDB's reasons (metric named). An unreachable TSD raises
    :class:`include.opentsdb.OpenTSDBUnavailable` so the task fails and its
    retry puts everything again (duplicates are resolved on read).
    """

    name = OPENTSDB

    def __init__(self, client: Any) -> None:
        self.client = client

    def load(self, source: str, batches: Batches) -> dict[str, SinkFileResult]:
        from include.transform import document_datapoints

        results = {key: SinkFileResult() for key, _ in batches}
        owners: list[tuple[str, str]] = []  # (file key, document id) of each datapoint, in put order

        def datapoints() -> Iterator[dict[str, Any]]:
            for key, docs in batches:
                for doc_id, raw in zip(docs.ids, docs.documents, strict=True):
                    for point in document_datapoints(source, orjson.loads(raw)):
                        owners.append((key, doc_id))
                        yield point

        outcome = self.client.put(datapoints())
        for failure in outcome.failed:
            if failure.index is None:  # an error OpenTSDB could not pin on a datapoint
                key, doc_id = batches[0][0], "?"
            else:
                key, doc_id = owners[failure.index]
            metric = failure.datapoint.get("metric", "?") if isinstance(failure.datapoint, dict) else "?"
            previous = results[key].failed.get(doc_id)
            reason = f"{metric}: {failure.reason}"
            results[key].failed[doc_id] = f"{previous}; {reason}" if previous else reason
        for key, docs in batches:
            results[key].accepted = len(docs.ids) - len(results[key].failed)
        return results

    def close(self) -> None:
        self.client.close()
