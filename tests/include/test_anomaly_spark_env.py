"""What spark-submit gets, and the one-line reasons when Spark could not start here."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.anomaly.spark_env import (
    DEFAULT_DRIVER_MEMORY,
    SparkEnvironmentError,
    java_truststore,
    parse_size,
    submit_settings,
)

GiB = 1024**3


def fake_jdk(root: Path, version: str) -> str:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "java").write_text("#!/bin/sh\n")
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return str(root)


@pytest.fixture
def jdk17(tmp_path) -> str:
    return fake_jdk(tmp_path / "jdk17", "17.0.15")


def test_defaults_suit_a_shared_two_core_machine(jdk17):
    s = submit_settings({"JAVA_HOME": jdk17}, available=8 * GiB)
    assert (s.java_home, s.driver_memory, s.jars) == (jdk17, DEFAULT_DRIVER_MEMORY, "")
    assert s.env == {"JAVA_HOME": jdk17}
    assert s.conf["spark.sql.shuffle.partitions"] == "4"
    assert s.conf["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=file:")


def test_sluice_spark_java_home_wins_over_java_home(tmp_path, jdk17):
    jdk21 = fake_jdk(tmp_path / "jdk21", "21.0.2")
    assert submit_settings({"JAVA_HOME": jdk17, "SLUICE_SPARK_JAVA_HOME": jdk21}, available=8 * GiB).java_home == jdk21


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({}, "no Java for Spark: set SLUICE_SPARK_JAVA_HOME or JAVA_HOME", id="no-java"),
        pytest.param({"JAVA_HOME": "/nowhere"}, "JAVA_HOME=/nowhere has no bin/java: point it at an installed JDK",
                     id="java-home-nowhere"),
        pytest.param({"SLUICE_SPARK_JAVA_HOME": "/nowhere"}, "SLUICE_SPARK_JAVA_HOME=/nowhere has no bin/java",
                     id="sluice-java-home-nowhere"),
        pytest.param({"JAVA_HOME": "JDK11"}, "is Java 11; pyspark supports Java 17 and 21", id="java-too-old"),
        pytest.param({"JAVA_HOME": "JDK25"}, "is Java 25; pyspark supports Java 17 and 21", id="java-too-new"),
        pytest.param({"JAVA_HOME": "JDK17", "SLUICE_SPARK_DRIVER_MEMORY": "64t"},
                     "SLUICE_SPARK_DRIVER_MEMORY=64t is more than the 8.0 GiB this machine has available",
                     id="memory-impossible"),
        pytest.param({"JAVA_HOME": "JDK17", "SLUICE_SPARK_DRIVER_MEMORY": "lots"},
                     "SLUICE_SPARK_DRIVER_MEMORY='lots' is not a memory size such as 512m or 1g", id="memory-unreadable"),
        pytest.param({"JAVA_HOME": "JDK17", "SLUICE_SPARK_EXECUTOR_MEMORY": "0g"},
                     "SLUICE_SPARK_EXECUTOR_MEMORY='0g' is not a memory size", id="executor-memory-zero"),
        pytest.param({"JAVA_HOME": "JDK17", "SLUICE_SPARK_JARS": "/nowhere/hadoop-aws.jar"},
                     "SLUICE_SPARK_JARS names missing jars ['/nowhere/hadoop-aws.jar']: run `python -m stack install`",
                     id="jar-missing"),
        pytest.param({"JAVA_HOME": "JDK17", "SLUICE_LANDING_URL": "s3://bucket"},
                     "the landing zone is s3:// but SLUICE_SPARK_JARS lists no hadoop-aws jar", id="s3-without-jars"),
    ],
)
def test_a_setting_spark_cannot_start_with_fails_naming_it(tmp_path, environ, message):
    jdks = {f"JDK{v}": fake_jdk(tmp_path / f"jdk{v}", f"{v}.0.1") for v in (11, 17, 25)}
    environ = {k: jdks.get(v, v) for k, v in environ.items()}
    message = message.replace("JDK11", jdks["JDK11"])
    with pytest.raises(SparkEnvironmentError) as err:
        submit_settings(environ, available=8 * GiB)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "size"), [("512m", 512 * 1024**2), ("1g", GiB), ("2G", 2 * GiB), ("1024k", 1024**2),
                                            ("1gb", GiB)])
def test_jvm_sizes(text, size):
    assert parse_size(text, variable="X") == size


def test_available_memory_comes_from_proc_meminfo(tmp_path, jdk17):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:     1048576 kB\n")
    with pytest.raises(SparkEnvironmentError, match=r"=2g is more than the 1.0 GiB"):
        submit_settings({"JAVA_HOME": jdk17, "SLUICE_SPARK_DRIVER_MEMORY": "2g"}, meminfo=meminfo)


# -- a private S3 endpoint's CA (the local stack's MinIO) ------------------------------------------
def _ca_pem(tmp_path: Path) -> Path:
    from stack.config import StackConfig
    from stack.tls import ca_cert_path, ensure_ca

    config = StackConfig(runtime=tmp_path / "runtime", cache=tmp_path / "cache")
    ensure_ca(config)
    return ca_cert_path(config)


def test_a_ca_bundle_becomes_the_jvms_trust_store(tmp_path, jdk17):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12

    ca = _ca_pem(tmp_path)
    s = submit_settings({"JAVA_HOME": jdk17, "AWS_CA_BUNDLE": str(ca)}, available=8 * GiB)
    store = Path(s.conf["spark.files"])
    assert f"-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=PKCS12" in s.conf["spark.driver.extraJavaOptions"]
    assert s.conf["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")  # kept
    assert s.conf["spark.executor.extraJavaOptions"] == f"-Djavax.net.ssl.trustStore={store.name} -Djavax.net.ssl.trustStoreType=PKCS12"
    held = pkcs12.load_pkcs12(store.read_bytes(), None)
    assert held.key is None  # certificates only: nothing secret in a password-less store
    assert [c.certificate for c in held.additional_certs] == [x509.load_pem_x509_certificate(ca.read_bytes())]
    assert java_truststore(str(ca)) == store  # same CA, same file


def test_no_ca_bundle_leaves_the_jvms_default_trust(jdk17):
    conf = submit_settings({"JAVA_HOME": jdk17}, available=8 * GiB).conf
    assert "trustStore" not in conf["spark.driver.extraJavaOptions"] and "spark.files" not in conf


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "not-pem"])
def test_an_unusable_ca_bundle_fails_with_its_name(tmp_path, jdk17, content):
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SparkEnvironmentError, match=f"AWS_CA_BUNDLE={path} is not a readable PEM certificate file"):
        submit_settings({"JAVA_HOME": jdk17, "AWS_CA_BUNDLE": str(path)}, available=8 * GiB)
