#!/bin/sh
# Writes the broker's password file from the Docker secret, then starts Mosquitto.
# The password never reaches a command line: mosquitto_passwd -U hashes a plain
# "user:password" file in place (mosquitto_passwd -b would show it in `ps`).
set -eu
: "${MQTT_USERNAME:?set MQTT_USERNAME in .env}"
: "${MQTT_PASSWORD_FILE:?name the Docker secret holding the password}"
umask 077
rm -f /mosquitto/data/passwords
printf '%s:%s\n' "$MQTT_USERNAME" "$(cat "$MQTT_PASSWORD_FILE")" > /mosquitto/data/passwords
mosquitto_passwd -U /mosquitto/data/passwords
chown mosquitto:mosquitto /mosquitto/data/passwords 2>/dev/null || true
# The health check's client options (mosquitto_sub reads $XDG_CONFIG_HOME/mosquitto_sub), root only.
mkdir -p /mosquitto/data/health
printf -- '-u %s\n-P %s\n' "$MQTT_USERNAME" "$(cat "$MQTT_PASSWORD_FILE")" > /mosquitto/data/health/mosquitto_sub
exec mosquitto -c /mosquitto/config/mosquitto.conf
