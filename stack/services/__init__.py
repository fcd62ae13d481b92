"""One module per service of the local stack; ``ALL`` is the start order."""

from __future__ import annotations

from stack.services.elasticsearch import Elasticsearch
from stack.services.kafka import Kafka, KafkaNode2, KafkaNode3
from stack.services.minio import MinIO
from stack.services.mosquitto import Mosquitto
from stack.services.opentsdb import OpenTSDB

ALL = (Mosquitto, MinIO, Kafka, KafkaNode2, KafkaNode3, Elasticsearch, OpenTSDB)
BY_NAME = {cls.name: cls for cls in ALL}
