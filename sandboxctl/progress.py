"""The live display of a coding task: phase, recent output and agent activity; plain lines off a terminal."""

from __future__ import annotations

from collections import deque
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.text import Text

from sandbox.v1 import sandbox_pb2 as pb

PHASES = {
    pb.Task.PHASE_SETUP: "setting up the workspace",
    pb.Task.PHASE_AGENT: "agent working",
    pb.Task.PHASE_PUSH: "committing and pushing",
    pb.Task.PHASE_SUCCEEDED: "done",
    pb.Task.PHASE_FAILED: "failed",
}


class TaskProgress:
    def __init__(self, console: Console, *, live: bool) -> None:
        self._console = console
        self._lines: deque[str] = deque(maxlen=12)
        self._phase = "starting"
        self._partial = ""
        self._live = Live(console=console, refresh_per_second=8, transient=True) if live else None

    def __enter__(self) -> TaskProgress:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live:
            self._live.__exit__(kind, exc, tb)

    def _line(self, line: str) -> None:
        if self._live:
            self._lines.append(line)
            self._live.update(
                Group(Spinner("dots", text=Text(self._phase, style="bold")), Text("\n".join(self._lines)))
            )
        else:
            self._console.print(line, markup=False, highlight=False)

    def update(self, event: pb.TaskEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "task":
            phase = PHASES.get(event.task.phase, "starting")
            if phase != self._phase:
                self._phase = phase
                self._line(f"== {phase}: {event.task.name}")
            return
        inner = event.execution_event
        inner_kind = inner.WhichOneof("event")
        if inner_kind == "output":
            text = self._partial + inner.output.data.decode(errors="replace")
            *complete, self._partial = text.split("\n")
            for line in complete:
                self._line(line)
        elif inner_kind == "agent" and inner.agent.kind == pb.AgentEvent.KIND_TOOL_CALL:
            self._line(f"-> {inner.agent.tool_name} {inner.agent.tool_input[:100]}")

    def summary(self, task: pb.Task) -> None:
        if task.phase != pb.Task.PHASE_SUCCEEDED:
            self._console.print(f"[red]task failed:[/red] {task.error}")
            return
        if not task.push.changed:
            self._console.print("[yellow]the agent changed nothing; no branch was pushed[/yellow]")
            return
        push = task.push
        self._console.print(
            f"[green]pushed[/green] branch [bold]{push.branch}[/bold] at {push.commit_sha[:12]}: "
            f"{push.files_changed} files changed, +{push.insertions} -{push.deletions}"
        )
        if push.diff:
            self._console.print(Syntax(push.diff, "diff", theme="ansi_dark", background_color="default"))
