#!/usr/bin/env bash
# Builds the base image `debian:bookworm-slim` locally, from the Debian archive.
#
# Why this exists: the Dockerfiles here start FROM debian:bookworm-slim, the usual
# public base image. Where Docker Hub (or any registry) is reachable, `docker build`
# pulls it and this script is not needed. On hosts that reach only a Debian mirror
# (CI, air-gapped build hosts) nothing can be pulled, so this makes an equivalent
# image with debootstrap (minbase: Priority required + apt, with the current
# updates and security fixes) and `docker import`s it under the same name.
# Idempotent: an existing debian:bookworm-slim (pulled or built here) is left
# alone; pass --force to rebuild it.
#
#   deploy/docker/base-image.sh [--force]
#   DEBIAN_MIRROR=http://mirror.example/debian \
#   DEBIAN_SECURITY_MIRROR=http://mirror.example/debian-security deploy/docker/base-image.sh
#
# Needs root (debootstrap, chroot), debootstrap and docker. Takes under a minute
# on a fast mirror, a few on a slow one (about 40 MB of packages).
set -euo pipefail

IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$force" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: $IMAGE already exists"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "base-image: debootstrap needs root (run with sudo)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
  || { echo "base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
PATH="$PATH:/usr/sbin:/sbin"

work="$(mktemp -d "${TMPDIR:-/tmp}/chronik-base-image.XXXXXX")"
root="$work/rootfs"
log="$work/build.log"
# debootstrap leaves /proc and /sys mounted inside the tree when it fails halfway.
cleanup() {
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
fail() {
  tail -n 30 "$log" >&2
  echo "base-image: $1 failed" >&2
  exit 1
}

echo "base-image: debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$log" 2>&1 || fail debootstrap

# The official image's package sources (updates and security too), their fixes applied.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
{ chroot "$root" apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq; } >>"$log" 2>&1 \
  || fail "apt-get upgrade"
chroot "$root" apt-get clean

# What the official slim image also leaves out: package lists (a Dockerfile runs
# `apt-get update` first), documentation but the copyright files, and logs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
# Package installs in a Dockerfile must not try to start services.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
# Keep it slim on later installs too, as the official slim image's dpkg config does.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF

tar --numeric-owner -C "$root" -c . \
  | docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$IMAGE" >/dev/null
echo "base-image: built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
