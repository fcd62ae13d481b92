"""What the Spark anomaly job needs from this machine: a JDK pyspark supports and the s3a jars.

pyspark (from PyPI) brings Spark and Hadoop's client jars but not ``hadoop-aws``
or the AWS SDK it calls, which ``s3a://`` needs. ``mvn dependency:build-classpath``
resolves them (stack/maven/spark-s3a-pom.xml, pinned to the Hadoop version of
pyspark's jars) into Maven's shared cache, like the Kafka and OpenTSDB jars.
The AWS SDK v2 bundle is about 650 MB: the first ``python -m stack install``
downloads it once for every checkout.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stack.config import REPO_ROOT, StackConfig, StackError
from stack.toolchain import find_jdk, maven_classpath

log = logging.getLogger(__name__)

NAME = "spark"
POM = REPO_ROOT / "stack" / "maven" / "spark-s3a-pom.xml"
#: pyspark 4.2 supports Java 17 and 21.
JAVA_MIN, JAVA_MAX = 17, 21


def classpath_file(config: StackConfig) -> Path:
    return config.cache / NAME / "classpath.txt"


def install(config: StackConfig) -> list[str]:
    """Fetch hadoop-aws and its AWS SDK bundle (when missing); their paths."""
    find_jdk(NAME, JAVA_MIN, JAVA_MAX)
    if not classpath_file(config).exists():
        log.info("spark: resolving hadoop-aws and the AWS SDK bundle from Maven Central (about 650 MB, once)")
    return maven_classpath(NAME, POM, classpath_file(config)).split(":")


def spark_env(config: StackConfig) -> dict[str, str]:
    """``SLUICE_SPARK_JAVA_HOME`` and ``SLUICE_SPARK_JARS`` for Airflow, as far as this machine has them.

    Never downloads (this runs for every ``python -m stack env`` and test
    session): jars appear once ``python -m stack install`` fetched them, and
    what is missing is left out, so the DAG's ``check_spark`` task says what to do.
    """
    env: dict[str, str] = {}
    try:
        env["SLUICE_SPARK_JAVA_HOME"] = str(find_jdk(NAME, JAVA_MIN, JAVA_MAX))
    except StackError as exc:
        log.debug("no JDK for Spark: %s", exc)
    path = classpath_file(config)
    if path.exists():
        jars = [p for p in path.read_text().strip().split(":") if p and Path(p).exists()]
        if jars:
            env["SLUICE_SPARK_JARS"] = ",".join(jars)
    return env
