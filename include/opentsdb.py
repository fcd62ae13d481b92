"""OpenTSDB for Sluice: loading datapoints over HTTP and reading them back.

:class:`OpenTSDBClient` posts datapoints ``{"metric", "timestamp", "value",
"tags"}`` (the JSON of ``include/transform.py``) to ``/api/put?details&sync``
in batches of ``batch_size``, gzip-compressed, with up to ``concurrency``
requests in flight (one ``requests`` session, hence one keep-alive connection,
per sending thread), and accounts for every one of them in a :class:`PutResult`:

* **accepted** — OpenTSDB stored it (``sync``: HBase acknowledged the write
  before the answer, so "accepted" means stored, not queued);
* **failed** — one :class:`PutFailure` per datapoint with its position in the
  input and the reason: OpenTSDB's own message from the ``details`` answer
  (``"Unable to parse value to a number"``, ``"Missing tags"``, ``"Invalid tag
  name ..."``), or the client's when the datapoint could not even be sent (a
  metric that is not a string) or storage never confirmed it;
* **renamed** — datapoints whose metric name or tag values were changed by
  :func:`sanitise` (each distinct rename is also logged once per client).

Sanitising rule (one rule, applied to the metric name and to every tag value):
each character OpenTSDB 2.4 refuses is replaced by ``_``. OpenTSDB accepts
ASCII letters and digits, ``-``, ``_``, ``.``, ``/`` and letters of the Unicode
Basic Multilingual Plane (Java's ``Character.isLetter`` on UTF-16 code units, so
a letter outside the BMP, which Java sees as two surrogates, is refused).
Tag *keys* are never renamed: they are Sluice's own schema (``host``, ``type``,
``device``...), so a bad key is a bug to surface, and OpenTSDB's reason for it
is reported as a failure. Empty names are not renamed either (there is nothing
to rename); OpenTSDB refuses them with its reason.

Failure behaviour of :meth:`OpenTSDBClient.put`:

* connection errors, read time-outs and 5xx answers are retried with
  exponential backoff (``backoff`` doubling up to ``backoff_max`` seconds,
  ``max_attempts`` tries per batch); then no further batch is read from the
  input, the batches already in flight are settled, and
  :class:`OpenTSDBUnavailable` is raised carrying the partial
  :class:`PutResult` and the datapoints of every batch that failed. Writes are
  idempotent (same metric, tags and timestamp overwrite one cell), so sending
  everything again after recovery is safe;
* datapoints whose storage OpenTSDB did not confirm within ``sync_timeout``
  are resent the same way, and reported as failed when attempts run out;
* 401/403 raise :class:`OpenTSDBAuthError`, other 4xx answers that are not a
  ``details`` answer raise :class:`OpenTSDBRequestError`, and an answer that is
  not the JSON OpenTSDB documents raises :class:`OpenTSDBResponseError`; none
  of these is retried, since repeating the request cannot change the answer.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import re
import string
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import requests

log = logging.getLogger(__name__)

#: Characters OpenTSDB 2.4 accepts in any name besides letters of the BMP.
ASCII_ALLOWED = frozenset(string.ascii_letters + string.digits + "-_./")
#: What a refused character becomes.
REPLACEMENT = "_"
_PLAIN = re.compile(r"[A-Za-z0-9\-_./]*")

#: Status codes worth retrying: the TSD (or a proxy before it) is restarting or overloaded.
RETRY_STATUSES = frozenset({500, 502, 503, 504})


# --- errors ------------------------------------------------------------------------------------


class OpenTSDBError(Exception):
    """Base class of the client's errors."""


class OpenTSDBUnavailable(OpenTSDBError):
    """OpenTSDB could not be reached, or answered 5xx, on every attempt of a batch.

    ``result`` holds what was settled (accepted, failed, renamed);
    ``pending`` the ``(index, datapoint)`` pairs of the batches that failed,
    in input order, whose fate is unknown. Datapoints after the last batch
    read were not read from the input.
    """

    def __init__(self, message: str, *, result: PutResult, pending: list[tuple[int, Any]]) -> None:
        super().__init__(message)
        self.result = result
        self.pending = pending


class OpenTSDBAuthError(OpenTSDBError):
    """OpenTSDB (or a proxy in front of it) refused the credentials: 401 or 403."""


class OpenTSDBRequestError(OpenTSDBError):
    """A 4xx answer that is not about single datapoints (wrong path, body too large...)."""


