"""Anomaly detection on Spark over the landing zone (issue 13).

:mod:`include.anomaly.detect` is the method and the daily aggregates,
:mod:`include.anomaly.job` the ``spark-submit`` application,
:mod:`include.anomaly.results` turns its results into Elasticsearch documents
and OpenTSDB annotations, :mod:`include.anomaly.spark_env` checks that Spark
can start here and sizes it. docs/anomaly.md is the user's guide.
"""
