# Airflow 3 with Sluice's pinned requirements. The code (dags/, include/, plugins/) is mounted
# by docker-compose.yaml, so editing it needs no rebuild.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /tmp/requirements.txt
# requirements.txt pins the same Airflow version as the image, so pip keeps it.
RUN pip install --no-cache-dir -r /tmp/requirements.txt
