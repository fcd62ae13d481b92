"""
### Sluice: reconcile every minute across every hop; freshness SLA; alerts

Every minute this DAG checks minute **M − k** (`SLUICE_RECONCILE_LAG_MINUTES`,
default 3: after the minute DAGs' grace and the stream loader's batch wait),
per source, and re-checks the last `SLUICE_RECONCILE_RECHECK` (default 30)
minutes stored red:

1. **reconcile_minutes** — the count at every hop (collectors' manifests,
   landed rows, Kafka readings, load records, Elasticsearch documents,
   OpenTSDB points, dead letters by reason; `include/reconcile.py` says how
   each is counted) into `sluice-reconcile-YYYY.MM.DD`. A red minute that
   is whole again is stored `healed`.
2. **check_freshness** — "minute M of source S is queryable in every
   configured sink by the end of M + `SLUICE_SLA_SECONDS`" (default 30) for
   the last minutes; each breach is stored beside the reconcile documents.
   A task here rather than a DAG deadline alert: the SLA is per minute *and
   source* across both minute DAGs, and a breach must be recorded, not only
   called back.
3. **check_collectors** — writers whose heartbeat stopped.
4. **check_lag** — partitions the lag DAG (`sluice_kafka_lag`) last judged STOP or STALL.
5. Each check announces what changed through the notifiers of
   `plugins/sluice_notifiers.py` (SMTP, webhook): once per incident, and once
   more when it clears (books under `state/alerts/` in the landing zone).
6. **fail_on_mismatch** — fails naming each red minute, hop and difference.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import CronDataIntervalTimetable, dag, task

from include.alerts import log_failure
from sluice_airflow import catchup, start_date

LAG_MINUTES = int(os.environ.get("SLUICE_RECONCILE_LAG_MINUTES", "3"))
RECHECK = int(os.environ.get("SLUICE_RECONCILE_RECHECK", "30"))
SLA_SECONDS = float(os.environ.get("SLUICE_SLA_SECONDS", "30"))
#: Sources whose collectors also publish to Kafka (the host topic is optional).
KAFKA_SOURCES = tuple(s.strip() for s in os.environ.get("SLUICE_RECONCILE_KAFKA_SOURCES", "sensor").split(",") if s.strip())


@dag(
    dag_id="sluice_reconcile",
    schedule=CronDataIntervalTimetable("* * * * *", timezone="UTC"),
    start_date=start_date(),
    catchup=catchup(),
    max_active_runs=2,
    dagrun_timeout=timedelta(minutes=10),
    default_args={"retries": 0, "on_failure_callback": log_failure},
    tags=["sluice", "reconcile", "health"],
    doc_md=__doc__,
)
def sluice_reconcile():
    @task
    def reconcile_minutes(data_interval_start=None) -> list[dict]:
        from sluice_airflow import ELASTICSEARCH_RECONCILE_CONN_ID, elasticsearch_client, kafka_consumer_factory, landing_zone
        from sluice_notifiers import announce

        from include import reconcile
        from include.alerts import IncidentBook, mismatch_incidents
        from include.kafka import SENSORS_RAW, HOST_METRICS
        from include.contract import index_prefix
        from include.sinks import configured_sinks
        from include.schemas import SOURCES

        sinks = configured_sinks()
        es, prefix, landing = elasticsearch_client(ELASTICSEARCH_RECONCILE_CONN_ID), index_prefix(), landing_zone()
        opentsdb = None
        if "opentsdb" in sinks:
            from opentsdb_hook import OpenTSDBHook

            opentsdb = OpenTSDBHook().get_conn()
        minute = data_interval_start - timedelta(minutes=LAG_MINUTES)
        pairs = [(s, minute) for s in SOURCES] + reconcile.red_minutes(es, prefix=prefix, limit=RECHECK)
        topics = {s: t for s, t in (("sensor", SENSORS_RAW), ("host", HOST_METRICS)) if s in KAFKA_SOURCES}
        verdicts = reconcile.reconcile_minutes(
            landing, pairs, elasticsearch=es, es_prefix=prefix, opentsdb=opentsdb,
            kafka=kafka_consumer_factory() if topics else None, kafka_topics=topics,
            measure_elasticsearch="elasticsearch" in sinks,
        )
        announce(IncidentBook(landing, "state/alerts/mismatch.json"), *mismatch_incidents(verdicts))
        return [{"summary": v.describe(), "status": v.status, "healed": v.healed} for v in verdicts]

    @task
    def check_freshness(data_interval_start=None) -> list[str]:
        from sluice_airflow import ELASTICSEARCH_RECONCILE_CONN_ID, elasticsearch_client, landing_zone
        from sluice_notifiers import announce

        from include import reconcile
        from include.alerts import IncidentBook, sla_incidents
        from include.contract import index_prefix
        from include.schemas import SOURCES

        landing, now = landing_zone(), datetime.now(timezone.utc)
        start = data_interval_start - timedelta(minutes=LAG_MINUTES + 2)
        results = [
            r for s in SOURCES for i in range(LAG_MINUTES + 3)
            if (r := reconcile.check_freshness(landing, s, start + timedelta(minutes=i), now=now, sla_s=SLA_SECONDS))
        ]
        reconcile.store_freshness(elasticsearch_client(ELASTICSEARCH_RECONCILE_CONN_ID), results, prefix=index_prefix())
        announce(IncidentBook(landing, "state/alerts/sla.json"), *sla_incidents(results))
        return [r.describe() for r in results if r.breach]

    @task
    def check_collectors() -> list[str]:
        from sluice_airflow import landing_zone
        from sluice_notifiers import announce

        from include.alerts import IncidentBook, heartbeat_incidents
        from include.manifests import DEFAULT_MISSES, read_heartbeats
        from include.schemas import SOURCES

        landing, now = landing_zone(), datetime.now(timezone.utc)
        beats = [hb for s in SOURCES for hb in read_heartbeats(landing, s)[0]]
        problems, scopes = heartbeat_incidents(beats, now, misses=DEFAULT_MISSES)
        announce(IncidentBook(landing, "state/alerts/heartbeat.json"), problems, scopes)
        return [p.text for p in problems]

    @task
    def check_lag() -> list[str]:
        from sluice_airflow import ELASTICSEARCH_RECONCILE_CONN_ID, elasticsearch_client, landing_zone
        from sluice_notifiers import announce

        from include.alerts import IncidentBook, lag_incidents
        from include.contract import index_prefix
        from include.status import latest_lag

        partitions = latest_lag(elasticsearch_client(ELASTICSEARCH_RECONCILE_CONN_ID), now=datetime.now(timezone.utc), prefix=index_prefix())
        problems, scopes = lag_incidents(partitions)
        announce(IncidentBook(landing_zone(), "state/alerts/lag.json"), problems, scopes)
        return [p.text for p in problems]

    @task
    def fail_on_mismatch(results: list[dict]) -> None:
        from include.reconcile import ReconcileMismatch

        red = [r["summary"] for r in results if r["status"] == "red" and not r["healed"]]
        if red:
            raise ReconcileMismatch("; ".join(red))

    fail_on_mismatch(reconcile_minutes())
    check_freshness()
    check_collectors()
    check_lag()


sluice_reconcile()
