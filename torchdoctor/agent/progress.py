"""Progress of a long audit, as a person watching it needs it.

In a terminal: one live bar (rich) that says what is happening now. Anywhere else (CI logs,
pipes, editors): one plain line per phase, run and fix on stderr, as pip and pytest do, so a
six-minute run is never silent. `--quiet` turns both off. Reports go to stdout untouched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from torchdoctor.agent.escape import one_line, terminal


class ProgressEvent(BaseModel):
    """One event of the audit's stream (graph nodes, runs, fixes), as the CLI reads it."""

    model_config = ConfigDict(extra="allow")

    event: str
    phase: int | None = None
    point: int | None = None
    findings: int | None = None
    message: str | None = None
    blocked: list[int] | None = None


def describe(event: ProgressEvent) -> str | None:
    """The line a person reads for an event; None for events that say nothing new. Messages
    may carry a run's command from the audited project: callers escape the line."""
    kind = event.event
    if kind == "ingest":
        return "ingest: static analysis, peer linters and planned runs"
    if kind == "phase" and event.phase is not None:
        return f"phase {event.phase}"
    if kind == "point" and event.point is not None:
        return f"point {event.point}: {event.findings or 0} finding(s)"
    if kind == "gate" and event.blocked:
        return f"gate after phase {event.phase}: fixes blocked for phases {event.blocked}"
    if kind in ("run", "fix", "step") and event.message:
        return f"{kind}: {event.message}"
    if kind == "finalize":
        return "finalize: report and ledger"
    return None


class PlainLines:
    """One timestamped line per event on a text stream (no terminal control codes)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, raw: dict[str, Any]) -> None:
        line = _line_of(raw)
        if line is None:
            return
        elapsed = time.monotonic() - self.started
        self.stream.write(f"torchdoctor [{elapsed:6.1f}s] {one_line(line)}\n")
        self.stream.flush()


class LiveBar:
    """A rich bar: its total comes from the audit graph (with the ingest event), events that
    complete a step advance it, its text is the latest event."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self.bar = bar
        self.task = task

    def __call__(self, raw: dict[str, Any]) -> None:
        if isinstance(raw.get("total"), int):
            self.bar.update(self.task, total=raw["total"])
        advance = raw.get("advance", 0) if isinstance(raw.get("advance"), int) else 0
        line = _line_of(raw)
        if line is None:
            self.bar.update(self.task, advance=advance)
        else:
            self.bar.update(self.task, advance=advance, description=terminal(line))


def _line_of(raw: dict[str, Any]) -> str | None:
    try:
        return describe(ProgressEvent.model_validate(raw))
    except ValidationError:
        return None


@contextmanager
def progress_reporter(
    console: Console, *, quiet: bool = False
) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """The callback that shows progress where the audit runs (None when quiet)."""
    if quiet:
        yield None
        return
    if not console.is_terminal:
        yield PlainLines(console.file if console.file is not None else sys.stderr)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("ingest: static analysis", total=None)
        _live_bars.append(bar)
        try:
            yield LiveBar(bar, task)
        finally:
            _live_bars.remove(bar)


_live_bars: list[Progress] = []


@contextmanager
def live_display_paused() -> Iterator[None]:
    """A question asked in the terminal while the bar runs: the bar is stopped (its line
    cleared) until the answer is read, else its refresh draws over the prompt."""
    bar = _live_bars[-1] if _live_bars else None
    if bar is None:
        yield
        return
    bar.stop()
    try:
        yield
    finally:
        bar.start()