class OpenTSDBResponseError(OpenTSDBError):
    """An answer that is not what OpenTSDB's HTTP API documents."""


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PutFailure:
    """One datapoint that was not stored.

    ``index`` is its position in the iterable given to :meth:`OpenTSDBClient.put`
    (``None`` only if OpenTSDB reported an error the client could not match to
    a datapoint it sent); ``datapoint`` is as given, before sanitising;
    ``reason`` is OpenTSDB's message, or the client's for a datapoint never
    sent or never confirmed.
    """

    index: int | None
    datapoint: Any
    reason: str


@dataclass
class PutResult:
    """The account of one :meth:`OpenTSDBClient.put`: every datapoint is in exactly one bucket."""

    accepted: int = 0
    failed: list[PutFailure] = field(default_factory=list)
    #: Datapoints sent with a renamed metric or tag value.
    renamed: int = 0
    #: Distinct renames of this put: original -> sanitised.
    renames: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    #: Requests repeated after a connection error, a 5xx or a storage time-out.
    retries: int = 0

    @property
    def total(self) -> int:
        return self.accepted + len(self.failed)

    def merge(self, other: PutResult) -> None:
        """Add the account of ``other`` (a batch sent by another thread) to this one."""
        self.accepted += other.accepted
        self.failed.extend(other.failed)
        self.renamed += other.renamed
        self.renames.update(other.renames)
        self.batches += other.batches
        self.retries += other.retries

    def summary(self) -> dict[str, Any]:
        """Counts and the first reasons, small enough for a task's return value or a log line."""
        reasons: dict[str, int] = defaultdict(int)
        for failure in self.failed:
            reasons[failure.reason] += 1
        return {
            "accepted": self.accepted,
            "failed": len(self.failed),
            "renamed": self.renamed,
            "batches": self.batches,
            "retries": self.retries,
            "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        }


# --- pure helpers ------------------------------------------------------------------------------


def _allowed(char: str) -> bool:
    return char in ASCII_ALLOWED or (char.isalpha() and ord(char) <= 0xFFFF)


@lru_cache(maxsize=65536)
def sanitise(name: str) -> str:
    """``name`` with every character OpenTSDB refuses replaced by ``_`` (see the module doc).

    Idempotent: ``sanitise(sanitise(x)) == sanitise(x)``. The empty string
    stays empty.
    """
    if _PLAIN.fullmatch(name):
        return name
    return "".join(c if _allowed(c) else REPLACEMENT for c in name)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive items (the last may be shorter); reads lazily."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class _Entry(NamedTuple):
    """A datapoint on its way: where it came from, what is sent (a tuple: millions are made per backfill)."""

    # The field shadows tuple.index (a method) on purpose: entries are read by field, never searched.
    index: int  # type: ignore[assignment]
    original: Any
    wire: dict[str, Any]
    #: False when the timestamp or value is NaN or infinite, which orjson would write as null.
    finite: bool = True


_SCALAR = (int, float, str, type(None))


_NUMBER = (int, float)


#: Names seen to need no renaming: a set lookup is cheaper than a call to :func:`sanitise`.
_KNOWN_PLAIN: set[str] = set()
_KNOWN_PLAIN_MAX = 65536


def _known_plain(name: str) -> bool:
    if _PLAIN.fullmatch(name) is None:
        return False
    if len(_KNOWN_PLAIN) < _KNOWN_PLAIN_MAX:
        _KNOWN_PLAIN.add(name)
    return True


def _plain_entry(index: int, datapoint: dict[str, Any]) -> _Entry | None:
    """The common case, cheaply: a dict of exactly the four keys, names OpenTSDB takes as they are,
    finite numbers; it is sent as it is (no copy). ``None`` sends it through the full check.

    The fast path pays for itself: a host-day is 2.4 million datapoints, and
    the checks run in the thread that reads them while the requests wait.
    """
    metric, tags = datapoint.get("metric"), datapoint.get("tags")
    timestamp: Any = datapoint.get("timestamp")
    value: Any = datapoint.get("value")
    if type(metric) is not str or type(tags) is not dict:
        return None
    if metric not in _KNOWN_PLAIN and not _known_plain(metric):
        return None
    for key, tag in tags.items():
        if type(key) is not str or type(tag) is not str or (tag not in _KNOWN_PLAIN and not _known_plain(tag)):
            return None
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # NaN or infinite (inf - inf is NaN)
            return None
    elif kind is not int:
        return None
    kind = type(timestamp)
    if kind is float:
        if timestamp - timestamp != 0.0:
            return None
    elif kind is not int:
        return None
    return _Entry(index, datapoint, datapoint)


def prepare(index: int, datapoint: Any) -> tuple[_Entry | None, str | None, dict[str, str]]:
    """Check and sanitise one datapoint; return (entry, refusal, renames).

    The client refuses only what cannot be put on the wire as OpenTSDB's JSON
    (no mapping, a metric or tag that is not a string, a timestamp or value
    that is not a JSON scalar); everything else — NaN, negative timestamps,
    missing tags, empty names — goes to OpenTSDB, whose reason is the one
    reported.
    """
    if type(datapoint) is dict and len(datapoint) == 4:
        fast = _plain_entry(index, datapoint)
        if fast is not None:
            return fast, None, {}
    if not isinstance(datapoint, Mapping):
        return None, f"not sent: a datapoint must be a mapping, got {type(datapoint).__name__}", {}
    metric = datapoint.get("metric")
    if not isinstance(metric, str):
        return None, f"not sent: metric must be a string, got {metric!r}", {}
    tags = datapoint.get("tags", {})
    if tags is None:
        tags = {}
    if not isinstance(tags, Mapping):
        return None, f"not sent: tags must be a mapping, got {type(tags).__name__}", {}
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return None, f"not sent: tag {key!r}={value!r} is not a pair of strings", {}
    for name in ("timestamp", "value"):
        if isinstance(datapoint.get(name), bool) or not isinstance(datapoint.get(name), _SCALAR):
            return None, f"not sent: {name} {datapoint.get(name)!r} is not a number or string", {}
    renames: dict[str, str] = {}
    clean_metric = sanitise(metric)
    if clean_metric != metric:
        renames[metric] = clean_metric
    clean_tags = {}
    for key, value in tags.items():
        clean = sanitise(value)
        if clean != value:
            renames[value] = clean
        clean_tags[key] = clean
    timestamp, value = datapoint.get("timestamp"), datapoint.get("value")
    wire = {"metric": clean_metric, "timestamp": timestamp, "value": value, "tags": clean_tags}
    finite = not (isinstance(value, float) and not math.isfinite(value)) and not (
        isinstance(timestamp, float) and not math.isfinite(timestamp))
    return _Entry(index, datapoint, wire, finite), None, renames


def _key(dp: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a datapoint in OpenTSDB's ``details`` echo, value left out."""
    tags = dp.get("tags") or {}
    return (dp.get("metric"), str(dp.get("timestamp")), tuple(sorted((str(k), str(v)) for k, v in tags.items())))


def _value_text(value: Any) -> str | None:
    """A value as the echo shows it: OpenTSDB keeps the JSON token's text ("NaN", "22.5")."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, allow_nan=True)


@dataclass
class BatchOutcome:
    """How OpenTSDB answered one batch: stored, refused, or left unconfirmed."""

    accepted: int
    failures: list[PutFailure]
    #: Entries whose storage was not confirmed (sync time-out): to be resent.
    unconfirmed: list[_Entry]


def parse_details(entries: Sequence[_Entry], body: Mapping[str, Any]) -> BatchOutcome:
    """Match a ``details`` answer to the entries that were sent.

    Each error names its datapoint by echoing it (the value as the text of
    its JSON token); errors are matched to the sent entries by metric,
    timestamp, tags and value, falling back to all but the value, in order for
    repeats. OpenTSDB
    counts time-outs but does not say which datapoints timed out, so when
    ``timeouts`` is non-zero every entry without an error is unconfirmed (and
    resent: writes are idempotent). Raises OpenTSDBResponseError when the
    counts do not add up to the batch.
    """
    try:
        success, failed, timeouts = int(body["success"]), int(body["failed"]), int(body.get("timeouts", 0))
        errors = list(body.get("errors") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise OpenTSDBResponseError(f"not a details answer of /api/put: {str(body)[:300]}") from exc
    if success + failed + timeouts != len(entries):
        raise OpenTSDBResponseError(
            f"/api/put answered success={success} failed={failed} timeouts={timeouts} "
            f"for a batch of {len(entries)} datapoints"
        )
    if not errors and not timeouts:  # the common case: skip the matching below
        return BatchOutcome(success, [], [])
    # Exact matches (value included) first; without the value as a fallback.
    exact: dict[tuple[Any, ...], deque[_Entry]] = defaultdict(deque)
    loose: dict[tuple[Any, ...], deque[_Entry]] = defaultdict(deque)
    for entry in entries:
        exact[(*_key(entry.wire), _value_text(entry.wire["value"]))].append(entry)
        loose[_key(entry.wire)].append(entry)
    failures: list[PutFailure] = []
    failed_ids: set[int] = set()

    def take(queue: deque[_Entry] | None) -> _Entry | None:
        while queue:
            entry = queue.popleft()
            if entry.index not in failed_ids:
                return entry
        return None

    for error in errors:
        if isinstance(error, Mapping):
            echo, reason = error.get("datapoint") or {}, str(error.get("error", "no reason given"))
        else:
            echo, reason = {}, str(error)
        value = echo.get("value")
        match = take(exact.get((*_key(echo), None if value is None else str(value)))) or take(loose.get(_key(echo)))
        if match is not None:
            failed_ids.add(match.index)
            failures.append(PutFailure(match.index, match.original, reason))
        else:
            log.error("OpenTSDB reported an error for a datapoint the client cannot match: %s (%s)", echo, reason)
            failures.append(PutFailure(None, echo, reason))
    if timeouts:
        unconfirmed = [e for e in entries if e.index not in failed_ids]
        return BatchOutcome(0, failures, unconfirmed)
    return BatchOutcome(success, failures, [])


class _BatchFailed(Exception):
    """One batch ran out of attempts: its account so far, the entries left, the last problem."""

    def __init__(self, result: PutResult, pending: list[_Entry], problem: str) -> None:
        super().__init__(problem)
        self.result = result
        self.pending = pending
        self.problem = problem


# --- the client --------------------------------------------------------------------------------


class OpenTSDBClient:
    """HTTP client of one OpenTSDB TSD (``url`` such as ``http://127.0.0.1:4242``).

    Options (keyword-only): ``batch_size`` datapoints per request;
    ``concurrency`` requests in flight during a :meth:`put` (each sending
    thread has its own session and connection; 1 sends from the calling
    thread); ``compress`` (gzip request bodies); ``sync_timeout`` seconds
    OpenTSDB may wait for HBase before answering; ``timeout`` seconds for
    connecting and reading; ``max_attempts`` per batch, ``backoff``/``backoff_max``
    seconds between them; ``auth`` (user, password) for basic auth; ``verify``
    TLS verification (``True``, ``False`` or a CA bundle path). ``session``
    (then shared by every sending thread) and ``sleep`` may be injected.
    Nothing connects before the first call.

    The defaults (batches of 5,000, 4 in flight) were the best of
    ``tests/benchmarks/opentsdb_load.py --sweep`` on the local stack (2 cores
    shared with HBase): larger batches cost the TSD less per point, more than
    4 requests in flight only queue in it.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 5000,
        concurrency: int = 4,
        compress: bool = True,
        sync_timeout: float = 30.0,
        timeout: float = 60.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        auth: tuple[str, str] | None = None,
        verify: bool | str = True,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.compress = compress
        self.sync_timeout = sync_timeout
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.auth = auth
        self.verify = verify
        self._session = session
        self._sleep = sleep
        self._logged_renames: set[str] = set()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        """The injected session, else the calling thread's own (created on first use)."""
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._session is not None:
            self._session.close()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __enter__(self) -> OpenTSDBClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * (2 ** (attempt - 1)), self.backoff_max))

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP request; connection problems surface as requests exceptions."""
        return self.session.request(
            method, f"{self.url}{path}", auth=self.auth, verify=self.verify, timeout=self.timeout, **kwargs
        )

    @staticmethod
    def _raise_for_client_error(resp: requests.Response, what: str) -> None:
        if resp.status_code in (401, 403):
            raise OpenTSDBAuthError(f"{what}: {resp.url} answered {resp.status_code}; check the credentials")
        if 400 <= resp.status_code < 500:
            raise OpenTSDBRequestError(f"{what}: {resp.url} answered {resp.status_code}: {resp.text[:300]}")

    # -- reading ---------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        """``/api/version`` of the TSD; connection errors are raised as requests raises them."""
        resp = self._request("GET", "/api/version")
        self._raise_for_client_error(resp, "GET /api/version")
        resp.raise_for_status()
        version: dict[str, Any] = resp.json()
        return version

    def query(
        self,
        metric: str,
        *,
        start: int,
        end: int | None = None,
        aggregator: str = "none",
        tags: Mapping[str, str] | None = None,
        ms: bool = False,
    ) -> list[dict[str, Any]]:
        """Series of ``metric`` between ``start`` and ``end`` (epoch seconds, inclusive).

        ``tags`` filter exactly (``literal_or``) and group by their keys, so
        ``aggregator="sum", tags={"type": "temperature"}`` sums only the
        temperature series; ``aggregator="none"`` returns every series as
        stored. Each series is OpenTSDB's ``{"metric", "tags", "aggregateTags",
        "dps"}`` with ``dps`` keyed by the timestamp as a string. A metric
        OpenTSDB has never seen gives ``[]``.
        """
        sub: dict[str, Any] = {"aggregator": aggregator, "metric": metric}
        if tags:
            sub["filters"] = [
                {"type": "literal_or", "tagk": k, "filter": v, "groupBy": True} for k, v in tags.items()
            ]
        body: dict[str, Any] = {"start": start, "queries": [sub], "msResolution": ms}
        if end is not None:
            body["end"] = end
        resp = self._request("POST", "/api/query", json=body)
        if resp.status_code == 400 and "No such name" in resp.text:
            return []
        self._raise_for_client_error(resp, f"query of {metric!r}")
        resp.raise_for_status()
        series: list[dict[str, Any]] = resp.json()
        return series

    # -- writing ---------------------------------------------------------------------------------
    def put(self, datapoints: Iterable[Mapping[str, Any]]) -> PutResult:
        """Store ``datapoints`` and account for each of them (see the module doc).

        Reads the iterable lazily, one batch at a time, in the calling thread
        (so a generator needs no locking); at most ``concurrency`` batches
        are in flight and one more is being read. Raises OpenTSDBUnavailable
        (with the partial result), OpenTSDBAuthError, OpenTSDBRequestError or
        OpenTSDBResponseError as described there, once every batch already in
        flight has been settled.
        """
        result = PutResult()
        failed: list[_BatchFailed] = []
        errors: list[BaseException] = []
        in_flight: set[Future[PutResult]] = set()

        def settle(done: Iterable[Future[PutResult]]) -> None:
            for future in done:
                try:
                    result.merge(future.result())
                except _BatchFailed as exc:
                    result.merge(exc.result)
                    failed.append(exc)
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the other batches settle
                    errors.append(exc)

        chunks = batched(enumerate(datapoints), self.batch_size)
        try:
            while True:
                if len(in_flight) >= self.concurrency:  # a slot first, then read: nothing read is left unsent
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    settle(done)
                if failed or errors:
                    break
                chunk = next(chunks, None)
                if chunk is None:
                    break
                entries = self._prepare_chunk(chunk, result)
                if not entries:
                    continue
                if self.concurrency == 1:
                    settle([self._run_inline(entries)])
                else:
                    in_flight.add(self._executor().submit(self._put_batch, entries))
        finally:
            settle(wait(in_flight).done)
        if errors:
            raise errors[0]
        result.failed.sort(key=lambda f: (f.index is None, f.index or 0))
        if failed:
            raise self._unavailable(failed, result)
        if result.failed:
            log.warning("OpenTSDB put: %s", result.summary())
        else:
            log.info("OpenTSDB put: %d accepted in %d batches (%d renamed)", result.accepted, result.batches,
                     result.renamed)
        return result

    def _prepare_chunk(self, chunk: Sequence[tuple[int, Any]], result: PutResult) -> list[_Entry]:
        """Entries to send of one chunk; datapoints refused by :func:`prepare` go to ``result``."""
        entries: list[_Entry] = []
        for index, datapoint in chunk:
            entry, refusal, renames = prepare(index, datapoint)
            if entry is None:
                result.failed.append(PutFailure(index, datapoint, refusal or "not sent"))
                continue
            if renames:
                result.renamed += 1
                result.renames.update(renames)
                self._log_renames(renames)
            entries.append(entry)
        return entries

    def _run_inline(self, entries: list[_Entry]) -> Future[PutResult]:
        """:meth:`_put_batch` in the calling thread, its outcome as a completed future."""
        future: Future[PutResult] = Future()
        try:
            future.set_result(self._put_batch(entries))
        except Exception as exc:  # noqa: BLE001 - handed on through the future, as from a thread
            future.set_exception(exc)
        return future

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="opentsdb-put")
        return self._pool

    def _unavailable(self, failed: list[_BatchFailed], result: PutResult) -> OpenTSDBUnavailable:
        failed.sort(key=lambda f: f.pending[0].index)
        first = failed[0]
        pending = sorted((e for f in failed for e in f.pending), key=lambda e: e.index)
        others = f" ({len(failed) - 1} other batches in flight failed too)" if len(failed) > 1 else ""
        return OpenTSDBUnavailable(
            f"OpenTSDB at {self.url} failed {self.max_attempts} attempts to store a batch of {len(first.pending)} "
            f"datapoints (from index {first.pending[0].index}): {first.problem}{others}. "
            f"{result.accepted} datapoints were stored; writes are idempotent, so send them all again",
            result=result,
            pending=[(e.index, e.original) for e in pending],
        )

    def _log_renames(self, renames: Mapping[str, str]) -> None:
        for original, clean in renames.items():
            if original not in self._logged_renames:
                self._logged_renames.add(original)
                log.warning("OpenTSDB: %r renamed to %r (characters OpenTSDB refuses become %r)",
                            original, clean, REPLACEMENT)

    def _encode(self, entries: Sequence[_Entry]) -> tuple[bytes, dict[str, str]]:
        wires = [e.wire for e in entries]
        if all(e.finite for e in entries):
            try:
                body = orjson.dumps(wires)
            except TypeError:  # an integer beyond 64 bits: the standard library writes it, OpenTSDB judges it
                body = json.dumps(wires, separators=(",", ":")).encode()
        else:
            # orjson writes NaN and Infinity as null; the standard library writes
            # them as bare tokens, which OpenTSDB parses and refuses with its own reason.
            body = json.dumps(wires, separators=(",", ":"), allow_nan=True).encode()
        headers = {"Content-Type": "application/json"}
        if self.compress:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    def _put_batch(self, entries: list[_Entry]) -> PutResult:
        """Send one batch until every entry is settled; return its account.

        Raises :class:`_BatchFailed` (with the account so far) when attempts
        run out on connection errors or 5xx answers. Runs in a sending thread.
        """
        result = PutResult(batches=1)
        pending = entries
        params = {"details": "", "sync": "", "sync_timeout": str(int(self.sync_timeout * 1000))}
        last_problem = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                result.retries += 1
                delay = self._delay(attempt - 1)
                log.warning("OpenTSDB put of %d datapoints: %s; attempt %d of %d in %.1f s",
                            len(pending), last_problem, attempt, self.max_attempts, delay)
                self._sleep(delay)
            body, headers = self._encode(pending)
            try:
                resp = self._request("POST", "/api/put", params=params, data=body, headers=headers)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in RETRY_STATUSES:
                last_problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            outcome = self._outcome(pending, resp)
            result.accepted += outcome.accepted
            result.failed.extend(outcome.failures)
            if not outcome.unconfirmed:
                return result
            pending = outcome.unconfirmed
            last_problem = f"storage of {len(pending)} datapoints not confirmed within {self.sync_timeout:g} s"
            if attempt == self.max_attempts:
                result.failed.extend(
                    PutFailure(e.index, e.original,
                               f"not confirmed: OpenTSDB timed out waiting for storage on {attempt} attempts")
                    for e in pending
                )
                return result
        raise _BatchFailed(result, pending, last_problem)

    def _outcome(self, entries: Sequence[_Entry], resp: requests.Response) -> BatchOutcome:
        if resp.status_code == 204:  # no details asked for, or a proxy that drops bodies
            return BatchOutcome(len(entries), [], [])
        try:
            body = orjson.loads(resp.content)  # the stdlib's parse of each answer was 6% of a backfill's samples
        except ValueError:
            try:
                body = resp.json()  # what orjson refuses (a bare NaN token), the standard library may read
            except ValueError:
                body = None
        if isinstance(body, Mapping) and "success" in body:
            return parse_details(entries, body)
        if resp.status_code == 400 and isinstance(body, Mapping) and "error" in body:
            # The whole request was refused (e.g. unparseable); every datapoint carries that reason.
            reason = str((body["error"] or {}).get("message", body["error"]))
            return BatchOutcome(0, [PutFailure(e.index, e.original, reason) for e in entries], [])
        self._raise_for_client_error(resp, f"put of {len(entries)} datapoints")
        raise OpenTSDBResponseError(
            f"/api/put at {self.url} answered {resp.status_code} without a details body: {resp.text[:300]}"
        )

