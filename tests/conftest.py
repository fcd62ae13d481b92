"""Session fixtures that hand tests the real services of the local stack.

A fixture such as ``kafka`` makes sure the service runs: it reuses a healthy
running stack (a developer's `make up`) or starts the service itself, and at
the end of the session stops only what it started. A service that cannot be
started fails the tests that need it; it is never a skip.
"""

from __future__ import annotations

import json
import os

import pytest

from stack import api
from stack.config import StackConfig
from stack.connections import airflow_env
from stack.service import Service

# Airflow reads its home, DAG folder and connections from the environment at
# import time: give every test the local stack's, unless the caller set them.
for _key, _value in airflow_env(StackConfig.from_env()).items():
    os.environ.setdefault(_key, _value)

SERVICE_FIXTURES = ("mosquitto", "minio", "kafka", "elasticsearch", "opentsdb", "airflow_api", "platform",
                    "start_platform")


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.started: list[Service] = []

    def ensure(self, name: str) -> Service:
        self.started += api.ensure(self.config, [name])
        (svc,) = api.services(self.config, [name])
        return svc

    def stop_started(self) -> None:
        for svc in reversed(self.started):
            svc.stop()


@pytest.fixture(scope="session")
def stack_config() -> StackConfig:
    return StackConfig.from_env()


@pytest.fixture(scope="session")
def local_stack(stack_config):
    stack = LocalStack(stack_config)
    yield stack
    if os.environ.get("SLUICE_KEEP_STACK") != "1":
        stack.stop_started()


@pytest.fixture(scope="session")
def mosquitto(local_stack) -> Service:
    return local_stack.ensure("mosquitto")


@pytest.fixture
def mqtt_users(mosquitto, tmp_path):
    """Users of the shared broker for one test (tests/mqtt_helpers.py), removed after it."""
    from mqtt_helpers import MqttUsers

    users = MqttUsers(mosquitto, tmp_path)
    yield users
    users.close()


@pytest.fixture(scope="session")
def minio(local_stack) -> Service:
    return local_stack.ensure("minio")


@pytest.fixture(scope="session")
def kafka(local_stack) -> Service:
    return local_stack.ensure("kafka")


@pytest.fixture(scope="session")
def elasticsearch(local_stack) -> Service:
    """Elasticsearch with security on: ``.client(role, prefix=...)`` has that role's API key for the
    prefix (made, with the prefix's templates, on first use); ``.admin()`` is for clean-up only."""
    from stack.connections import elasticsearch_connections

    svc = local_stack.ensure("elasticsearch")
    # On a fresh runtime the connections exported at import had no keys yet: now they exist.
    for conn_id, conn in elasticsearch_connections(local_stack.config).items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return svc


@pytest.fixture(scope="session")
def es_connections(elasticsearch):
    """``prefix -> {AIRFLOW_CONN_ELASTICSEARCH_*: ...}``: every role's connection with keys for ``prefix``, for
    an Airflow a test runs with its own ``SLUICE_ES_INDEX_PREFIX`` (keys and templates made on first use)."""
    from stack.connections import elasticsearch_connections

    def env(prefix: str) -> dict[str, str]:
        elasticsearch.api_keys(prefix)
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
                for conn_id, conn in elasticsearch_connections(elasticsearch.config, prefix).items()}

    return env


@pytest.fixture(scope="session")
def opentsdb(local_stack) -> Service:
    return local_stack.ensure("opentsdb")


@pytest.fixture(scope="session")
def airflow_api(local_stack, minio, kafka, elasticsearch, opentsdb):
    """The platform's Airflow: PostgreSQL, api-server, scheduler, dag-processor, triggerer.

    Returns an :class:`stack.airflow_api.AirflowClient` logged in as ``admin``
    with the generated password; ``airflow_api.base`` is the UI's URL. The DAGs
    stay as they are (paused unless ``platform`` or a user unpaused them).
    """
    from stack.airflow_api import AirflowClient
    from stack.services import AIRFLOW

    for cls in AIRFLOW:
        # Redis and the Celery workers run only with SLUICE_EXECUTOR=celery.
        if cls.enabled(local_stack.config):
            local_stack.ensure(cls.name)
    client = AirflowClient(local_stack.config)
    client.login()
    return client


@pytest.fixture(scope="session")
def start_platform(local_stack, airflow_api, mosquitto):
    """A function that starts the collectors and the simulator (what is not running) and
    unpauses the scheduled DAGs; for module fixtures that need the running platform."""
    from stack.platform import unpause
    from stack.services import COLLECTORS

    def start() -> None:
        for cls in COLLECTORS:
            local_stack.ensure(cls.name)
        unpause(local_stack.config)

    return start


@pytest.fixture
def platform(start_platform, airflow_api):
    """All of it, as ``make run`` brings it up: the collectors and the simulator feed the
    pipeline and the scheduled Sluice DAGs are unpaused. Returns the ``airflow_api`` client.

    Per test (cheap when all runs): a test that stopped the platform
    (``tests/e2e/test_platform.py``'s ``down`` test stops the collectors for good, so that
    later tests do not meet simulated readings on the shared broker) gets it back.
    """
    start_platform()
    return airflow_api


def pytest_collection_modifyitems(items):
    # A test that asks for a real service is an integration test, by definition.
    for item in items:
        if any(name in SERVICE_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
