"""One audit, driven through the audit graph: build the run context, stream the graph under a
stable audit id, answer its approval question when asked to, return the final state.

The CLI and the API both call `run_audit` / `resume_audit`; they never print (progress goes to
a callback, the approval question to an `Approver`).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from torchdoctor.agent.cluster.config import ClusterConfig, connect
from torchdoctor.agent.config import AuditConfig, ConfigError
from torchdoctor.agent.context import AuditContext, Progress, SandboxHandle
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.gather import start_linters
from torchdoctor.agent.home import torchdoctor_home
from torchdoctor.agent.models import AuditReport, Severity
from torchdoctor.agent.options import (
    AuditChoices,
    AuditOptions,
    effective_config,
    project_of,
    snapshot,
)
from torchdoctor.agent.reasoning.base import Reasoner
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.safefs import GuardedTree, display_name
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest, AuditState
from torchdoctor.agent.workspace import InputError, Workspace
from torchdoctor.sandbox.shared_cache import cache_root, compile_cache
from torchdoctor.sandbox.workspace import sweep_stale_copies

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

__all__ = [
    "AuditChoices",
    "AuditOptions",
    "AuditOutcome",
    "resume_audit",
    "run_audit",
    "torchdoctor_home",
]

Approver = Callable[[ApprovalRequest], ApprovalAnswer]
RECURSION_LIMIT = 10_000
"""Graph steps one audit may take (each fix verified is a step of its own)."""


class ResumeError(ValueError):
    """The audit cannot be resumed (unknown id, or the code changed since it started)."""


class AuditOutcome(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    audit_id: str
    report: AuditReport
    ledger_path: Path | None
    trace: list[str]
    lang: Literal["en", "fr"] = "en"
    """The report's language: the option, else `[tool.torchdoctor] lang`."""
    fail_on: Severity | None = None
    """`[tool.torchdoctor] fail-on`, for callers given no threshold of their own."""
    pending: ApprovalRequest | None = None
    """The approval question the audit waits on (no approver was given)."""
    refused: str | None = None
    """Why no fix was written although `--apply` asked (dirty tree, no terminal, quit)."""


def new_audit_id() -> str:
    return uuid.uuid4().hex[:12]


def choose_reasoner(options: AuditOptions, config: AuditConfig, workspace: Workspace) -> Reasoner:
    """The offline reasoner unless an LLM is configured and `--offline` was not given."""
    if options.offline:  # the LLM's configuration is neither read nor imported
        return OfflineReasoner()
    from torchdoctor.agent.reasoning.llm import build_reasoner, load_reasoner_config

    table = {key.replace("-", "_"): value for key, value in config.llm.items()}
    try:
        llm = load_reasoner_config(offline=options.offline, pyproject_table=table)
    except ValidationError as err:
        raise ConfigError(f"[tool.torchdoctor.llm]: {err}") from err
    return build_reasoner(llm, workspace.root, OfflineReasoner())


def _stepper(progress: Progress | None) -> Callable[[str], None] | None:
    """A progress line for each `step` message, or nothing without a progress sink."""
    if progress is None:
        return None
    return lambda line: progress({"event": "step", "message": line})


def build_context(options: AuditOptions, progress: Progress | None = None) -> AuditContext:
    """The snapshot, the reasoner, the (lazily built) sandbox and the progress sink. The peer
    linters start here, before LangGraph is even imported, and overlap with the rest."""
    cluster = ClusterConfig.from_env()
    if cluster.on_ray:
        connect(cluster)  # an unreachable cluster is a one-line error before any work
    project = project_of(options)
    config = effective_config(options, project)
    if options.ledger is not None and options.ledger.is_dir():
        raise InputError(f"--ledger {display_name(str(options.ledger))}: is a folder, not a file")
    workspace = snapshot(options, config, project)
    # A bad --run is the user's usage error; a bad `run = [...]` in the audited repository's
    # own config is that repository's problem: it becomes a note on the run, not a refusal.
    check_run_commands(options.run, workspace)
    peers = (
        start_linters(workspace, online=options.online, mypy=options.mypy)
        if config.linters and workspace.files
        else None
    )
    return AuditContext(
        workspace=workspace,
        reasoner=choose_reasoner(options, config, workspace),
        sandbox=SandboxHandle(options.sandbox, cluster=cluster, say=_stepper(progress)),
        progress=progress,
        peers=peers,
        cluster=cluster,
    )


def clean_after_crashes(target: Path) -> None:
    """What a killed audit left behind: workspace copies in the temporary folders (the
    sandbox's run root included) and temporary ledger files in the audited folder."""
    scratch = Path(tempfile.gettempdir())
    sweep_stale_copies([scratch, scratch / f"torchdoctor-sandbox-{os.getuid()}", cache_root()])
    folder = target if target.is_dir() else target.parent
    if folder.is_dir():
        GuardedTree(folder).clean_stale_temps()


