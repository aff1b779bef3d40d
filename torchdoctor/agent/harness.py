"""The one client of the probes harness, for the audit's runs and for fix verification alike.

The harness (`python -m torchdoctor.sandbox.probes`, stdlib + torch only) runs a script for N
optimizer steps and writes one evidence document. This module says what to run as a `Job`
(module and arguments; the sandbox backend resolves the interpreter and import path), sizes it
from one `RunBudget`, keeps one evidence file name and one margin (the harness stops itself
before the sandbox's wall limit, so the document gets written), and reads the documents back
through the trust checks. The audit's runs read the documents as evidence (`agent.probing`),
fix verification as a smoke run (`agent.fixes.smoke`).
"""

from __future__ import annotations

import posixpath
from fnmatch import fnmatch
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.evidence.trust import MAX_DOCUMENT_BYTES, UntrustedEvidence, parse_document
from torchdoctor.agent.launch import torchrun_arguments
from torchdoctor.sandbox.models import CollectedFile, Job, Limits, RunResult
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.shared_cache import cache_environment

HARNESS_MODULE = "torchdoctor.sandbox.probes"
EVIDENCE_FILE = ".torchdoctor-evidence.json"
RANK_EVIDENCE_FILES = ".torchdoctor-evidence.rank*.json"
HARNESS_MARGIN_S = 20.0
"""Wall time left between the harness's own stop and the sandbox's kill."""


class HarnessCall(BaseModel):
    """One run of a script under the harness: what to run and which probes to add."""

    model_config = ConfigDict(extra="forbid")

    script: str
    args: list[str] = Field(default_factory=list)
    module: str | None = Field(None, description="run as `python -m module` (its file: script)")
    steps: int = Field(20, ge=1)
    seed: int | None = Field(0, description="None: the script's own seeding only")
    hash_seed: int = Field(
        0,
        ge=0,
        le=4294967295,
        description="PYTHONHASHSEED: fixed, so the order of a set of strings is the same in "
        "every run compared (a fix's check varies it on purpose)",
    )
    nproc: int = Field(1, ge=1, description="ranks of a single-node torchrun launch")
    determinism_steps: int = Field(0, ge=0, description="0: no second seeded run")
    export: bool = False
    int8: bool = False
    compile: bool = False
    flops: bool = True
    groups: str | None = Field(
        None, pattern=r"^(batch|feature):\d+:\d+$", description="per-group metrics: where"
    )
    trace: list[str] = Field(default_factory=list, description="files whose executed lines count")
    extra_memory_mb: int = Field(
        0, ge=0, description="host memory beside the script's (torch.compile's workers)"
    )
    wall_s: float | None = Field(
        None,
        gt=0,
        description="a wall limit below the budget's (what the audit's fix time leaves); "
        "None: the budget's",
    )

    def wall_limit(self, budget: RunBudget) -> float:
        """This run's wall limit: the budget's, or the call's own when that is shorter."""
        return min(budget.wall_s, self.wall_s) if self.wall_s else budget.wall_s


class HarnessRun(BaseModel):
    """What a harness run left: the sandbox's result and the documents that passed the trust
    checks (`problem` says why there is no document)."""

    model_config = ConfigDict(extra="forbid")

    run: RunResult
    document: ProbeDocument | None = None
    problem: str = ""
    outcome: str = Field("", description="the outcome to report when there is no document")
    ranks: list[ProbeDocument] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="rank documents left out")


def harness_limits(
    budget: RunBudget, nproc: int = 1, extra_memory_mb: int = 0, wall_s: float | None = None
) -> Limits:
    """The sandbox limits of one harness run, from the audit's one run budget (`wall_s`: the
    call's shorter wall limit, `HarnessCall.wall_limit`; the CPU limit stays the budget's)."""
    return Limits(
        wall_s=wall_s or budget.wall_s,
        cpu_s=budget.cpu_s or int(budget.wall_s * 4),
        memory_mb=budget.memory_mb + extra_memory_mb,
        processes=budget.processes * nproc,
        disk_mb=budget.disk_mb,
        file_size_mb=budget.file_size_mb,
        open_files=budget.open_files,
        output_bytes=2_000_000,
        collect_bytes=MAX_DOCUMENT_BYTES,
    )


