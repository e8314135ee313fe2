#!/usr/bin/env bash
# Builds the sandbox image with the agent CLIs pre-installed, FROM the base image (scripts/build-base-image.sh):
# the real Claude Code and Codex CLIs, installed globally from the npm registry at the exact versions below.
# `docker build` has no network here, so the install runs in a container with host networking and the host's
# CA bundle (outbound HTTPS passes through an intercepting proxy), and the result is committed with the base
# image's CMD and user (root) kept. Idempotent: skipped when the image is already present.
# The tag carries a hash of the base image tag and the pinned versions, so changing a pin makes a new image.
# Usage: scripts/build-agent-image.sh [--print-tag]   (prints the tag and exits; does not build)
set -euo pipefail
cd "$(dirname "$0")/.."

base_image=sandbox-base:bookworm-2
claude_code_version=2.1.197  # @anthropic-ai/claude-code: `claude` is a native binary; node only runs install.cjs
codex_version=0.171.0        # @openai/codex: `codex` is a node wrapper (node >= 16) around a static binary
packages=("@anthropic-ai/claude-code@$claude_code_version" "@openai/codex@$codex_version")
ca_bundle=/etc/ssl/certs/ca-certificates.crt

hash=$(printf '%s\n' "$base_image" "${packages[@]}" | sha256sum | cut -c1-12)
image=sandbox-agents:bookworm-2-$hash
if [[ ${1:-} == --print-tag ]]; then
  echo "$image"
  exit 0
fi
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image already present"
  exit 0
fi
scripts/build-base-image.sh "$base_image"

start=$SECONDS
container=sandbox-agents-build-$$
trap 'docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
# The glibc build of Claude Code is what bin/claude.exe links to; npm 9 also installs the musl one: drop it.
docker run --name "$container" --network host --user root \
  -v "$ca_bundle:$ca_bundle:ro" "$base_image" sh -ec '
    # Set here rather than with -e, so that they do not end up in the committed image.
    export NODE_EXTRA_CA_CERTS='"$ca_bundle"' npm_config_cache=/tmp/npm-cache
    npm install --global --no-fund --no-audit --no-update-notifier --loglevel=error "$@"
    rm -rf /usr/local/lib/node_modules/@anthropic-ai/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64-musl
    claude --version
    codex --version
    rm -rf /tmp/npm-cache /tmp/* /root/.npm /root/.config /root/.claude /root/.claude.json /root/.codex
  ' sh "${packages[@]}"
docker commit \
  -c 'CMD ["sleep", "infinity"]' -c 'USER root' -c 'WORKDIR /' \
  -c "LABEL sandbox.platform/agents=claude-code@$claude_code_version,codex@$codex_version" \
  "$container" "$image" >/dev/null
echo "built $image in $((SECONDS - start))s"
