#!/usr/bin/env bash
# Builds the Chronik runtime image from a prebuilt release binary.
#
#   deploy/docker/build.sh [TAG] [BINARY]
#
# TAG     default chronik:latest
# BINARY  default $CHRONIK_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/chronik
#         (build it first: cargo build --release --locked)
#
# The binary's debug info is stripped in the build context (about 560 MB ->
# 40 MB; the symbols stay, so panics still name their functions); set
# CHRONIK_STRIP=0 to keep it whole. The base image debian:bookworm-slim must be
# pullable or present: without a registry, run deploy/docker/base-image.sh
# first. `docker build` runs with --network host, like everything here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

tag="${1:-chronik:latest}"
bin="${2:-${CHRONIK_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/chronik}}"
if [ ! -x "$bin" ]; then
  echo "build: no chronik binary at $bin (cargo build --release --locked, or pass its path)" >&2
  exit 1
fi
version="$("$bin" --version | awk '{print $2}')"

ctx="$(mktemp -d "${TMPDIR:-/tmp}/chronik-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$here/broker.toml" "$ctx/"
if [ "${CHRONIK_STRIP:-1}" != 0 ] && command -v strip >/dev/null; then
  strip --strip-debug -o "$ctx/chronik" "$bin"
else
  cp "$bin" "$ctx/chronik"
fi
chmod 0755 "$ctx/chronik"

echo "build: $tag from $bin (chronik $version)"
docker build --network host --tag "$tag" \
  --label org.opencontainers.image.title=chronik \
  --label org.opencontainers.image.version="$version" \
  "$ctx"
