"""
### Kafka consumer lag, judged like Burrow

Every minute: for each configured consumer group and partition, the committed
offset, the log-end offset and the lag; a status over the last `window` checks
(OK, WARN, STALL, STOP, REWIND; the group is ERR when any partition is STOP or
STALL — rules in `include/kafka_lag.py`). The windows live in the landing zone
(`state/kafka-lag/windows.json`) so they survive across runs. Each check is
written as metrics (`kafka.consumer.lag`, `kafka.consumer.lag_status`) so the
dashboards can plot it, and `alert_on_lag` fails — calling the failure
callback — on STOP, STALL or lag above `lag_threshold`, naming the group,
topic and partitions.

Configure with params, or the environment of the Airflow workers:
`SLUICE_LAG_GROUPS` (JSON `{"group": ["topic", ...] | null}`),
`SLUICE_LAG_WINDOW` (checks, default 10), `SLUICE_LAG_THRESHOLD` (messages).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task

from include.alerts import log_failure
from include.kafka import HOST_METRICS, SENSORS_RAW, STREAM_GROUP

# Other groups need DESCRIBE rights for the lag user (include.kafka.ROLES["sluice-lag"]).
DEFAULT_GROUPS = {STREAM_GROUP: [SENSORS_RAW, HOST_METRICS]}


@dag(
    dag_id="sluice_kafka_lag",
    schedule="* * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    # Lag is about now: a missed minute is not worth replaying.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=2),
    default_args={"retries": 0, "on_failure_callback": log_failure},
    params={
        "groups": Param(
            json.loads(os.environ.get("SLUICE_LAG_GROUPS", "null")) or DEFAULT_GROUPS,
            type="object",
            description="consumer group -> list of topics to watch (null: the group's committed topics)",
        ),
        "window": Param(int(os.environ.get("SLUICE_LAG_WINDOW", "10")), type="integer", minimum=2),
        "lag_threshold": Param(int(os.environ.get("SLUICE_LAG_THRESHOLD", "100000")), type="integer", minimum=0),
    },
    tags=["sluice", "kafka", "lag"],
    doc_md=__doc__,
)
def sluice_kafka_lag():
    @task
    def check_kafka_consumer_lag(params: dict | None = None) -> list[dict]:
        import time

        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook
        from sluice_airflow import landing_zone

        from include.kafka_lag import check_groups, parse_groups

        reports = check_groups(
            # The lag check's own Kafka user: it may describe the topics and the group, nothing more.
            KafkaAdminClientHook(kafka_config_id="kafka_lag").get_conn,
            landing_zone(),
            parse_groups(params["groups"]),
            window=params["window"],
            now=time.time(),
        )
        return [r.to_dict() for r in reports]

    @task
    def record_lag_metrics(reports: list[dict]) -> dict:
        from opentsdb_hook import OpenTSDBHook
        from sluice_airflow import ELASTICSEARCH_LAG_CONN_ID, elasticsearch_client

        from include.kafka_lag import record_metrics, report_from_dict
        from include.contract import index_prefix
        from include.sinks import configured_sinks

        sinks = configured_sinks()
        return record_metrics(
            [report_from_dict(r) for r in reports],
            elasticsearch=elasticsearch_client(ELASTICSEARCH_LAG_CONN_ID) if "elasticsearch" in sinks else None,
            opentsdb=OpenTSDBHook().get_conn() if "opentsdb" in sinks else None,
            index_prefix=index_prefix(),
        )

    @task
    def alert_on_lag(reports: list[dict], params: dict | None = None) -> None:
        from include.kafka_lag import raise_on_problems, report_from_dict

        raise_on_problems([report_from_dict(r) for r in reports], lag_threshold=params["lag_threshold"])

    reports = check_kafka_consumer_lag()
    # Metrics are written before the alert fires, so a STOP is on the dashboards too.
    record_lag_metrics(reports) >> alert_on_lag(reports)

sluice_kafka_lag()
