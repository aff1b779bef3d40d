"""One audit, end to end: snapshot -> graph -> ledger statuses -> report -> ledger file.

The CLI and the API both call `run_audit`; it never prints (progress goes to a callback).
"""

from __future__ import annotations

import os
import platform
import shlex
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS
from torchdoctor.agent.checks.catalogue import unknown_names_message
from torchdoctor.agent.checks.engine import StaticResult
from torchdoctor.agent.checks.selection import drop_silenced
from torchdoctor.agent.config import (
    AuditConfig,
    ConfigError,
    ProjectConfig,
    exclude_prefix,
    find_project_root,
    load_project_config,
)
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.evidence.confirm import attach_run_confirmations
from torchdoctor.agent.evidence.trust import vet_run_evidence
from torchdoctor.agent.gather import (
    installed_torch_version,
    linter_evidence,
    run_static,
    split_by_point,
    start_linters,
)
from torchdoctor.agent.home import torchdoctor_home
from torchdoctor.agent.ledger import Ledger, default_ledger_path
from torchdoctor.agent.models import (
    AuditReport,
    CoverageEntry,
    Evidence,
    Finding,
    GateDecision,
    InputNote,
    Provenance,
    Severity,
    Summary,
    Target,
    ToolInfo,
)
from torchdoctor.agent.probing import (
    ProbeEvidence,
    RunRequest,
    RunSummary,
    gpu_present,
    planned_commands,
    run_probes,
    split_command,
)
from torchdoctor.agent.reasoning.base import PointRequest, Reasoner
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.redact import masked_finding
from torchdoctor.agent.safefs import GuardedTree, display_name
from torchdoctor.agent.workspace import InputError, Workspace, load_paths, load_workspace
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.workspace import sweep_stale_copies

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

Progress = Callable[[dict[str, Any]], None]


class AuditChoices(BaseModel):
    """What any caller may choose about an audit: the CLI's options and the API's, one model."""

    model_config = ConfigDict(extra="forbid")

    offline: bool = False
    lang: Literal["en", "fr"] | None = None
    select: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    torch_version: str | None = Field(
        None, pattern=r"^\d+\.\d+(\.\d+)?([a-z0-9.+-]*)$", description="e.g. 2.8 or 2.8.0+cu128"
    )
    run: list[str] = Field(default_factory=list, description="commands to run under the probes")
    discover: bool = False
    steps: int = Field(20, ge=1, le=10_000)
    probe_compile: bool = False
    linters: bool | None = Field(None, description="run peer linters (default: config, on)")
    peers: Literal["curated", "all"] | None = Field(
        None, description="peer codes shown as findings (default: config, curated)"
    )
    mypy: bool = False
    fix: bool = Field(False, description="propose fixes and verify them (by running with --run)")


class AuditOptions(AuditChoices):
    """What the caller asked for, plus what only the host decides (paths, sandbox, network,
    writing files); unset values fall back to `[tool.torchdoctor]`."""

    target: Path
    """The file or folder audited; with `paths`, their common root (the report's root)."""
    paths: list[Path] = Field(
        default_factory=list, description="several files/folders under `target` to audit"
    )
    config: Path | None = Field(None, description="config file instead of the nearest one")
    force_exclude: bool = Field(False, description="`exclude` holds even for named files")
    static_only: bool = Field(False, description="ignore the configuration's `run` commands")
    ledger: Path | None = None
    write_ledger: bool = True
    sandbox: Literal["auto", "local", "docker"] | None = Field(
        None, description="auto | local | docker (default: env)"
    )
    online: bool = Field(False, description="let pip-audit query the vulnerability database")
    apply: bool = Field(False, description="write verified fixes to the files (implies fix)")
    force: bool = Field(False, description="apply even on a dirty git work tree")


