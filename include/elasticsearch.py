"""Elasticsearch for Sluice: index templates, daily index names and bulk loading.

Documents of a source go to daily indices ``{prefix}-{source}-YYYY.MM.DD``
(UTC day of ``@timestamp``) behind one index template per source, created when
missing (or when this module's template version is newer than the stored one).
Loading goes through :func:`elasticsearch.helpers.streaming_bulk` with
``index`` actions and the documents' deterministic ids, so a rerun overwrites.

Failure behaviour of :func:`bulk_index`:

* Items rejected with 429/502/503/504, and whole requests answered 429, are
  retried by the helper with exponential backoff (``initial_backoff`` doubling
  up to ``max_backoff`` seconds, ``max_retries`` times). Items that still fail
  that way raise :class:`RetryableFailuresLeft`, so the calling task fails and
  is retried later (reloading is idempotent).
* Items refused for good (a mapping conflict, a malformed document) are
  returned in :attr:`BulkResult.failed` with Elasticsearch's reason; the rest load.
* A cluster that cannot be reached raises :class:`ElasticsearchUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from include.contract import ES_INDEX_PREFIX, NAME_MAX, daily_index, index_pattern, template_name
from include.schemas import HOST, SCHEMAS, SOURCES

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

log = logging.getLogger(__name__)

#: Bump when the templates below change: a stored template of an older version is replaced.
TEMPLATE_VERSION = 2
#: Statuses worth retrying: too many requests and a busy or restarting node.
RETRY_STATUSES = (429, 502, 503, 504)
_KINDS = {"int": "long", "float": "double", "str": "keyword", "tags": "keyword", "timestamp": "date"}


class ElasticsearchUnavailable(RuntimeError):
    """The cluster could not be reached (refused, reset or timed out) after the client's retries."""


class RetryableFailuresLeft(RuntimeError):
    """Documents still refused with a retryable status (429/5xx) after every backoff."""


def index_template(source: str, *, prefix: str = ES_INDEX_PREFIX) -> dict[str, Any]:
    """The composable index template of a source's daily indices.

    ``@timestamp`` is a date, numeric columns are ``long``/``double`` as in the
    CSV schema, names (host, device, metric) are keywords and ``tags`` is one
    ``flattened`` field (every tag value a keyword under ``tags.<key>``). Host
    columns appended to the schema later and not known here map as ``double``
    (dynamic template), never as text.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    properties: dict[str, dict[str, Any]] = {"@timestamp": {"type": "date"}}
    dynamic_templates: list[dict[str, Any]] = [{"strings_as_keywords": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}]
    if source == HOST:
        for column in SCHEMAS[HOST].columns:
            if column.name != "timestamp":
                properties[column.name] = {"type": _KINDS[column.kind]}
        dynamic_templates.append({"numbers_as_double": {"match_mapping_type": "long", "mapping": {"type": "double"}}})
    else:
        # Tags are free-form per device: one flattened field, not a field per key. A key
        # "type.x" cannot collide with another device's "type" (an object mapping would
        # make "tags.type" an object and refuse every later "type=dust"), and a new key per
        # message adds no mapping field, so the field limit cannot be reached. Keyed
        # queries ("tags.type : dust"), term aggregations and sorting still work.
        properties.update(
            device={"type": "keyword"},
            metric={"type": "keyword"},
            value={"type": "double"},
            tags={"type": "flattened", "ignore_above": NAME_MAX},
        )
    return {
        "index_patterns": [index_pattern(source, prefix=prefix)],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
            "mappings": {"dynamic_templates": dynamic_templates, "properties": properties},
        },
        "_meta": {"managed_by": "sluice", "version": TEMPLATE_VERSION},
    }


def ensure_index_template(client: Elasticsearch, source: str, *, prefix: str = ES_INDEX_PREFIX) -> bool:
    """Create the source's index template if missing or older; True when it was written."""
    from elasticsearch import NotFoundError

    name = template_name(source, prefix=prefix)
    with _reachable(client):
        try:
            stored = client.indices.get_index_template(name=name)["index_templates"]
        except NotFoundError:
            stored = []
        version = stored[0]["index_template"].get("_meta", {}).get("version") if stored else None
        if version is not None and version >= TEMPLATE_VERSION:
            return False
        client.indices.put_index_template(name=name, **index_template(source, prefix=prefix))
    log.info("index template %s written (version %s, was %s)", name, TEMPLATE_VERSION, version)
    return True


@dataclass
class BulkResult:
    """Outcome of one bulk load: documents accepted, and id -> reason of those refused."""

    accepted: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return len(self.failed)


#: The parts of a _bulk answer the helper and :func:`bulk_index` read (each item's status, error and id).
BULK_FILTER_PATH = "errors,items.*.status,items.*.error,items.*._id"


def bulk_actions(
    source: str, ids: Sequence[str], timestamps: Sequence[str], documents: Sequence[bytes], *, prefix: str = ES_INDEX_PREFIX
) -> Iterator[tuple[bytes, bytes]]:
    """Pre-serialised ``(action, document)`` pairs of ``index`` operations into the daily indices."""
    days: dict[str, bytes] = {}
    for doc_id, timestamp, document in zip(ids, timestamps, documents, strict=True):
        day = timestamp[:10]
        index = days.get(day)
        if index is None:
            index = days[day] = daily_index(source, timestamp, prefix=prefix).encode()
        yield b'{"index":{"_index":"%s","_id":"%s"}}' % (index, doc_id.encode()), document


