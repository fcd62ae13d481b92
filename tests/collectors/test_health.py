"""Health verdicts: dead threads, stuck-while-busy, idle-is-fine, and the real /healthz endpoint."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from collectors.common import MetricsEndpoint
from collectors.health import Health


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_source_is_healthy():
    clock = FakeClock()
    health = Health(idle_after_s=10, clock=clock)
    clock.now += 1000
    assert health.check().healthy


def test_traffic_unhandled_for_too_long_is_unhealthy_and_recovers():
    clock = FakeClock()
    health = Health(idle_after_s=10, clock=clock)
    clock.now += 500
    health.traffic()
    clock.now += 9
    assert health.check().healthy
    clock.now += 2
    verdict = health.check()
    assert not verdict.healthy and "nothing was handled for 11 s" in verdict.reasons[0]
    health.handled()
    assert health.check().healthy


def test_dead_thread_is_named():
    health = Health()
    t = threading.Thread(target=lambda: None, name="paho")
    t.start()
    t.join()
    health.watch("mqtt-network", t)
    verdict = health.check()
    assert verdict.reasons == ("thread mqtt-network has died",)


def test_a_check_that_raises_is_a_reason():
    health = Health()
    health.add_check("spool", lambda: 1 / 0)
    assert "spool: check failed: ZeroDivisionError" in health.check().reasons[0]


def test_endpoint_serves_metrics_and_health():
    from prometheus_client import CollectorRegistry, Counter

    endpoint = MetricsEndpoint()
    endpoint.registry = CollectorRegistry()
    Counter("sluice_test_things", "Things.", registry=endpoint.registry).inc()
    endpoint.health = Health()
    port = endpoint.serve("127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "sluice_test_things_total 1.0" in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read() == b"ok\n"
        endpoint.health.add_check("lander", lambda: "spool full")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 503 and err.value.read() == b"lander: spool full\n"
    finally:
        endpoint.close()
