"""Where the local stack keeps things and which ports it binds.

Everything is overridable by environment variable so two checkouts (or a test
run beside a developer's stack) can live on one machine:

* ``SLUICE_RUNTIME`` – service data, logs, pid files and generated secrets
  (default: ``<repo>/runtime``, ignored by git).
* ``SLUICE_CACHE`` – downloads and builds shared between checkouts
  (default: ``~/.cache/sluice``). Maven keeps its own cache in ``~/.m2``.
* ``SLUICE_<SERVICE>_PORT`` – one per port, see :data:`DEFAULT_PORTS`.
* ``SLUICE_KAFKA_BROKERS`` – 1 (default: one KRaft node) or 3 (a replicated
  cluster: topics get replication factor 3 and ``min.insync.replicas=2``).
* ``SLUICE_EXECUTOR`` – ``local`` (default: the scheduler's LocalExecutor) or
  ``celery`` (Redis as broker, ``SLUICE_AIRFLOW_WORKERS`` Celery workers, default
  2; ``python -m stack run --workers N`` sets it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Port name -> default. The environment variable is ``SLUICE_<NAME>_PORT``.
DEFAULT_PORTS: dict[str, int] = {
    # MQTT: 1883 is plaintext, bound only with SLUICE_MQTT_PLAINTEXT_DEMO=1 (loopback); clients use TLS.
    "mosquitto": 1883,
    "mosquitto_tls": 8883,
    "kafka": 9092,
    "kafka_controller": 9093,
    # Brokers 2 and 3 of the optional three-broker cluster (SLUICE_KAFKA_BROKERS=3).
    "kafka_2": 9094,
    "kafka_2_controller": 9095,
    "kafka_3": 9096,
    "kafka_3_controller": 9097,
    "minio": 9000,
    "minio_console": 9001,
    "elasticsearch": 9200,
    "elasticsearch_transport": 9300,
    "opentsdb": 4242,
    # HBase standalone under OpenTSDB: its embedded ZooKeeper, master and region server RPC.
    "hbase_zookeeper": 2181,
    "hbase_master": 16000,
    "hbase_regionserver": 16020,
    # The platform (`python -m stack run`): Airflow's metadata database and components.
    "postgres": 5432,
    "airflow_api": 8080,
    # Where the scheduler's LocalExecutor workers and the triggerer serve task logs to the UI.
    "airflow_worker_logs": 8793,
    "airflow_triggerer_logs": 8794,
    # SLUICE_EXECUTOR=celery: Redis, the Celery broker, and the log server of each worker.
    "redis": 6379,
    **{f"airflow_worker_{i}_logs": 8794 + i for i in range(1, 9)},
    # /metrics and /healthz of the supervised collectors (their own defaults in collectors/).
    "host_collector": 9108,
    "mqtt_collector": 9109,
    "stream_loader": 9110,
}

#: Kafka cluster sizes the stack can run: one node, or three that survive losing one.
KAFKA_BROKER_COUNTS = (1, 3)

#: Executors the local stack runs Airflow with (``SLUICE_EXECUTOR``).
EXECUTORS = ("local", "celery")
#: Most Celery workers the local stack runs (each has a log-server port in DEFAULT_PORTS).
MAX_AIRFLOW_WORKERS = 8

#: The bucket the landing zone uses on the local MinIO.
LANDING_BUCKET = "sluice-landing"


class StackError(Exception):
    """A service could not be installed, started, checked or stopped.

    The message names the service and the reason; ``log_tail`` carries the last
    lines of the service's log when there is one, so the CLI can show them.
    """

    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
        self.log_tail = log_tail


def check_workers(raw: str | int, where: str) -> int:
    """A Celery worker count from ``where`` (a variable or an option): 1..MAX_AIRFLOW_WORKERS."""
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{where}={raw!r} is not a number of workers") from None
    if not 1 <= n <= MAX_AIRFLOW_WORKERS:
        raise ValueError(f"{where}={n}: the local stack runs 1..{MAX_AIRFLOW_WORKERS} Celery workers")
    return n


@dataclass(frozen=True)
class StackConfig:
    runtime: Path
    cache: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    kafka_brokers: int = 1
    executor: str = "local"
    airflow_workers: int = 2

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StackConfig:
        env = os.environ if environ is None else environ
        ports = {}
        for name, default in DEFAULT_PORTS.items():
            var = f"SLUICE_{name.upper()}_PORT"
            raw = env.get(var, str(default))
            try:
                port = int(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a port number") from None
            if not 1 <= port <= 65535:
                raise ValueError(f"{var}={port} is outside 1..65535")
            ports[name] = port
        taken: dict[int, str] = {}
        for name, port in ports.items():
            if port in taken:
                raise ValueError(
                    f"SLUICE_{name.upper()}_PORT and SLUICE_{taken[port].upper()}_PORT "
                    f"are both {port}; every port of the stack must differ"
                )
            taken[port] = name
        runtime = Path(env.get("SLUICE_RUNTIME", REPO_ROOT / "runtime")).resolve()
        cache = Path(env.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice")).resolve()
        brokers_text = env.get("SLUICE_KAFKA_BROKERS", "1")
        if brokers_text not in {str(n) for n in KAFKA_BROKER_COUNTS}:
            raise ValueError(
                f"SLUICE_KAFKA_BROKERS={brokers_text!r}: use 1 (one node) or 3 (a replicated cluster)"
            )
        executor = env.get("SLUICE_EXECUTOR", "local")
        if executor not in EXECUTORS:
            raise ValueError(f"SLUICE_EXECUTOR={executor!r}: use local (LocalExecutor) or celery (Redis and Celery workers)")
        workers = check_workers(env.get("SLUICE_AIRFLOW_WORKERS", "2"), "SLUICE_AIRFLOW_WORKERS")
        return cls(runtime=runtime, cache=cache, ports=ports, kafka_brokers=int(brokers_text),
                   executor=executor, airflow_workers=workers)

    def kafka_port_names(self, node: int) -> tuple[str, str]:
        """(broker, controller) port names of Kafka node ``node`` (1-based)."""
        return ("kafka", "kafka_controller") if node == 1 else (f"kafka_{node}", f"kafka_{node}_controller")

    @property
    def kafka_bootstrap(self) -> str:
        """``host:port,…`` of every broker of the configured cluster."""
        return ",".join(
            f"{self.host}:{self.ports[self.kafka_port_names(n)[0]]}" for n in range(1, self.kafka_brokers + 1)
        )

    def url(self, port_name: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.ports[port_name]}"
