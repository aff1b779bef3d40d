"""The audit's run command again, a few seeded steps through the project's harness client, on a
copy of the code with an artifact's edits in it: the edits are kept only if this run passes and
reaches the edited forward."""

from __future__ import annotations

import re
import shlex

from torchdoctor.agent.artifacts.models import CheckOutcome
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.fixes.smoke import smoke_run
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace
from torchdoctor.sandbox.workspace import WorkspaceError, remove_workspace, stage_workspace

CHECK_STEPS = 3
_MISSING = re.compile(r"No module named '([\w.]+)'")


class MissingModule(Exception):
    """The sandbox's interpreter lacks a module the checked run needs."""


def checked_run(
    harness: Harness,
    workspace: Workspace,
    run: RunSummary,
    changed: dict[str, str],
    reached: tuple[str, range],
    name: str,
    needs: tuple[str, ...] = (),
    reached_too: tuple[tuple[str, range], ...] = (),
) -> CheckOutcome:
    """The outcome of `run`'s command on a copy with `changed` (path -> text) written in it;
    `reached`: the file and lines the run must execute (the edited forward); `needs`: modules
    the edits import, named if the sandbox lacks them (MissingModule); `reached_too`: other
    edited lines the run must execute as well (a wired-in collate)."""
    source = workspace.root if workspace.kind == "folder" else workspace.target
    try:
        copy = stage_workspace(source)
    except WorkspaceError as err:
        return CheckOutcome(name=name, passed=False, detail=f"could not copy: {one_line(str(err))}")
    try:
        for relative, text in changed.items():
            (copy / relative).write_text(text, encoding="utf-8")
        traced = sorted({path for path, _ in (reached, *reached_too)})
        done = smoke_run(harness, copy, shlex.split(run.command), CHECK_STEPS, trace=traced)
    finally:
        remove_workspace(copy)
    missing = _MISSING.search(done.detail)
    if not done.ok and missing and missing[1].split(".")[0] in needs:
        raise MissingModule(missing[1])
    if not done.ok:
        return CheckOutcome(name=name, passed=False, detail=one_line(done.detail)[:400])
    for (path, lines), what in [(reached, "the edited forward")] + [
        (r, "the edited lines") for r in reached_too
    ]:
        if not set(done.executed_lines.get(path, [])) & set(lines):
            return CheckOutcome(
                name=name, passed=False, detail=f"`{run.command}` did not reach {what}"
            )
    return CheckOutcome(name=name, passed=True, detail=f"`{run.command}`, {CHECK_STEPS} steps")


def run_of(class_name: str, runs: list[RunSummary]) -> RunSummary | None:
    """The first run whose data-flow map saw the class as its root model."""
    return next(
        (
            run
            for run in runs
            if any(c.depth == 0 and c.type == class_name for c in run.dataflow.calls)
        ),
        None,
    )
