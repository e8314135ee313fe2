#!/usr/bin/env bash
# Builds the base image for the platform's own containers offline (no registry is reachable here):
# a Debian minbase root filesystem with python3, from the configured apt mirror, imported as a Docker
# image. deploy/docker/Dockerfile takes it as its BASE_IMAGE build argument; any image with Debian's
# python3 (3.11+) at /usr/bin/python3 works there too, e.g. one mirrored into an internal registry.
# Usage: scripts/build-python-image.sh [IMAGE]   (default: sandbox-python:bookworm-1)
set -euo pipefail
image=${1:-sandbox-python:bookworm-1}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
# The mirror apt already uses on this machine (deb822 or one-line format).
mirror=$( { grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/* /etc/apt/sources.list || true; } \
  | grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# python3 runs the services; ca-certificates lets them verify TLS peers (OTLP collectors, remote engines).
# No python3-venv, pip or compiler: the Dockerfile's builder stage installs prebuilt wheels with pip run
# from its own wheel, so nothing that builds or fetches code is left in the runtime image.
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$mirror" >/dev/null
# Documentation, man pages, translations and apt's caches are dead weight in a service image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/log/*.log "$root"/var/log/apt/*
tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$image" >/dev/null
echo "built $image"
