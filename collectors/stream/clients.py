"""The loader's clients, built from its options: the sinks, the group consumer, the dead-letter producer.

Short client time-outs everywhere: the loader retries outages itself.
"""

from __future__ import annotations

from collectors.stream.config import StreamConfig
from include.sinks import ELASTICSEARCH, OPENTSDB


def build_sinks(config: StreamConfig) -> list:
    """One sink per name in ``config.sinks``; the caller closes them (``sink.close()``)."""
    from include.sinks import ElasticsearchSink, OpenTSDBSink

    sinks: list = []
    for name in config.sinks:
        if name == ELASTICSEARCH:
            from include.elasticsearch import connect

            client = connect(config.elasticsearch_url, api_key=config.elasticsearch_api_key or None,
                             ca_certs=config.elasticsearch_ca_certs or None, request_timeout=config.sink_timeout,
                             max_retries=1)
            sinks.append(ElasticsearchSink(client, prefix=config.es_index_prefix, chunk_size=5000))
        elif name == OPENTSDB:
            from include.opentsdb import OpenTSDBClient

            auth = (config.opentsdb_username, config.opentsdb_password) if config.opentsdb_username else None
            client = OpenTSDBClient(config.opentsdb_url, batch_size=config.opentsdb_batch_size,
                                    sync_timeout=config.sink_timeout, timeout=config.sink_timeout,
                                    max_attempts=2, backoff=0.2, backoff_max=1.0, auth=auth)
            sinks.append(OpenTSDBSink(client))
    return sinks


def consumer_config(config: StreamConfig) -> dict:
    """librdkafka settings of the loader's group member: static membership, manual commits, no auto store."""
    session_ms = int(config.kafka_session_timeout * 1000)
    return {
        "bootstrap.servers": config.kafka_bootstrap,
        "group.id": config.kafka_group,
        "group.instance.id": config.instance_id,
        "client.id": f"{config.kafka_group}-{config.instance_id}",
        "partition.assignment.strategy": config.kafka_assignor,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": max(1000, session_ms // 5),
        # A sink outage never holds poll(): the loop polls while paused.
        "max.poll.interval.ms": 300000,
        "log_level": 3,
        **config.kafka_settings(),
    }


def deadletter_producer(config: StreamConfig):
    from confluent_kafka import Producer

    from include.kafka import producer_config

    return Producer(producer_config(config.kafka_bootstrap, client_id=f"{config.kafka_group}-deadletter",
                                    message_timeout_s=config.sink_timeout, **config.kafka_settings()))


def commit(consumer, offsets: dict[tuple[str, int], int]) -> str | None:
    """Commit ``(topic, partition) -> next offset`` synchronously; None, or what Kafka refused."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        result = consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    except KafkaException as exc:
        return str(exc)
    failed = [tp for tp in result or () if tp.error is not None]
    return f"{failed[0].topic}[{failed[0].partition}]: {failed[0].error}" if failed else None


def is_outage(exc: BaseException) -> bool:
    """Whether a sink's exception means "down, try again" (network, HTTP, the sink's own outage errors).

    Anything else (a TypeError, a KeyError ...) is a bug met on this batch: the loader dead-letters the
    batch for that sink instead of retrying it forever.
    """
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    from include.elasticsearch import ElasticsearchUnavailable, RetryableFailuresLeft
    from include.opentsdb import OpenTSDBError

    return isinstance(exc, (OSError, TimeoutError, TransportError, ApiError, ElasticsearchUnavailable,
                            RetryableFailuresLeft, OpenTSDBError))
