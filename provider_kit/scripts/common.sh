#!/usr/bin/env bash
# Shared by the task scripts (sourced first): run as the agent user when there is one, and talk to the
# remote with a credential helper that reads GIT_TOKEN from the environment: nothing is written to any
# config file, and the token never appears in a URL or an argument.
set -euo pipefail
export GIT_TERMINAL_PROMPT=0
# shellcheck disable=SC2016  # expanded by git's helper shell, not here
CREDENTIAL_HELPER='!f() { test "$1" = get && echo username=x-access-token && echo "password=$GIT_TOKEN"; }; f'
as_agent() {
  if [ "$(id -u)" = 0 ] && id agent >/dev/null 2>&1; then runuser -u agent -- "$@"; else "$@"; fi
}
git_remote() {
  if [ -n "${GIT_TOKEN:-}" ]; then
    as_agent git -c credential.helper= \
      -c "credential.helper=$CREDENTIAL_HELPER" \
      "$@"
  else
    as_agent git -c credential.helper= "$@"
  fi
}
step() { printf '==> %s\n' "$*"; }
