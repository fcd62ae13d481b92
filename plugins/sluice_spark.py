"""The Spark provider's SparkSubmitOperator, given what Sluice's job needs when it runs.

:class:`AnomalySparkSubmitOperator` is ``SparkSubmitOperator`` (the master
comes from its Connection, ``spark_default``: ``local[*]`` in the local stack,
``spark://spark-master:7077`` in docker-compose, any ``spark://`` or ``k8s://``
master on a cluster). At ``execute`` time, never at parse time, it adds:

* Java, driver/executor memory, jars and Spark settings from
  :func:`include.anomaly.spark_env.submit_settings` (checked: a bad setting
  fails the task with one line naming it);
* the landing zone's S3 endpoint and credentials from the ``aws_default``
  Connection, as environment variables of spark-submit (not arguments, which
  ``ps`` and the task log would show), and the CA its ``verify`` names as
  ``AWS_CA_BUNDLE`` (boto3 in the job reads it; the JVM gets a trust store made
  from it).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from sluice_airflow import AWS_CONN_ID


def landing_env(aws_conn_id: str = AWS_CONN_ID) -> dict[str, str]:
    """``SLUICE_S3_ENDPOINT_URL``, ``AWS_*`` and the CA (``AWS_CA_BUNDLE``) of the landing zone for the job, when it is ``s3://``."""
    if not os.environ.get("SLUICE_LANDING_URL", "").startswith("s3://"):
        return {}
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    creds = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    if creds.token:
        env["AWS_SESSION_TOKEN"] = creds.token
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    if endpoint:
        env["SLUICE_S3_ENDPOINT_URL"] = endpoint
    region = hook.conn_config.region_name
    if region:
        env["AWS_DEFAULT_REGION"] = region
    if isinstance(hook.conn_config.verify, str) and hook.conn_config.verify:
        env["AWS_CA_BUNDLE"] = hook.conn_config.verify  # a private CA (the local stack's MinIO)
    return env


class AnomalySparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator plus the checked settings and the landing zone's credentials (see the module doc)."""

    def execute(self, context: Any) -> Any:
        from include.anomaly.spark_env import submit_settings

        landing = landing_env()
        settings = submit_settings({**os.environ, **landing})
        self.conf = {**settings.conf, **(self.conf or {})}
        self.jars = self.jars or settings.jars or None
        self._driver_memory = self._driver_memory or settings.driver_memory
        self._executor_memory = self._executor_memory or settings.executor_memory
        self.env_vars = {**settings.env, **landing, **(self.env_vars or {})}
        self.log.info("spark-submit with Java %s, driver memory %s, %d jar(s)", settings.java_home,
                      self._driver_memory, len(self.jars.split(",")) if self.jars else 0)
        # The provider runs `spark-submit` by name; pyspark installs it beside this interpreter,
        # which is not on PATH when Airflow runs from the virtualenv without activating it.
        bin_dir = os.path.dirname(sys.executable)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(p for p in (bin_dir, os.environ.get("PATH", "")) if p)
        return super().execute(context)
