"""The fix pipeline's own data: what a codemod is told, the patch it yields, what a run showed.

`Fix`/`Verification` on a finding (`agent.models`) stay the public contract; these models are the
pipeline's working state and the results of apply/undo.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.evidence.probe_schema import Retention
from torchdoctor.agent.models import RELATED_ROLE, Finding


class FixKind(StrEnum):
    """What a fix changes, which decides how its behaviour is checked."""

    CORRECTNESS = "correctness"
    """Changes results on purpose: the symptom must disappear, the run must stay healthy."""
    PRECISION = "precision"
    """Changes numerics: the seeded loss trajectory must stay within a bf16-level tolerance."""
    PERFORMANCE = "performance"
    """Must be measurably faster, with the trajectory within the fix's tolerance."""
    REFACTOR = "refactor"
    """Must not change results: the seeded loss trajectory must match exactly."""

    @classmethod
    def for_point(cls, checkpoint: int) -> FixKind:
        """The kind of a fix with no codemod to declare it (an LLM's patch), from the checklist
        point it fixes: correctness for phases 1-3 (points 1-5), performance for points 6 and
        8, a refactor (results must not move) for the rest."""
        if checkpoint <= 5:
            return cls.CORRECTNESS
        if checkpoint in (6, 8):
            return cls.PERFORMANCE
        return cls.REFACTOR


class _Model(BaseModel):
    # Built on first use: only an audit that fixes validates these, and a static audit
    # (a pre-commit hook) should not pay for building their validators at import.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class FixTarget(_Model):
    """The part of a finding a codemod reads: where, and what the rule measured there."""

    rule: str
    file: str
    line: int
    end_line: int
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_finding(cls, finding: Finding) -> FixTarget:
        data: dict[str, Any] = {}
        for evidence in finding.evidence:
            # a related place's own end line must not stand for the finding's (its places
            # reach the codemod through the finding's `related` list)
            if evidence.kind == "static" and evidence.data.get("role") != RELATED_ROLE:
                data.update(evidence.data)
        return cls(
            rule=finding.rule,
            file=finding.file,
            line=finding.line,
            end_line=finding.end_line,
            data=data,
        )


class Patch(_Model):
    """A unified diff against the workspace, and where it came from."""

    finding_id: str
    rule: str
    origin: Literal["codemod", "llm"] = "codemod"
    diff: str
    files: list[str]


class RunSignals(_Model):
    """What a run's probes showed that a fix's symptom check, or the order fixes are verified
    in, reads (`Codemod.symptom_gone`, `Codemod.relieves`)."""

    graph_retention: Retention | None = None
    """Autograd graphs kept alive from step to step (`loss-graph-accumulation`)."""
    train_mode_forwards_without_grad: int | None = None
    """Forwards without autograd in training mode, an evaluation without `eval()` (None: the
    run was not probed for them)."""
    grad_norms: list[float] = Field(default_factory=list)
    """The global gradient norm at each step (a missing or misplaced `zero_grad`)."""
    data_wait_share: float | None = None
    """The share of step time spent waiting for the next batch."""
    worker_epochs: list[tuple[int, int | None]] = Field(default_factory=list)
    """(epochs begun, batches per epoch) of each loader with worker processes."""
    first_batch_wait_s: float | None = None
    """The first step's wait for its batch (the workers' start with it)."""
    joules_per_step: float | None = None
    distributed_findings: list[str] = Field(default_factory=list)
    """The distributed probe rules the run's ranks raised."""
    repeat_losses: list[float] | None = None
    """The losses of a second run without the harness's seed (`Codemod.reproducibility`)."""
    other_hash_seed_losses: list[float] | None = None
    """The losses of the same seeded run under another PYTHONHASHSEED (`Codemod.hash_order`)."""


class SmokeRun(_Model):
    """What one bounded, seeded run of the user's script showed (from the probes harness)."""

    ok: bool
    detail: str = ""
    losses: list[float] = Field(default_factory=list)
    forwards: int | None = None
    """The forward passes an inference run made (None for a training run: its steps count)."""
    step_times_s: list[float] = Field(default_factory=list)
    wall_s: float | None = None
    """The whole job's wall time: steady steps plus one-off costs (start-up, compilation)."""
    peak_host_mb: float | None = None
    """Peak resident memory of the run's process tree (compile workers included)."""
    signals: RunSignals = Field(default_factory=RunSignals)
    executed_lines: dict[str, list[int]] = Field(default_factory=dict)
    """Lines of the traced files (the patched ones) that the run executed."""
    stopped_in_loop: bool = False
    """The harness stopped the script inside its last counted step (an optimizer step, or a
    forward pass of an inference script): nothing after the loop ran."""
    cuda_available: bool | None = None
    """Whether the run's process saw a CUDA device (None: not known)."""
    error_at: tuple[str, int] | None = None
    """Where a failed run's error was raised in the user's code (file, line), when known."""
    missing_module: str | None = None
    """The top-level module a failed run could not import (ModuleNotFoundError), if that."""
    missing_file: str | None = None
    """The file a failed run could not open (FileNotFoundError), as the script named it."""


class AppliedFile(_Model):
    path: str
    sha256_before: str
    sha256_after: str


class ApplyResult(_Model):
    applied: list[str] = Field(default_factory=list, description="finding ids written")
    skipped: dict[str, str] = Field(default_factory=dict, description="finding id -> why not")
    files: list[AppliedFile] = Field(default_factory=list)
    journal: str | None = None
    refused: str | None = None


class UndoResult(_Model):
    restored: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list, description="files the apply had created")
    journal: str | None = None
    refused: str | None = None
