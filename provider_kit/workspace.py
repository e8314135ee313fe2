"""The git side of a coding task: validating repository input, the setup script (clone, base, branch,
dependencies) and the commit script of a push. Everything runs inside the sandbox as the `agent` user when
the image has one. The clone's token lives only in the environment of setup's git processes, which run
before any agent may (ExecuteAgent waits for setup): a credential helper given on the command line reads
it, so it never reaches .git/config, the remote URL, a label or the output (which is also filtered for it
inside the sandbox). Pushes never bring a token into the sandbox: see provider_kit/git_push.py."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from provider_kit.errors import invalid_argument
from sandbox.v1 import sandbox_pb2

DEFAULT_DIRECTORY = "/workspace"
DEFAULT_AUTHOR = ("Sandbox Agent", "agent@sandbox.invalid")
WORKSPACE_METADATA_KEY = "workspace"
SETUP_EXECUTION_PREFIX = "setup-"
# The well-known empty tree: the base of a branch started in an empty repository.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def _fail(field: str, problem: str) -> None:
    raise invalid_argument("INVALID_FIELD", f"{field} {problem}", field=field)


def check_ref_name(value: str, field: str) -> str:
    """git's ref-name rules (git check-ref-format), plus no leading '-' so git never reads it as an option."""
    if (
        not value
        or len(value) > 200
        or _REF_FORBIDDEN.search(value)
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or value == "@"
        or any(part.startswith(".") or part.endswith(".lock") for part in value.split("/"))
    ):
        _fail(field, f"is not a valid git ref name: {value[:100]!r}")
    return value


def check_repository_url(url: str, *, allow_http: bool, allow_file: bool) -> str:
    """Accepts https:// (http:// and file:// only where the operator enables them); rejects anything git
    could read as an option or a remote helper (ext::, fd::, transport::address) and embedded credentials."""
    if not url or len(url) > 2048 or url.startswith("-") or re.search(r"[\x00-\x20\x7f]", url):
        _fail("repository.url", "must be a URL without spaces, not starting with '-'")
    if "::" in url.split("/", 1)[0] or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        _fail("repository.url", "must not use a git remote helper (such as ext::)")
    parts = urlsplit(url)
    allowed = {"https"} | ({"http"} if allow_http else set()) | ({"file"} if allow_file else set())
    if parts.scheme not in allowed:
        _fail("repository.url", f"must use one of these schemes: {', '.join(sorted(allowed))}")
    if parts.scheme != "file" and not parts.hostname:
        _fail("repository.url", "must name a host")
    if parts.username or parts.password:
        _fail("repository.url", "must not embed credentials; pass the token in repository.token")
    return url


def check_author(author: sandbox_pb2.GitAuthor) -> tuple[str, str]:
    name = author.name or DEFAULT_AUTHOR[0]
    email = author.email or DEFAULT_AUTHOR[1]
    if len(name) > 200 or re.search(r"[\x00-\x1f<>]", name):
        _fail("repository.author.name", "must be one line without '<' or '>'")
    if len(email) > 200 or not re.fullmatch(r"[^\s<>@]+@[^\s<>@]+", email):
        _fail("repository.author.email", "must be an e-mail address")
    return name, email


def branch_name(setup: sandbox_pb2.RepositorySetup) -> str:
    if setup.branch:
        return check_ref_name(setup.branch, "repository.branch")
    slug = re.sub(r"[^a-z0-9]+", "-", setup.branch_hint.lower()).strip("-")[:40].strip("-") or "task"
    return f"agent/{slug}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Setup:
    """A validated RepositorySetup."""

    url: str
    base_ref: str
    depth: int
    branch: str
    install_dependencies: bool
    author: tuple[str, str]
    token: str

    def argv(self, directory: str, *, cloned: bool = False) -> list[str]:
        """The setup script's command line; cloned: the provider's git API has already cloned and branched."""
        name, email = self.author
        deps = "1" if self.install_dependencies else "0"
        return [
            "bash",
            "-c",
            SETUP_SCRIPT,
            "sandbox-setup",
            self.url,
            self.base_ref,
            str(self.depth),
            self.branch,
            directory,
            deps,
            name,
            email,
            "1" if cloned else "0",
        ]

    def secret_env(self) -> dict[str, str]:
        return {"GIT_TOKEN": self.token} if self.token else {}


def check_setup(setup: sandbox_pb2.RepositorySetup, *, allow_http: bool, allow_file: bool) -> Setup:
    if setup.depth < 0:
        _fail("repository.depth", "must not be negative")
    if setup.base_ref:
        check_ref_name(setup.base_ref, "repository.base_ref")
    if "\0" in setup.token or "\n" in setup.token:
        _fail("repository.token", "must be one line")
    return Setup(
        url=check_repository_url(setup.url, allow_http=allow_http, allow_file=allow_file),
        base_ref=setup.base_ref,
        depth=setup.depth,
        branch=branch_name(setup),
        install_dependencies=setup.install_dependencies,
        author=check_author(setup.author),
        token=setup.token,
    )


def encode_workspace(workspace: sandbox_pb2.Workspace) -> str:
    return base64.b64encode(workspace.SerializeToString()).decode()


def decode_workspace(value: str) -> sandbox_pb2.Workspace:
    return sandbox_pb2.Workspace.FromString(base64.b64decode(value))


def script(name: str) -> str:
    scripts = resources.files("provider_kit") / "scripts"
    """A task script from provider_kit/scripts, with the shared helpers prepended."""
    return (scripts / "common.sh").read_text() + (scripts / name).read_text()


SETUP_SCRIPT = script("setup.sh")
PUSH_SCRIPT = script("push.sh")


# The commit and bundle step runs the agent's hooks, which may never end: then it is killed (its whole process
# group, hooks included) and the push fails, instead of holding a provider thread and the push lock for good.
PUSH_COMMIT_TIMEOUT_SECONDS = 900


def push_argv(directory: str, message: str, author: tuple[str, str]) -> list[str]:
    """Commits the workspace as the agent user and prints its bundle (see provider_kit/git_push.py)."""
    return [
        "timeout",
        "-k",
        "10",
        str(PUSH_COMMIT_TIMEOUT_SECONDS),
        "bash",
        "-c",
        PUSH_SCRIPT,
        "sandbox-push",
        directory,
        message,
        *author,
    ]


def commit_message(message: str, instruction: str) -> str:
    if message.strip():
        return message
    first = instruction.strip().splitlines()[0] if instruction.strip() else "Changes made by an agent"
    subject = first if len(first) <= 72 else first[:69] + "..."
    return f"{subject}\n\nInstruction:\n{instruction.strip()}\n" if instruction.strip() != first else subject
