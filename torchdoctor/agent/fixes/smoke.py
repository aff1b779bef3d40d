"""What fix verification reads from a harness run (`agent.harness` runs it): N seeded steps of
the run command, reduced to losses, steady-state step times and symptoms (under torchrun, rank
0's, with the distributed findings of every rank).
"""

from __future__ import annotations

import math
import posixpath
import shlex
from pathlib import Path

from torchdoctor.agent.evidence.distributed import distributed_rules
from torchdoctor.agent.evidence.probe_schema import Loader, ProbeDocument
from torchdoctor.agent.evidence.run_gaps import missing_file, missing_module
from torchdoctor.agent.fixes.models import RunSignals, SmokeRun
from torchdoctor.agent.harness import Harness, HarnessCall
from torchdoctor.agent.launch import parse_launch

_OK_OUTCOMES = {"completed-steps", "script-finished", "no-optimizer", "no-model"}
"""Runs that reached their step count or ended by themselves without an error: an inference
script's few forwards (`no-optimizer`) and an export script, whose `torch.onnx.export` traces
the model without an eager forward (`no-model`), ran as they should."""


def smoke_run(
    harness: Harness,
    workspace: Path,
    run_command: list[str],
    steps: int,
    *,
    seed: int | None = 0,
    hash_seed: int = 0,
    trace: list[str] | None = None,
    extra_memory_mb: int = 0,
    wall_s: float | None = None,
) -> SmokeRun:
    """N seeded steps of the run command on `workspace`, through the audit's harness; `trace`:
    files (relative to `workspace`) whose executed lines the run records; `hash_seed`: its
    PYTHONHASHSEED (fixed, as the runs it is compared with); `extra_memory_mb`:
    host memory on top of the budget, for what a fix starts beside the script (torch.compile's
    compile workers); `wall_s`: a wall limit below the harness budget's (the fix time left)."""
    launch = parse_launch(shlex.join(run_command))
    call = HarnessCall(
        script=launch.script,
        args=launch.args,
        module=launch.module,
        steps=steps,
        seed=seed,
        hash_seed=hash_seed,
        nproc=launch.nproc,
        flops=False,
        trace=trace or [],
        extra_memory_mb=extra_memory_mb,
        wall_s=wall_s,
    )
    done = harness.run(workspace, call)
    if done.document is None:
        return SmokeRun(ok=False, detail=f"{done.outcome}: {done.problem}".strip())
    run = smoke_run_from_evidence(done.document, done.ranks, script=launch.script)
    usage = done.run.usage
    return run.model_copy(update={"peak_host_mb": usage.peak_memory_mb, "wall_s": usage.wall_s})


def smoke_run_from_evidence(
    evidence: ProbeDocument, other_ranks: list[ProbeDocument] | None = None, script: str = ""
) -> SmokeRun:
    """Reduce the probes' evidence document to losses, steady step times and symptoms; under
    torchrun, rank 0's, with the distributed findings of all the ranks' documents. `script`:
    the run's script (relative to the workspace), whose folder the harness names the failed
    line's file from; the run names it from the workspace, as the patches do."""
    outcome = evidence.outcome
    ok = outcome.kind in _OK_OUTCOMES or (outcome.kind == "sys-exit" and not outcome.exit_code)
    folder = posixpath.dirname(script)
    file = posixpath.normpath(posixpath.join(folder, outcome.file)) if outcome.file else None
    detail = f"{outcome.kind}: {outcome.detail}".strip()
    if outcome.error_type:
        detail += f" ({outcome.error_type} at {file}:{outcome.line})"
    losses = [math.nan if v is None else float(v) for v in evidence.loss.values]
    memory = evidence.memory
    scanned = {scan.step for scan in memory.graph_scans}
    steady = [
        ms / 1e3
        for step, ms in enumerate(evidence.timing.step_ms)
        if ms is not None and step >= 1 and step not in scanned
    ]
    issues = evidence.mode_issues
    signals = RunSignals(
        graph_retention=memory.retention,
        train_mode_forwards_without_grad=sum(
            i.count for i in issues if i.kind == "train-mode-at-inference"
        ),
        grad_norms=[n for n in evidence.gradients.global_norm if n is not None],
        data_wait_share=evidence.dataloader.wait_share,
        worker_epochs=worker_epochs(evidence.dataloader.loaders),
        first_batch_wait_s=evidence.dataloader.first_step_wait_s,
        joules_per_step=evidence.energy.joules_per_step if evidence.energy else None,
        distributed_findings=distributed_rules([evidence, *(other_ranks or [])]),
    )
    return SmokeRun(
        ok=ok,
        detail=detail,
        losses=losses,
        forwards=evidence.forward_passes if evidence.mode == "inference" else None,
        step_times_s=steady,
        signals=signals,
        executed_lines=dict(evidence.executed_lines),
        stopped_in_loop=outcome.kind == "completed-steps",
        cuda_available=evidence.device.cuda_available,
        error_at=(file, outcome.line) if file and outcome.line and not ok else None,
        missing_module=None if ok else missing_module(outcome.error_type, outcome.detail),
        missing_file=None if ok else missing_file(outcome.error_type, outcome.detail),
    )


def worker_epochs(loaders: list[Loader]) -> list[tuple[int, int | None]]:
    """(epochs begun, batches per epoch) of each loader with worker processes: what a fix
    that keeps the workers between epochs can be timed on."""
    return [(x.iterators, x.batches_per_epoch) for x in loaders if x.num_workers > 0]
