"""The shell side of the execution model, run inside the sandbox with bash and GNU coreutils.

The follower needs bash (for `wait -n`); the runner is POSIX sh, which starts faster.

Every execution is a detached process tree whose state lives in files under BASE_DIR, so any replica
can re-attach to it and nothing depends on the stream that started it:

  {id}.out / {id}.err   the command's stdout and stderr, appended as written (offsets are byte positions)
  {id}.runner           pid of the runner (a session leader, so a dropped exec does not take it down)
  {id}.pid              pid of `timeout`, which leads the command's process group (cancel signals it; the
                        runner kills what is left of the group when the command ends)
  {id}.rc               the command's own exit code, written only if it exited by itself
  {id}.cancel           marker left by CancelExecution
  {id}.status           the outcome, written last: "exited N", "timed_out", "cancelled" or "killed N"
  {id}.follow-{tag}     pids of one follower (its shell and tails) while it follows
  {id}.stop-{tag}       marker left by a stop that came before that follower started following

BASE_DIR is root's alone (mode 0700, under /run, where nobody else can create a name): the platform's scripts run
as root and write these files, so no name in it may be one the agent could have planted first (a symlink to
/etc/passwd as someone's `.status`, a FIFO that blocks a write), and the agent can neither read other
executions' output nor forge their status. Every provider runs the kit's commands as root.

Following uses `tail --pid` in polling mode (inotify start-up costs ~6 ms per tail); a short initial wait
lets quick commands finish before any tail starts, so they never pay a polling interval. A follower whose
reader went away keeps running (a provider's exec or process API does not end it when its stream closes), so
the kit stops it by its tag.
"""

BASE_DIR = "/run/sandbox-executions"

# Exit code of the follower/probe when the execution does not exist.
NOT_FOUND_EXIT = 254
# Exit code of start/spawn when the sandbox already runs its maximum of executions (nothing was started).
QUOTA_EXIT = 253

RUNNER = r"""
d=$1 t=$2 w=$3; shift 3
fin() { echo "$1" > "$d.status"; exit 0; }
[ -e "$d.cancel" ] && fin cancelled
if [ -n "$w" ]; then cd -- "$w" 2>>"$d.err" || fin "exited 126"; fi
timeout -k 10 "$t" sh -c '"$@" </dev/null >>"$0.out" 2>>"$0.err"; echo $? >"$0.rc"' "$d" "$@" &
g=$!
echo $g > "$d.pid"
wait $g; code=$?
# Whatever the command left behind (background jobs, nohup, a fork bomb) ends with it: timeout leads a
# process group of its own, killed until empty before the status says the execution is over. A server meant
# to outlive its command leaves the group with setsid; the short wait lets a `setsid server &` that the
# command started just before it ended get there. Builtins but that sleep: a fork bomb may have taken every
# pid the sandbox has left (then sleep fails at once, and the kill comes at once).
if kill -0 -$g 2>/dev/null; then sleep 0.25 2>/dev/null; fi
n=0
while kill -0 -$g 2>/dev/null && [ $n -lt 500 ]; do kill -KILL -$g 2>/dev/null; n=$((n + 1)); done
if read -r rc < "$d.rc" 2>/dev/null; then fin "exited $rc"; fi
[ -e "$d.cancel" ] && fin cancelled
case $code in 124|137) fin timed_out;; esac
fin "killed $code"
"""

