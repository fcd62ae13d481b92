#!/bin/bash
# Kibana's image turns settings given as environment variables into command-line flags (which `ps`
# shows) and has no *_FILE form. So its two secrets go from the Docker secrets into Kibana's own
# keystore, through stdin, before the image's usual start.
set -euo pipefail
cd /usr/share/kibana
[ -f config/kibana.keystore ] || bin/kibana-keystore create
bin/kibana-keystore add --stdin --force elasticsearch.password < /run/secrets/kibana_system_password
bin/kibana-keystore add --stdin --force xpack.encryptedSavedObjects.encryptionKey < /run/secrets/kibana_encryption_key
exec /bin/tini -- /usr/local/bin/kibana-docker "$@"
