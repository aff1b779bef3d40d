"""Turn the probes harness's evidence document into audit evidence, findings and coverage.

`probe_findings(doc, script_relpath)` is the one entry point: it reads a document (a dict
or a validated `ProbeDocument`) written for the script at `script_relpath` (relative to the
audited workspace) and returns a `ProbeAnalysis`:
- `findings`: problems the run proved (rule ids `probe-*`), each at a file/line taken from
  the captured stack where the harness had one, else the script's first line;
- `coverage`: per checklist item, pass/fail/not-applicable and how the run decided it;
- `evidence`: `torchdoctor.agent.models.Evidence` items (kind "probe") in the offline reasoner's
  convention (`data["items"]`, `data["verdict"]`, `data["finding"]`); `by_point()` pairs
  each with its checklist point for `gather.split_by_point(extra_evidence=...)`.
It also renders the data-flow map as a markdown table and a Mermaid diagram.
No torch import here: the audit side only reads JSON.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from math import isfinite
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checklist import ITEMS_BY_ID
from torchdoctor.agent.evidence.distributed import check_distributed
from torchdoctor.agent.evidence.loss_spikes import describe, loss_spikes
from torchdoctor.agent.evidence.probe_schema import (
    BoundaryValues,
    DataFlow,
    DataFunctionSignature,
    Outcome,
    ProbeDocument,
    RootSignature,
)
from torchdoctor.agent.evidence.run_gaps import MissingDependency, NoCuda, OutsidePath
from torchdoctor.agent.models import RELATED_ROLE, Evidence, Severity, Verdict
from torchdoctor.agent.reasoning.offline import attach_key

SOURCE = "torchdoctor-probes"
DEAD_RELU_FRACTION = 0.7
DEFAULT_KWH_PRICE = 0.15
LOW_MFU = 0.30
INPUT_BOUND_SHARE = 0.30
CUDA_GROWTH_BYTES_PER_STEP = 2**20
COMPILE_WORTH_SPEEDUP = 1.2
INT8_MAX_REL_DIFF = 0.05
CHEAP_SKIPS = (
    ("5.1", "probe:determinism", "the seeded determinism re-runs"),
    ("7.1", "probe:export", "the export check"),
)
"""(item, probe, what) a `--probes cheap` audit leaves out: each costs re-runs or a trace."""


class ProbeFinding(BaseModel):
    """A problem the instrumented run proved, before a reasoner makes it a `Finding`."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    checkpoint: int = Field(ge=1, le=12)
    severity: Severity
    title: str
    message: str
    file: str
    line: int = Field(ge=1)
    items: list[str]
    code: str = Field(description="stable text for the fingerprint (never a measured number)")
    data: dict[str, Any] = Field(default_factory=dict)


class CoverageHint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str
    verdict: Verdict
    how: str
    reason: str


class RunCurves(BaseModel):
    """Per-step loss and global gradient norm of a run, for the report's plots."""

    model_config = ConfigDict(extra="forbid")

    loss: list[tuple[int, float]] = Field(default_factory=list)
    grad_norm: list[tuple[int, float]] = Field(default_factory=list)

    @classmethod
    def from_document(cls, doc: ProbeDocument) -> RunCurves:
        def finite(steps: list[int], values: list[float | None]) -> list[tuple[int, float]]:
            return [
                (s, v) for s, v in zip(steps, values, strict=False) if v is not None and isfinite(v)
            ]

        return cls(
            loss=finite(doc.loss.steps, doc.loss.values),
            grad_norm=finite(doc.gradients.steps, doc.gradients.global_norm),
        )


class ProbeAnalysis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: str
    summary: str
    findings: list[ProbeFinding] = Field(default_factory=list)
    coverage: dict[str, CoverageHint] = Field(default_factory=dict)
    evidence: list[Evidence] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    dataflow: DataFlow = Field(default_factory=DataFlow)
    root_signatures: list[RootSignature] = Field(default_factory=list)
    value_ranges: list[BoundaryValues] = Field(default_factory=list)
    data_functions: list[DataFunctionSignature] = Field(default_factory=list)
    curves: RunCurves = Field(default_factory=lambda: RunCurves())

    def by_point(self) -> list[tuple[int, Evidence]]:
        """(checklist point, evidence) pairs, the shape `split_by_point` takes."""
        pairs: list[tuple[int, Evidence]] = []
        for ev in self.evidence:
            point = ev.data.get("point")
            if isinstance(point, int):
                pairs.append((point, ev))
        return pairs


