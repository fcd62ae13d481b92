"""The stream loader's batch loop: gather records, decode, load every sink, dead-letter, commit.

Pipelined by one batch: while the sinks load a batch, the loop gathers and
decodes the next one (decoding was a fifth of the loader's time, spent with
the sinks idle: profiled). Batches are still delivered and committed one at
a time, in order; the next goes to the sinks only once the one before is committed.

Commit after acknowledgement: a batch's offsets are committed only when every
sink accepted it and Kafka confirmed its dead letters, so a crash or a
SIGKILL anywhere before replays the batch, which the deterministic ids make
harmless. Rebalances (cooperative-sticky by default): revoked partitions'
records are dropped from whatever is not committed yet (records carried,
being gathered, or in the batch being retried) and only owned partitions'
offsets are committed; their new owner reads them again from the committed
offset. A sink outage pauses consumption and retries with backoff while
polling, so the loader stays in its group.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from collectors.common import Clock
from collectors.stream.batch import Batch, Partition, partition_of
from collectors.stream.clients import is_outage
from collectors.stream.config import StreamConfig
from collectors.stream.deadletter import DeadLetter, DeadLetterWriter, sink_stage
from collectors.stream.metrics import StreamMetrics
from include.contract import INTERNAL, internal_reason

log = logging.getLogger(__name__)

#: librdkafka error names that mean Kafka refused the login or the rights (not an outage).
_REFUSAL_NAMES = ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
                  "TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED")


def _refusal_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(getattr(KafkaError, name) for name in _REFUSAL_NAMES)
#: Name of the dead-letter topic in the outage tracker (it blocks commits like a sink).
DEADLETTER_SINK = "deadletter-topic"


class StreamLoader:
    """Consumes, decodes, loads, dead-letters, commits; see the module doc.

    The constructor does no I/O; ``consumer``, ``producer``, ``sinks`` and
    ``clock`` may be injected. :meth:`run` works until ``stop`` is set.
    """

    def __init__(self, config: StreamConfig, *, consumer=None, producer=None, sinks=None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.consumer = consumer
        self.producer = producer
        self.sinks = sinks
        self.rules = config.rules
        self.metrics = StreamMetrics(idle_after_s=config.health_idle_after, clock=self.clock.monotonic)
        self.metrics_port = -1
        self.assigned = threading.Event()
        self.committed_batches = 0
        #: Why the loader stopped on its own (a fatal Kafka error such as a duplicate instance id), else None.
        self.fatal: str | None = None
        #: What Kafka last refused this loader's login or rights for (None once records come again).
        self.refused: str | None = None
        self.owned: set[Partition] = set()
        self._carry: list = []  # fetched while a batch waited for its sinks, in order
        self._gathering: list = []  # records of the batch being gathered
        self._next: Batch | None = None  # gathered and decoded, waiting for the batch in the sinks
        self._batch: Batch | None = None  # the batch in the sinks, being delivered
        self._loading: dict[str, Future] = {}  # the first load of ``_batch``, per sink, running meanwhile
        self._paused = False
        self._pool: ThreadPoolExecutor | None = None
        self._deadletters: DeadLetterWriter | None = None

    # -- life cycle ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.metrics.health.watch("batch-loop", threading.current_thread())
        try:
            self._start()
            while not stop.is_set() and self.fatal is None:
                self._next = self._collect(stop)  # while the batch before loads
                if self._batch is not None and not self._deliver(stop):
                    return  # given up at stop: neither batch is committed, both replay at the next start
                self._begin()
            if self._batch is not None:  # stopped: the last batch, within shutdown_timeout
                self._deliver(stop)
        finally:
            self._stop()

    def _start(self) -> None:
        from confluent_kafka import Consumer

        from collectors.stream.clients import build_sinks, consumer_config, deadletter_producer
        from include.kafka import ensure_topics

        c = self.config
        self.metrics_port = self.metrics.serve(c.metrics_addr, c.metrics_port)
        if self.sinks is None:
            self.sinks = build_sinks(c)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sinks)), thread_name_prefix="sink")
        try:
            ensure_topics(c.kafka_bootstrap, [*c.topics, c.deadletter_topic], timeout_s=10, settings=c.kafka_settings())
        except Exception as exc:  # Kafka down at start: the consumer waits for it
            log.warning("could not ensure Kafka topics (%s); consuming when they exist", exc)
        if self.producer is None:
            self.producer = deadletter_producer(c)
        self._deadletters = DeadLetterWriter(self.producer, c.deadletter_topic, max_value_bytes=c.max_payload_bytes,
                                             timeout_s=c.sink_timeout)
        if self.consumer is None:
            # error_cb: a refused login arrives there, not with the records (librdkafka logs the others).
            self.consumer = Consumer({**consumer_config(c), "error_cb": self._client_error})
        self.consumer.subscribe(c.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("stream loader %s: group %s (%s) on %s -> %s (dead letters: %s)", c.instance_id, c.kafka_group,
                 c.kafka_assignor, ", ".join(c.topics), ", ".join(s.name for s in self.sinks), c.deadletter_topic)

    def _stop(self) -> None:
        try:
            if self._deadletters is not None:
                left = self._deadletters.flush(self.config.shutdown_timeout)
                if left:
                    log.warning("%d dead-letter record(s) not confirmed at stop; their batch was not committed", left)
            if self.consumer is not None:
                self.consumer.close()  # a static member keeps its partitions until its session ends
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            for sink in self.sinks or ():
                try:
                    sink.close()
                except Exception:  # closing is best effort: the process is ending
                    log.debug("closing sink %s failed", sink.name, exc_info=True)
            self.metrics.close()

    # -- the group -------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        self.owned |= {(p.topic, p.partition) for p in partitions}
        self.metrics.rebalances.labels("assigned").inc(len(partitions))
        self.metrics.assigned.set(len(self.owned))
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing new")
        self.assigned.set()

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.owned -= gone
        self.metrics.rebalances.labels("revoked").inc(len(partitions))
        self.metrics.assigned.set(len(self.owned))
        dropped = 0
        for records in (self._carry, self._gathering):
            kept = [m for m in records if partition_of(m) not in gone]
            dropped += len(records) - len(kept)
            records[:] = kept
        # The batch waiting and the one in the sinks (which hold a superset of it now: harmless).
        self._next, lost_next = self._without(self._next, gone)
        self._batch, lost_batch = self._without(self._batch, gone)
        dropped += lost_next + lost_batch
        self.metrics.dropped.inc(dropped)
        log.info("revoked %s (%d uncommitted record(s) dropped; their new owner reads them again)",
                 ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing", dropped)

    def _without(self, batch: Batch | None, gone: set[Partition]) -> tuple[Batch | None, int]:
        """``batch`` without the records of ``gone``, and how many it lost."""
        if batch is None:
            return None, 0
        rest = batch.drop(gone, self.rules)
        return rest, len(batch.messages) - len(rest.messages)

    def _client_error(self, err) -> None:
        """librdkafka's error_cb (called inside poll): only refusals matter here, outages it logs itself."""
        if err.code() in _refusal_codes():
            self._consumer_error(err)

    def _consumer_error(self, err) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() in _refusal_codes():
            # A wrong password, or a user without the rights on a topic or the group: say so on /healthz
            # (the loader keeps trying; it heals when the login or the ACLs are fixed).
            if self.refused is None:
                self.metrics.health.add_check("kafka_login", lambda: self.refused)
            refused = (f"Kafka refused user {self.config.kafka_username or '(none)'}: {err.str()}; "
                       "check --kafka-username, the password file and the user's ACLs")
            if refused != self.refused:  # librdkafka repeats it at every retry: log it once
                log.error("%s", refused)
            self.refused = refused
            return
        if err.fatal():
            # e.g. another loader runs with the same --kafka-instance-id: this one is fenced out for good.
            self.fatal = f"fatal Kafka error: {err.str()} (is --kafka-instance-id {self.config.instance_id} used twice?)"
            self.metrics.health.add_check("kafka", lambda: self.fatal)
            log.error("%s; stopping", self.fatal)
            return
        log.warning("Kafka consumer: %s", err.str())

    def _fetched(self, messages: list, into: list) -> None:
        for msg in messages:
            if msg.error():
                self._consumer_error(msg.error())
            else:
                into.append(msg)
                self.metrics.health.traffic()
                self.refused = None

    # -- gathering -------------------------------------------------------------------------
    def _collect(self, stop: threading.Event) -> Batch:
        """Records until ``batch_messages`` or ``batch_wait`` seconds after the first one (or ``stop``), decoded."""
        c = self.config
        self._gathering[:] = self._carry[: c.batch_messages]
        del self._carry[: c.batch_messages]
        messages = self._gathering
        deadline = self.clock.monotonic() + c.batch_wait if messages else None
        started = self.clock.monotonic()
        while len(messages) < c.batch_messages and not stop.is_set() and self.fatal is None:
            if not messages and self._batch is not None and all(f.done() for f in self._loading.values()):
                break  # nothing to gather and the sinks are done: commit their batch now, not after an idle poll
            timeout = (0.5 if self._batch is None else 0.05) if deadline is None else deadline - self.clock.monotonic()
            if timeout <= 0:
                break
            if messages:
                # consume() returns when it has them all or at the time-out: the batch's deadline.
                got = self.consumer.consume(num_messages=c.batch_messages - len(messages), timeout=min(timeout, 0.5))
            else:
                # poll() returns with the first record: the batch's clock starts when it arrives.
                first = self.consumer.poll(timeout)
                got = [first] if first is not None else []
            self._fetched(got, messages)
            if messages and deadline is None:
                started = self.clock.monotonic()
                deadline = started + c.batch_wait
        decoding = self.clock.monotonic()
        batch = Batch.of(messages, self.rules, started=started)
        if messages:
            self.metrics.decode_seconds.observe(self.clock.monotonic() - decoding)
        self._gathering.clear()
        self.metrics.decoded(batch)
        return batch

    # -- loading and committing --------------------------------------------------------------
    def _begin(self) -> None:
        """The gathered batch to the sinks (each in its own thread); the loop gathers the next meanwhile."""
        batch, self._next = self._next, None
        if batch is None or not batch.messages:
            return
        self._batch = batch
        if batch.docs:
            self._loading = {s.name: self._pool.submit(self._load_one, s, batch) for s in self.sinks}

    def _deliver(self, stop: threading.Event) -> bool:
        """The batch in the sinks: every sink loaded (retried while one is out), dead letters sent, offsets
        committed. False when given up at stop."""
        c = self.config
        delay = c.retry_initial
        stop_seen: float | None = None
        try:
            while True:
                problem = self._load(self._batch)
                if problem is None:
                    problem = self._send_deadletters(self._batch)
                if problem is None:
                    break
                if stop.is_set():
                    stop_seen = stop_seen if stop_seen is not None else self.clock.monotonic()
                    if self.clock.monotonic() - stop_seen >= c.shutdown_timeout:
                        log.warning("stopping with a batch of %d record(s) not loaded (%s); it is replayed at the "
                                    "next start", len(self._batch.messages), problem)
                        return False
                if not self._paused:
                    self._pause()
                log.warning("%s; consumption paused, retrying in %.1f s", problem, delay)
                self._wait(stop if stop_seen is None else threading.Event(), delay)
                delay = min(delay * 2, c.retry_max)
            self._commit(self._batch)
            return True
        finally:
            self._batch = None
            self._loading = {}
            if self._paused:
                self._resume()

    def _load(self, batch: Batch) -> str | None:
        """Load into each sink that has not accepted the batch yet; a description of what failed, or None.

        The first time, the loads :meth:`_begin` started are waited for; a retry starts them again.
        """
        pending = [s for s in self.sinks if s.name not in batch.done]
        if not pending or not batch.docs:
            # Every record was revoked meanwhile: the loads already running (of records the new owner
            # loads again) end before the next batch goes to the same sinks.
            for future in self._loading.values():
                future.exception()
            return None
        futures = {s.name: self._loading.pop(s.name, None) or self._pool.submit(self._load_one, s, batch)
                   for s in pending}
        problems = []
        for name, future in futures.items():
            try:
                refused = future.result()
            except Exception as exc:
                if not is_outage(exc):  # a bug, not a sink that is down: retrying would replay these offsets forever
                    self._sink_failed_unexpectedly(batch, name, exc)
                    continue
                self.metrics.sink_failures.labels(name).inc()
                level = logging.ERROR if "Auth" in type(exc).__name__ else logging.DEBUG
                log.log(level, "%s load failed", name, exc_info=True)
                problem = f"{name} unavailable ({type(exc).__name__}: {str(exc)[:300]})"
                self.metrics.outages.failing(name, problem)
                problems.append(problem)
                continue
            self.metrics.outages.ok(name)
            batch.done.add(name)
            self.metrics.loaded.labels(name).inc(batch.documents - len(refused))
            for doc_id, reason in refused.items():
                for index in batch.owners.get(doc_id, ()):
                    batch.deadletters.append(DeadLetter(batch.messages[index], sink_stage(name), "refused", reason))
        return "; ".join(problems) or None

    def _sink_failed_unexpectedly(self, batch: Batch, name: str, exc: Exception) -> None:
        """Dead-letter the batch's loaded records for ``name`` with reason ``internal: …``: kept, not lost, not stuck."""
        reason = internal_reason(exc)
        self.metrics.internal_errors.inc()
        log.error("%s failed unexpectedly on a batch of %d record(s); they are dead-lettered for it: %s", name,
                  len(batch.messages), reason, exc_info=True)
        batch.done.add(name)
        for index in sorted({i for indexes in batch.owners.values() for i in indexes}):
            batch.deadletters.append(DeadLetter(batch.messages[index], sink_stage(name), INTERNAL, reason))

    def _load_one(self, sink, batch: Batch) -> dict[str, str]:
        refused: dict[str, str] = {}
        started = self.clock.monotonic()
        for source, docs in batch.docs.items():
            for result in sink.load(source, [("stream", docs)]).values():
                refused.update(result.failed)
        self.metrics.sink_seconds.labels(sink.name).observe(self.clock.monotonic() - started)
        return refused

    def _send_deadletters(self, batch: Batch) -> str | None:
        """Produce the batch's dead letters and wait for Kafka; a description of what failed, or None."""
        if not batch.deadletters:
            return None
        # One record per (record, stage): a record two sinks refused is dead-lettered twice, once per sink.
        unique = list({(id(d.message), d.stage): d for d in batch.deadletters}.values())
        problem = self._deadletters.send(unique)
        if problem is not None:
            self.metrics.outages.failing(DEADLETTER_SINK, problem)
            return problem
        self.metrics.outages.ok(DEADLETTER_SINK)
        for dl in unique:
            self.metrics.deadletters.labels(dl.stage, dl.code).inc()
            log.warning("dead-lettered %s[%d]@%d (%s, %s): %s", dl.message.topic(), dl.message.partition(),
                        dl.message.offset(), dl.stage, dl.code, dl.reason[:200])
        batch.deadletters.clear()
        return None

    def _commit(self, batch: Batch) -> None:
        from collectors.stream.clients import commit

        self.metrics.health.handled()  # loaded or dead-lettered: the records are handled, committed or not
        if self._carry:
            self.metrics.health.traffic()
        offsets = batch.offsets(self.owned)
        problem = commit(self.consumer, offsets) if offsets else None
        if problem is not None:
            # The batch is in the sinks; its records replay after a rebalance, which the ids make harmless.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); the batch may be loaded again", problem)
        elif offsets:
            self.metrics.committed(batch, now=self.clock.time(), elapsed=self.clock.monotonic() - batch.started)
            self.committed_batches += 1

    # -- pausing ---------------------------------------------------------------------------
    def _pause(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        self._paused = True
        self.metrics.paused.set(1)

    def _resume(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self._paused = False
        self.metrics.paused.set(0)
        log.info("sinks accept again; consumption resumed")

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` (cut short by ``stop``), polling Kafka so the group keeps us.

        Records a paused consumer still hands out (fetched before the pause,
        or of partitions assigned meanwhile) are kept, in order, for the next batch.
        """
        end = self.clock.monotonic() + seconds
        while not stop.is_set() and self.fatal is None:
            left = end - self.clock.monotonic()
            if left <= 0:
                return
            self._fetched(self.consumer.consume(num_messages=1000, timeout=min(left, 0.2)), self._carry)
            if self._carry:
                self._pause()  # newly assigned partitions are not paused yet
