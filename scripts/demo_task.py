"""The README's main job: one complete coding task on local Docker, with no cloud account and no model key.

A throwaway repository is served over HTTP on loopback (with a token, like a real forge); `sandboxctl run
--local` starts the platform, creates a sandbox, clones the repository, runs the `shell` agent, commits,
pushes a new branch and shows its diff. Afterwards the branch is read back from the server.

    uv run python -m scripts.demo_task                      # the shell agent
    uv run python -m scripts.demo_task --agent claude ...   # any sandboxctl run options are passed on
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.git_server import GitServer

INSTRUCTION = (
    "sed -i 's/Hello/Hello, sandbox/' greet.py && "
    "printf 'def add(a, b):\\n    return a + b\\n' > calc.py && "
    "echo 'updated greet.py and added calc.py'"
)


def main() -> int:
    extra = sys.argv[1:]
    with GitServer() as server:
        server.create_repo("demo", {"README.md": "# Demo\n", "greet.py": 'print("Hello")\n'})
        command = [sys.executable, "-m", "sandboxctl", "run", "--local", "--network", "host",
                   "--repo", server.url("demo")]  # fmt: skip
        if not any(arg.startswith(("-i", "--instruction")) for arg in extra):
            command += ["--instruction", INSTRUCTION]
        code = subprocess.call([*command, *extra], env={**os.environ, "GIT_TOKEN": server.token or ""})
        for branch in server.branches("demo"):
            if branch != "main":
                commit = server.log("demo", branch)[0]
                print(f"\nthe server now has branch {branch}: {commit.sha[:12]} {commit.subject!r}")
                print(f"calc.py on {branch}:\n{server.read_file('demo', branch, 'calc.py').decode()}", end="")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
