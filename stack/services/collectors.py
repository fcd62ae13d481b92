"""The collectors, the stream loader and the sensor simulator as supervised services.

Each runs under :mod:`stack.supervise`, which restarts it with backoff when it
dies and records restarts in ``runtime/<service>/supervisor.json``. The
service's pid is the supervisor's (the group leader), so ``down`` stops the
supervisor and its child together; the child's SIGTERM handler flushes its
partial minute first.

Health is the program's own ``/healthz`` on its metrics port (200 healthy, 503
with reasons; see ``collectors/health.py``), and not failing in the
supervisor's eyes. The simulator serves no endpoint: it is healthy while its
child runs.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from include.elasticsearch_security import LOADER
from include.kafka import STREAM_GROUP
from include.sensors import SENSOR_TOPIC_PREFIX
from stack.config import LANDING_BUCKET, StackConfig
from stack.secrets import write_private
from stack.connections import airflow_env
from stack.service import Service, Status, _proc_start_time, tail
from stack.services.kafka import client_env as kafka_client_env
from stack.services.elasticsearch import Elasticsearch
from stack.services.minio import MinIO
from stack.services.mosquitto import COLLECTOR, DEVICE, Mosquitto
from stack.supervise import read_state
from stack.tls import ca_cert_path
DEFAULT_DEVICES = 5


class SupervisedService(Service):
    """A ``python -m <module>`` program kept alive by :mod:`stack.supervise`."""

    module = ""
    #: The Kafka user the program logs in as (include.kafka.ROLES); empty: it does not use Kafka.
    kafka_user = ""
    start_timeout = 90.0
    stop_timeout = 60.0  # a collector uploads its partial minute before it exits

    @property
    def state_file(self) -> Path:
        return self.dir / "supervisor.json"

    def args(self) -> list[str]:
        return []

    #: Whether the program lands files in MinIO (and so gets the collector user's keys).
    lands = False

    def env(self) -> dict[str, str]:
        env = {**os.environ, **airflow_env(self.config), "PYTHONUNBUFFERED": "1"}
        # airflow_env brings PYTHONPATH and the landing URL; its Connections carry Airflow's own
        # credentials (MinIO, Kafka, Elasticsearch), which no collector may hold: each program gets
        # its own user below. MinIO: only the landing programs get keys, the collector user's
        # (write-only, stack/minio_users.py).
        for var in [v for v in env if v.startswith("AIRFLOW_CONN_")]:
            del env[var]
        if self.lands:
            minio = MinIO(self.config)
            creds = minio.credentials("collector")
            env.update(SLUICE_S3_ACCESS_KEY=creds["access_key"], SLUICE_S3_SECRET_KEY=creds["secret_key"],
                       SLUICE_S3_CA_BUNDLE=str(minio.ca_file))
        # Kafka login (issue 15): user, CA, and the password by file (SLUICE_KAFKA_PASSWORD_FILE).
        if self.kafka_user:
            env.update(kafka_client_env(self.config, self.kafka_user))
        return env

    def prepare(self) -> None:
        self.state_file.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stack.supervise", str(self.state_file), "--",
                sys.executable, "-m", self.module, *self.args()]

    def supervisor_state(self) -> dict:
        return read_state(self.state_file)

    def child_pid(self) -> int | None:
        pid = self.supervisor_state().get("child_pid")
        return pid if pid and _proc_start_time(pid) is not None else None

    def check_health(self) -> str:
        state = self.supervisor_state()
        if state.get("failing"):
            raise RuntimeError(
                f"failing: exited {state['quick_exits']} times in a row (last exit code {state['last_exit']}); "
                f"log end:\n{tail(self.log_file, 10)}"
            )
        if self.child_pid() is None:
            raise RuntimeError(f"not running (restart {state.get('restarts', 0)} in {state.get('backoff_s', 0):.0f} s)")
        return self.probe()

    def probe(self) -> str:
        url = f"{self.config.url(self.port_names[0])}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return f"/healthz {resp.status} {resp.read().decode().strip()}"
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"/healthz {exc.code}: {exc.read().decode().strip()}") from None

    def status(self) -> Status:
        st = super().status()
        state = self.supervisor_state()
        if st.pid is None:
            return st
        extra = f"restarts={state.get('restarts', 0)}"
        return Status(st.service, st.state, st.pid, st.ports, f"{extra} {st.detail}")

    def uptime(self) -> float | None:
        """Seconds since the current child started (not the supervisor: a restart resets it)."""
        started = self.supervisor_state().get("child_started")
        return time.time() - started if started and self.child_pid() else None

    def restarts(self) -> int:
        return int(self.supervisor_state().get("restarts", 0))

    def landing_args(self) -> list[str]:
        return ["--landing-url", f"s3://{LANDING_BUCKET}", "--s3-endpoint-url", MinIO(self.config).endpoint_url,
                "--state-dir", str(self.dir / "state"), "--metrics-port", str(self.port)]

    def kafka(self) -> str:
        return self.config.kafka_bootstrap


def mqtt_args(config: StackConfig) -> list[str]:
    """Where the stack's broker listens, over TLS, and the CA to check it by."""
    return ["--mqtt-host", config.host, "--mqtt-port", str(config.ports["mosquitto_tls"]),
            "--mqtt-ca-file", str(ca_cert_path(config))]