class AuditOutcome(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    report: AuditReport
    ledger_path: Path | None
    trace: list[str]
    lang: Literal["en", "fr"] = "en"
    """The report's language: the option, else `[tool.torchdoctor] lang`."""
    fail_on: Severity | None = None
    """`[tool.torchdoctor] fail-on`, for callers given no threshold of their own."""


def effective_config(options: AuditOptions, project: ProjectConfig) -> AuditConfig:
    """The project's config with the options over it; unknown rule ids are a usage error."""
    config = project.config
    for names, where in (
        (options.select + options.ignore, "--select/--ignore"),
        (config.select + config.ignore, "[tool.torchdoctor] select/ignore"),
    ):
        if message := unknown_names_message(names, where):
            raise ConfigError(message)
    updates: dict[str, Any] = {
        "select": config.select + options.select,
        "ignore": config.ignore + options.ignore,
        "exclude": config.exclude + options.exclude,
    }
    if options.lang:
        updates["lang"] = options.lang
    if options.torch_version:
        updates["torch_version"] = options.torch_version
    if options.static_only:
        updates["run"] = []
    env_linters = os.environ.get("TORCHDOCTOR_LINTERS", "").strip().lower()
    if env_linters in ("0", "false", "no", "off"):
        updates["linters"] = False
    if options.linters is not None:
        updates["linters"] = options.linters
    if options.peers is not None:
        updates["peers"] = options.peers
    return config.model_copy(update=updates)


def snapshot(options: AuditOptions, config: AuditConfig, prefix: str) -> Workspace:
    if options.paths or options.force_exclude:
        return load_paths(
            options.paths or [options.target],
            config.exclude,
            config.max_file_bytes,
            exclude_prefix=prefix,
            force_exclude=options.force_exclude,
        )
    return load_workspace(
        options.target, config.exclude, config.max_file_bytes, exclude_prefix=prefix
    )


def choose_reasoner(options: AuditOptions, config: AuditConfig, workspace: Workspace) -> Reasoner:
    """The offline reasoner unless an LLM is configured and `--offline` was not given."""
    from torchdoctor.agent.reasoning.llm import build_reasoner, load_reasoner_config

    table = {key.replace("-", "_"): value for key, value in config.llm.items()}
    try:
        llm = load_reasoner_config(offline=options.offline, pyproject_table=table)
    except ValidationError as err:
        raise ConfigError(f"[tool.torchdoctor.llm]: {err}") from err
    return build_reasoner(llm, workspace.root, OfflineReasoner())


def reasoner_provenance(reasoner: Reasoner) -> dict[str, Any]:
    provenance = getattr(reasoner, "provenance", None)
    return {"llm": provenance()} if callable(provenance) else {}


def run_audit(options: AuditOptions, progress: Progress | None = None) -> AuditOutcome:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    audit_id = uuid.uuid4().hex
    clean_after_crashes(options.target)
    root = find_project_root(options.target)
    project = load_project_config(root, options.config)
    config = effective_config(options, project)
    if options.ledger is not None and options.ledger.is_dir():
        raise InputError(f"--ledger {display_name(str(options.ledger))}: is a folder, not a file")
    workspace = snapshot(options, config, exclude_prefix(project, root))
    check_run_commands(config.run + options.run, workspace)
    reasoner = choose_reasoner(options, config, workspace)

    probes = ProbeEvidence()
    request = RunRequest(
        commands=config.run + options.run,
        discover=options.discover,
        steps=options.steps,
        compile=options.probe_compile,
        gpu=gpu_present(),
    )

    tools: dict[str, str] = {}
    peers = (
        start_linters(workspace, online=options.online, mypy=options.mypy)
        if config.linters and workspace.files
        else None
    )

    def gather() -> dict[int, PointRequest]:
        static = run_static(workspace, config)
        workspace.notes += unanalysed_notes(static)
        extra: list[tuple[int, Evidence]] = []
        if peers is not None:
            if progress is not None:
                progress({"event": "step", "message": "peer linters"})
            pairs, versions = linter_evidence(workspace, static, peers.result(), config.peers)
            extra += pairs
            tools.update(versions)
        if request.commands or request.discover:
            from torchdoctor.sandbox.config import get_sandbox

            say = (lambda line: progress({"event": "run", "message": line})) if progress else None
            found = run_probes(workspace, request, get_sandbox(options.sandbox), on_run=say)
            vetted, probes.notes = vet_run_evidence(
                found.evidence, workspace.text_of, static, config.run_max_severity
            )
            probes.evidence, probes.runs = vetted, found.runs
        extra += probes.evidence
        extra = drop_silenced(extra, config.ignore, workspace.text_of)
        extra = attach_run_confirmations(static.all_findings(), extra)
        return split_by_point(workspace, static, config.lang, extra_evidence=extra)

    # LangGraph loads here, once the peers' subprocesses are already running.
    from torchdoctor.agent.graph import audit_checkpointer, build_audit_graph

    graph = build_audit_graph(reasoner, gather)
    run_config: RunnableConfig = {"configurable": {"thread_id": audit_id}}
    worth_resuming = bool(request.commands or request.discover or options.fix or options.apply)
    worth_resuming = worth_resuming or not isinstance(reasoner, OfflineReasoner)
    with audit_checkpointer(torchdoctor_home() / "checkpoints.sqlite", worth_resuming) as saver:
        app = graph.compile(checkpointer=saver)
        for mode, chunk in app.stream(
            {"audit_id": audit_id}, run_config, stream_mode=["updates", "custom"]
        ):
            if mode == "custom" and progress is not None and isinstance(chunk, dict):
                progress(chunk)
        state = app.get_state(run_config).values

    findings = sort_findings(
        [masked_finding(Finding.model_validate(f)) for f in state.get("findings", [])]
    )
    coverage = sorted(
        (CoverageEntry.model_validate(c) for c in state.get("coverage", [])),
        key=lambda c: _item_order(c.item),
    )
    gates = [GateDecision.model_validate(g) for g in state.get("gates", [])]
    ledger_path = (
        (options.ledger or default_ledger_path(options.target)) if options.write_ledger else None
    )
    ledger, ledger_note = read_ledger(ledger_path)
    if ledger_note is not None:
        ledger_path = None
    findings = ledger.apply_user_statuses(findings)
    fix_notes: list[str] = []
    if options.fix or options.apply:
        findings, fix_notes = fix_findings(options, workspace, findings, request, progress)
    notes = list(state.get("notes", [])) + run_notes(probes.runs) + probes.notes + fix_notes
    notes += [ledger_note] if ledger_note else []
    isolation = next((r.isolation for r in probes.runs if r.isolation), None)
    provenance = Provenance(
        tools={"torchdoctor": __version__, **tools},
        torch_version=installed_torch_version(),
        target_torch_version=config.torch_version or installed_torch_version(),
        python_version=platform.python_version(),
        reasoner=reasoner.name,
        isolation=isolation,
        audit_id=audit_id,
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 3),
        extra={
            "usage": state.get("usage", {}),
            "runs": [r.model_dump() for r in probes.runs],
            **reasoner_provenance(reasoner),
        },
    )
    report = AuditReport(
        tool=ToolInfo(version=__version__),
        target=Target(
            path=str(options.target), kind="file" if workspace.kind == "file" else "folder"
        ),
        findings=findings,
        coverage=coverage,
        summary=summarize(findings, coverage, workspace, gates, notes),
        provenance=provenance,
    )
    if ledger_path is not None:
        ledger.merge(report, lang=config.lang).write(ledger_path)
    return AuditOutcome(
        report=report,
        ledger_path=ledger_path,
        trace=list(state.get("trace", [])),
        lang=config.lang,
        fail_on=config.fail_on,
    )