class _Builder:
    """Accumulates findings and coverage hints with the script's path conventions."""

    def __init__(
        self,
        doc: ProbeDocument,
        script_relpath: str,
        read_source: Callable[[str], str | None] | None,
        other_ranks: list[ProbeDocument] | None = None,
        cheap: bool = False,
        gap: MissingDependency | OutsidePath | NoCuda | None = None,
    ) -> None:
        self.doc = doc
        self.gap = gap
        self.other_ranks = other_ranks or []
        self.cheap = cheap
        self.script = script_relpath
        self.folder = posixpath.dirname(script_relpath)
        self.read_source = read_source
        self.findings: list[ProbeFinding] = []
        self.coverage: dict[str, CoverageHint] = {}

    def path(self, file: str | None) -> str:
        if not file:
            return self.script
        return posixpath.normpath(posixpath.join(self.folder, file)) if self.folder else file

    def find(
        self,
        rule: str,
        checkpoint: int,
        severity: Severity,
        title: str,
        message: str,
        items: list[str],
        code: str,
        file: str | None = None,
        line: int | None = None,
        **data: Any,
    ) -> None:
        located = file is not None and line is not None and line > 0
        if not located:  # placed at the script's first line: `confirm` may find its place
            data = {**data, "unlocated": True}
        self.findings.append(
            ProbeFinding(
                rule=rule,
                checkpoint=checkpoint,
                severity=severity,
                title=title,
                message=message,
                file=self.path(file if located else None),
                line=line if located and line else 1,
                items=items,
                code=code,
                data=data,
            )
        )
        for item in items:
            self.hint(item, "fail", f"probe {rule}", message)

    def hint(self, item: str, verdict: Verdict, how: str, reason: str) -> None:
        current = self.coverage.get(item)
        if current is not None and current.verdict == "fail":
            return
        if current is not None and verdict != "fail":
            return
        self.coverage[item] = CoverageHint(item=item, verdict=verdict, how=how, reason=reason)

    def excerpt(self, file: str, line: int) -> str:
        if self.read_source is None:
            return ""
        text = self.read_source(file)
        if not text:
            return ""
        lines = text.splitlines()
        start, end = max(line - 3, 0), min(line + 2, len(lines))
        return "\n".join(f"{n + 1:>5} | {lines[n]}" for n in range(start, end))


# --- the checks, one per probe ---------------------------------------------------------------


def run_failed(doc: ProbeDocument) -> bool:
    """The run did not get far enough for its measurements to mean anything."""
    o = doc.outcome
    if o.kind in ("script-error", "harness-error"):
        return True
    if o.kind == "sys-exit" and o.exit_code not in (None, 0):
        return True
    return o.kind == "time-budget" and doc.steps_completed + doc.forward_passes <= 1


def _outcome(b: _Builder) -> None:
    o = b.doc.outcome
    steps = b.doc.steps_completed if b.doc.mode == "train" else b.doc.forward_passes
    when = "before its first step" if steps == 0 else f"after {steps} step(s)"
    if o.kind == "script-error" and b.gap is not None:
        if isinstance(b.gap, MissingDependency):
            _missing_dependency(b, b.gap)
    elif o.kind == "script-error" or (o.kind == "sys-exit" and o.exit_code not in (None, 0)):
        what = o.detail or (f"exit code {o.exit_code}" if o.kind == "sys-exit" else "an error")
        b.find(
            "probe-script-error",
            2,
            Severity.HIGH,
            "The script fails when run",
            f"The script failed {when} of the instrumented run: {what}",
            ["2.2"],
            code=o.error_type or o.kind,
            file=o.file,
            line=o.line,
            traceback=o.traceback,
            **_entry_related(b, o),
        )
    elif o.kind == "time-budget" and b.doc.steps_completed + b.doc.forward_passes <= 1:
        b.find(
            "probe-hang",
            2,
            Severity.MEDIUM,
            "The script got no further than its first step in its time budget",
            f"{o.detail}; {_progress(b.doc.steps_completed, b.doc.root_forwards)}",
            [],
            code="time-budget",
        )


def _entry_related(b: _Builder, o: Outcome) -> dict[str, Any]:
    """The script's own line that led to the failing frame in another file of the tree (the
    import of a local package that raised, or lacked a package, while imported), as the
    failure's related place."""
    if o.entry_line is None or not o.file or b.path(o.file) == b.script:
        return {}
    place = {
        "file": b.script,
        "line": o.entry_line,
        "end_line": o.entry_line,
        "message": f"{b.script}:{o.entry_line}, the script's line that reached it",
        "excerpt": b.excerpt(b.script, o.entry_line),
    }
    return {"related": [place]}


def _missing_dependency(b: _Builder, missing: MissingDependency) -> None:
    """A run stopped by a package this environment lacks says nothing about the code unless
    the project also fails to declare it; either way the run's note says what to install."""
    if missing.declared:
        return
    o = b.doc.outcome
    manifests = (
        f"none of the project's {missing.manifests} dependency manifest(s) lists it"
        if missing.manifests
        else "the project has no dependency manifest (requirements.txt, pyproject.toml, "
        "setup.cfg, setup.py, environment.yml) to list it"
    )
    b.find(
        "probe-undeclared-dependency",
        11,
        Severity.MEDIUM,
        "The script imports a package no dependency manifest declares",
        f"The run stopped at the import of `{missing.module}` ({o.error_type}): the audit "
        f"environment lacks it, and {manifests}, so a fresh install of the project fails "
        "the same way. Declare it; then install it where torchdoctor runs to have the run "
        "measured.",
        [],
        code=f"{o.error_type} {missing.module}",
        file=o.file,
        line=o.line,
        traceback=o.traceback,
        **_entry_related(b, o),
    )


