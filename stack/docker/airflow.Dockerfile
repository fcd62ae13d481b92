# Airflow 3 with Sluice's pinned requirements. The code (dags/, include/, plugins/) is mounted
# by docker-compose.yaml, so editing it needs no rebuild.
FROM apache/airflow:3.3.2-python3.11

# The Spark anomaly job's driver runs inside the Airflow task (spark-submit against the
# spark-master service): it needs a Java that pyspark 4.2 supports and s3a:// for MinIO,
# i.e. hadoop-aws at the Hadoop version pyspark bundles and the AWS SDK bundle it was built
# against (the versions stack/maven/spark-s3a-pom.xml resolves for the local stack).
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/sluice/spark-jars \
 && for jar in \
      org/apache/hadoop/hadoop-aws/3.5.0/hadoop-aws-3.5.0.jar \
      software/amazon/awssdk/bundle/2.35.4/bundle-2.35.4.jar \
      software/amazon/s3/analyticsaccelerator/analyticsaccelerator-s3/1.3.1/analyticsaccelerator-s3-1.3.1.jar \
      org/wildfly/openssl/wildfly-openssl/2.2.5.Final/wildfly-openssl-2.2.5.Final.jar ; do \
      curl -fsSL -o "/opt/sluice/spark-jars/$(basename "$jar")" "https://repo1.maven.org/maven2/$jar" ; \
    done
ENV SLUICE_SPARK_JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    SLUICE_SPARK_JARS=/opt/sluice/spark-jars/hadoop-aws-3.5.0.jar,/opt/sluice/spark-jars/bundle-2.35.4.jar,/opt/sluice/spark-jars/analyticsaccelerator-s3-1.3.1.jar,/opt/sluice/spark-jars/wildfly-openssl-2.2.5.Final.jar
USER airflow

COPY requirements.txt /tmp/requirements.txt
# requirements.txt pins the same Airflow version as the image, so pip keeps it.
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# Connection credentials from Docker secrets (SLUICE_CONN_<ID>__<FIELD>_FILE), in the process only,
# then the image's own entrypoint: stack/docker/secret_env.py says why.
COPY stack/docker/secret_env.py /opt/sluice-bin/secret_env.py
ENTRYPOINT ["python", "/opt/sluice-bin/secret_env.py", "/usr/bin/dumb-init", "--", "/entrypoint"]
