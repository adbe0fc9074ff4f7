#!/usr/bin/env bash
# Fetch Apache Kafka (the conformance oracle) jars into tests/.cache/kafka-libs/.
# Idempotent: does nothing if the jars are already there. Needs mvn + Java 17.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${KAFKA_LIBS:-$(cd "$here/.." && pwd)/.cache/kafka-libs}"
# The suffix changes whenever pom.xml gains a dependency, so an older cache is refetched.
marker="$dest/.complete-4.1.1-connect-streams"
if [[ -f "$marker" ]]; then
  exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/kafka-libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp"
# Sanity: the classes the harness needs must be there.
ls "$tmp"/kafka_2.13-*.jar "$tmp"/kafka-server-[0-9]*.jar "$tmp"/kafka-tools-[0-9]*.jar \
  "$tmp"/connect-file-[0-9]*.jar "$tmp"/connect-runtime-[0-9]*.jar "$tmp"/kafka-streams-[0-9]*.jar >/dev/null
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
touch "$marker"
echo "kafka libs in $dest ($(ls "$dest" | wc -l) jars)"
