#!/usr/bin/env bash
# Installs everything the client and conformance tests need. Idempotent.
#  - kcat (Debian), Python client libraries (PyPI)
#  - Apache Kafka 4.x jars, the conformance oracle and benchmark peer (Maven Central)
#  - the Java (kafka-clients) and Go (franz-go) client-check programs
#  - kafkajs for the Node.js client check (npm, pinned by tests/clients/js/package-lock.json)
#  - promtool and systemd-analyze for the deploy/ checks (Debian)
#  - Docker, docker-compose and debootstrap for the image and Compose test
#    (Debian; starts dockerd if it is not answering)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"

need_apt=()
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# deploy/ checks: promtool (config, alert rules and their unit tests) and
# systemd-analyze (the units).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# deploy/docker and deploy/compose (test_docker.py): Docker and Compose, and
# debootstrap for the base image when no registry is reachable
# (deploy/docker/base-image.sh).
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
# dnsmasq: the DNS server test_discovery.py serves SRV records from.
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup-test: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# dockerd: through systemd where it runs, else in the background (CI containers).
# A daemon that does not come up is a warning: only test_docker.py needs it.
if ! $SUDO docker info >/dev/null 2>&1; then
  echo "setup-test: starting dockerd"
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl start docker || true
  else
    $SUDO sh -c 'setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &'
  fi
  for _ in $(seq 60); do
    $SUDO docker info >/dev/null 2>&1 && break
    sleep 1
  done
  $SUDO docker info >/dev/null 2>&1 \
    || echo "setup-test: warning: dockerd is not answering after 60 s (see /var/log/dockerd.log); test_docker.py will fail" >&2
fi

if ! python3 -c 'import pytest, confluent_kafka, kafka, crc32c, pytest_timeout, snappy, lz4.frame, zstandard, yaml' 2>/dev/null; then
  echo "setup-test: installing Python test dependencies"
  python3 -m pip install -q -r "$here/requirements.txt" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages -r "$here/requirements.txt"
fi

"$here/kafka/fetch.sh"

if [ ! -f "$here/clients/java/target/client-check.jar" ] || [ -n "$(find "$here/clients/java/src" "$here/clients/java/pom.xml" -newer "$here/clients/java/target/client-check.jar" 2>/dev/null)" ]; then
  echo "setup-test: building the Java client check"
  mvn -B -q -f "$here/clients/java/pom.xml" package -DskipTests
fi
( cd "$here/clients/go" && go build -o client-check . && go build -o sasl-produce ./sasl )
# helm v4 for test_helm.py, from the Go module proxy (pinned).
if ! command -v helm >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/helm" ]; then
  echo "setup-test: installing helm (go install helm.sh/helm/v4/cmd/helm@v4.3.2)"
  go install helm.sh/helm/v4/cmd/helm@v4.3.2
fi
# npm writes node_modules/.package-lock.json on every install: reinstall when it is
# missing or older than the lockfile.
js="$here/clients/js"
if [ ! -f "$js/node_modules/.package-lock.json" ] || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
  echo "setup-test: installing kafkajs (npm ci)"
  npm ci --prefix "$js" --no-audit --no-fund >/dev/null
fi
echo "setup-test: ready"
