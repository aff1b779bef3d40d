"""The REPL: history and completion (commands, finding ids) from prompt_toolkit, messages drawn
by rich, a live progress line while an audit walks, Ctrl-C cancels the step under way (at the
prompt it clears the line); `quit`, `exit` or Ctrl-D leave. The session stays stored."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from rich.console import Console

from torchdoctor.agent.escape import terminal
from torchdoctor.agent.models import Severity, Status
from torchdoctor.agent.progress import progress_reporter
from torchdoctor.agent.session.commands import COMMANDS
from torchdoctor.agent.session.models import Message
from torchdoctor.agent.session.ports import SessionError
from torchdoctor.api.client import ClientError
from torchdoctor.api.sessions import SessionConflict
from torchdoctor.api.terminal.backends import Backend
from torchdoctor.api.terminal.render import show

_BY_FINDING = {"show", "fix", "approve", "reject", "status"}
_FILTERS = [*(s.value for s in Severity), *(s.value for s in Status), *map(str, range(1, 13))]


class SessionCompleter(Completer):
    """Command words first; then finding ids (and `all`, or the filters of `findings`)."""

    def __init__(self, finding_ids: Callable[[], list[str]]) -> None:
        self.finding_ids = finding_ids

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        words = before.split()
        current = "" if before.endswith(" ") or not words else words[-1]
        if len(words) <= 1 and not before.endswith(" "):
            choices: list[str] = list(COMMANDS)
        elif words[0] == "findings":
            choices = _FILTERS
        elif words[0] in _BY_FINDING and len(words) - (0 if current else -1) <= 2:
            choices = self.finding_ids() + (["all"] if words[0] in ("approve", "reject") else [])
        elif words[0] == "status":
            choices = ["wont-fix", "needs-human"]
        else:
            return
        for choice in choices:
            if choice.lower().startswith(current.lower()):
                yield Completion(choice, start_position=-len(current))


def _print(console: Console, messages: list[Message]) -> None:
    for message in messages:
        if message.role != "user":
            show(console, message)


def run_repl(backend: Backend, console: Console, history_file: Path, replay: int = 6) -> None:
    """Talk with the session until the user leaves; the last `replay` messages are shown
    first (a resumed session picks up where it was)."""
    for message in backend.history()[-replay:]:
        show(console, message)
    console.print(
        f"session {terminal(backend.session_id)} · `help` lists the commands · "
        "Ctrl-C cancels a step · Ctrl-D leaves",
        style="dim",
        highlight=False,
    )
    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(history_file)),
        completer=SessionCompleter(backend.finding_ids),
        complete_while_typing=False,
    )
    while True:
        try:
            line = prompt.prompt("torchdoctor> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        if line.strip() in ("quit", "exit"):
            break
        if not line.strip():
            continue
        try:
            with progress_reporter(console) as on_event:
                messages = backend.send(line, on_event or (lambda _event: None))
        except KeyboardInterrupt:
            console.print("cancelled: the session goes on", style="yellow")
            messages = _cancel(backend, console)
        except (ClientError, SessionConflict, SessionError) as err:
            console.print(f"error: {terminal(str(err))}", style="bold red", highlight=False)
            continue
        _print(console, messages)
    console.print(
        f"session {terminal(backend.session_id)} kept: torchdoctor chat --session "
        f"{terminal(backend.session_id)}",
        style="dim",
        highlight=False,
    )


def _cancel(backend: Backend, console: Console) -> list[Message]:
    try:
        return backend.cancel()
    except (ClientError, SessionConflict, SessionError) as err:
        console.print(f"error: {terminal(str(err))}", style="bold red", highlight=False)
        return []
