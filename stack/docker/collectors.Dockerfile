# The long-running Sluice processes: host sampler, MQTT collector, stream loader, simulator.
FROM python:3.11-slim
WORKDIR /opt/sluice
COPY requirements.txt .
# Only what the collectors import: no Airflow in this image.
RUN grep -E '^(boto3|confluent-kafka|elasticsearch|paho-mqtt|psutil|prometheus-client|orjson|polars)==' requirements.txt > collectors-requirements.txt \
    && pip install --no-cache-dir -r collectors-requirements.txt
COPY include/ include/
COPY collectors/ collectors/
RUN useradd --system --uid 10001 sluice && mkdir -p /var/lib/sluice && chown sluice /var/lib/sluice
USER sluice
ENV PYTHONUNBUFFERED=1
