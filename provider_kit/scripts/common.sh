#!/usr/bin/env bash
# Shared by the task scripts (sourced first): run as the agent user when there is one, and talk to the
# remote with a credential helper that reads GIT_TOKEN from the environment: nothing is written to any
# config file, and the token never appears in a URL or an argument.
set -euo pipefail
export GIT_TERMINAL_PROMPT=0
# The token stays a variable of this (root) shell: only the git processes of git_remote get it in their
# environment, not every process run as the agent (dependency installs run the repository's scripts).
if [ -n "${GIT_TOKEN:-}" ]; then export -n GIT_TOKEN; fi
# Answers only for the repository's own scheme and host (SANDBOX_GIT_PROTOCOL, SANDBOX_GIT_HOST), so a
# redirect to another host never gets the token.
# shellcheck disable=SC2016  # expanded by git's helper shell, not here
CREDENTIAL_HELPER='!f() { test "$1" = get || exit 0; p= h=; while IFS= read -r l; do case $l in protocol=*) p=${l#protocol=};; host=*) h=${l#host=};; esac; done; test "$p" = "$SANDBOX_GIT_PROTOCOL" && test "$h" = "$SANDBOX_GIT_HOST" || exit 0; echo username=x-access-token; echo "password=$GIT_TOKEN"; }; f'
as_agent() {
  if [ "$(id -u)" = 0 ] && id agent >/dev/null 2>&1; then runuser -u agent -- "$@"; else "$@"; fi
}
# git_remote URL ARGS...: git, with the token for URL's host when there is one.
git_remote() {
  local url=$1 rest
  shift
  rest=${url#*://}
  if [ -n "${GIT_TOKEN:-}" ]; then
    GIT_TOKEN=$GIT_TOKEN SANDBOX_GIT_PROTOCOL=${url%%://*} SANDBOX_GIT_HOST=${rest%%/*} \
      as_agent git -c credential.helper= -c "credential.helper=$CREDENTIAL_HELPER" "$@"
  else
    as_agent git -c credential.helper= "$@"
  fi
}
step() { printf '==> %s\n' "$*"; }
