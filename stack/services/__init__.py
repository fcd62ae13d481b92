"""One module per service of the local stack; ``ALL`` is the start order.

``INFRA`` are the servers (the stack the tests and the DAGs talk to),
``AIRFLOW`` its metadata database, the Celery broker (Redis, with
``SLUICE_EXECUTOR=celery``) and components, ``COLLECTORS`` the
supervised programs that feed the pipeline. ``python -m stack up`` and
``run`` start all of them; ``up NAME ...`` only those named.
"""

from __future__ import annotations

from stack.services.airflow import COMPONENTS
from stack.services.collectors import COLLECTORS
from stack.services.elasticsearch import Elasticsearch
from stack.services.kafka import Kafka, KafkaNode2, KafkaNode3
from stack.services.minio import MinIO
from stack.services.mosquitto import Mosquitto
from stack.services.opentsdb import OpenTSDB
from stack.services.postgres import Postgres
from stack.services.redis import Redis

INFRA = (Mosquitto, MinIO, Kafka, KafkaNode2, KafkaNode3, Elasticsearch, OpenTSDB)
AIRFLOW = (Postgres, Redis, *COMPONENTS)
ALL = (*INFRA, *AIRFLOW, *COLLECTORS)
BY_NAME = {cls.name: cls for cls in ALL}
