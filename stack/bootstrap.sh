#!/usr/bin/env bash
# Installs the system-level tools the local stack needs, only where missing:
#   mosquitto (Debian), Maven, a JDK >= 21 (Kafka, Elasticsearch) and a JDK 17
#   (HBase under OpenTSDB) -- all from Maven Central --, Go (MinIO is built with
#   `go install`), python3-venv, setpriv, docker-compose (validates the compose file),
#   PostgreSQL (Airflow's metadata database), redis-server (the Celery broker of
#   SLUICE_EXECUTOR=celery) and chromium + chromium-driver (the
#   headless browser the UI tests drive), all from Debian.
# Idempotent: on a machine that has everything it installs nothing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }

# jdk_in LOW HIGH: is a JDK with a major version in LOW..HIGH installed?
jdk_in() {
  local home v
  for home in "${JAVA_HOME:-}" /usr/lib/jvm/*; do
    [ -n "$home" ] && [ -x "$home/bin/java" ] && [ -f "$home/release" ] || continue
    v=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$home/release")
    [ "${v:-0}" -ge "$1" ] && [ "${v:-0}" -le "$2" ] && return 0
  done
  return 1
}

go_ok() {
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || return 1
  # MinIO needs Go 1.24 or newer; older toolchains from 1.21 on fetch a newer
  # one from the Go module proxy by themselves (GOTOOLCHAIN=auto).
  "$go" env GOVERSION | awk -F'[go.]' '{exit !($3 > 1 || ($3 == 1 && $4 >= 21))}'
}

[ -x /usr/sbin/mosquitto ] || have mosquitto || need+=(mosquitto)
have mvn || need+=(maven)
# Elasticsearch 9 needs Java 21+; HBase 2.6 (under OpenTSDB) runs on 11..17 only.
jdk_in 21 999 || need+=(JDK21)
jdk_in 11 17 || need+=(openjdk-17-jdk-headless)
go_ok || need+=(golang-go)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
have setpriv || need+=(util-linux)
# docker-compose (1.29): validates docker-compose.yaml in CI with `docker-compose config`, no engine needed.
have docker-compose || need+=(docker-compose)
# Airflow's metadata database: the server binaries under /usr/lib/postgresql/<major>/bin.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# SLUICE_EXECUTOR=celery: the Celery broker.
have redis-server || need+=(redis-server)
# The Airflow UI test: Debian's headless Chromium and its WebDriver.
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)

if [ ${#need[@]} -eq 0 ]; then
  echo "bootstrap: system tools present (mosquitto, postgresql, redis-server, chromium, mvn, JDK >= 21, JDK 11..17, go, python3-venv, docker-compose)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: missing ${need[*]}; run 'sudo make bootstrap' (or install them yourself)" >&2
  exit 1
fi

echo "bootstrap: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
pkgs=()
for p in "${need[@]}"; do
  if [ "$p" = JDK21 ]; then
    # The newest OpenJDK the distribution offers, at least 21.
    jdk=$(apt-cache pkgnames openjdk- | sed -n 's/^openjdk-\([0-9]*\)-jdk-headless$/\1/p' | sort -n | awk '$1>=21' | tail -n1)
    if [ -z "$jdk" ]; then
      echo "bootstrap: this distribution offers no OpenJDK >= 21 (Elasticsearch 9 needs it); install one and set JAVA_HOME" >&2
      exit 1
    fi
    pkgs+=("openjdk-${jdk}-jdk-headless")
  else
    pkgs+=("$p")
  fi
done
apt-get install -y -q --no-install-recommends "${pkgs[@]}"
# Debian starts the packaged broker on port 1883, a PostgreSQL cluster on 5432 and Redis on 6379; the stack runs its own.
if have systemctl; then
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
  systemctl disable --now postgresql >/dev/null 2>&1 || true
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
