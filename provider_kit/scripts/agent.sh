#!/usr/bin/env bash
# Runs an agent: installs it if missing, writes its config files (from SANDBOX_FILE_<i>_PATH/_CONTENT, so
# secrets in them never appear in an argument), then runs it as the agent user in the workspace, with
# SANDBOX_AGENT_STDIN (the instruction, for CLIs that read it there) on its stdin when feed is "stdin".
# Arguments: workspace binary npm_package feed argv...
dir=$1 bin=$2 pkg=$3 feed=$4; shift 4
if ! command -v "$bin" >/dev/null 2>&1; then
  if [ -z "$pkg" ]; then
    echo "$bin is not installed in this image and cannot be installed from npm; use an image that has it" >&2
    exit 127
  fi
  command -v npm >/dev/null || { echo "npm is not installed in this image; cannot install $pkg" >&2; exit 127; }
  echo "==> Installing $pkg" >&2
  npm install -g --no-audit --no-fund --loglevel=error "$pkg" >&2
fi
home=$(as_agent bash -c 'echo ~')
i=0
while [ "$i" -lt "${SANDBOX_FILE_COUNT:-0}" ]; do
  path_var=SANDBOX_FILE_${i}_PATH content_var=SANDBOX_FILE_${i}_CONTENT
  path=${!path_var}
  case $path in "~/"*) path=$home/${path#"~/"} ;; esac
  as_agent mkdir -p "$(dirname "$path")"
  printf '%s' "${!content_var}" | as_agent sh -c 'umask 077; cat > "$1"' sh "$path"
  unset "$path_var" "$content_var"
  i=$((i + 1))
done
input=${SANDBOX_AGENT_STDIN-}
unset SANDBOX_FILE_COUNT SANDBOX_REDACT_FILTER SANDBOX_AGENT_STDIN
cd "$dir"
if [ "$feed" = stdin ]; then
  # A pipe, not a file the agent could replace; printf's status is not the run's (it may get SIGPIPE when
  # the agent exits without reading everything).
  as_agent "$@" < <(printf '%s' "$input")
else
  as_agent "$@"
fi
