"""The audit graph: the whole audit, one node at a time, checkpointed after every node.

    ingest -> evidence
      -> phase_k: the phase's points in parallel (`Send`) -> fix_k (propose, then verify one
         fix per step on the working copy) -> gate_k (the one gate; routes to adopt_k when the
         phase has verified fixes it lets through) -> [adopt_k] -> ledger_k   (k = 1..5)
      -> summarize (report + ledger written) -> approve (`interrupt()` with the verified
         diffs, only for --apply) -> report

Later phases analyse the working copy, with the earlier phases' adopted fixes in it. The
dependencies (workspace, reasoner, sandbox, progress sink) come in as run context, so the
compiled graph is a module-level object (`torchdoctor.agent.studio.graph`, which
`langgraph.json` names); `build_graph` compiles it with a checkpointer.

Importing this module loads neither LangGraph nor the codemods (libcst): the static-only path
(`static_path.py`) runs these same nodes without them, as a pre-commit hook needs.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdoctor.agent.artifacts.approval import apply_approved, artifact_changes
from torchdoctor.agent.artifacts.architecture import architecture_evidence
from torchdoctor.agent.artifacts.coverage import accepted_coverage, artifact_evidence
from torchdoctor.agent.artifacts.presence import presence_evidence
from torchdoctor.agent.checklist import PHASES, POINTS
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.selection import drop_silenced
from torchdoctor.agent.cluster.config import cluster_has_gpu
from torchdoctor.agent.context import AuditContext
from torchdoctor.agent.evidence.confirm import attach_run_confirmations
from torchdoctor.agent.evidence.trust import vet_run_evidence
from torchdoctor.agent.gate import fix_gate, gate_decision
from torchdoctor.agent.gather import (
    engine_config,
    linter_evidence,
    run_static,
    split_by_point,
    start_linters,
)
from torchdoctor.agent.launch import parse_launch
from torchdoctor.agent.ledger import Ledger, UserStatus, apply_user_statuses, default_ledger_path
from torchdoctor.agent.models import Evidence, Finding, InputNote, Status, Verification
from torchdoctor.agent.options import AuditOptions, effective_config, project_of
from torchdoctor.agent.probing import (
    RunRequest,
    gpu_present,
    planned_commands,
    probe_report,
    run_probes,
)
from torchdoctor.agent.reasoning.inquiry import AuditBrief, ProbeHook, ProbeOutcome
from torchdoctor.agent.reporting import build_report
from torchdoctor.agent.state import (
    ORIGINAL,
    ApplyRecord,
    ApprovalAnswer,
    ApprovalRequest,
    AuditState,
    FixRecord,
    PointEvidence,
    PointTask,
    ProposedChange,
    Snapshot,
    copy_digest,
)
from torchdoctor.agent.workspace import Workspace

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph import StateGraph
    from langgraph.graph.state import CompiledStateGraph
    from langgraph.runtime import Runtime

    from torchdoctor.agent.fixing import FixBench

Update = dict[str, Any]


def ledger_path_of(options: AuditOptions) -> Path | None:
    if not options.write_ledger:
        return None
    return options.ledger or default_ledger_path(options.target)


def writable_ledger(state: AuditState) -> Path | None:
    """Where the ledger is written: nowhere when it could not be read (a link, a FIFO, not
    UTF-8: see `Ledger.read`)."""
    return None if state.get("ledger_problem") else ledger_path_of(state["options"])


def run_request(state: AuditState, context: AuditContext) -> RunRequest:
    """The planned runs; they ask for a GPU where this machine, or the cluster, has one."""
    options, config = state["options"], state["config"]
    return RunRequest(
        commands=config.run + options.run,
        discover=options.discover,
        steps=options.steps,
        compile=options.probe_compile,
        probes=options.probes,
        gpu=cluster_has_gpu(context.cluster) if context.cluster.on_ray else gpu_present(),
        groups=config.groups.probe_spec if config.groups else None,
    )


# --- ingest and evidence ----------------------------------------------------------------------


def ingest(state: AuditState, runtime: Runtime[AuditContext]) -> Update:
    """The snapshot, the configuration in force and the statuses the user set in the ledger."""
    context = runtime.context
    options = state["options"]
    workspace = context.workspace
    context.emit({"event": "ingest", "total": progress_total(), "advance": 1})
    ledger = ledger_path_of(options)
    statuses: dict[str, UserStatus] = {}
    problem = ""
    if ledger is not None:
        try:
            statuses = Ledger.read(ledger).user_statuses()
        except (OSError, UnicodeDecodeError) as err:
            problem = f"ledger not read nor written: {err}"
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": effective_config(options, project_of(options)),
        "snapshot": Snapshot(
            root=str(workspace.root),
            kind="file" if workspace.kind == "file" else "folder",
            files={f.path: f.sha256 for f in workspace.files},
        ),
        "user_statuses": statuses,
        "ledger_problem": problem,
        "trace": ["ingest"],
    }


def evidence(state: AuditState, runtime: Runtime[AuditContext]) -> Update:
    """One static pass, the peer linters and the planned instrumented runs."""
    context = runtime.context
    options, config = state["options"], state["config"]
    workspace = context.workspace
    context.emit({"event": "step", "message": "static analysis", "advance": 1})
    static = run_static(
        workspace,
        config,
        context.cluster,
        say=lambda line: context.emit({"event": "step", "message": line}),
    )
    unanalysed = [InputNote(file=r.path, reason=r.note) for r in static.files if r.note]
    extra: list[tuple[int, Evidence]] = []
    tools: dict[str, str] = {}
    if config.linters and workspace.files:
        context.emit({"event": "step", "message": "peer linters"})
        peers = context.peers or start_linters(workspace, online=options.online, mypy=options.mypy)
        pairs, tools = linter_evidence(workspace, static, peers.result(), config.peers)
        extra += pairs
    request = run_request(state, context)
    runs = []
    notes: list[str] = []
    if planned_commands(request, workspace):

        def say(line: str) -> None:
            context.emit({"event": "run", "message": line})

        found = run_probes(
            workspace, request, context.harness(config.run_budget, request.gpu), on_run=say
        )
        runs = found.runs
        vetted, notes = vet_run_evidence(
            found.evidence, workspace.text_of, static, config.run_max_severity
        )
        extra += vetted
    presence = presence_evidence(workspace, runs)
    extra += presence + architecture_evidence(workspace)
    artifacts = []
    if options.artifacts:
        # Loaded only when asked for: the artifacts edit code with libcst, which costs a
        # static audit (a pre-commit hook) more than its whole analysis.
        from torchdoctor.agent.artifacts.build import build_artifacts

        context.emit({"event": "step", "message": "artifacts: generated, run in the sandbox"})
        artifacts = build_artifacts(
            options.artifacts,
            workspace,
            runs,
            context.harness(config.run_budget, request.gpu),
            static.all_findings(),
            [ev for _point, ev in presence],
        )
        extra += artifact_evidence(artifacts)
    extra = drop_silenced(extra, config.ignore, workspace.text_of)
    extra = attach_run_confirmations(static.all_findings(), extra)
    requests = split_by_point(workspace, static, config.lang, extra_evidence=extra)
    context.reasoner.prepare(requests)
    return {
        "requests": requests,
        "analysed_copy": dict.fromkeys((p.number for p in PHASES), ORIGINAL),
        "extra_evidence": [PointEvidence(point=p, evidence=e) for p, e in extra],
        "runs": runs,
        "artifacts": artifacts,
        "tools": tools,
        "unanalysed": unanalysed,
        "notes": notes,
        "trace": ["evidence"],
    }


# --- a phase ----------------------------------------------------------------------------------


class Phase:
    """The nodes and routes of one checklist phase."""

    def __init__(self, number: int, points: tuple[int, ...]) -> None:
        self.number = number
        self.points = points

    def name(self, node: str) -> str:
        return f"{node}_{self.number}"

    def start(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """Announces the phase; when earlier phases changed the working copy, this phase's
        points get their static evidence again, from that copy."""
        context = runtime.context
        context.emit({"event": "phase", "phase": self.number})
        update: Update = {"trace": [f"phase:{self.number}"]}
        working_copy = state.get("working_copy", {})
        digest = copy_digest(working_copy)
        if digest != state.get("analysed_copy", {}).get(self.number, ORIGINAL):
            requests = requests_on_copy(state, context.workspace, working_copy)
            update["requests"] = {p: requests[p] for p in self.points}
            update["analysed_copy"] = {self.number: digest}
        return update

    def tasks(self, state: AuditState) -> list[PointTask]:
        """One task per point of the phase, with the user's ledger statuses."""
        requests = state["requests"]
        statuses = state.get("user_statuses", {})
        return [PointTask(request=requests[p], user_statuses=statuses) for p in self.points]

    def fanout(self, state: AuditState) -> list[Any]:
        """A LangGraph `Send` per task (typed loosely: LangGraph reads this signature at build
        time, and this module does not load LangGraph on import)."""
        from langgraph.types import Send

        return [Send(self.name("points"), task) for task in self.tasks(state)]

    @staticmethod
    def point(state: PointTask, runtime: Runtime[AuditContext]) -> Update:
        """One checklist point, reasoned over; the user's ledger statuses applied at once."""
        context = runtime.context
        request = state["request"]
        result = context.reasoner.reason(request)
        findings = apply_user_statuses(result.findings, state["user_statuses"])
        context.emit(
            {"event": "point", "point": request.point, "findings": len(findings), "advance": 1}
        )
        return {
            "findings": findings,
            "hypotheses": result.hypotheses,
            "coverage": result.coverage,
            "notes": result.notes,
            "usage": result.usage,
            "trace": [f"point:{request.point}"],
        }

    def fix(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """First visit: propose this phase's fixes. Then one verification per visit (so each
        verified fix is checkpointed and never re-run on resume) until none is pending."""
        options = state["options"]
        if not options.fixing:
            return {"trace": [f"fix:{self.number}"]}
        from torchdoctor.agent.fixing import (
            explained_refusals,
            fix_time_left,
            is_overhead,
            not_started,
            past_fix_time,
            propose,
            verify_record,
        )

        context = runtime.context
        if self.number not in state.get("fixes_proposed", []):
            from torchdoctor.agent.investigation import investigate

            findings = state.get("findings", [])
            found = investigate(
                context.reasoner,
                self.number,
                findings,
                audit_brief(state, context),
                probe_hook(state, context),
            )
            statuses = state.get("user_statuses", {})
            reported = apply_user_statuses(found.findings, statuses)
            patched = {f.id: f for f in reported}
            findings = [patched.pop(f.id, f) for f in findings] + list(patched.values())
            records = propose(context.workspace.root, findings, self.number)
            refused = explained_refusals(context.workspace.root, findings, self.number, records)
            return {
                "fixes": {r.finding_id: r for r in records},
                "fixes_proposed": [self.number],
                "findings": [*reported, *refused],
                "hypotheses": found.hypotheses,
                "notes": found.notes,
                "usage": found.usage,
                "trace": [f"fix:{self.number}"],
            }
        record = self.next_pending(state)
        if record is None:
            return {"trace": [f"fix:{self.number}"]}
        finding = _finding(state, record.finding_id)
        at = f"{record.rule} ({record.kind}) at {finding.file}:{finding.line}"
        late = past_fix_time(state.get("fixes", {}).values(), record, options.fix_time)
        if late is not None:
            context.emit({"event": "fix", "message": f"{at}: {late}"})
            done = not_started(finding, record, late)
            return {
                "fixes": {record.finding_id: done.record},
                "findings": [done.finding],
                "trace": [f"verify:{record.finding_id}"],
            }
        context.emit({"event": "fix", "message": f"verifying {at}"})
        working_copy = state.get("working_copy", {})
        bench = fix_bench(state, context, finding.file)
        on_top_of: list[str] = []
        stacked = None
        if is_overhead(record.rule):
            stacked = self.stacked(state, bench)
        else:
            stacked = self.stacked(state, bench, past_crashes_only=True)
        if stacked is not None:
            working_copy, on_top_of = stacked
        key = baseline_key(state, context, copy_digest(working_copy), bench)
        left = fix_time_left(state.get("fixes", {}).values(), options.fix_time)
        done = verify_record(
            bench,
            working_copy,
            state.get("baselines", {}).get(key),
            finding,
            record,
            on_top_of,
            deadline=time.monotonic() + left,
        )
        verdict = "verified" if done.record.state == "verified" else "not verified"
        context.emit({"event": "fix", "message": f"  {record.rule}: {verdict}"})
        update: Update = {
            "fixes": {record.finding_id: done.record},
            "findings": [done.finding],
            "trace": [f"verify:{record.finding_id}"],
        }
        if done.baseline is not None:
            update["baselines"] = {key: done.baseline}
        if done.runs:
            update["fix_runs"] = done.runs
        return update

    def stacked(
        self, state: AuditState, bench: FixBench, *, past_crashes_only: bool = False
    ) -> tuple[dict[str, str], list[str]] | None:
        """The copy an overhead fix is measured on: the working copy with this phase's
        verified fixes that the gate lets through (`fixing.stacked_copy`); None without a
        run to measure on. `past_crashes_only`: of those, the fixes verified by getting the
        run past the original's error (`repairs_the_run`), which the phase's other fixes are
        verified on top of: a second `.data[0]` read of the loop is never reached by the
        original run, which dies on the first one, and a `torch.load` fix cannot be compared
        with an original that dies importing its progress bar."""
        from torchdoctor.agent.fixes.verify import repairs_the_run
        from torchdoctor.agent.fixing import is_overhead, stacked_copy

        if bench.runner is None or bench.run_command is None:
            return None
        blocked = fix_gate(state.get("findings", [])).blocked
        records = state.get("fixes", {}).values()
        adopted = [_finding(state, r.finding_id) for r in records if r.adopted]
        verified = [
            _finding(state, r.finding_id)
            for r in self.verified(state)
            if not r.adopted
            and r.finding_id not in blocked
            and not is_overhead(r.rule)
            and (not past_crashes_only or repairs_the_run(r.verification))
        ]
        return stacked_copy(bench.root, adopted, verified)

    def next_pending(self, state: AuditState) -> FixRecord | None:
        pending = [
            r
            for r in state.get("fixes", {}).values()
            if r.phase == self.number and r.state == "pending"
        ]
        return pending[0] if pending else None

    def after_fix(self, state: AuditState) -> str:
        if state["options"].fixing and self.next_pending(state) is not None:
            return self.name("fix")
        return self.name("gate")

    def gate(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """The gate, on findings after the user's statuses: which later phases may apply
        fixes; this phase's verified fixes it holds back wait on the blocking findings."""
        findings = state.get("findings", [])
        decision = gate_decision(self.number, findings)
        verdict = fix_gate(findings)
        waiting = {
            r.finding_id: r.model_copy(update={"waiting_on": verdict.blocked[r.finding_id]})
            for r in self.verified(state)
            if r.finding_id in verdict.blocked
        }
        runtime.context.emit(
            {"event": "gate", "phase": self.number, "blocked": decision.blocked_phases}
        )
        return {"gates": [decision], "fixes": waiting, "trace": [f"gate:{self.number}"]}

    def verified(self, state: AuditState) -> list[FixRecord]:
        return [
            r
            for r in state.get("fixes", {}).values()
            if r.phase == self.number and r.state == "verified"
        ]

    def route(self, state: AuditState) -> str:
        """To adopt_k when this phase has verified fixes the gate lets into the working copy."""
        if any(not r.adopted and not r.waiting_on for r in self.verified(state)):
            return self.name("adopt")
        return self.name("ledger")

    def adopt(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """The working copy takes this phase's verified, gate-allowed fixes (verified together
        with the earlier ones); later phases analyse and verify on it."""
        from torchdoctor.agent.fixing import adopt, resolved_run_failures

        context = runtime.context
        context.emit(
            {"event": "fix", "message": f"phase {self.number}: verified fixes into the copy"}
        )
        records = state.get("fixes", {})
        adopted = [_finding(state, r.finding_id) for r in records.values() if r.adopted]
        new = [
            _finding(state, r.finding_id)
            for r in self.verified(state)
            if not r.adopted and not r.waiting_on
        ]
        bench = fix_bench(state, context)
        outcome = adopt(bench, adopted, new, records, state.get("baselines", {}).get(ORIGINAL))
        fixes: dict[str, FixRecord] = {}
        findings: list[Finding] = []
        for fid in outcome.kept:
            fixes[fid] = records[fid].model_copy(update={"adopted": True})
            if fid in outcome.combined:
                findings.append(_with_check(_finding(state, fid), outcome.combined[fid], True))
        findings += resolved_run_failures(
            state.get("findings", []),
            [_finding(state, fid) for fid in outcome.kept],
            outcome.baseline,
        )
        for fid, why in outcome.dropped.items():
            fixes[fid] = records[fid].model_copy(
                update={
                    "state": "failed",
                    "adopted": False,
                    "verification": [*records[fid].verification, why],
                }
            )
            findings.append(_with_check(_finding(state, fid), why, False))
        update: Update = {
            "working_copy": outcome.working_copy,
            "fixes": fixes,
            "findings": findings,
            "trace": [f"adopt:{self.number}"],
        }
        if outcome.baseline is not None:
            update["baselines"] = {ORIGINAL: outcome.baseline}
        if outcome.runs:
            update["fix_runs"] = outcome.runs
        return update

    def ledger(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """The ledger block updated with what the phases so far found (atomic), so a crash or
        a refusal later loses nothing."""
        update = self.ledger_passed(state, runtime)
        path = writable_ledger(state)
        if path is not None:
            report = build_report(state, runtime.context, [])
            done = frozenset(range(1, self.number + 1))
            Ledger.read(path).merge(report, state["config"].lang, phases=done).write(path)
        return update

    def ledger_passed(self, state: AuditState, runtime: Runtime[AuditContext]) -> Update:
        """The ledger step's progress and trace without its write: for an audit that is redone
        from the start rather than resumed (`static_path`), whose ledger `summarize` writes
        whole, once."""
        runtime.context.emit({"event": "ledger", "phase": self.number, "advance": 1})
        return {"trace": [f"ledger:{self.number}"]}


def _finding(state: AuditState, finding_id: str) -> Finding:
    return next(f for f in state.get("findings", []) if f.id == finding_id)


def _with_check(finding: Finding, check: Any, ok: bool) -> Finding:
    assert finding.fix is not None
    fix = finding.fix.model_copy(
        update={"verification": [*finding.fix.verification, check], "verified": ok}
    )
    status = finding.status if ok else Status.OPEN
    return finding.model_copy(update={"fix": fix, "status": status})


def fix_bench(state: AuditState, context: AuditContext, file: str | None = None) -> FixBench:
    """What this audit's verifications run with: its sandbox, its workspace's files, its
    effective configuration and a planned run: for a fix to `file`, the first one whose script
    reaches that file through imports (none: the fix is not verified, and the report says so);
    otherwise the first planned run."""
    from torchdoctor.agent.fixing import FixBench

    options = state["options"]
    request = run_request(state, context)
    commands = planned_commands(request, context.workspace)
    run_command = split_command_line(commands[0]) if commands else None
    reach = None
    if file is not None and commands:
        run_command, reach = reaching_run(context.workspace, commands, file)
    budget = state["config"].run_budget
    runner = context.harness(budget, request.gpu) if run_command is not None else None
    paths = [f.path for f in context.workspace.files]
    fixed = state.get("fixes", {})
    changed = {f.file for f in state.get("findings", []) if f.id in fixed}
    return FixBench(
        root=context.workspace.root,
        runner=runner,
        run_command=run_command,
        steps=options.steps,
        config=engine_config(state["config"]),
        paths=paths,
        reach=reach,
        known_runs=state.get("fix_runs", {}),
        trace=[path for path in paths if path in changed],
    )


def audit_brief(state: AuditState, context: AuditContext) -> AuditBrief:
    """What the reasoner's tool loop is told: the findings so far and the audited files."""
    workspace = context.workspace
    coverage = Counter(c.verdict for c in state.get("coverage", []))
    return AuditBrief(
        target=str(state["options"].target),
        findings=state.get("findings", []),
        coverage=dict(sorted(coverage.items())),
        files=[f.path for f in workspace.files],
        lang=state["config"].lang,
    )


def probe_hook(state: AuditState, context: AuditContext) -> ProbeHook | None:
    """The tool loop's `run_probes`, only when the user asked for runs (nothing runs
    otherwise), through the audit's harness."""
    if not fix_bench_has_run(state):
        return None
    request = run_request(state, context)
    workspace = context.workspace

    def run(script: str, args: list[str]) -> ProbeOutcome:
        harness = context.harness(state["config"].run_budget, request.gpu)
        return probe_report(workspace, request, harness, script, args)

    return run


def reaching_run(
    workspace: Workspace, commands: list[str], file: str
) -> tuple[list[str] | None, Verification]:
    """The first planned run whose script imports `file` (or is it), with the step that says
    which and how; no run and a failed step when none does."""
    from torchdoctor.agent.fixes.reach import import_path

    for command in commands:
        tokens = split_command_line(command)
        script = posixpath.normpath(parse_launch(command).script)
        chain = import_path(workspace.text_of, script, file)
        if chain is not None:
            how = " -> ".join(chain) if len(chain) > 1 else "it is the script"
            return tokens, Verification(
                step="run-reaches", ok=True, detail=f"`{command}` reaches {file} ({how})"
            )
    runs = ", ".join(f"`{c}`" for c in commands)
    detail = f"no planned run imports {file} ({runs}): the change would never execute"
    return None, Verification(step="run-reaches", ok=False, detail=detail)


def baseline_key(state: AuditState, context: AuditContext, digest: str, bench: FixBench) -> str:
    """A baseline run is kept per working copy and per command (the first planned run's under
    the copy's name alone, as `adopt` reads it)."""
    commands = planned_commands(run_request(state, context), context.workspace)
    first = split_command_line(commands[0]) if commands else None
    if bench.run_command is None or bench.run_command == first:
        return digest
    return f"{digest} {shlex.join(bench.run_command)}"


def split_command_line(command: str) -> list[str]:
    parse_launch(command)  # raises on a command without a script
    return shlex.split(command)


def requests_on_copy(
    state: AuditState, workspace: Workspace, working_copy: dict[str, str]
) -> dict[int, Any]:
    """Every point's request computed on the working copy; findings' lines mapped back to the
    user's files (a finding inside code a fix wrote has no line there and is left out)."""
    from torchdoctor.agent.fixes.combine import finding_on_original

    originals = {f.path: f.text for f in workspace.files}
    texts = [(path, working_copy.get(path, text)) for path, text in originals.items()]
    static = analyse_files(
        texts,
        engine_config(state["config"]),
        manifests=workspace.manifests,
        documents=workspace.documents,
    )
    for result in static.files:
        if result.path not in working_copy:
            continue
        copy, original = working_copy[result.path], originals[result.path]
        mapped = (finding_on_original(raw, copy, original) for raw in result.findings)
        result.findings[:] = [raw for raw in mapped if raw is not None]
    # a project rule's finding names a file too (no-model-card at the `torch.save`)
    on_project = (
        finding_on_original(raw, working_copy[raw.file], originals[raw.file])
        if raw.file in working_copy and raw.file in originals
        else raw
        for raw in static.project_findings
    )
    static.project_findings[:] = [raw for raw in on_project if raw is not None]
    extra = [(e.point, e.evidence) for e in state.get("extra_evidence", [])]
    return split_by_point(workspace, static, state["config"].lang, extra_evidence=extra)


# --- the end ----------------------------------------------------------------------------------


def fix_notes(state: AuditState) -> list[str]:
    """What the fixes came to, and why the ledger was left alone if it was."""
    options = state["options"]
    problem = [state["ledger_problem"]] if state.get("ledger_problem") else []
    if not options.fixing:
        return problem
    records = list(state.get("fixes", {}).values())
    verified = [r for r in records if r.state == "verified"]
    notes = [f"fixes: {len(records)} proposed, {len(verified)} verified by execution"]
    if records and fix_bench_has_run(state):
        adopted = sum(1 for r in records if r.adopted)
        notes.append(f"{adopted} verified fix(es) in the working copy later phases analysed")
    elif records:
        notes.append("fixes are not verified without a run: pass --run 'python train.py ...'")
    for record in verified:
        if record.waiting_on:
            notes.append(
                f"fix for {record.finding_id} verified, not applied: waiting on "
                f"{', '.join(record.waiting_on)}"
            )
    return [*notes, *problem]


def fix_bench_has_run(state: AuditState) -> bool:
    return bool(state["config"].run or state["options"].run or state["options"].discover)


def summarize(state: AuditState, runtime: Runtime[AuditContext]) -> Update:
    """The report and the whole ledger, written before anyone is asked anything."""
    context = runtime.context
    context.emit({"event": "finalize", "advance": 1})
    report = build_report(state, context, fix_notes(state))
    path = writable_ledger(state)
    if path is not None:
        Ledger.read(path).merge(report, state["config"].lang).write(path)
    return {"report": report, "trace": ["summarize"]}


def approval_request(state: AuditState) -> ApprovalRequest:
    findings = state.get("findings", [])
    verdict = fix_gate(findings)
    changes = [
        ProposedChange(
            finding_id=f.id,
            rule=f.rule,
            severity=f.severity,
            title=f.title,
            file=f.file,
            line=f.line,
            diff=f.fix.diff,
        )
        for f in sorted(findings, key=lambda f: (f.phase, -f.severity.rank, f.id))
        if f.fix is not None and f.fix.verified and f.id not in verdict.blocked
    ]
    changes += artifact_changes(state.get("artifacts", []))
    return ApprovalRequest(
        audit_id=state["audit_id"], target=str(state["options"].target), changes=changes
    )


def approve(state: AuditState, runtime: Runtime[AuditContext]) -> Update:
    """Writing the user's files waits for an answer: `interrupt()` carries the verified diffs;
    the CLI, the API or the chat resumes it with an `ApprovalAnswer`."""
    options = state["options"]
    if not options.apply:
        return {"trace": ["approve"]}
    from langgraph.types import interrupt

    from torchdoctor.agent.fixes.apply import dirty_reason

    request = approval_request(state)
    root = runtime.context.workspace.root
    if not options.force and (reason := dirty_reason(root)):
        return {"applied": ApplyRecord(answer=ApprovalAnswer(refused=reason)), "trace": ["approve"]}
    if not request.changes:
        return {"applied": ApplyRecord(answer=ApprovalAnswer()), "trace": ["approve"]}
    answer = ApprovalAnswer.model_validate(interrupt(request))
    if answer.refused is not None:
        return {"applied": ApplyRecord(answer=answer), "trace": ["approve"]}
    result, written = apply_approved(
        root,
        state.get("findings", []),
        state.get("artifacts", []),
        answer.approved(),
        force=options.force,
    )
    if result.refused:
        return {"applied": ApplyRecord(answer=answer, result=result), "trace": ["approve"]}
    result.skipped.update(written.skipped)
    record = ApplyRecord(
        answer=answer, result=result, artifacts=written.paths, artifact_ids=written.ids
    )
    return {"applied": record, "trace": ["approve"]}


def apply_notes(state: AuditState) -> list[str]:
    record = state.get("applied")
    if record is None:
        return []
    refused = record.answer.refused or record.result.refused
    if refused:
        return [f"no fix applied: {refused}"]
    result = record.result
    notes = [
        f"applied {len(result.applied)} verified fix(es); undo with "
        f"`torchdoctor undo {state['options'].target}`"
    ]
    notes += [f"artifact written: {path}" for path in record.artifacts]
    comments = {d.finding_id: d.comment for d in record.answer.decisions if d.comment}
    for fid, why in sorted(result.skipped.items()):
        comment = f" ({comments[fid]})" if fid in comments else ""
        notes.append(f"not applied {fid}: {why}{comment}")
    return notes


def report(state: AuditState, runtime: Runtime[AuditContext]) -> Update:
    """The final report (with what the approval led to); the ledger re-written if it moved."""
    context = runtime.context
    applied = state.get("applied")
    if applied is None:
        return {"trace": ["report"]}
    coverage = accepted_coverage(
        state.get("coverage", []), state.get("artifacts", []), applied.artifact_ids
    )
    state = {**state, "coverage": coverage}
    final = build_report(state, context, [*fix_notes(state), *apply_notes(state)])
    path = writable_ledger(state)
    if path is not None:
        Ledger.read(path).merge(final, state["config"].lang).write(path)
    return {"report": final, "coverage": coverage, "trace": ["report"]}


# --- assembly ---------------------------------------------------------------------------------


def audit_graph() -> StateGraph[AuditState, AuditContext, AuditState, AuditState]:
    """The uncompiled graph (see the module docstring for its shape)."""
    from langgraph.graph import END, START, StateGraph

    builder: StateGraph[AuditState, AuditContext, AuditState, AuditState] = StateGraph(
        AuditState, context_schema=AuditContext
    )
    builder.add_node("ingest", ingest, metadata=_progress("ingest"))
    builder.add_node("evidence", evidence, metadata=_progress("evidence"))
    builder.add_edge(START, "ingest")
    builder.add_edge("ingest", "evidence")
    previous = "evidence"
    for phase in phases():
        name = phase.name
        builder.add_node(name("phase"), phase.start)
        builder.add_node(
            name("points"),
            Phase.point,
            input_schema=PointTask,
            metadata=_progress(name("points")),
        )
        builder.add_node(name("fix"), phase.fix)
        builder.add_node(name("gate"), phase.gate)
        builder.add_node(name("adopt"), phase.adopt)
        builder.add_node(name("ledger"), phase.ledger, metadata=_progress(name("ledger")))
        builder.add_edge(previous, name("phase"))
        builder.add_conditional_edges(name("phase"), phase.fanout, [name("points")])
        builder.add_edge(name("points"), name("fix"))
        builder.add_conditional_edges(name("fix"), phase.after_fix, [name("fix"), name("gate")])
        builder.add_conditional_edges(name("gate"), phase.route, [name("adopt"), name("ledger")])
        builder.add_edge(name("adopt"), name("ledger"))
        previous = name("ledger")
    builder.add_node("summarize", summarize, metadata=_progress("summarize"))
    builder.add_node("approve", approve)
    builder.add_node("report", report)
    builder.add_edge(previous, "summarize")
    builder.add_edge("summarize", "approve")
    builder.add_edge("approve", "report")
    builder.add_edge("report", END)
    return builder


def build_graph(
    checkpointer: BaseCheckpointSaver[Any] | None = None,
) -> CompiledStateGraph[AuditState, AuditContext, AuditState, AuditState]:
    """The compiled graph with `checkpointer`: compiled once per process (compiling reads
    every node's source, ~20 ms a time), then only bound to each audit's checkpointer."""
    return compiled_graph().copy({"checkpointer": checkpointer})


@cache
def compiled_graph() -> CompiledStateGraph[AuditState, AuditContext, AuditState, AuditState]:
    """The graph compiled without a checkpointer. Its nodes are bound when it is compiled: a
    node patched later (a test) needs a graph compiled afresh."""
    return audit_graph().compile(name="torchdoctor-audit")


def phases() -> list[Phase]:
    return [Phase(p.number, tuple(q.number for q in POINTS if q.phase == p.number)) for p in PHASES]


PROGRESS: dict[str, int] = {
    "ingest": 1,
    "evidence": 1,
    **{phase.name("points"): len(phase.points) for phase in phases()},
    **{phase.name("ledger"): 1 for phase in phases()},
    "summarize": 1,
}
"""Progress steps each node reports (the CLI's bar); the graph carries them as metadata."""


def _progress(node: str) -> dict[str, Any]:
    return {"progress": PROGRESS[node]}


def progress_total() -> int:
    """How many progress steps an audit reports."""
    return sum(PROGRESS.values())