def bulk_index(
    client: Elasticsearch,
    actions: Iterable[tuple[bytes, bytes]],
    *,
    chunk_size: int = 2000,
    max_chunk_bytes: int = 20 * 1024 * 1024,
    max_retries: int = 5,
    initial_backoff: float = 0.5,
    max_backoff: float = 30.0,
) -> BulkResult:
    """Send ``(action, document)`` pairs through ``streaming_bulk``; see the module doc for failures.

    ``chunk_size`` documents (or ``max_chunk_bytes``) per ``_bulk`` request;
    backoff in seconds.
    """
    from elasticsearch import ApiError
    from elasticsearch.helpers import streaming_bulk

    result = BulkResult()
    retryable: dict[str, str] = {}
    with _reachable(client):
        try:
            # The helper sends pre-serialised (action, source) byte pairs as they are; its
            # annotations only name dict and str actions.
            for ok, item in streaming_bulk(
                client,
                actions,  # type: ignore[arg-type]
                expand_action_callback=_pre_serialised,  # type: ignore[arg-type]
                chunk_size=chunk_size,
                max_chunk_bytes=max_chunk_bytes,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=max_retries,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                retry_on_status=RETRY_STATUSES,
                # Only what is read back: the answer shrinks from ~200 bytes an item to ~20.
                filter_path=BULK_FILTER_PATH,
            ):
                if ok:
                    result.accepted += 1
                    continue
                info = next(iter(item.values()))
                reason = _reason(info)
                if info.get("status") in RETRY_STATUSES:
                    retryable[info.get("_id", "?")] = reason
                else:
                    result.failed[info.get("_id", "?")] = reason
        except ApiError as exc:
            if exc.status_code in RETRY_STATUSES:
                raise RetryableFailuresLeft(
                    f"Elasticsearch answered {exc.status_code} to a _bulk request after {max_retries} retries: {exc}"
                ) from exc
            raise
    if result.failed:
        log.warning(
            "%d documents refused by Elasticsearch, e.g. %s",
            len(result.failed),
            "; ".join(sorted(set(result.failed.values()))[:3]),
        )
    if retryable:
        sample = "; ".join(sorted(set(retryable.values()))[:3])
        raise RetryableFailuresLeft(
            f"{len(retryable)} documents still refused with a retryable status after {max_retries} retries "
            f"({result.accepted} accepted): {sample}"
        )
    return result


def _pre_serialised(action: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return action


def _reason(info: dict[str, Any]) -> str:
    error = info.get("error") or {}
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            text += f" ({cause.get('type', '')}: {cause['reason']})"
    else:
        text = str(error)
    return f"status {info.get('status')}: {text}"


class _reachable:
    """Turn the transport's connection errors into ElasticsearchUnavailable naming the node."""

    def __init__(self, client: Elasticsearch) -> None:
        self.client = client

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> Literal[False]:
        from elasticsearch import ConnectionError as EsConnectionError
        from elasticsearch import ConnectionTimeout

        if exc is not None and isinstance(exc, (EsConnectionError, ConnectionTimeout)):
            nodes = ", ".join(str(n.base_url) for n in self.client.transport.node_pool.all())
            raise ElasticsearchUnavailable(f"Elasticsearch at {nodes} is not reachable: {exc}") from exc
        return False


def connect(
    url: str,
    *,
    api_key: str | None = None,
    ca_certs: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    request_timeout: float = 30.0,
    max_retries: int = 2,
) -> Elasticsearch:
    """An Elasticsearch client for ``url`` (``https://host:9200``).

    ``api_key`` is the encoded key (the value after ``Authorization: ApiKey``);
    ``ca_certs`` a PEM file of the CA that signed the node's certificate (None:
    the system's trust store). ``basic_auth`` is for set-up with a user's
    password, never for a pipeline client. Requests time out after
    ``request_timeout`` seconds and are retried ``max_retries`` times on
    connection errors and timeouts; it does not connect until the first request.
    """
    from elasticsearch import Elasticsearch
    from elasticsearch.serializer import OrjsonSerializer

    tls: dict[str, Any] = {"ca_certs": ca_certs} if ca_certs else {}
    return Elasticsearch(
        url,
        # orjson, not the standard library, reads the answers: a 5,000-item _bulk answer took a tenth
        # of the stream loader's time to parse (profiled).
        serializer=OrjsonSerializer(),
        api_key=api_key or None,
        basic_auth=basic_auth,
        request_timeout=request_timeout,
        max_retries=max_retries,
        retry_on_timeout=True,
        **tls,
    )


def delete_indices(client: Elasticsearch, pattern: str) -> None:
    """Delete the indices matching ``pattern`` (tests and demos clean up with it)."""
    with _reachable(client):
        # Wildcard deletes are refused by default (action.destructive_requires_name): name them.
        names = list(client.indices.get(index=pattern, ignore_unavailable=True, allow_no_indices=True))
        if names:
            client.indices.delete(index=",".join(names))



def drop_prefix(client: Elasticsearch, prefix: str) -> None:
    """Delete every index and index template of ``prefix`` (tests and benchmarks use their own)."""
    delete_indices(client, f"{prefix}-*")
    with _reachable(client):
        for source in SOURCES:
            client.options(ignore_status=404).indices.delete_index_template(name=template_name(source, prefix=prefix))
