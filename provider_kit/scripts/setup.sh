#!/usr/bin/env bash
# Prepares the workspace: clone, check out the base, create the working branch, install dependencies.
# Arguments: url base_ref depth branch directory install_deps(0|1) author_name author_email cloned(0|1).
# cloned=1: the provider's git API has already cloned into directory and checked out the branch.
url=$1 base=$2 depth=$3 branch=$4 dir=$5 deps=$6 name=$7 email=$8 cloned=$9
mkdir -p "$dir"
if [ "$(id -u)" = 0 ] && id agent >/dev/null 2>&1; then
  chown -R agent: "$dir"
  # Commands run as root (RunCommand) may use git in the agent's checkout too.
  git config --global --add safe.directory "$dir"
fi
cd "$dir"

clone_with_git() {
  step "Cloning $url into $dir"
  as_agent git init -q
  as_agent git config user.name "$name"
  as_agent git config user.email "$email"
  as_agent git remote add origin "$url"
  refs=$(git_remote "$url" ls-remote origin)
  if [ -z "$refs" ]; then
    step "The repository is empty: starting branch $branch from scratch"
    as_agent git checkout -q -b "$branch"
    return
  fi
  if [ -z "$base" ]; then
    base=$(git_remote "$url" ls-remote --symref origin HEAD | sed -n 's|^ref: refs/heads/\(.*\)\tHEAD$|\1|p')
    base=${base:-main}
  fi
  step "Checking out $base"
  fetch=(fetch -q --no-tags)
  if [ "$depth" -gt 0 ]; then fetch+=(--depth "$depth"); fi
  git_remote "$url" "${fetch[@]}" origin "$base"
  as_agent git update-ref refs/sandbox/base FETCH_HEAD
  step "Creating branch $branch"
  as_agent git checkout -q -b "$branch" FETCH_HEAD
}

check_provider_clone() {
  step "Cloned $url into $dir with the provider's git API"
  as_agent git config user.name "$name"
  as_agent git config user.email "$email"
  if ! as_agent git rev-parse -q --verify HEAD >/dev/null; then
    step "The repository is empty: starting branch $branch from scratch"
    as_agent git checkout -q -b "$branch"
    return
  fi
  # The provider created the branch at the base's tip.
  as_agent git update-ref refs/sandbox/base HEAD
  current=$(as_agent git symbolic-ref --short HEAD)
  [ "$current" = "$branch" ] || { echo "expected branch $branch to be checked out, found $current" >&2; exit 1; }
}

if [ "$cloned" = 1 ]; then check_provider_clone; else clone_with_git; fi
if [ "$deps" = 1 ]; then
  node_install() {
    command -v npm >/dev/null || { echo "npm is not installed in this image" >&2; exit 1; }
    if [ -f pnpm-lock.yaml ]; then step "Installing dependencies with pnpm"; as_agent npx --yes pnpm@9 install --frozen-lockfile
    elif [ -f yarn.lock ]; then step "Installing dependencies with yarn"; as_agent npx --yes yarn@1 install --frozen-lockfile
    elif [ -f package-lock.json ]; then step "Installing dependencies with npm ci"; as_agent npm ci --no-audit --no-fund
    else step "Installing dependencies with npm install"; as_agent npm install --no-audit --no-fund
    fi
  }
  python_tool() {
    as_agent python3 -m venv "/tmp/.sandbox-tools/$1"
    as_agent "/tmp/.sandbox-tools/$1/bin/pip" -q install "$1"
  }
  python_install() {
    command -v python3 >/dev/null || { echo "python3 is not installed in this image" >&2; exit 1; }
    if [ -f uv.lock ]; then step "Installing dependencies with uv"; python_tool uv; as_agent /tmp/.sandbox-tools/uv/bin/uv sync --frozen
    elif [ -f poetry.lock ]; then step "Installing dependencies with poetry"; python_tool poetry; as_agent /tmp/.sandbox-tools/poetry/bin/poetry install --no-interaction
    elif [ -f requirements.txt ]; then step "Installing dependencies with pip (requirements.txt)"; as_agent python3 -m venv .venv; as_agent .venv/bin/pip install -q -r requirements.txt
    else step "Installing the project with pip"; as_agent python3 -m venv .venv; as_agent .venv/bin/pip install -q -e .
    fi
  }
  found=0
  if [ -f package.json ]; then node_install; found=1; fi
  if [ -f uv.lock ] || [ -f poetry.lock ] || [ -f requirements.txt ] || [ -f pyproject.toml ] || [ -f setup.py ]; then
    python_install; found=1
  fi
  [ "$found" = 1 ] || step "No dependency manifest found"
fi
step "Ready on branch $branch"