def _progress(steps: int, forwards: int) -> str:
    """How far a run stopped at its budget got: the steps, and the forwards it ran besides
    (minGPT's adder evaluates its whole dataset after its first step; nanoGPT's lecture script
    400 batches before it), so the reader knows whether it hung or was busy elsewhere."""
    done = f"{steps} optimizer step{'' if steps == 1 else 's'} completed"
    besides = forwards - steps
    if besides <= 0:
        return done + "."
    if steps == 0:
        return (
            f"{done}, after {forwards} forward passes of the model (an evaluation before the "
            "first step, or a first step slower than the budget)."
        )
    return (
        f"{done}, then {besides} more forward passes of the model (an evaluation after the "
        "first step, or a second step slower than the budget)."
    )


def _nonfinite(b: _Builder) -> None:
    nf = b.doc.nonfinite
    trained = b.doc.steps_completed > 0 or b.doc.forward_passes > 0
    if nf is None:
        if trained and b.doc.loss.values:
            b.hint(
                "2.3",
                "pass",
                "probe:nan",
                "no NaN/Inf in inputs, activations, loss or "
                f"gradients over {len(b.doc.loss.values)} steps",
            )
        return
    where = nf.module or nf.parameter or "the loss"
    message = f"First non-finite value at step {nf.step}, in the {nf.phase} pass, in {where}."
    b.find(
        "probe-nan",
        2,
        Severity.CRITICAL,
        "NaN/Inf appears during training",
        message,
        ["2.3"],
        code=f"{nf.phase} {where}",
        file=nf.file,
        line=nf.line,
        step=nf.step,
        phase=nf.phase,
    )
    b.hint("3.3", "fail", "probe:nan", message)


def _gradients(b: _Builder) -> None:
    g = b.doc.gradients
    if b.doc.mode != "train" or b.doc.steps_completed == 0:
        if b.doc.mode == "inference":
            b.hint("4.3", "not-applicable", "probe:gradients", "inference script: no training")
        return
    for param in g.never_received_grad:
        b.find(
            "probe-dead-parameter",
            4,
            Severity.MEDIUM,
            "A parameter never receives a gradient",
            f"`{param.name}` is in the optimizer but got no gradient in "
            f"{b.doc.steps_completed} steps: it is not used in the loss's graph.",
            ["4.3"],
            code=param.name,
            file=param.file,
            line=param.line,
        )
    for param in g.grad_not_in_optimizer:
        b.find(
            "probe-grad-not-in-optimizer",
            4,
            Severity.HIGH,
            "A parameter gets gradients but no optimizer updates it",
            f"`{param.name}` receives a gradient but is in no optimizer's param_groups: "
            "it never trains.",
            ["4.3"],
            code=param.name,
            file=param.file,
            line=param.line,
        )
    if not g.never_received_grad and not g.grad_not_in_optimizer:
        b.hint(
            "4.3",
            "pass",
            "probe:gradients",
            f"every optimized parameter received a gradient over {b.doc.steps_completed} "
            "steps, and every parameter with a gradient is optimized",
        )
    norms = [v for v in g.global_norm if v is not None]
    if g.exploding:
        b.find(
            "probe-exploding-gradients",
            3,
            Severity.HIGH,
            "Gradients explode",
            f"Global gradient norm reaches {max(norms, default=float('nan')):.3g}.",
            ["3.3"],
            code="exploding",
        )
    if g.vanishing:
        b.find(
            "probe-vanishing-gradients",
            3,
            Severity.MEDIUM,
            "Gradients vanish",
            f"Median global gradient norm is {sorted(norms)[len(norms) // 2]:.3g}.",
            ["3.3"],
            code="vanishing",
        )


def _loss_spikes(b: _Builder) -> None:
    if b.doc.mode != "train":
        return
    spikes = loss_spikes(b.doc.loss.values)
    if not spikes:
        return
    b.find(
        "probe-loss-spikes",
        3,
        Severity.MEDIUM,
        "The training loss spikes",
        f"Over the run {describe(spikes, len(b.doc.loss.values))}. The step is too large for "
        "the model (a learning rate too high, no warm-up, gradients neither clipped nor "
        "scaled) or some batches are corrupt: a run this unstable learns little, and no fix "
        "that changes the arithmetic can be compared with it step by step.",
        ["3.3"],
        code="loss-spikes",
    )


def _activations(b: _Builder) -> None:
    for act in b.doc.activations:
        if act.dead_fraction is not None and act.dead_fraction >= DEAD_RELU_FRACTION:
            b.find(
                "probe-dead-relu",
                3,
                Severity.MEDIUM,
                "Most ReLU units are dead",
                f"{act.dead_fraction:.0%} of `{act.module}`'s units output zero for a whole batch.",
                ["3.3"],
                code=act.module,
            )
    if b.doc.steps_completed > 0 and b.doc.activations:
        b.hint(
            "3.3",
            "pass",
            "probe:gradients, probe:activations, probe:loss",
            f"gradient norms, activation magnitudes of {len(b.doc.activations)} modules and "
            "the loss stayed finite and bounded",
        )


