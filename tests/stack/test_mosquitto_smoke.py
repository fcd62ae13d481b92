"""Mosquitto is the real broker: a persistent QoS 1 session survives a restart."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt


def _client(mosquitto, client_id: str, inbox: queue.Queue | None = None) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
    )
    connected = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, p: connected.put((flags.session_present, rc))
    if inbox is not None:
        client.on_message = lambda c, u, msg: inbox.put((msg.topic, msg.payload, msg.qos))
    client.connect(mosquitto.config.host, mosquitto.port, keepalive=10)
    client.loop_start()
    client.session_present, rc = connected.get(timeout=10)
    assert not rc.is_failure, rc
    return client


def test_qos1_persistent_session_receives_message_sent_while_offline_across_restart(mosquitto):
    topic = f"sluice/smoke/{uuid.uuid4().hex[:8]}"
    sub_id = f"smoke-sub-{uuid.uuid4().hex[:8]}"
    inbox: queue.Queue = queue.Queue()

    sub = _client(mosquitto, sub_id, inbox)
    result, _ = sub.subscribe(topic, qos=1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    sub.disconnect()
    sub.loop_stop()

    pub = _client(mosquitto, f"smoke-pub-{uuid.uuid4().hex[:8]}")
    info = pub.publish(topic, b'{"metric":"temperature","value":21.5}', qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()
    pub.disconnect()
    pub.loop_stop()

    # The queued message must be on disk: stop and start the real broker.
    assert mosquitto.stop()
    mosquitto.start()

    sub = _client(mosquitto, sub_id, inbox)
    try:
        assert sub.session_present, "the broker forgot the persistent session"
        assert inbox.get(timeout=15) == (topic, b'{"metric":"temperature","value":21.5}', 1)
    finally:
        sub.disconnect()
        sub.loop_stop()