def check_run_commands(commands: list[str], workspace: Workspace) -> None:
    """Each command to run is `python SCRIPT.py ...` on an audited script, or `InputError`."""
    if not commands:
        return  # a static audit: the probing machinery stays unimported
    from torchdoctor.agent.probing import split_command

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


def worth_resuming(options: AuditOptions, context: AuditContext) -> bool:
    """Runs, fixes or an LLM: what costs minutes or money is checkpointed on disk. A static
    audit is redone faster than it is resumed, so its checkpoints stay in memory."""
    costly = bool(options.run or options.discover or options.fixing)
    return (
        costly
        or bool(effective_config(options, project_of(options)).run)
        or not isinstance(context.reasoner, OfflineReasoner)
    )


def run_config(audit_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": audit_id}, "recursion_limit": RECURSION_LIMIT}


def run_audit(
    options: AuditOptions,
    progress: Progress | None = None,
    *,
    approver: Approver | None = None,
    audit_id: str | None = None,
) -> AuditOutcome:
    """Start an audit under `audit_id` (a new one by default) and run it to its end, or to the
    approval question when no `approver` answers it."""
    audit_id = audit_id or new_audit_id()
    clean_after_crashes(options.target)
    context = build_context(options, progress)
    durable = worth_resuming(options, context)
    context.emit({"event": "audit", "audit_id": audit_id, "durable": durable})
    first: dict[str, Any] = {"audit_id": audit_id, "options": options}
    if not durable:
        # Nothing to run, fix, approve or resume: the graph's nodes without LangGraph.
        from torchdoctor.agent.static_path import run_static_path

        return outcome_of(audit_id, run_static_path(first, context), None)
    # LangGraph loads here, once the peers' subprocesses are already running.
    from torchdoctor.agent.durable import open_store, retention_days
    from torchdoctor.agent.graph import build_graph

    with open_store() as store:
        store.prune(retention_days())  # the retention applies without waiting for `gc`
        store.record(audit_id, str(options.target))
        return _drive(build_graph(store.saver), first, audit_id, context, approver)


def resume_audit(
    audit_id: str, progress: Progress | None = None, *, approver: Approver | None = None
) -> AuditOutcome:
    """Continue an interrupted audit from its last checkpoint, with the options it started
    with; what was done (verified fixes included) is not done again."""
    from torchdoctor.agent.durable import open_store
    from torchdoctor.agent.graph import build_graph

    with open_store() as store:
        if store.entry(audit_id) is None:
            raise ResumeError(f"no audit {audit_id!r} to resume (it may have been pruned)")
        app = build_graph(store.saver)
        values = app.get_state(run_config(audit_id)).values
        if "options" not in values:
            raise ResumeError(f"audit {audit_id!r} has no checkpoint to resume from")
        clean_after_crashes(values["options"].target)
        context = build_context(values["options"], progress)
        snapshot = values.get("snapshot")
        current = {f.path: f.sha256 for f in context.workspace.files}
        if snapshot is not None and snapshot.files != current:
            raise ResumeError(
                f"the code under {values['options'].target} changed since audit {audit_id} "
                "started: run a new audit"
            )
        if values.get("requests"):
            context.reasoner.prepare(values["requests"])
        store.record(audit_id, str(values["options"].target))
        context.emit({"event": "audit", "audit_id": audit_id, "durable": True})
        return _drive(app, None, audit_id, context, approver)


def _drive(
    app: Any,
    first: dict[str, Any] | None,
    audit_id: str,
    context: AuditContext,
    approver: Approver | None,
) -> AuditOutcome:
    from langgraph.types import Command

    config = run_config(audit_id)
    step: dict[str, Any] | Command[Any] | None = first
    with compile_cache() as context.compile_cache:  # this run's sandbox jobs share it
        while True:
            for _ in app.stream(
                step, config, context=context, stream_mode="updates", durability="sync"
            ):
                pass
            snapshot = app.get_state(config)
            question = next(
                (i.value for i in snapshot.interrupts if isinstance(i.value, ApprovalRequest)),
                None,
            )
            if question is None or approver is None:
                break
            step = Command(resume=approver(question))
    return outcome_of(audit_id, snapshot.values, question)


def outcome_of(audit_id: str, values: AuditState, question: ApprovalRequest | None) -> AuditOutcome:
    """What the caller gets of an audit's final state (or of its state at the question)."""
    from torchdoctor.agent.graph import writable_ledger

    applied = values.get("applied")
    refused = (applied.answer.refused or applied.result.refused) if applied else None
    return AuditOutcome(
        audit_id=audit_id,
        report=values["report"],
        ledger_path=writable_ledger(values),
        trace=list(values.get("trace", [])),
        lang=values["config"].lang,
        fail_on=values["config"].fail_on,
        pending=question,
        refused=refused,
    )
