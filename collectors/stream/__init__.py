"""Stream loader: Kafka -> OpenTSDB and Elasticsearch, continuously, at least once, in a group of any size.

``python -m collectors.stream --help`` lists every option. The loader is the
role the opentsdb-rpc-kafka plugin plays in ``seeds/000``, for both sinks and
with the batch path's meaning: it joins the consumer group
``sluice-stream-loader``, reads ``sluice.sensors.raw`` (original MQTT payloads,
key = device, headers ``mqtt_topic`` and ``received_at``) and
``sluice.host.metrics`` (one JSON object per host CSV row, key = host), and
turns each record into documents with the batch path's own functions
(:mod:`collectors.stream.decode`, pure and total: every record becomes
documents or a dead letter with a reason).

The package, by job:

* :mod:`~collectors.stream.config`: the options (:class:`StreamConfig`);
* :mod:`~collectors.stream.decode`: record -> documents or reject, no I/O;
* :mod:`~collectors.stream.batch`: a batch's documents, dead letters and offsets;
* :mod:`~collectors.stream.deadletter`: what goes to ``sluice.deadletter`` and how;
* :mod:`~collectors.stream.loop`: gather, load every sink, dead-letter, commit, rebalance;
* :mod:`~collectors.stream.metrics`: ``/metrics`` and ``/healthz``;
* :mod:`~collectors.stream.clients`: sinks, consumer and producer from the options.

Batches and commits. Records are gathered until ``batch_messages`` records or
``batch_wait`` seconds after the first one; the batch's documents are written
to every configured sink (``SLUICE_SINKS``) concurrently. Only when every sink
accepted the batch, and the dead-letter records of the batch were confirmed by
Kafka, are the offsets committed (synchronously, the next offset of each owned
partition). A crash anywhere before that replays the batch, which the
deterministic ids make harmless: Elasticsearch overwrites the same ``_id``,
OpenTSDB the same cell.

Several loaders. Every loader of a pipeline joins the same group with its own
static ``group.instance.id`` (``--kafka-instance-id``, default
``<host>-<pid>``) and the cooperative-sticky assignor, so a member joining
moves only the partitions it takes, and a restarted member takes its own back
at once. A member that dies (SIGKILL) keeps its partitions until its session
times out (``kafka_session_timeout``); then the others read them again from
the last commit. Nothing is lost and, by id, nothing is stored twice.

Dead letters. A record that cannot be decoded and a record whose documents a
sink refused for good go to ``sluice.deadletter`` with their reason
(:mod:`collectors.stream.deadletter`), and are committed past: they never
block their partition.

Sink outages. When a sink cannot be reached (or keeps answering 429/5xx), the
loader pauses every assigned partition, keeps the batch, and retries the sinks
that have not accepted it yet with exponential backoff (``retry_initial`` to
``retry_max`` seconds), polling Kafka meanwhile so it stays in the group. When
the sink accepts, consumption resumes where it paused; nothing is skipped.
``/healthz`` fails once records have waited ``health_idle_after`` seconds, and
names the sink.

Shutdown. SIGTERM/SIGINT stop taking records; the batch in hand is loaded and
committed (given up after ``shutdown_timeout`` seconds if a sink is down: it
is replayed at the next start), the dead-letter producer is flushed, the
consumer closed and the sinks closed.
"""

from __future__ import annotations

from collectors.stream.config import StreamConfig
from collectors.stream.loop import StreamLoader

__all__ = ["StreamConfig", "StreamLoader"]
