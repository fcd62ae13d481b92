"""Mosquitto is the real broker: a persistent QoS 1 session survives a restart (over TLS, with users)."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt

from stack.services.mosquitto import device_topic


def _client(mqtt_users, user: str, inbox: queue.Queue | None = None) -> mqtt.Client:
    client = mqtt_users.client(user, clean_session=False)
    connected = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, p: connected.put((flags.session_present, rc))
    if inbox is not None:
        client.on_message = lambda c, u, msg: inbox.put((msg.topic, msg.payload, msg.qos))
    client.connect(mqtt_users.broker.config.host, mqtt_users.port, keepalive=10)
    client.loop_start()
    client.session_present, rc = connected.get(timeout=10)
    assert not rc.is_failure, rc
    return client


def test_qos1_persistent_session_receives_message_sent_while_offline_across_restart(mosquitto, mqtt_users):
    run = uuid.uuid4().hex[:8]
    (device,) = mqtt_users.devices(run)
    topic = device_topic(device)
    sub_id = f"smoke-sub-{run}"  # a collector user: only collectors may read sensor topics
    mqtt_users.collector(sub_id)
    inbox: queue.Queue = queue.Queue()

    sub = _client(mqtt_users, sub_id, inbox)
    result, _ = sub.subscribe(topic, qos=1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    sub.disconnect()
    sub.loop_stop()

    pub = _client(mqtt_users, device)
    info = pub.publish(topic, b'{"metric":"temperature","value":21.5}', qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()
    pub.disconnect()
    pub.loop_stop()

    # The queued message must be on disk: stop and start the real broker.
    assert mosquitto.stop()
    mosquitto.start()

    sub = _client(mqtt_users, sub_id, inbox)
    try:
        assert sub.session_present, "the broker forgot the persistent session"
        assert inbox.get(timeout=15) == (topic, b'{"metric":"temperature","value":21.5}', 1)
    finally:
        sub.disconnect()
        sub.loop_stop()