SCRIPT = r"""
mode=$1 b=$2 id=$3 tag=$4; shift 4
d=$b/$id

follow() {
  if [ -e "$d.status" ] || [ -z "$3" ]; then
    # Empty files are common (quick commands): skip the process that would print nothing.
    [ -s "$d.out" ] && tail -c +$(($1 + 1)) "$d.out"
    [ -s "$d.err" ] && tail -c +$(($2 + 1)) "$d.err" >&2
  else
    tail ---disable-inotify -s 0.05 --pid="$3" -c +$(($1 + 1)) -f "$d.out" & t1=$!
    tail ---disable-inotify -s 0.05 --pid="$3" -c +$(($2 + 1)) -f "$d.err" >&2 & t2=$!
    # Who to stop if nobody reads any more (mode stop): a closed exec stream does not end these. A stop that
    # came first left its marker: then stop now.
    if [ -n "$tag" ]; then
      echo "$$ $t1 $t2" > "$d.follow-$tag"
      if [ -e "$d.stop-$tag" ]; then kill "$t1" "$t2" 2>/dev/null; rm -f "$d.follow-$tag" "$d.stop-$tag"; exit 255; fi
    fi
    wait
    [ -n "$tag" ] && rm -f "$d.follow-$tag"
  fi
  s=; read -r s < "$d.status" 2>/dev/null
  case $s in "exited "*) exit "${s#exited }";; esac
  exit 255
}

probe() {
  s=; [ -e "$d.status" ] && read -r s < "$d.status"
  alive=0
  if [ -z "$s" ] && read -r p < "$d.runner" 2>/dev/null && kill -0 "$p" 2>/dev/null; then alive=1; fi
  echo "status=$s"
  echo "alive=$alive"
  stat -c '%n %s %.3Y' "$d.out" "$d.err" "$d.runner" "$d.status" 2>/dev/null
  exit 0
}

case $mode in start|spawn|stop) ;; *) [ -e "$d.out" ] || exit 254 ;; esac
case $mode in
start|spawn)
  t=$1 w=$2 r=$3 m=$4; shift 4
  [ -d "$b" ] || mkdir -p -m 700 "$b" 2>/dev/null
  # Ours alone, or nothing is started: a directory someone else made could hold their names.
  [ -d "$b" ] && [ ! -L "$b" ] && [ -O "$b" ] && chmod 700 "$b" || exit 255
  # One start at a time counts and starts, so concurrent starts cannot all pass the count (the lock is
  # released once the runner is recorded; the runner itself never holds it).
  exec 8>>"$b/.start.lock" && flock -w 10 8 || exit 255
  if [ "$mode" = spawn ]; then
    # Idempotent: creating the output file atomically decides which caller starts the execution.
    (set -C; : > "$d.out") 2>/dev/null || exit 0
  fi
  if [ "$m" -gt 0 ]; then
    n=0
    for f in "$b"/*.runner; do
      [ -e "$f" ] && [ ! -e "${f%.runner}.status" ] || continue
      read -r p < "$f" 2>/dev/null && kill -0 "$p" 2>/dev/null && n=$((n + 1))
    done
    if [ "$n" -ge "$m" ]; then rm -f "$d.out"; exit 253; fi
  fi
  : > "$d.out" && : > "$d.err" || exit 255
  setsid sh -c "$r" sandbox-runner "$d" "$t" "$w" "$@" </dev/null >/dev/null 2>&1 8>&- &
  p=$!
  echo "$p" > "$d.runner"
  exec 8>&-
  [ "$mode" = spawn ] && exit 0
  sleep 0.02 & s=$!
  wait -n "$p" "$s"; kill "$s" 2>/dev/null
  follow 0 0 "$p" ;;
attach)
  p=; read -r p < "$d.runner" 2>/dev/null
  follow "$1" "$2" "$p" ;;
probe)
  probe ;;
stop)
  [ -n "$tag" ] && [ -d "$b" ] || exit 0
  # The marker first: a follower that has not started its tails yet sees it and stops by itself.
  : > "$d.stop-$tag"
  pids=; read -r pids < "$d.follow-$tag" 2>/dev/null
  # Only pids (the directory is writable by every user of the sandbox).
  case $pids in *[!0-9\ ]*|"") ;; *) kill $pids 2>/dev/null; rm -f "$d.follow-$tag" "$d.stop-$tag" ;; esac
  # An execution that has ended needs no marker: its followers end by themselves.
  [ -e "$d.status" ] && rm -f "$d.stop-$tag"
  exit 0 ;;
cancel)
  if [ ! -e "$d.status" ]; then
    : > "$d.cancel"
    read -r p < "$d.pid" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    n=0
    while [ ! -e "$d.status" ] && [ $n -lt 40 ]; do sleep 0.05; n=$((n + 1)); done
  fi
  probe ;;
esac
"""


def command(mode: str, execution_id: str, *args: str, tag: str = "") -> list[str]:
    """The argv that runs SCRIPT in the given mode for one execution. tag names one follower (modes start and
    attach), so that mode stop with the same tag can end it."""
    return ["bash", "-c", SCRIPT, "sandbox-exec", mode, BASE_DIR, execution_id, tag, *args]


def start_command(
    execution_id: str,
    timeout_s: float,
    working_dir: str,
    argv: list[str],
    *,
    max_running: int,
    detached: bool = False,
    tag: str = "",
) -> list[str]:
    """Starts argv as an execution; follows it unless detached (then returns once it is running). If the sandbox
    already runs max_running executions (0: no limit), starts nothing and exits QUOTA_EXIT."""
    mode = "spawn" if detached else "start"
    return command(mode, execution_id, f"{timeout_s:.3f}", working_dir, RUNNER, str(max_running), *argv, tag=tag)


# Filters a stream line by line, replacing the values of the environment variables named in
# SANDBOX_REDACT. It runs inside the sandbox so that secrets never reach the output files that any replica
# may later replay. perl-base is part of every Debian and Ubuntu system.
REDACT_FILTER = r"""
BEGIN {
  $| = 1;
  my @values = sort { length($b) <=> length($a) }
    grep { length($_) >= 4 } map { $ENV{$_} // "" } split /,/, ($ENV{SANDBOX_REDACT} // "");
  $re = @values ? join("|", map { quotemeta } @values) : undef;
}
s/$re/[REDACTED]/g if defined $re;
"""

_REDACTING = r"""
set -o pipefail
"$@" 2> >(perl -pe "$SANDBOX_REDACT_FILTER" >&2) | perl -pe "$SANDBOX_REDACT_FILTER"
"""


# A client's environment variables (RunCommand.env, ExecuteAgent.env and .secrets) are the client's command's,
# not the platform's: PATH, LD_PRELOAD or BASH_ENV given for a command must not steer the root scripts that
# start it (an agent could have planted the files they point to). They travel under this prefix, which no
# client may use, and only the command's last wrapper (with_user_env, run as the command's own user) puts them
# back, right before it executes the command.
USER_ENV_PREFIX = "SANDBOX_USER_ENV_"
_WITH_USER_ENV = r"""
for v in ${!SANDBOX_USER_ENV_@}; do export "${v#SANDBOX_USER_ENV_}=${!v}"; unset "$v"; done
exec "$@"
"""


def user_env(env: dict[str, str]) -> dict[str, str]:
    """A client's variables, renamed for the trip through the platform's scripts (see USER_ENV_PREFIX)."""
    return {f"{USER_ENV_PREFIX}{name}": value for name, value in env.items()}


def with_user_env(argv: list[str]) -> list[str]:
    """argv, started with the client's variables (user_env) restored in its environment."""
    return ["bash", "-c", _WITH_USER_ENV, "sandbox-env", *argv]


def redacting(argv: list[str]) -> list[str]:
    """Wraps argv so its stdout and stderr pass through REDACT_FILTER; set SANDBOX_REDACT and
    SANDBOX_REDACT_FILTER (= REDACT_FILTER) in the execution's environment."""
    return ["bash", "-c", _REDACTING, "sandbox-redact", *argv]