class HostCollector(SupervisedService):
    name = "host-collector"
    module = "collectors.host"
    port_names = ("host_collector",)
    kafka_user = "sluice-host-collector"
    lands = True

    def args(self) -> list[str]:
        return [*self.landing_args(), "--kafka-bootstrap", self.kafka()]


class MqttCollector(SupervisedService):
    name = "mqtt-collector"
    module = "collectors.mqtt"
    port_names = ("mqtt_collector",)
    kafka_user = "sluice-mqtt-collector"
    lands = True
    #: A persistent session: after a crash the broker redelivers what was not acknowledged.
    client_id = "sluice-platform-collector"

    def args(self) -> list[str]:
        return [*self.landing_args(), *mqtt_args(self.config),
                "--mqtt-client-id", self.client_id, "--mqtt-topics", f"{SENSOR_TOPIC_PREFIX}/+",
                "--kafka-bootstrap", self.kafka()]

    # MQTT security: its own collector user (= its client id); the password reaches it as a file.
    def prepare(self) -> None:
        super().prepare()
        Mosquitto(self.config).ensure_users([self.client_id], COLLECTOR)

    def env(self) -> dict[str, str]:
        password = Mosquitto(self.config).collector_password_file(self.client_id)
        return {**super().env(), "SLUICE_MQTT_PASSWORD_FILE": str(password)}


class StreamLoader(SupervisedService):
    name = "stream-loader"
    module = "collectors.stream"
    port_names = ("stream_loader",)
    kafka_user = "sluice-stream-loader"

    def args(self) -> list[str]:
        es = Elasticsearch(self.config)
        return ["--kafka-bootstrap", self.kafka(), "--kafka-group", STREAM_GROUP,
                "--sinks", "elasticsearch,opentsdb", "--elasticsearch-url", es.url,
                "--elasticsearch-ca-certs", str(es.ca_certs),
                "--opentsdb-url", self.config.url("opentsdb"), "--metrics-port", str(self.port)]

    # Elasticsearch: the loader role's API key, through a 0600 file named in the environment
    # (SLUICE_ELASTICSEARCH_API_KEY_FILE): never on the command line, not in the environment itself.
    @property
    def es_key_file(self) -> Path:
        return self.dir / "elasticsearch-api-key"

    def prepare(self) -> None:
        super().prepare()
        write_private(self.es_key_file, Elasticsearch(self.config).api_key(LOADER) + "\n", replace=True)

    def env(self) -> dict[str, str]:
        return {**super().env(), "SLUICE_ELASTICSEARCH_API_KEY_FILE": str(self.es_key_file)}


class Simulator(SupervisedService):
    """Simulated sensors publishing to the stack's broker; ``stack run --devices N`` sets N."""

    name = "simulator"
    module = "collectors.simulate_sensors"
    device_prefix = "sim"

    @property
    def devices_file(self) -> Path:
        return self.dir / "devices"

    def devices(self) -> int:
        try:
            return int(self.devices_file.read_text())
        except (OSError, ValueError):
            return DEFAULT_DEVICES

    def set_devices(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"--devices {n}: the simulator needs at least one device")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.devices_file.write_text(f"{n}\n")

    # MQTT security: every simulated device is a device user of the broker, with its own password.
    def prepare(self) -> None:
        super().prepare()
        from collectors.simulate_sensors import device_ids

        Mosquitto(self.config).ensure_users(device_ids(self.device_prefix, self.devices()), DEVICE)

    def args(self) -> list[str]:
        return [*mqtt_args(self.config), "--mqtt-devices-file", str(Mosquitto(self.config).devices_file),
                "--devices", str(self.devices()),
                # It wants an end: 10^12 messages is beyond any session (at 1/s a device, ages).
                "--rate", "1", "--duration", "0", "--messages", str(10**12),
                "--client-id", "sluice-platform-simulator", "--device-prefix", self.device_prefix]

    def probe(self) -> str:
        return f"{self.devices()} devices publishing once a second"


COLLECTORS = (HostCollector, MqttCollector, StreamLoader, Simulator)