def harness_arguments(call: HarnessCall, budget: RunBudget) -> tuple[str, list[str]]:
    """The module to run and its arguments; with `nproc` > 1, every rank of a single-node
    torchrun runs the harness (rendezvous on 127.0.0.1: the sandbox has loopback only)."""
    stop_after = max(10.0, call.wall_limit(budget) - HARNESS_MARGIN_S)
    args = [call.script, "--steps", str(call.steps), "--out", EVIDENCE_FILE]
    args += ["--time-budget", f"{stop_after:g}"]
    if call.seed is not None:
        args += ["--seed", str(call.seed)]
    if call.determinism_steps:
        args += ["--determinism", str(call.determinism_steps)]
    args += ["--export"] * call.export + ["--int8"] * call.int8 + ["--no-flops"] * (not call.flops)
    args += ["--probe", "compile"] * call.compile
    args += ["--groups", call.groups] if call.groups else []
    args += ["--module", call.module] if call.module else []
    for path in call.trace:
        args += ["--trace-lines", path]
    args += ["--", *call.args]
    if call.nproc == 1:
        return HARNESS_MODULE, args
    return "torch.distributed.run", [*torchrun_arguments(call.nproc), "-m", HARNESS_MODULE, *args]


class Harness:
    """Runs the harness through one sandbox, under one budget (one instance per audit)."""

    def __init__(
        self,
        sandbox: Sandbox,
        budget: RunBudget | None = None,
        gpu: bool = False,
        cache: Path | None = None,
    ):
        """`cache`: a compiler cache its runs share (`shared_cache.compile_cache`)."""
        self.sandbox = sandbox
        self.budget = budget or RunBudget()
        self.gpu = gpu
        self.cache = cache

    def job(self, workspace: Path, call: HarnessCall) -> Job:
        module, args = harness_arguments(call, self.budget)
        return Job(
            workspace=workspace,
            module=module,
            args=args,
            limits=harness_limits(
                self.budget, call.nproc, call.extra_memory_mb, call.wall_limit(self.budget)
            ),
            collect=[EVIDENCE_FILE, RANK_EVIDENCE_FILES],
            gpu=self.gpu,
            cache=self.cache,
            env={
                **(cache_environment(self.cache) if self.cache is not None else {}),
                "PYTHONHASHSEED": str(call.hash_seed),
            },
        )

    def run(self, workspace: Path, call: HarnessCall) -> HarnessRun:
        """Run `call` on a copy of `workspace` (the sandbox makes the copy)."""
        run = self.sandbox.run(self.job(workspace, call))
        document = next((f for f in run.files if f.path.endswith(EVIDENCE_FILE)), None)
        if document is None:
            tail = (run.stderr or run.stdout)[-600:].strip()
            said = f"no evidence written: {run.reason} {tail}".strip()
            return HarnessRun(run=run, problem=said, outcome=str(run.outcome))
        if document.truncated:
            said = f"evidence document refused: {document.size / 1e6:.1f} MB exceeds the limit"
            return HarnessRun(run=run, problem=said, outcome="harness-error")
        try:
            parsed = parse_document(document.content)
        except UntrustedEvidence as err:
            said = f"evidence document refused: {err}"
            return HarnessRun(run=run, problem=said, outcome="harness-error")
        ranks, notes = _rank_documents(run.files)
        return HarnessRun(run=run, document=parsed, ranks=ranks, notes=notes)


def _rank_documents(files: list[CollectedFile]) -> tuple[list[ProbeDocument], list[str]]:
    """The documents of ranks 1.. of a torchrun run, and a note per unreadable one."""
    documents: list[ProbeDocument] = []
    notes: list[str] = []
    for file in sorted(files, key=lambda f: f.path):
        if not fnmatch(posixpath.basename(file.path), RANK_EVIDENCE_FILES):
            continue
        name = one_line(posixpath.basename(file.path))[:100]
        if file.truncated:
            notes.append(f"{name}: rank evidence over the size limit, ignored")
            continue
        try:
            documents.append(parse_document(file.content))
        except UntrustedEvidence as err:
            notes.append(f"{name}: rank evidence refused ({err}), ignored")
    return documents, notes
