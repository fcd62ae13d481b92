"""Can Spark start here, and with what: Java, memory, jars and settings for spark-submit.

A JVM that cannot start prints a page of its own output; a task that fails
for that reason should say it in one line. :func:`submit_settings` checks what
can be checked before spark-submit runs and raises :class:`SparkEnvironmentError`
naming the bad value and what to do:

* ``SLUICE_SPARK_JAVA_HOME`` (else ``JAVA_HOME``) must be a JDK whose major
  version pyspark supports (:data:`SUPPORTED_JAVA`); ``python -m stack env``
  sets it with stack's ``find_jdk``;
* ``SLUICE_SPARK_DRIVER_MEMORY`` (default :data:`DEFAULT_DRIVER_MEMORY`) must be
  a JVM size (``512m``, ``1g``) that fits the memory this machine has available
  now (``MemAvailable`` of ``/proc/meminfo``), and ``SLUICE_SPARK_EXECUTOR_MEMORY``
  a valid size (executors run elsewhere on a cluster, so only its form is checked);
* ``SLUICE_SPARK_JARS`` (comma-separated; ``python -m stack install`` fetches
  hadoop-aws and the AWS SDK bundle from Maven Central and ``python -m stack env``
  lists them) must exist when the landing zone is ``s3://``;
* ``AWS_CA_BUNDLE`` (the CA that signs a private S3 endpoint's certificate, e.g.
  the local stack's MinIO; the aws connection's ``verify``) must be a PEM file:
  the JVM trusts it through a PKCS#12 trust store made from it
  (:func:`java_truststore`), which boto3 in the job reads as is.

Defaults suit a shared 2-core machine: ``local[*]`` (the ``spark_default``
Connection's master), 1 GiB of driver heap, 4 shuffle partitions.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: pyspark 4.2 runs on Java 17 and 21.
SUPPORTED_JAVA = (17, 21)
DEFAULT_DRIVER_MEMORY = "1g"
DEFAULT_EXECUTOR_MEMORY = "1g"
#: Small data, two cores: a handful of shuffle partitions, not Spark's 200.
DEFAULT_SHUFFLE_PARTITIONS = "4"
_SIZE = re.compile(r"(?P<n>\d+)(?P<unit>[kmgt]?)b?", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
#: Keeps Spark's own INFO chatter out of the task log; warnings and errors stay.
LOG4J2 = Path(__file__).with_name("log4j2.properties")


class SparkEnvironmentError(RuntimeError):
    """Spark cannot start with this environment; the message names the setting and the fix."""


@dataclass(frozen=True)
class SubmitSettings:
    java_home: str
    driver_memory: str
    executor_memory: str
    jars: str
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment spark-submit needs (non-secret)."""
        return {"JAVA_HOME": self.java_home}


def java_major(home: Path) -> int | None:
    """Major version from a JDK's ``release`` file, None when it is not a JDK."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def check_java(java_home: str, *, variable: str = "JAVA_HOME") -> str:
    if not java_home:
        raise SparkEnvironmentError(
            f"no Java for Spark: set SLUICE_SPARK_JAVA_HOME or JAVA_HOME to a JDK {' or '.join(map(str, SUPPORTED_JAVA))} "
            "(`python -m stack env` prints one found on this machine)"
        )
    home = Path(java_home)
    if not (home / "bin" / "java").exists():
        raise SparkEnvironmentError(f"{variable}={java_home} has no bin/java: point it at an installed JDK")
    major = java_major(home)
    if major not in SUPPORTED_JAVA:
        raise SparkEnvironmentError(
            f"{variable}={java_home} is Java {major or 'of unknown version'}; pyspark supports Java "
            f"{' and '.join(map(str, SUPPORTED_JAVA))}"
        )
    return str(home)


def parse_size(text: str, *, variable: str) -> int:
    """Bytes of a JVM size such as ``512m`` or ``2g``; SparkEnvironmentError naming the variable."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match["n"]) == 0:
        raise SparkEnvironmentError(f"{variable}={text!r} is not a memory size such as 512m or 1g")
    return int(match["n"]) * _UNITS[match["unit"].lower()]


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes, None where /proc/meminfo does not say."""
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def check_memory(text: str, *, variable: str, available: int | None) -> str:
    size = parse_size(text, variable=variable)
    if available is not None and size > available:
        raise SparkEnvironmentError(
            f"{variable}={text} is more than the {available / 1024**3:.1f} GiB this machine has available; "
            f"use at most that (the default is {DEFAULT_DRIVER_MEMORY})"
        )
    return text


def java_truststore(ca_file: str, *, folder: Path | None = None) -> Path:
    """A PKCS#12 trust store holding the certificates of ``ca_file`` (PEM), for ``-Djavax.net.ssl.trustStore``.

    The JVM reads no PEM trust store, and hadoop-aws (s3a://) has no option of
    its own for a CA: it trusts what the JVM's default trust store holds. The
    store has no password (it holds certificates only, which are public; Java
    reads such a store since 8u301/11.0.12). Named by a digest of the PEM, in
    ``folder`` (default: the temporary folder), and written once: a renewed CA
    gets a new file. SparkEnvironmentError when the file is no PEM certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        pem = Path(ca_file).read_bytes()
        certs = x509.load_pem_x509_certificates(pem)
    except (OSError, ValueError) as exc:
        raise SparkEnvironmentError(
            f"AWS_CA_BUNDLE={ca_file} is not a readable PEM certificate file ({exc}): point it at the CA "
            "that signs the S3 endpoint's certificate (the local stack's runtime/tls/ca.crt)"
        ) from None
    folder = folder or Path(tempfile.gettempdir())
    path = folder / f"sluice-truststore-{hashlib.sha256(pem).hexdigest()[:16]}.p12"
    if not path.exists():
        store = pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(c, f"ca-{i}".encode()) for i, c in enumerate(certs)], serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sluice-truststore-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(store)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: two tasks racing write the same bytes
    return path


