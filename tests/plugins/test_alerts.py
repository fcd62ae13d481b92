"""Alerts end to end: a real SMTP server (aiosmtpd) and a real HTTP receiver get each incident once.

The incident books live on the real MinIO; the checks are the real ones
(freshness over a minute whose load is held back, the reconciliation verdict,
heartbeats); the notifiers are Airflow's (the smtp provider's SmtpNotifier and
Sluice's WebhookNotifier), configured by Connections in the environment.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include import pipeline, reconcile, sinks
from include import elasticsearch as es_mod
from include.alerts import IncidentBook, heartbeat_incidents, mismatch_incidents, sla_incidents
from include.contract import minute_key
from include.manifests import Heartbeat, MinuteManifest, write_manifest
from plugins.sluice_notifiers import AlertNotDelivered, announce

HEADER = "timestamp,device,metric,value,tags\n"


def mail_text(mail) -> str:
    """The decoded text of every part of a received e-mail."""
    return "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())


@pytest.fixture()
def smtp_server():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self) -> None:
            self.messages: list = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    import socket

    with socket.socket() as probe:  # the controller checks its port by connecting: give it a real one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture()
def webhook_server():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


@pytest.fixture()
def channels(monkeypatch, smtp_server, webhook_server):
    smtp_port, inbox = smtp_server
    hook_port, received = webhook_server
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_TEST_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 1, "timeout": 10}}))
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_TEST_WEBHOOK", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": hook_port, "schema": "http", "extra": {"endpoint": "/alerts"}}))
    monkeypatch.setenv("SLUICE_ALERT_EMAIL_TO", "oncall@example.org")
    monkeypatch.setenv("SLUICE_ALERT_SMTP_CONN", "sluice_test_smtp")
    monkeypatch.setenv("SLUICE_ALERT_WEBHOOK_CONN", "sluice_test_webhook")
    return inbox, received


def test_a_minute_held_past_the_sla_is_a_recorded_breach_alerted_once_and_cleared_when_loaded(
    landing, elasticsearch, channels
):
    inbox, received = channels
    es = elasticsearch.admin()  # loads and stores with one client; roles are tested in tests/stack
    prefix = f"sluicetest-{uuid.uuid4().hex[:8]}"
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=3)
    landing.put(minute_key("sensor", minute, "mqtt-a"),
                f"{HEADER}{minute:%Y-%m-%dT%H:%M}:05Z,ard-1,mqtt.home.pcroom,21.5,type=temperature\n".encode())
    write_manifest(landing, MinuteManifest("sensor", "mqtt-a", minute, rows={"ard-1": 1}, received=1))
    book = IncidentBook(landing, "state/alerts/sla.json")
    try:
        # The load is paused: 31 s after the minute, nothing is queryable.
        before = reconcile.check_freshness(landing, "sensor", minute, now=minute + timedelta(seconds=89), sla_s=30)
        assert before is None  # the deadline (end + 30 s) is still ahead
        held = reconcile.check_freshness(landing, "sensor", minute, now=minute + timedelta(seconds=91), sla_s=30)
        assert (held.breach, held.freshness_s) == (True, None)
        reconcile.store_freshness(es, [held], prefix=prefix)
        first = announce(book, *sla_incidents([held]))
        second = announce(book, *sla_incidents([held]))  # the next run sees the same breach
        assert first["opened"] == [f"sla:sensor:{minute:%Y-%m-%dT%H:%M}Z"] and first["sent"] == ["smtp", "webhook"]
        assert second == {"opened": [], "cleared": [], "sent": []}
        assert len(inbox.messages) == 1 and len(received) == 1
        mail = inbox.messages[0]
        assert mail["To"] == "oncall@example.org" and "freshness SLA 30 s breached" in mail["Subject"]
        assert f"minute {minute:%Y-%m-%dT%H:%M}Z, source sensor" in mail_text(mail)
        assert received[0]["opened"][0]["numbers"] == {"sla_s": 30.0, "freshness_s": None}

        # The load resumes: the minute is queryable (late); the breach stays recorded, the incident clears.
        pipeline.load_files(landing, [sinks.ElasticsearchSink(es, prefix=prefix)], "sensor",
                            pipeline.minute_files(landing, "sensor", minute), run_id="resumed")
        late = reconcile.check_freshness(landing, "sensor", minute, now=datetime.now(timezone.utc), sla_s=30)
        assert late.breach and late.freshness_s > 30
        reconcile.store_freshness(es, [late], prefix=prefix)
        cleared = announce(book, *sla_incidents([late]))
        assert cleared["cleared"] == first["opened"] and cleared["opened"] == []
        assert len(inbox.messages) == 2 and "1 cleared" in inbox.messages[1]["Subject"]
        assert announce(book, *sla_incidents([late]))["sent"] == []
        es.indices.refresh(index=f"{prefix}-reconcile-*")
        (doc,) = [h["_source"] for h in es.search(index=f"{prefix}-reconcile-*", query={"term": {"kind": "sla"}})["hits"]["hits"]]
        assert doc["breach"] is True and doc["freshness_s"] == late.freshness_s
    finally:
        es_mod.delete_indices(es, f"{prefix}-*")
        es.close()


def test_a_reconciliation_mismatch_names_minute_source_hop_and_numbers_once_until_healed(landing, channels):
    inbox, received = channels
    minute = datetime(2026, 12, 1, 9, 45, tzinfo=timezone.utc)
    red = reconcile.judge(reconcile.MinuteCounts("sensor", minute, hops={
        "received": 20, "collector": 60, "landed": 60, "loaded": 60, "elasticsearch": 55}))
    book = IncidentBook(landing, "state/alerts/mismatch.json")
    assert announce(book, *mismatch_incidents([red]))["opened"] == ["mismatch:sensor:2026-12-01T09:45Z:elasticsearch"]
    assert announce(book, *mismatch_incidents([red]))["sent"] == []
    assert len(received) == 1
    (incident,) = received[0]["opened"]
    assert (incident["minute"], incident["source"], incident["hop"]) == ("2026-12-01T09:45Z", "sensor", "elasticsearch")
    assert incident["numbers"] == {"expected": 60, "found": 55, "difference": -5}
    assert "elasticsearch holds 55, expected 60" in mail_text(inbox.messages[0])
    green = reconcile.judge(reconcile.MinuteCounts("sensor", minute, hops={
        "received": 20, "collector": 60, "landed": 60, "loaded": 60, "elasticsearch": 60}))
    assert announce(book, *mismatch_incidents([green]))["cleared"] == ["mismatch:sensor:2026-12-01T09:45Z:elasticsearch"]
    assert len(received) == 2 and len(inbox.messages) == 2


def test_a_collector_that_stopped_reporting_alerts_once_and_clears_when_it_beats_again(landing, channels):
    inbox, received = channels
    now = datetime.now(timezone.utc)
    started = now - timedelta(hours=1)
    gone = Heartbeat("host", "web-7", now - timedelta(seconds=40), interval_s=10.0, started_at=started)
    alive = Heartbeat("host", "web-1", now, interval_s=10.0, started_at=started)
    book = IncidentBook(landing, "state/alerts/heartbeat.json")
    assert announce(book, *heartbeat_incidents([gone, alive], now, misses=3))["opened"] == ["heartbeat:host:web-7"]
    assert announce(book, *heartbeat_incidents([gone, alive], now + timedelta(seconds=10), misses=3))["sent"] == []
    assert "web-7 stopped reporting" in received[0]["subject"]
    back = Heartbeat("host", "web-7", now + timedelta(seconds=20), interval_s=10.0, started_at=started)
    assert announce(book, *heartbeat_incidents([back, alive], now + timedelta(seconds=20), misses=3))["cleared"] == [
        "heartbeat:host:web-7"]
    assert len(inbox.messages) == 2


def test_when_every_channel_fails_the_alert_is_kept_for_the_next_run(landing, monkeypatch, channels):
    inbox, received = channels
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_TEST_SMTP", json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": 9,
                                                                   "extra": {"retry_limit": 1, "timeout": 2}}))
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_TEST_WEBHOOK", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                                      "port": 9}))
    now = datetime.now(timezone.utc)
    gone = Heartbeat("host", "web-9", now - timedelta(minutes=5), interval_s=10.0, started_at=now - timedelta(hours=1))
    book = IncidentBook(landing, "state/alerts/heartbeat.json")
    with pytest.raises(AlertNotDelivered, match="no alert channel took"):
        announce(book, *heartbeat_incidents([gone], now, misses=3))
    assert book.open_incidents() == []  # not recorded as sent: the next run alerts again
