#!/usr/bin/env bash
# Builds the default sandbox image offline (no registry is reachable here): a Debian minbase root
# filesystem from the configured apt mirror, imported as a Docker image.
# Usage: scripts/build-base-image.sh [IMAGE]   (default: sandbox-base:bookworm-1)
set -euo pipefail
image=${1:-sandbox-base:bookworm-1}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image already present"
  exit 0
fi
# The mirror apt already uses on this machine (deb822 or one-line format).
mirror=$( { grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/* /etc/apt/sources.list || true; } \
  | grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# git for the coding workflow, procps for kill/ps, ca-certificates for HTTPS clones.
debootstrap --variant=minbase --include=git,ca-certificates,procps bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["sleep", "infinity"]' - "$image" >/dev/null
echo "built $image"