def clean_after_crashes(target: Path) -> None:
    """What a killed audit left behind: workspace copies in the temporary folders (the
    sandbox's run root included) and temporary ledger files in the audited folder."""
    scratch = Path(tempfile.gettempdir())
    sweep_stale_copies([scratch, scratch / f"torchdoctor-sandbox-{os.getuid()}"])
    folder = target if target.is_dir() else target.parent
    if folder.is_dir():
        GuardedTree(folder).clean_stale_temps()


def unanalysed_notes(static: StaticResult) -> list[InputNote]:
    """Files the static pass could not parse or finish (a 100,000-term expression exhausts the
    parser's recursion): reported as not (fully) audited, never silently 'not applicable'."""
    return [InputNote(file=r.path, reason=r.note) for r in static.files if r.note]


def check_run_commands(commands: list[str], workspace: Workspace) -> None:
    """Each command to run is `python SCRIPT.py ...` on an audited script, or `InputError`."""
    for command in commands:
        try:
            script, _args = split_command(command)
        except ValueError as err:
            raise InputError(one_line(str(err))) from None
        if workspace.text_of(script) is None:
            raise InputError(
                f"--run {one_line(command)!r}: {display_name(script)} is not one of the audited "
                "Python files"
            )


def read_ledger(path: Path | None) -> tuple[Ledger, str | None]:
    """The ledger at `path`, or an empty one and why it is neither read nor written (a link,
    a FIFO, a hard-linked or undecodable file in the audited tree)."""
    if path is None:
        return Ledger.empty(), None
    try:
        return Ledger.read(path), None
    except (OSError, UnicodeDecodeError) as err:
        return Ledger.empty(), f"ledger not read nor written: {err}"


class ApplyRefused(ValueError):
    """`--apply` would write to files it must not touch (e.g. a dirty git work tree)."""


