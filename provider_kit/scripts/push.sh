#!/usr/bin/env bash
# Commits everything in the workspace and writes the result out as a git bundle; the provider pushes it
# from outside the sandbox (provider_kit/git_push.py), so no token ever comes in here. Everything runs as
# the agent user: the checkout, its config and its hooks are the agent's, and root never touches them.
# Prints "sandbox-bundle base=SHA head=SHA" (either may be empty) as its first stdout line and, when head
# differs from base, the bundle of head (base as its prerequisite), base64-encoded: every provider's
# output channel carries text. The provider trusts none of it beyond being the agent's own work.
# Arguments: directory message author_name author_email.
if [ "$(id -u)" = 0 ] && id agent >/dev/null 2>&1; then
  exec runuser -u agent -- bash -c "$BASH_EXECUTION_STRING" "$0" "$@"
fi
dir=$1 message=$2 name=$3 email=$4
cd "$dir"
# Two replicas finishing the same task commit one after the other (the second finds nothing to commit).
exec 9>/tmp/.sandbox-push.lock
flock -w 300 9 || { echo "another commit of this workspace has held its lock for 5 minutes" >&2; exit 1; }
git add -A >&2
if ! git diff --cached --quiet --no-ext-diff --no-textconv; then
  # The author from the sandbox's record; -c outranks every config file. Hooks may run: they see no secret.
  git -c user.name="$name" -c user.email="$email" commit -q -m "$message" >&2
fi
base=$(git rev-parse -q --verify 'refs/sandbox/base^{commit}' || true)
head=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
echo "sandbox-bundle base=$base head=$head"
if [ -z "$head" ] || [ "$head" = "$base" ]; then exit 0; fi
if [ -n "$base" ]; then
  git bundle create -q - HEAD "^$base" | base64 -w 0
else
  git bundle create -q - HEAD | base64 -w 0
fi
