#!/bin/sh
# Starts one compose Kafka node SASL_SSL-only, as the local stack does (stack/services/kafka.py):
#
#   CLIENT      SASL_SSL, SCRAM-SHA-512 (clients, and the brokers between them as sluice-admin)
#   CONTROLLER  SASL_SSL, PLAIN for the brokers' own principal sluice-admin only (KRaft controllers
#               cannot check SCRAM: the credentials live in the metadata they serve)
#
# StandardAuthorizer, nothing allowed without an ACL, sluice-admin the only super user. kafka-init
# (python -m stack.kafka_users) then sets the other users' SCRAM credentials, the topics and the ACLs.
#
# Inputs: every KAFKA_* variable of the service becomes a line of server.properties by the image's
# own rule (KAFKA_ dropped, lower case, _ -> ., __ -> _, ___ -> -); SLUICE_KAFKA_NODE names this node's
# certificate in tls-init's volume (/tls/<node>.crt|.key); /run/secrets/kafka_admin_password.
# The password reaches no command line and no environment value: the JAAS lines are in
# server.properties (0600), the health check's login in admin.properties (0600), and the admin's
# SCRAM credential goes into the storage when it is first formatted through a Java argument file
# (0600, removed right after), as the local stack does.
set -eu
umask 077
home=${SLUICE_KAFKA_HOME:-/opt/kafka}
conf=${SLUICE_KAFKA_CONF:-/tmp/sluice-kafka}
secret=${SLUICE_KAFKA_ADMIN_PASSWORD_FILE:-/run/secrets/kafka_admin_password}
tls=${SLUICE_TLS_DIR:-/tls}
node=${SLUICE_KAFKA_NODE:?set SLUICE_KAFKA_NODE to this node\'s service name (its certificate in /tls)}
admin=sluice-admin

[ -s "$secret" ] || { echo "kafka: the secret kafka_admin_password is missing or empty (docs/security.md)" >&2; exit 1; }
password=$(cat "$secret")
case $password in
  *'"'* | *'\'* | *"
"*) echo "kafka: kafka_admin_password holds a quote, a backslash or a line break (JAAS cannot take it): make a new one" >&2; exit 1 ;;
esac
for f in ca.crt "$node.crt" "$node.key"; do
  [ -r "$tls/$f" ] || { echo "kafka: $tls/$f is missing or unreadable: tls-init signs it (add $node=UID to its command)" >&2; exit 1; }
done
mkdir -p -- "$conf"
# Kafka's PEM key store: the PKCS#8 key, then the chain (leaf, then CA), in one 0600 file.
cat "$tls/$node.key" "$tls/$node.crt" > "$conf/keystore.pem"

{
  echo "# Written by stack/docker/kafka/entrypoint.sh at every start; edits are replaced."
  env | awk -F= '
    /^KAFKA_/ && $1 !~ /^KAFKA_(OPTS|HEAP_OPTS|LOG4J_OPTS|JVM_PERFORMANCE_OPTS|GC_LOG_OPTS|JMX_OPTS|DEBUG)$/ {
      key = tolower(substr($1, 7)); value = substr($0, length($1) + 2)
      gsub(/___/, "-", key); gsub(/__/, "@", key); gsub(/_/, ".", key); gsub(/@/, "_", key)
      print key "=" value
    }' | sort
  echo "listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512"
  echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
  printf 'listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' "$admin" "$password"
  echo "listener.name.controller.sasl.enabled.mechanisms=PLAIN"
  echo "sasl.mechanism.controller.protocol=PLAIN"
  printf 'listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="%s" password="%s" user_%s="%s";\n' "$admin" "$password" "$admin" "$password"
  echo "ssl.keystore.type=PEM"
  echo "ssl.keystore.location=$conf/keystore.pem"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=$tls/ca.crt"
  echo "ssl.endpoint.identification.algorithm=https"
  echo "ssl.enabled.protocols=TLSv1.3,TLSv1.2"
  echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
  echo "allow.everyone.if.no.acl.found=false"
  echo "super.users=User:$admin"
} > "$conf/server.properties"

# The health check's login (kafka-broker-api-versions.sh --command-config), the same admin.
{
  echo "security.protocol=SASL_SSL"
  echo "sasl.mechanism=SCRAM-SHA-512"
  printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' "$admin" "$password"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=$tls/ca.crt"
} > "$conf/admin.properties"

logs=${KAFKA_LOG_DIRS:?set KAFKA_LOG_DIRS}
if [ ! -e "$logs/meta.properties" ]; then
  : "${CLUSTER_ID:?set CLUSTER_ID (one for every node of the cluster)}"
  args="$conf/format.args"
  # One quoted argument per line; the password holds no quote or backslash (checked above).
  printf '"%s"\n' kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$conf/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$admin,password=$password]" > "$args"
  # kafka-run-class.sh hands its arguments to java, which expands @file (JDK 9+).
  status=0
  "$home/bin/kafka-run-class.sh" "@$args" || status=$?
  rm -f -- "$args"
  [ "$status" -eq 0 ] || { echo "kafka: formatting $logs failed (exit $status)" >&2; exit "$status"; }
elif [ ! -e "$logs/.sluice-scram" ]; then
  # Formatted by the PLAINTEXT compose of before: no admin credential in its metadata.
  echo "kafka: $logs was formatted without SCRAM users (compose before SASL_SSL): \`docker compose down\`," \
       "remove the volume (docker volume rm <project>_${node}-data; that deletes the Kafka data), then up again" >&2
  exit 1
fi
: > "$logs/.sluice-scram"
exec "$home/bin/kafka-server-start.sh" "$conf/server.properties"