def fix_findings(
    options: AuditOptions,
    workspace: Workspace,
    findings: list[Finding],
    request: RunRequest,
    progress: Progress | None,
) -> tuple[list[Finding], list[str]]:
    """Propose and verify fixes (verified only by a smoke run), then write them if asked."""
    from torchdoctor.agent.fixes import apply_fixes, propose_and_verify
    from torchdoctor.agent.fixes.apply import dirty_reason
    from torchdoctor.sandbox.config import get_sandbox

    if options.apply and not options.force and (reason := dirty_reason(workspace.root)):
        raise ApplyRefused(reason)

    commands = planned_commands(request, workspace)
    run_command = shlex.split(commands[0]) if commands else None
    say = (lambda line: progress({"event": "fix", "message": line})) if progress else None
    sandbox = get_sandbox(options.sandbox) if run_command else None
    fixed = propose_and_verify(
        workspace.root,
        findings,
        sandbox,
        run_command=run_command,
        steps=options.steps,
        gpu=request.gpu,
        progress=say,
    )
    fixed = [
        verify_llm_fix(workspace, f, sandbox, run_command, options.steps, request.gpu)
        for f in fixed
    ]
    verified = sum(1 for f in fixed if f.fix and f.fix.verified)
    proposed = sum(1 for f in fixed if f.fix)
    notes = [f"fixes: {proposed} proposed, {verified} verified by execution"]
    if not run_command and proposed:
        notes.append("fixes are not verified without a run: pass --run 'python train.py ...'")
    if options.apply:
        result = apply_fixes(workspace.root, fixed, force=options.force)
        if result.refused:
            raise ApplyRefused(result.refused)
        notes.append(
            f"applied {len(result.applied)} verified fix(es); undo with "
            f"`torchdoctor undo {options.target}`"
        )
        notes += [f"not applied {fid}: {why}" for fid, why in sorted(result.skipped.items())]
    return fixed, notes


def verify_llm_fix(
    workspace: Workspace,
    finding: Finding,
    sandbox: Sandbox | None,
    run_command: list[str] | None,
    steps: int,
    gpu: bool,
) -> Finding:
    """An LLM's patch goes through exactly the verification a codemod's does; its kind (the
    tolerance it is held to) follows the checklist point it fixes."""
    from torchdoctor.agent.fixes import FixKind, verify_patch
    from torchdoctor.agent.reasoning.llm.diffs import llm_patch

    patch = llm_patch(finding)
    if patch is None or (finding.fix is not None and finding.fix.verified):
        return finding
    if finding.phase <= 3:
        kind = FixKind.CORRECTNESS
    elif finding.checkpoint in (6, 8):
        kind = FixKind.PERFORMANCE
    else:
        kind = FixKind.REFACTOR
    return verify_patch(
        workspace.root, finding, patch, kind, sandbox, run_command=run_command, steps=steps, gpu=gpu
    )


def run_notes(runs: list[RunSummary]) -> list[str]:
    """One line per instrumented run; a loud warning when isolation was only rlimits."""
    notes = [f"run `{r.command}`: {r.outcome} — {r.summary}" for r in runs]
    if any(r.isolation.startswith("DEGRADED") for r in runs):
        notes.insert(
            0,
            "WARNING: the sandbox ran user code with rlimits only (no namespaces): "
            "see `torchdoctor doctor`",
        )
    return notes


_ITEM_INDEX = {item.id: index for index, item in enumerate(ITEMS)}


def _item_order(item_id: str) -> int:
    return _ITEM_INDEX.get(item_id, len(_ITEM_INDEX))


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Phase order first (correctness first), then severity, then location; ids unique."""
    unique = {f.id: f for f in findings}
    return sorted(
        unique.values(),
        key=lambda f: (f.phase, f.checkpoint, -f.severity.rank, f.file, f.line, f.rule),
    )


def summarize(
    findings: list[Finding],
    coverage: list[CoverageEntry],
    workspace: Workspace,
    gates: list[GateDecision],
    notes: list[str],
) -> Summary:
    return Summary(
        total=len(findings),
        by_severity=dict(Counter(f.severity.value for f in findings)),
        by_point={str(k): v for k, v in sorted(Counter(f.checkpoint for f in findings).items())},
        by_status=dict(Counter(f.status.value for f in findings)),
        coverage=dict(Counter(c.verdict for c in coverage)),
        files_audited=len(workspace.files),
        files_skipped=list(workspace.notes),
        gates=sorted(gates, key=lambda g: g.after_phase),
        notes=notes,
    )
