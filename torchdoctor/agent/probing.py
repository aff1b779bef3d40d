"""Instrumented runs for the audit: which scripts to run, and their evidence.

Nothing runs unless the user asks: `--run "python train.py --epochs 1"`, `[tool.torchdoctor]
run = [...]`, or `--discover` (entry points that train or call a model). Each run goes
through the sandbox on a fresh copy of the audited folder, under the probes harness, and its
evidence document becomes evidence for the checklist points it speaks to.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.escape import one_line
from torchdoctor.agent.evidence.probe_schema import (
    BoundaryValues,
    DataFlow,
    DataFunctionSignature,
    RootSignature,
)
from torchdoctor.agent.evidence.probe_schema import Outcome as RunOutcome
from torchdoctor.agent.evidence.probes import RunCurves, probe_findings
from torchdoctor.agent.evidence.run_gaps import (
    MissingDependency,
    NoCuda,
    OutsidePath,
    missing_dependency,
    needs_cuda,
    outside_path,
)
from torchdoctor.agent.launch import parse_launch
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.reasoning.inquiry import ProbeOutcome
from torchdoctor.agent.workspace import Workspace
from torchdoctor.sandbox.workspace import WorkspaceError, remove_workspace, stage_workspace

if TYPE_CHECKING:  # the run models (the audit state holds them) without the harness client
    from torchdoctor.agent.harness import Harness, HarnessCall

_ENTRY_HINTS = ("optim.", "Optimizer", ".backward(", "model(")


class RunRequest(BaseModel):
    """How the audit should exercise the code."""

    model_config = ConfigDict(extra="forbid")

    commands: list[str] = Field(default_factory=list)
    discover: bool = False
    steps: int = Field(20, ge=1)
    determinism_steps: int = Field(3, ge=0, description="0: no second seeded run")
    export: bool = True
    int8: bool = True
    compile: bool = False
    probes: Literal["cheap", "full"] = Field(
        "full", description="cheap: the run alone, no seeded re-runs nor export try"
    )
    gpu: bool = False
    groups: str | None = Field(None, description="the declared group column, as probes take it")


class RunSummary(BaseModel):
    """What one instrumented run did, for the report's provenance."""

    model_config = ConfigDict(extra="forbid")

    command: str
    script: str
    outcome: str
    summary: str
    isolation: str = ""
    error: str = Field("", description="the script's error, one line, when it raised")
    notes: list[str] = Field(default_factory=list)
    dataflow: DataFlow = Field(default_factory=DataFlow)
    root_signatures: list[RootSignature] = Field(
        default_factory=list, description="the root models' distinct forward signatures"
    )
    value_ranges: list[BoundaryValues] = Field(
        default_factory=list, description="values at the data boundaries, sampled steps"
    )
    data_functions: list[DataFunctionSignature] = Field(
        default_factory=list, description="what the user's __getitem__ / collate_fn returned"
    )
    curves: RunCurves = Field(default_factory=RunCurves)


class ProbeEvidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evidence: list[tuple[int, Evidence]] = Field(default_factory=list)
    runs: list[RunSummary] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="what vetting the evidence did")