def _memory(b: _Builder) -> None:
    m = b.doc.memory
    if m.retention is not None:
        r = m.retention
        holder = f"`{r.variable}`" if r.variable else "a live tensor"
        b.find(
            "probe-graph-retention",
            1,
            Severity.HIGH,
            "Autograd graphs accumulate across steps",
            f"{holder} keeps every step's autograd graph alive (+{r.nodes_per_step:.0f} "
            "graph nodes per step): accumulate `loss.item()` or `loss.detach()` instead.",
            ["1.4"],
            code=r.variable or "retention",
            file=r.file,
            line=r.line,
        )
    elif (
        m.source == "cuda-allocated"
        and len(m.steps) >= 5
        and (m.slope_bytes_per_step or 0) >= CUDA_GROWTH_BYTES_PER_STEP
    ):
        b.find(
            "probe-memory-growth",
            1,
            Severity.MEDIUM,
            "GPU memory grows every step",
            f"Allocated CUDA memory grows by {(m.slope_bytes_per_step or 0) / 2**20:.1f} MiB "
            "per step.",
            ["1.4"],
            code="cuda-growth",
        )
    elif len(m.graph_scans) >= 3:
        b.hint(
            "1.4",
            "pass",
            "probe:memory",
            f"autograd graph size flat over "
            f"{len(m.graph_scans)} scans; memory slope "
            f"{(m.slope_bytes_per_step or 0) / 2**20:.2f} MiB/step ({m.source})",
        )


def _vram(b: _Builder) -> None:
    v = b.doc.vram
    if v is None:
        return
    if v.fragmented:
        gap = (v.reserved_bytes - v.allocated_bytes) / 2**30
        b.find(
            "probe-vram-fragmentation",
            6,
            Severity.MEDIUM,
            "The CUDA allocator is fragmented",
            f"{gap:.2f} GiB reserved but unallocated, {v.inactive_split_bytes / 2**30:.2f} GiB "
            f"in inactive split blocks, {v.num_alloc_retries} allocation retries: {v.advice}.",
            ["6.7"],
            code="fragmentation",
        )
    else:
        b.hint(
            "6.7",
            "pass",
            "probe:memory",
            f"{v.num_alloc_retries} allocator retries; "
            f"reserved {v.reserved_bytes / 2**30:.2f} GiB vs allocated "
            f"{v.allocated_bytes / 2**30:.2f} GiB",
        )


def _stall(cuda_used: bool) -> str:
    """What a host read costs: a stall of the GPU's queue, or (on a run that never used CUDA,
    where it reads host memory) one on a GPU."""
    if cuda_used:
        return "Each one stalls the GPU queue"
    return "This run used no GPU, where they cost little; on a GPU each one stalls its queue"


def _syncs(b: _Builder) -> None:
    s = b.doc.syncs
    steps = b.doc.steps_completed or b.doc.forward_passes
    if steps < 2:
        return
    # an inference script reads each forward's answer once (a served prediction's `.item()`):
    # only reads beyond that one can stay on the device
    too_many = s.per_step > 1 if b.doc.mode == "inference" else s.per_step >= 1
    if too_many and s.calls:
        top = s.calls[0]
        b.find(
            "probe-host-sync",
            6,
            Severity.MEDIUM,
            "Host-device sync in every step",
            f"{s.per_step:.1f} `.item()/.cpu()/.numpy()/.tolist()` calls per step; the most "
            f"frequent is `.{top.kind}()` ({top.count} calls). {_stall(b.doc.device.cuda_used)}"
            ": keep values on the device and read them every N steps.",
            ["6.1"],
            code=f"{top.kind} {top.file}",
            file=top.file,
            line=top.line,
        )
    elif s.cuda_syncs_per_step >= 1 and s.cuda_syncs:
        top_sync = s.cuda_syncs[0]
        b.find(
            "probe-host-sync",
            6,
            Severity.MEDIUM,
            "Host-device sync in every step",
            f"{s.cuda_syncs_per_step:.1f} synchronizing CUDA calls per step (sync debug mode).",
            ["6.1"],
            code=f"cuda-sync {top_sync.file}",
            file=top_sync.file,
            line=top_sync.line,
        )
    else:
        b.hint(
            "6.1",
            "pass",
            "probe:syncs",
            f"{s.per_step:.2f} host syncs per step from the script's own lines",
        )


