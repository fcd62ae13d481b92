"""The one place that defines the Airflow Connections of the local stack.

`python -m stack env` prints these as ``export`` lines; the Makefile, the
virtualenv's activate script and the test fixtures all use them, so the DAGs
see the same services whichever way Airflow is started. docker-compose.yaml
sets the same connection ids to its own service names.
"""

from __future__ import annotations

import json
import os

from include.landing import S3_REQUEST_CHECKSUMS
from include.contract import index_prefix
from include.elasticsearch_security import airflow_connections as es_airflow_connections
from stack.config import LANDING_BUCKET, REPO_ROOT, StackConfig
from stack.services.kafka import client_settings as kafka_client_settings
from stack.services.minio import MinIO
from stack.spark import spark_env
from stack.tls import ca_cert_path


def airflow_connections(config: StackConfig) -> dict[str, dict]:
    """Connection id -> Airflow's JSON connection form."""
    # MinIO: Airflow's own least-privilege user (stack/minio_users.py), TLS verified against the stack's CA.
    minio = MinIO(config)
    creds = minio.credentials("airflow")
    host = config.host
    return {
        "aws_default": {
            "conn_type": "aws",
            "login": creds["access_key"],
            "password": creds["secret_key"],
            "extra": {"endpoint_url": minio.endpoint_url, "region_name": "us-east-1", "verify": str(minio.ca_file),
                      "config_kwargs": {"request_checksum_calculation": S3_REQUEST_CHECKSUMS}},
        },
        # Kafka (issue 15): each connection's extra is the confluent-kafka config of one user,
        # SASL_SSL/SCRAM-SHA-512 trusting the stack's CA. kafka_default is Airflow's own user
        # (the reconcile DAG reads the topics); kafka_lag the lag check's, which may only describe.
        "kafka_default": {"conn_type": "kafka", "extra": kafka_client_settings(config, "sluice-airflow")},
        "kafka_lag": {"conn_type": "kafka", "extra": kafka_client_settings(config, "sluice-lag")},
        # elasticsearch_default (the loader) and one connection per other Elasticsearch role.
        **elasticsearch_connections(config),
        "opentsdb_default": {"conn_type": "http", "host": host, "port": config.ports["opentsdb"], "schema": "http"},
        # The broker's TLS listener and the CA to check it by; each client has its own user (mosquitto.py).
        "mqtt_default": {"conn_type": "generic", "host": host, "port": config.ports["mosquitto_tls"],
                         "extra": {"tls": True, "ca_file": str(ca_cert_path(config))}},
        # The Spark anomaly job runs in-process on this machine's cores; docker-compose points the
        # same id at its Spark master (spark://spark-master:7077), a cluster at spark:// or k8s://.
        "spark_default": {"conn_type": "spark", "host": "local[*]"},
        # Grafana and Kibana are not part of the local stack (docker-compose runs them): these point
        # at their default ports on this host; credentials come from the environment, never from code.
        "grafana_default": {
            "conn_type": "http",
            "host": host,
            "port": int(os.environ.get("SLUICE_GRAFANA_PORT", "3000")),
            "schema": "http",
            "password": os.environ.get("SLUICE_GRAFANA_TOKEN", ""),
        },
        "kibana_default": {
            "conn_type": "http",
            "host": host,
            "port": int(os.environ.get("SLUICE_KIBANA_PORT", "5601")),
            "schema": "http",
            "extra": {"api_key": os.environ.get("SLUICE_KIBANA_API_KEY", "")},
        },
    }


def elasticsearch_connections(config: StackConfig, prefix: str | None = None) -> dict[str, dict]:
    """One Airflow Connection per Elasticsearch role: HTTPS, the stack's CA, that role's API key for ``prefix``.

    ``prefix`` defaults to ``SLUICE_ES_INDEX_PREFIX`` (else ``sluice``). Keys are
    read from the runtime folder, where the stack keeps them once Elasticsearch
    started; before that (``python -m stack env`` on a new checkout) a
    connection has no key and Elasticsearch answers 401 until ``up``.
    """
    from stack.services.elasticsearch import Elasticsearch  # stack.services imports this module

    es = Elasticsearch(config)
    keys = es.stored_api_keys(prefix or index_prefix())
    return es_airflow_connections(config.host, config.ports["elasticsearch"], str(es.ca_certs), keys)


def airflow_parallelism(cores: int | None = None) -> int:
    """Task processes Airflow runs at once: four a core, at least 8.

    A Sluice task mostly waits on MinIO, Elasticsearch or OpenTSDB, or on its own
    interpreter starting; the two minute DAGs alone bring about twelve tasks a
    minute, so fewer slots queue tasks behind each other while the cores idle.
    Each task process is ~150 MB, so eight on a 2-core machine stay modest.
    """
    return max(8, 4 * (cores if cores is not None else (os.cpu_count() or 1)))


def landing_url(config: StackConfig) -> str:
    return f"s3://{LANDING_BUCKET}"


def airflow_env(config: StackConfig) -> dict[str, str]:
    """Environment for running Airflow (and tests) against the local stack."""
    env = {
        "AIRFLOW_HOME": str(config.runtime / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Sized for the machine (airflow_parallelism), not the default 32.
        "AIRFLOW__CORE__PARALLELISM": str(airflow_parallelism()),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(airflow_parallelism()),
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        # include/ is imported by DAGs and plugins; it lives at the repository root.
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p),
        "SLUICE_LANDING_URL": landing_url(config),
        # The local stack has both sinks: the minute DAGs load Elasticsearch and OpenTSDB.
        "SLUICE_SINKS": "elasticsearch,opentsdb",
    }
    # A JDK pyspark supports (stack's find_jdk) and the s3a jars, when this machine has them.
    env.update(spark_env(config))
    for conn_id, conn in airflow_connections(config).items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env