def gpu_present() -> bool:
    """NVIDIA device nodes on this host: runs then get the GPU passed into the sandbox."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def split_command(command: str) -> tuple[str, list[str]]:
    """`python -u train.py --lr 1` -> ('train.py', ['--lr', '1']) (torchrun forms too)."""
    launch = parse_launch(command)
    return launch.script, launch.args


def discover_entry_points(workspace: Workspace) -> list[str]:
    """Scripts with a `__main__` guard that build an optimizer or run a model."""
    found = []
    for source in workspace.files:
        text = source.text
        if "__main__" not in text or "torch" not in text:
            continue
        if not any(hint in text for hint in _ENTRY_HINTS):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            continue
        if _has_main_guard(tree):
            found.append(source.path)
    return found


def _has_main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            consts = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if "__name__" in names and "__main__" in consts:
                return True
    return False


def planned_commands(request: RunRequest, workspace: Workspace) -> list[str]:
    commands = list(request.commands)
    if request.discover:
        known = {split_command(c)[0] for c in commands}
        commands += [
            f"python {path}" for path in discover_entry_points(workspace) if path not in known
        ]
    return commands


def harness_call(
    request: RunRequest,
    script: str,
    args: list[str],
    nproc: int = 1,
    module: str | None = None,
) -> HarnessCall:
    """An audit run of `script` (run as `module` when the command named one): the request's
    steps and probes, seeded."""
    from torchdoctor.agent.harness import HarnessCall

    full = request.probes == "full"
    return HarnessCall(
        script=script,
        args=args,
        module=module,
        steps=request.steps,
        nproc=nproc,
        determinism_steps=request.determinism_steps if full else 0,
        export=request.export and full,
        int8=request.int8,
        compile=request.compile,
        groups=request.groups,
    )


def run_probes(
    workspace: Workspace,
    request: RunRequest,
    harness: Harness,
    on_run: Callable[[str], None] | None = None,
) -> ProbeEvidence:
    """Run every planned command under the probes harness; failures become notes, not crashes.
    `on_run` hears one line before and after each run (progress)."""
    result = ProbeEvidence()
    for command in planned_commands(request, workspace):
        if on_run is not None:
            on_run(f"`{command}` under the probes ({request.steps} steps)")
        summary, evidence = _run_one(workspace, request, harness, command)
        if on_run is not None:
            on_run(f"`{command}`: {summary.outcome}")
        result.runs.append(summary)
        result.evidence.extend(evidence)
    return result


Outcome = tuple[RunSummary, list[tuple[int, Evidence]]]


def _run_one(workspace: Workspace, request: RunRequest, harness: Harness, command: str) -> Outcome:
    try:
        launch = parse_launch(command)
    except ValueError as err:
        return RunSummary(command=command, script="", outcome="not-run", summary=str(err)), []
    script = launch.script
    summary = partial(RunSummary, command=command, script=script)
    if workspace.text_of(script) is None:
        return summary(outcome="not-run", summary=f"{script} is not one of the audited files"), []
    try:
        # a file's folder too: the script reads its data and imports its modules from there,
        # and the fixes' runs see the same folder (`Verifier`)
        copy = stage_workspace(workspace.root)
    except WorkspaceError as err:
        return summary(outcome="not-run", summary=f"could not copy the workspace: {err}"), []
    try:
        call = harness_call(request, script, launch.args, launch.nproc, launch.module)
        done = harness.run(copy, call)
    finally:
        remove_workspace(copy)
    isolation = done.run.isolation.summary
    if done.document is None:
        return summary(outcome=done.outcome, summary=done.problem, isolation=isolation), []
    analysis = probe_findings(
        done.document,
        script,
        read_source=workspace.text_of,
        other_ranks=done.ranks,
        cheap=request.probes == "cheap",
        gap=run_gap(done.document.outcome, workspace),
    )
    analysis.notes.extend(done.notes)
    finished = summary(
        outcome=analysis.outcome,
        summary=analysis.summary,
        isolation=isolation,
        notes=analysis.notes,
        dataflow=analysis.dataflow,
        root_signatures=analysis.root_signatures,
        value_ranges=analysis.value_ranges,
        data_functions=analysis.data_functions,
        error=_error_line(done.document.outcome),
        curves=analysis.curves,
    )
    return finished, analysis.by_point()


def run_gap(
    outcome: RunOutcome, workspace: Workspace
) -> MissingDependency | OutsidePath | NoCuda | None:
    """What the audit's environment lacked if the run stopped on it (`evidence.run_gaps`)."""
    if outcome.kind != "script-error":
        return None
    if needs_cuda(outcome.detail):
        return NoCuda(where=f"{outcome.file}:{outcome.line}" if outcome.file else "")
    paths = [f.path for f in workspace.files]
    return missing_dependency(
        outcome.error_type, outcome.detail, paths, workspace.manifests
    ) or outside_path(outcome.error_type, outcome.detail, workspace.root)


def _error_line(outcome: RunOutcome) -> str:
    if outcome.kind != "script-error":
        return ""
    text = outcome.detail
    if outcome.error_type and not text.startswith(f"{outcome.error_type}:"):
        text = f"{outcome.error_type}: {text}"  # the harness's detail names the type already
    return one_line(text)[:240]


def probe_report(
    workspace: Workspace, request: RunRequest, harness: Harness, script: str, args: list[str]
) -> ProbeOutcome:
    """One run of `script` under the probes, as text for the LLM's `run_probes` tool: the
    run's outcome and summary, then what its evidence says, point by point."""
    command = shlex.join(["python", script, *args])
    summary, evidence = _run_one(workspace, request, harness, command)
    lines = [f"{summary.outcome}: {summary.summary}", *summary.notes[:10]]
    lines += [
        f"point {point}: {ev.message}" + (f" ({ev.file}:{ev.line})" if ev.file else "")
        for point, ev in evidence[:30]
    ]
    return ProbeOutcome(text="\n".join(lines), evidence=[ev for _point, ev in evidence])
