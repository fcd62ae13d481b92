#!/bin/sh
# Writes the broker's password file from the environment, then starts Mosquitto.
set -eu
: "${MQTT_USERNAME:?set MQTT_USERNAME in .env}"
: "${MQTT_PASSWORD:?set MQTT_PASSWORD in .env}"
rm -f /mosquitto/data/passwords
mosquitto_passwd -b -c /mosquitto/data/passwords "$MQTT_USERNAME" "$MQTT_PASSWORD"
chown mosquitto:mosquitto /mosquitto/data/passwords 2>/dev/null || true
chmod 0700 /mosquitto/data/passwords
exec mosquitto -c /mosquitto/config/mosquitto.conf
