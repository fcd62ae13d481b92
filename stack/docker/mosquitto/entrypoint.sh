#!/bin/sh
# Builds the broker's users and ACL from the Docker secrets, then starts Mosquitto (compose).
#
#   /run/secrets/mqtt_devices     device:password lines, one per device (user = device id)
#   /run/secrets/mqtt_collector_password  the password of the collector's user sluice-mqtt-collector
#                                 (user = its client id: each collector instance needs a user of its own)
#
# The same rules as the local stack (stack/services/mosquitto.py): a device may publish to
# sluice/sensors/<device> only, collectors may read every device's topic, nobody else may
# read. Passwords never reach a command line: the plaintext file is written with the shell's
# builtins and hashed in place by `mosquitto_passwd -U`. The health probe's user gets a new
# random password at every start; the health check reads it from a mosquitto_sub options file.
set -eu
secrets=/run/secrets
auth=/mosquitto/data/auth
umask 077
mkdir -p -- "$auth"
plain="$auth/passwords.new"
health=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
collectors="$auth/collectors"
printf 'sluice-mqtt-collector:%s\n' "$(cat "$secrets/mqtt_collector_password")" > "$collectors"
for file in mqtt_devices mqtt_collector_password; do
  [ -s "$secrets/$file" ] || { echo "mosquitto: the secret $file is missing or empty (see docs/security.md)" >&2; exit 1; }
done
{
  grep -v '^[[:space:]]*$' "$secrets/mqtt_devices"
  cat "$collectors"
  printf 'sluice-stack-health:%s\n' "$health"
} > "$plain"
mosquitto_passwd -U "$plain"
mv "$plain" "$auth/passwords"
{
  echo "# Written at start from the secrets mqtt_devices and mqtt_collector_password."
  while IFS=: read -r name _; do
    [ -n "$name" ] && printf 'user %s\ntopic write sluice/sensors/%s\n\n' "$name" "$name"
  done < "$secrets/mqtt_devices"
  while IFS=: read -r name _; do
    [ -n "$name" ] && printf 'user %s\ntopic read sluice/sensors/#\n\n' "$name"
  done < "$collectors"
} > "$auth/acl"
rm -f "$collectors"
# The broker drops to user mosquitto: it gets its own copy of the key.
cp /tls/mosquitto.crt "$auth/server.crt"
cp /tls/mosquitto.key "$auth/server.key"
printf -- '-u sluice-stack-health\n-P %s\n--cafile /tls/ca.crt\n' "$health" > "$auth/mosquitto_sub"
chown -R mosquitto:mosquitto "$auth" 2>/dev/null || true
exec mosquitto -c /mosquitto/config/mosquitto.conf
