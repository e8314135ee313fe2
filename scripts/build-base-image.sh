#!/usr/bin/env bash
# Builds the default sandbox image offline (no container registry is reachable here): a Debian minbase root
# filesystem from the configured apt mirror, imported as a Docker image.
# Contents: bash, coreutils, procps and perl-base (the execution wrapper and output redaction), git and
# ca-certificates (the coding workflow), Debian's nodejs 18 and npm (agent CLIs install from the npm registry),
# python3 with venv and pip (repositories' dependencies), and a non-root user `agent` (uid/gid 1000,
# home /home/agent, shell /bin/bash) that owns /workspace. The image's default user stays root (the platform
# execs as root and runs agents as `agent`); CMD is `sleep infinity`. Docs, man pages and apt lists are left
# out. Takes about 1.5 minutes; the image is about 0.5 GB.
# Usage: scripts/build-base-image.sh [IMAGE]   (default: sandbox-base:bookworm-2)
set -euo pipefail
image=${1:-sandbox-base:bookworm-2}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image already present"
  exit 0
fi
# The mirror apt already uses on this machine (deb822 or one-line format).
mirror=$( { grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list || true; } | grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
start=$SECONDS
root=$(mktemp -d)
chmod 0755 "$root"  # becomes the image's /
trap 'rm -rf "$root"' EXIT

# Stage 1: debootstrap. Its resolver cannot handle npm's dependency tree (virtual packages), so only the
# basics come from here...
debootstrap --variant=minbase --include=git,ca-certificates,procps bookworm "$root" "$mirror" \
  >"$root.debootstrap.log" 2>&1 || { tail -n 40 "$root.debootstrap.log" "$root/debootstrap/debootstrap.log" >&2 || true; exit 1; }
rm -f "$root.debootstrap.log"

# ...and stage 2 is apt inside the chroot (no /proc or /dev mounts needed for these packages).
cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
cat >"$root/etc/apt/apt.conf.d/90sandbox" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Check-Valid-Until "false";
CFG
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
in_root apt-get update -qq
in_root apt-get install -y -qq bash coreutils procps perl-base git ca-certificates \
  nodejs npm python3 python3-venv python3-pip >"$root.apt.log" 2>&1 || { tail -n 40 "$root.apt.log" >&2; exit 1; }
rm -f "$root.apt.log"
in_root apt-get clean

# The non-root user agents run as, and the directory they work in.
in_root groupadd --gid 1000 agent
in_root useradd --uid 1000 --gid 1000 --create-home --home-dir /home/agent --shell /bin/bash agent
install -d -o 1000 -g 1000 -m 0755 "$root/workspace"

find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* \
  "$root"/var/cache/debconf/*-old "$root/etc/resolv.conf"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["sleep", "infinity"]' - "$image" >/dev/null
echo "built $image in $((SECONDS - start))s"