def _dataloader(b: _Builder) -> None:
    d = b.doc.dataloader
    if not d.loaders:
        if b.doc.steps_completed > 0:
            b.hint("6.6", "not-applicable", "probe:dataloader", "no torch DataLoader in use")
        return
    loader = d.loaders[0]
    if d.wait_share is not None and d.wait_share >= INPUT_BOUND_SHARE:
        b.find(
            "probe-input-bound",
            6,
            Severity.MEDIUM,
            "Training waits on data",
            f"{d.wait_share:.0%} of step time is spent waiting for the next batch "
            f"(num_workers={loader.num_workers}, pin_memory={loader.pin_memory}, "
            f"persistent_workers={loader.persistent_workers}).",
            ["6.6"],
            code="dataloader-wait",
            file=loader.file,
            line=loader.line,
            loader=loader.model_dump(),
        )
    elif d.wait_share is not None:
        b.hint(
            "6.6", "pass", "probe:dataloader", f"{d.wait_share:.0%} of step time waiting for data"
        )


GROUP_GAP = 0.1
"""Largest accuracy difference between groups that passes 12.1."""


def _groups(b: _Builder) -> None:
    """12.1 from the per-group metrics of the script's evaluation outputs (a declared group
    column); nothing when none was declared."""
    metrics = b.doc.group_metrics
    if metrics is None:
        return
    if len(metrics.groups) < 2 or metrics.accuracy_gap is None:
        why = metrics.skipped or (
            f"{b.doc.steps_completed} step(s) ran and no evaluation output (eval mode or no "
            "grad) with two groups or more was seen; run more steps (--steps) or evaluate "
            "inside the loop"
        )
        b.hint("12.1", "not-checked", "probe:groups", f"groups declared ({metrics.spec}): {why}")
        return
    scores = ", ".join(
        f"group {g.group}: accuracy {g.accuracy:.2f} over {g.rows} rows" for g in metrics.groups
    )
    measured = (
        f"per-group accuracy of the script's evaluation outputs ({metrics.spec}, "
        f"{metrics.batches} batch(es)): {scores}; gap {metrics.accuracy_gap:.2f}"
    )
    if metrics.accuracy_gap > GROUP_GAP:
        b.find(
            "probe-group-gap",
            12,
            Severity.MEDIUM,
            "Accuracy differs across groups",
            f"{measured}, above {GROUP_GAP:g}.",
            ["12.1"],
            code="group-gap",
            groups=metrics.model_dump(),
        )
    else:
        b.hint("12.1", "pass", "probe:groups", f"{measured}, within {GROUP_GAP:g}")


def _dataflow(b: _Builder) -> None:
    if not b.doc.dataflow.calls:
        return
    b.hint(
        "1.3",
        "pass",
        "probe:dataflow-map",
        f"shapes/dtypes/devices of {len(b.doc.dataflow.calls)} module calls recorded",
    )
    for mix in b.doc.dtype_mixing:
        b.find(
            "probe-dtype-mixing",
            1,
            Severity.MEDIUM,
            "Mixed dtypes in the forward pass",
            f"`{mix.module}` ({mix.type}): {mix.reason}.",
            ["1.5"],
            code=mix.module,
        )
    if not b.doc.dtype_mixing:
        b.hint("1.5", "pass", "probe:dataflow-map", "one dtype per call outside autocast")


def _determinism(b: _Builder) -> None:
    d = b.doc.determinism
    if d is None:
        return
    if d.ok and (d.steps_compared == 0 or d.max_rel_diff is None):
        b.hint(
            "5.1", "not-checked", "probe:determinism", "no loss recorded for seeded runs to compare"
        )
        return
    if not d.deterministic and d.first_divergent_step is None:
        b.hint("5.1", "not-checked", "probe:determinism", "no divergent step was recorded")
        return
    if not d.ok:
        b.hint("5.1", "not-checked", "probe:determinism", d.error or "seeded runs failed")
        return
    if d.deterministic:
        b.hint(
            "5.1",
            "pass",
            "probe:determinism",
            f"two runs seeded {d.seed} gave the same "
            f"{d.steps_compared} losses (max relative difference {d.max_rel_diff:.1e})",
        )
    else:
        why = (
            "the runs differ only in PYTHONHASHSEED (a third run with the first one's agreed "
            "with it): the script depends on the iteration order of a set of strings, e.g. "
            "a vocabulary built with `list(set(words))`, whose indices change with every "
            "launch; build it from `sorted(set(words))`"
            if d.cause == "hash-order"
            else "some randomness escapes the seed (a clock-seeded generator, unseeded "
            "workers, non-deterministic kernels)"
        )
        b.find(
            "probe-nondeterministic",
            5,
            Severity.MEDIUM,
            "Seeded runs are not reproducible",
            f"Two runs with seed {d.seed} diverge at step {d.first_divergent_step} (max "
            f"relative loss difference {d.max_rel_diff:.2e}): {why}.",
            ["5.1"],
            code="determinism",
            # the run proves what the static rule points at: one problem, at its line
            also_confirms=["vocabulary-in-set-order"] if d.cause == "hash-order" else [],
        )


