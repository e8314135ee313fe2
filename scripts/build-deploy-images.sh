#!/usr/bin/env bash
# Builds the service images (orchestrator, provider-docker, provider-e2b, provider-daytona, provider-vercel)
# from deploy/docker/Dockerfile: one wheel and one runtime stage, one entrypoint per image.
#
# The build itself needs no network: this script first fills a wheelhouse on the host (the locked
# runtime dependencies, the project's own wheel and pip), and the Dockerfile's builder stage installs
# from it with --no-index. That works the same behind an internal package mirror.
#
# Usage: scripts/build-deploy-images.sh [--force]
# Environment:
#   BASE_IMAGE   image with Debian's python3 at /usr/bin/python3 (default sandbox-python:bookworm-1,
#                built by scripts/build-python-image.sh when missing and left at the default)
#   GIT_IMAGE    image the providers' git comes from (default sandbox-base:bookworm-2, built by
#                scripts/build-base-image.sh when missing and left at the default)
#   IMAGE_PREFIX repository prefix of the results (default sandbox-platform/)
#   IMAGE_TAG    tag of the results (default: version plus a hash of everything that goes into them,
#                so an unchanged tree reuses the images already built; they are also tagged :latest)
# Prints one line per image: "<service> <image:tag>".
set -euo pipefail
cd "$(dirname "$0")/.."
force=0
[[ ${1:-} == --force ]] && force=1

base_image=${BASE_IMAGE:-sandbox-python:bookworm-1}
git_image=${GIT_IMAGE:-sandbox-base:bookworm-2}
prefix=${IMAGE_PREFIX:-sandbox-platform/}
pip_version=26.0.1
context=deploy/docker

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  if [[ $base_image == sandbox-python:bookworm-1 ]]; then
    scripts/build-python-image.sh "$base_image" >&2
  else
    echo "base image $base_image is missing" >&2
    exit 1
  fi
fi

if ! docker image inspect "$git_image" >/dev/null 2>&1; then
  if [[ $git_image == sandbox-base:bookworm-2 ]]; then
    scripts/build-base-image.sh >&2
  else
    echo "git image $git_image is missing" >&2
    exit 1
  fi
fi

# One build at a time per machine: concurrent runs (parallel test sessions) would share and delete each
# other's wheelhouse. A run that waited finds the images the other one built and does nothing.
if command -v flock >/dev/null; then
  exec 9>"${TMPDIR:-/tmp}/sandbox-platform-build-deploy-images.lock"
  flock 9
fi

# The tag covers every input of the image, so a change anywhere rebuilds and nothing else does.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
digest=$( {
  docker image inspect --format '{{.Id}}' "$base_image" "$git_image"
  echo "$pip_version"
  find pyproject.toml uv.lock "$context/Dockerfile" "$context/healthprobe.py" \
    orchestrator provider_kit provider_docker provider_e2b provider_daytona provider_vercel protos -type f -not -path '*/__pycache__/*' -print0 \
    | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-12)
tag=${IMAGE_TAG:-$version-$digest}
services=(orchestrator provider-docker provider-e2b provider-daytona provider-vercel)

missing=$force
for service in "${services[@]}"; do
  docker image inspect "$prefix$service:$tag" >/dev/null 2>&1 || missing=1
done

if [[ $missing == 1 ]]; then
  # Wheels for the engine's architecture and the base image's CPython 3.11 (Debian bookworm, glibc 2.36).
  arch=$(docker info --format '{{.Architecture}}')
  py=$(docker run --rm --network none --entrypoint /usr/bin/python3 "$base_image" \
    -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  platforms=()
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch")
  wheels=$context/wheels
  rm -rf "$wheels"
  mkdir -p "$wheels/deps" "$wheels/project" "$wheels/pip"
  # Each service installs only its own provider's SDK (the project's extras); the wheelhouse holds them all.
  export_requirements() {
    uv export --frozen --no-dev --no-hashes --no-emit-project --format requirements-txt "$@" >/dev/null
  }
  export_requirements --all-extras -o "$wheels/deps/requirements.txt"
  for service in "${services[@]}"; do
    case $service in
      provider-*) export_requirements --extra "${service#provider-}" -o "$wheels/deps/requirements-$service.txt" ;;
      *) export_requirements -o "$wheels/deps/requirements-$service.txt" ;;
    esac
  done
  uv build --quiet --wheel --out-dir "$wheels/project"
  # pip itself, pinned, run by uv (no pip needs to be installed); its config (pip.conf, PIP_INDEX_URL...)
  # applies, so an internal mirror works. (Filtered: a machine-wide pip.conf here names local indexes
  # that need not exist.)
  pip=(uv tool run --quiet --from "pip==$pip_version" pip)
  "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation cp --python-version "$py" "${platforms[@]}" \
    -d "$wheels/deps" -r "$wheels/deps/requirements.txt" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels/pip" "pip==$pip_version" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  # A fixed name, so the Dockerfile can run pip straight from its wheel (python pip.whl/pip ...).
  mv "$wheels"/pip/pip-*.whl "$wheels/deps/pip.whl"
  rmdir "$wheels/pip"
  # No BuildKit-only syntax: this works with the classic builder (all a CLI without buildx has) too.
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  for service in "${services[@]}"; do
    docker build --quiet --force-rm --target "$service" \
      --build-arg "BASE_IMAGE=$base_image" --build-arg "GIT_IMAGE=$git_image" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
      --build-arg "REQUIREMENTS=requirements-$service.txt" \
      -t "$prefix$service:$tag" -t "$prefix$service:latest" "$context" >/dev/null
  done
  rm -rf "$wheels"
  # The classic builder keeps each build's builder stage as an untagged image: keep the newest (its
  # dependency layer is the next build's cache) and drop the rest.
  docker image ls --filter dangling=true --filter label=org.sandbox-platform.stage=builder --format '{{.ID}}' \
    | tail -n +2 | xargs -r docker rmi >/dev/null 2>&1 || true
  # Older content-hash tags of these images are superseded; with an explicit IMAGE_TAG, keep everything.
  if [[ -z ${IMAGE_TAG:-} ]]; then
    for service in "${services[@]}"; do
      docker image ls "$prefix$service" --format '{{.Repository}}:{{.Tag}}' \
        | grep -E ":$version-[0-9a-f]{12}\$" | grep -vx "$prefix$service:$tag" \
        | xargs -r docker rmi >/dev/null 2>&1 || true
    done
  fi
fi
for service in "${services[@]}"; do
  echo "$service $prefix$service:$tag"
done