def trust_options(store: str) -> str:
    """JVM options that make ``store`` (a PKCS#12 file) the trust store of every TLS connection."""
    return f"-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=PKCS12"


def submit_settings(environ: Mapping[str, str], *, available: int | None = None, meminfo: Path | None = None) -> SubmitSettings:
    """Everything spark-submit needs here, checked; see the module doc."""
    if environ.get("SLUICE_SPARK_JAVA_HOME"):
        java_home = check_java(environ["SLUICE_SPARK_JAVA_HOME"], variable="SLUICE_SPARK_JAVA_HOME")
    else:
        java_home = check_java(environ.get("JAVA_HOME", ""))
    if available is None:
        available = available_memory(meminfo or Path("/proc/meminfo"))
    driver = check_memory(environ.get("SLUICE_SPARK_DRIVER_MEMORY", DEFAULT_DRIVER_MEMORY),
                          variable="SLUICE_SPARK_DRIVER_MEMORY", available=available)
    executor = environ.get("SLUICE_SPARK_EXECUTOR_MEMORY", DEFAULT_EXECUTOR_MEMORY)
    parse_size(executor, variable="SLUICE_SPARK_EXECUTOR_MEMORY")
    jars = [j for j in environ.get("SLUICE_SPARK_JARS", "").split(",") if j]
    missing = [j for j in jars if not Path(j.removeprefix("file://")).exists() and "://" not in j.removeprefix("file://")]
    if missing:
        raise SparkEnvironmentError(f"SLUICE_SPARK_JARS names missing jars {missing[:3]}: run `python -m stack install`")
    if environ.get("SLUICE_LANDING_URL", "").startswith("s3://") and not any("hadoop-aws" in j for j in jars):
        raise SparkEnvironmentError(
            "the landing zone is s3:// but SLUICE_SPARK_JARS lists no hadoop-aws jar: run `python -m stack install` "
            "and export what `python -m stack env` prints"
        )
    conf = {
        "spark.sql.shuffle.partitions": environ.get("SLUICE_SPARK_SHUFFLE_PARTITIONS", DEFAULT_SHUFFLE_PARTITIONS),
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}",
        "spark.ui.enabled": environ.get("SLUICE_SPARK_UI", "false"),
    }
    if environ.get("AWS_CA_BUNDLE"):
        # The driver (the only JVM with local[*]) reads the store where it was made; executors of a
        # cluster get it through spark.files, which lands it in their working folder.
        store = java_truststore(environ["AWS_CA_BUNDLE"])
        conf["spark.driver.extraJavaOptions"] += " " + trust_options(str(store))
        conf["spark.executor.extraJavaOptions"] = trust_options(store.name)
        conf["spark.files"] = str(store)
    return SubmitSettings(java_home, driver, executor, ",".join(jars), conf)