def _mode(b: _Builder) -> None:
    for issue in b.doc.mode_issues:
        if issue.kind == "train-mode-at-inference":
            b.find(
                "probe-train-mode-at-inference",
                7,
                Severity.HIGH,
                "Inference runs with the model in training mode",
                f"`{issue.module}` runs under no_grad/inference_mode while in training mode "
                f"({issue.count} calls); its dropout/batch-norm layers act as in training. "
                "Call `model.eval()` first.",
                ["7.4"],
                code=issue.module,
                file=issue.file,
                line=issue.line,
            )
        else:
            b.find(
                "probe-eval-with-grad",
                7,
                Severity.MEDIUM,
                "Evaluation builds autograd graphs",
                f"`{issue.module}` runs in eval mode with autograd on and no backward "
                f"({issue.count} calls): wrap evaluation in `torch.inference_mode()`.",
                ["7.4"],
                code=issue.module,
                file=issue.file,
                line=issue.line,
            )
    if not b.doc.mode_issues and b.doc.forward_passes + b.doc.steps_completed > 0:
        b.hint(
            "7.4",
            "pass",
            "probe:mode",
            "no no-grad forward in training mode and no eval "
            "forward with autograd among the calls that ran",
        )


def _model_location(b: _Builder) -> tuple[str | None, int | None]:
    model = b.doc.model
    if model is None:
        return None, None
    return model.file, model.forward_line or model.line


def _export(b: _Builder) -> None:
    e = b.doc.export
    if e is None or e.torch_export is None:
        return
    if not e.torch_export.ok and not (e.torch_export.error or e.torch_export.error_type):
        b.hint("7.1", "not-checked", "probe:export", "the export try recorded no error")
        return
    if (e.torch_export.model_extra or {}).get("tried") is False:
        b.hint("7.1", "not-checked", "probe:export", f"not tried: {e.torch_export.error}")
        return
    file, line = _model_location(b)
    if e.torch_export.ok:
        onnx = e.onnx
        onnx_note = (
            "; ONNX export ok" if onnx and onnx.ok else f"; ONNX: {onnx.error}" if onnx else ""
        )
        b.hint("7.1", "pass", "probe:export", f"torch.export.export succeeded{onnx_note}")
        return
    error = (e.torch_export.error or "").strip().splitlines()
    first = error[0] if error else ""
    kind = e.torch_export.error_type
    if kind and not first.startswith(f"{kind}:"):  # the harness's text names its type already
        first = f"{kind}: {first}"
    b.find(
        "probe-export-failed",
        7,
        Severity.MEDIUM,
        "The model cannot be exported",
        f"torch.export.export failed on the captured input: {first}"[:400],
        ["7.1"],
        code=e.torch_export.error_type or "export",
        file=file,
        line=line,
        error=e.torch_export.error,
    )


def _int8(b: _Builder) -> None:
    q = b.doc.int8
    if q is None:
        return
    extra = q.model_extra or {}
    if not q.ok:
        verdict: Verdict = "not-applicable" if extra.get("linear_layers") == 0 else "not-checked"
        b.hint("7.2", verdict, "probe:int8", q.error or "quantization failed")
        return
    rel = float(extra.get("max_rel_diff") or 0.0)
    ratio = extra.get("latency_ratio")
    b.hint(
        "7.2",
        "pass",
        "probe:int8",
        f"dynamic INT8 of {extra.get('linear_layers')} Linear layers: max relative output "
        f"difference {rel:.3f} ({'acceptable' if rel <= INT8_MAX_REL_DIFF else 'large'}), "
        f"CPU latency ratio {ratio if ratio is None else f'{ratio:.2f}'}",
    )


def _flops(b: _Builder) -> None:
    f = b.doc.flops
    if f is None or f.flops_per_step is None:
        return
    energy = _energy(b.doc)
    if f.mfu is not None:
        if f.mfu < LOW_MFU:
            b.find(
                "probe-low-mfu",
                8,
                Severity.MEDIUM,
                "Low model FLOP utilisation",
                f"{f.achieved_tflops:.1f} TFLOP/s achieved = {f.mfu:.1%} of the "
                f"{f.device_name}'s dense bf16 peak ({f.peak_bf16_tflops:.0f} TFLOP/s){energy}.",
                ["8.1"],
                code="mfu",
                mfu=f.mfu,
            )
        else:
            b.hint("8.1", "pass", "probe:flops", f"MFU {f.mfu:.1%} on {f.device_name}{energy}")
        return
    if f.flops_per_step == 0:
        b.hint(
            "8.1",
            "not-checked",
            "probe:flops",
            "FlopCounterMode counted no matrix multiply or convolution in a step (the step's "
            "work is element-wise, or ran outside the counted region), so there is no work "
            f"figure to judge the cost by{energy}",
        )
        return
    # no known peak (a CPU run, an unlisted GPU): the counted work and its rate still stand
    rate = (
        f", {_scaled(f.achieved_tflops * 1e12, 2)}FLOP/s achieved"
        if f.achieved_tflops is not None
        else ""
    )
    b.hint(
        "8.1",
        "pass",
        "probe:flops",
        f"{_scaled(f.flops_per_step, 3)}FLOP per step (FlopCounterMode){rate} on "
        f"{f.device_name or 'CPU'}; no dense peak known there, so no MFU{energy}",
    )


