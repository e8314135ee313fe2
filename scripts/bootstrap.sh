#!/usr/bin/env bash
# Makes a fresh Debian machine ready to run the platform and its tests: Docker engine and debootstrap,
# a running dockerd, uv and the locked Python environment, and the offline sandbox base image.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
  echo "bootstrap: installing docker.io, debootstrap and docker-compose"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-compose >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "bootstrap: starting dockerd (log: /tmp/dockerd.log)"
  as_root sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 & echo $! > /tmp/dockerd.pid'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "bootstrap: dockerd did not start; see /tmp/dockerd.log" >&2; exit 1; }
fi

if ! command -v uv >/dev/null; then
  echo "bootstrap: installing uv"
  python3 -m pip install -q uv==0.13.9
fi
uv sync --frozen -q

scripts/build-base-image.sh
# The sandbox image with the real Claude Code and Codex CLIs, for the agent tests (npm registry, ~25 s).
scripts/build-agent-image.sh
