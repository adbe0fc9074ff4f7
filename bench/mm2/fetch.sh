#!/usr/bin/env bash
# Fetch Apache Kafka MirrorMaker 2 (connect-mirror 4.1.1 + runtime deps) into
# tests/.cache/mm2-libs/ (git-ignored, next to the Kafka broker jars).
# Idempotent: does nothing if the jars are already there. Needs mvn + Java 17.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${MM2_LIBS:-$(cd "$here/../.." && pwd)/tests/.cache/mm2-libs}"
marker="$dest/.complete-4.1.1"
if [[ -f "$marker" ]]; then
  exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/mm2-libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp"
ls "$tmp"/connect-mirror-[0-9]*.jar "$tmp"/connect-mirror-client-*.jar "$tmp"/connect-runtime-*.jar >/dev/null
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
touch "$marker"
echo "mm2 libs in $dest ($(ls "$dest" | wc -l) jars)"