def _scaled(count: float, decimals: int) -> str:
    """'3.000 G', '24.576 k', '640 ': a small model's step is not '0.000 GFLOP'."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= factor:
            return f"{count / factor:.{decimals}f} {prefix}"
    return f"{count:.0f} "


def kwh_price() -> float:
    """Electricity price per kWh for the cost figures: `TORCHDOCTOR_KWH_PRICE`, else 0.15."""
    try:
        return float(os.environ.get("TORCHDOCTOR_KWH_PRICE", DEFAULT_KWH_PRICE))
    except ValueError:
        return DEFAULT_KWH_PRICE


def _energy(doc: ProbeDocument) -> str:
    """'; 412 W, 61.3 J per step, 0.021 kWh (0.0032 at 0.15/kWh) per 1250-batch epoch'."""
    e = doc.energy
    if e is None or e.mean_watts is None or e.joules_per_step is None:
        return ""
    text = f"; {e.mean_watts:.0f} W mean GPU power, {e.joules_per_step:.2f} J per step"
    batches = next((d.batches_per_epoch for d in doc.dataloader.loaders if d.batches_per_epoch), 0)
    if batches:
        kwh = e.joules_per_step * batches / 3.6e6
        price = kwh_price()
        text += f", {kwh:.4f} kWh per {batches}-batch epoch ({kwh * price:.4f} at {price:g}/kWh)"
    return text


def _compile(b: _Builder) -> None:
    c = b.doc.compile
    if c is None:
        return
    extra = c.model_extra or {}
    if not c.ok:
        b.hint("8.2", "not-checked", "probe:compile", c.error or "torch.compile failed")
        return
    speedup, break_even = extra.get("speedup"), extra.get("break_even_steps")
    summary = (
        f"compile {extra.get('compile_s', 0):.1f} s, speed-up "
        f"{speedup if speedup is None else f'{speedup:.2f}x'}, break-even after "
        f"{break_even} steps"
    )
    b.hint("8.2", "pass", "probe:compile", summary)
    # the "eager" backend traces without generating code: its timing says nothing of compiling
    compiled = extra.get("backend") != "eager"
    if (
        compiled
        and speedup is not None
        and speedup >= COMPILE_WORTH_SPEEDUP
        and break_even is not None
    ):
        file, line = _model_location(b)
        b.find(
            "probe-compile-pays",
            6,
            Severity.LOW,
            "torch.compile would pay off",
            f"torch.compile: {summary}.",
            ["6.3"],
            code="compile",
            file=file,
            line=line,
        )


def _deprecations(b: _Builder) -> None:
    for w in b.doc.warnings:
        deprecation = w.category in ("FutureWarning", "DeprecationWarning")
        if deprecation and w.file and w.line and not w.internal:
            b.find(
                "probe-deprecated-api",
                1,
                Severity.LOW,
                "Deprecated PyTorch API in use",
                f"{w.category}: {w.message}"[:400],
                ["1.6"],
                code=w.message[:120],
                file=w.file,
                line=w.line,
            )


def _distributed(b: _Builder) -> None:
    check_distributed(b, [b.doc, *b.other_ranks])


def _skipped(b: _Builder) -> None:
    """Items a cheap audit did not measure say so (a rule or another run may still decide)."""
    if b.cheap:
        for item, how, what in CHEAP_SKIPS:
            b.hint(item, "not-checked", how, f"skipped by --probes cheap: {what}")


_CHECKS = (
    _outcome,
    _nonfinite,
    _gradients,
    _loss_spikes,
    _activations,
    _memory,
    _vram,
    _syncs,
    _dataloader,
    _dataflow,
    _groups,
    _determinism,
    _mode,
    _export,
    _int8,
    _flops,
    _compile,
    _deprecations,
    _distributed,
    _skipped,
)


# --- assembly ---------------------------------------------------------------------------------


def _summary(doc: ProbeDocument) -> str:
    """What the run did; its readers (the report, the notes, the LLM's tool) name the
    outcome before it."""
    count = doc.steps_completed if doc.mode == "train" else doc.forward_passes
    unit = "optimizer step" if doc.mode == "train" else "forward pass"
    if doc.updated_by_hand:
        unit = "training step"
    unit = unit if count == 1 else f"{unit}es" if unit.endswith("s") else f"{unit}s"
    if doc.updated_by_hand:
        unit += " (no optimizer: one a backward pass)"
    median = doc.timing.median_step_ms
    timing = f", median step {median:.1f} ms" if median is not None else ""
    return f"{count} {unit} on {doc.device.name}{timing}"


def _notes(doc: ProbeDocument) -> list[str]:
    notes = [
        f"synthetic stand-in for {d.dataset} ({d.reason}); losses are not the real data's"
        for d in doc.synthetic_datasets
    ]
    if doc.worker_processes_left:
        notes.append(f"{doc.worker_processes_left} DataLoader worker(s) had to be terminated")
    notes += [f"probe error: {e.splitlines()[-1] if e else e}" for e in doc.probe_errors]
    return notes


def _skip_notes(cheap: bool) -> list[str]:
    if not cheap:
        return []
    skipped = " and ".join(f"{what} ({item})" for item, _how, what in CHEAP_SKIPS)
    return [f"--probes cheap skipped {skipped}"]


TRACEBACK_TAIL_LINES = 12


def _failure_excerpt(b: _Builder, finding: ProbeFinding) -> str:
    """The numbered source lines, then the traceback's last lines when the run raised."""
    excerpt = b.excerpt(finding.file, finding.line)
    trace = str(finding.data.get("traceback") or "").strip().splitlines()
    if not trace:
        return excerpt
    tail = "\n".join(trace[-TRACEBACK_TAIL_LINES:])
    return f"{excerpt}\n\nTraceback (last lines):\n{tail}" if excerpt else tail


def _evidence(b: _Builder, analysis_summary: str) -> list[Evidence]:
    version = f"schema {b.doc.schema_version}; torch {b.doc.torch_version}"
    out = [
        Evidence(
            source=SOURCE,
            source_version=version,
            kind="probe",
            message=f.message,
            file=f.file,
            line=f.line,
            excerpt=_failure_excerpt(b, f),
            data={
                "items": f.items,
                "verdict": "fail",
                "point": f.checkpoint,
                "probe": f.rule,
                "finding": {
                    "rule": f.rule,
                    "severity": f.severity.value,
                    "title": f.title,
                    "line": f.line,
                    "code": f.code,
                },
                **f.data,
            },
        )
        for f in b.findings
    ]
    out += [
        Evidence(
            source=SOURCE,
            source_version=version,
            kind="probe",
            message=str(place["message"]),
            file=str(place["file"]),
            line=int(place["line"]),
            excerpt=str(place["excerpt"]),
            data={
                "items": [],
                "point": f.checkpoint,
                "role": RELATED_ROLE,
                "end_line": int(place["end_line"]),
                "attach_to": attach_key(f.rule, f.file, f.line),
            },
        )
        for f in b.findings
        for place in f.data.get("related", [])
    ]
    failed_by_finding = {i for f in b.findings for i in f.items}
    for hint in b.coverage.values():
        if hint.item in failed_by_finding:
            continue
        out.append(
            Evidence(
                source=SOURCE,
                source_version=version,
                kind="probe",
                message=f"{hint.how}: {hint.reason}",
                file=b.script,
                data={
                    "items": [hint.item],
                    "verdict": hint.verdict,
                    "point": ITEMS_BY_ID[hint.item].point,
                    "probe": hint.how,
                },
            )
        )
    out.append(
        Evidence(
            source=SOURCE,
            source_version=version,
            kind="probe",
            message=f"{b.doc.outcome.kind}: {analysis_summary}",
            file=b.script,
            line=1,
            data={
                "items": [],
                "point": 1,
                "probe": "run",
                "outcome": b.doc.outcome.kind,
                "mode": b.doc.mode,
                "steps": b.doc.steps_completed,
                "loss": b.doc.loss.values,
                "median_step_ms": b.doc.timing.median_step_ms,
                "synthetic_datasets": [d.dataset for d in b.doc.synthetic_datasets],
            },
        )
    )
    return out


def probe_findings(
    doc: ProbeDocument | dict[str, Any],
    script_relpath: str,
    read_source: Callable[[str], str | None] | None = None,
    other_ranks: list[ProbeDocument] | None = None,
    cheap: bool = False,
    gap: MissingDependency | OutsidePath | NoCuda | None = None,
) -> ProbeAnalysis:
    """Evidence, findings and coverage hints from one probes run of `script_relpath`.
    `read_source(relpath)`, when given, supplies the text for numbered excerpts;
    `other_ranks`, for a run under torchrun, the documents of ranks 1.. (`doc` is rank 0's);
    `cheap`: the audit asked for the run alone (`CHEAP_SKIPS` were not tried); `gap`: what the
    audit's environment lacked when the run stopped on it (`evidence.run_gaps`): no failure of
    the code then, unless the project also leaves the package undeclared."""
    document = doc if isinstance(doc, ProbeDocument) else ProbeDocument.model_validate(doc)
    builder = _Builder(document, script_relpath, read_source, other_ranks, cheap, gap)
    # a failed run proves only that it fails: no measurement is read from it
    for check in (_outcome,) if run_failed(document) else _CHECKS:
        check(builder)
    summary = _summary(document)
    return ProbeAnalysis(
        outcome=document.outcome.kind,
        summary=summary,
        findings=builder.findings,
        coverage=builder.coverage,
        evidence=_evidence(builder, summary),
        notes=([gap.note()] if gap is not None else [])
        + _notes(document)
        + _skip_notes(cheap and not run_failed(document)),
        dataflow=document.dataflow,
        root_signatures=document.root_signatures,
        value_ranges=document.value_ranges,
        data_functions=document.data_functions,
        curves=RunCurves.from_document(document),
    )
