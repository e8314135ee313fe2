#!/usr/bin/env bash
# Commits everything in the workspace and pushes the branch. Prints "sandbox-result key=value ..." as its
# first stdout line, then the diff against the base; exit 3 means the remote refused (reason on stderr).
# Arguments: directory branch message.
dir=$1 branch=$2 message=$3
cd "$dir"
exec 9>/tmp/.sandbox-push.lock
flock 9
# SANDBOX_NATIVE_GIT: the provider has committed with its own git API and pushes once this script is done.
if [ -z "${SANDBOX_NATIVE_GIT:-}" ]; then
  as_agent git add -A
  if ! as_agent git diff --cached --quiet; then
    as_agent git commit -q -m "$message"
  fi
fi
base=$(as_agent git rev-parse -q --verify refs/sandbox/base || echo 4b825dc642cb6eb9a060e54bf8d69288fbee4904)
head=$(as_agent git rev-parse -q --verify HEAD || true)
if [ -z "$head" ] || [ "$head" = "$base" ]; then
  echo "sandbox-result changed=0 branch=$branch"
  exit 0
fi
if [ -z "${SANDBOX_NATIVE_GIT:-}" ] && ! git_remote push -q origin "HEAD:refs/heads/$branch" 2>/tmp/.sandbox-push.err; then
  cat /tmp/.sandbox-push.err >&2
  exit 3
fi
stat=$(as_agent git diff --shortstat "$base" HEAD)
files=$(echo "$stat" | grep -o '[0-9]* file' | grep -o '[0-9]*' || echo 0)
ins=$(echo "$stat" | grep -o '[0-9]* insertion' | grep -o '[0-9]*' || echo 0)
del=$(echo "$stat" | grep -o '[0-9]* deletion' | grep -o '[0-9]*' || echo 0)
echo "sandbox-result changed=1 sha=$head branch=$branch files=$files insertions=$ins deletions=$del"
as_agent git diff "$base" HEAD | head -c 1048576 || true
