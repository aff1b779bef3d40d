"""Bounded, seeded runs of the user's script through the sandbox and the probes harness.

The harness (`python -m torchdoctor.sandbox.probes`) stops the script after N optimizer
steps and writes an evidence document; this module builds that job, runs it through any
`Sandbox`, and reduces the document to what fix verification compares: losses, steady-state
step times, symptoms.
"""

from __future__ import annotations

import math
import posixpath
import shlex
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from torchdoctor.agent.evidence.distributed import distributed_rules
from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.fixes.models import SmokeRun
from torchdoctor.agent.launch import harness_prefix, parse_launch
from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.models import Job, Limits
from torchdoctor.sandbox.protocol import Sandbox

EVIDENCE_FILE = ".torchdoctor-probe.json"
RANK_EVIDENCE_FILES = ".torchdoctor-probe.rank*.json"
_OK_OUTCOMES = {"completed-steps", "script-finished"}
HARNESS_MARGIN_S = 30.0


class ProbeRunner:
    """Runs a script for N steps under the probes harness, in a sandbox, on a workspace copy."""

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        python: str = sys.executable,
        limits: Limits | None = None,
        gpu: bool = False,
    ) -> None:
        self.sandbox = sandbox
        self.python = python
        self.limits = limits or Limits(wall_s=300, cpu_s=600, memory_mb=8192)
        self.gpu = gpu

    def run(
        self,
        workspace: Path,
        run_command: list[str],
        steps: int,
        *,
        seed: int | None = 0,
        trace: list[str] | None = None,
        extra_memory_mb: int = 0,
    ) -> SmokeRun:
        """`trace`: files (relative to `workspace`) whose executed lines the run records.
        `extra_memory_mb`: host memory on top of the script's limit, for what a fix starts
        beside the script (torch.compile's compile workers)."""
        limits = self.limits
        if extra_memory_mb:
            limits = limits.model_copy(update={"memory_mb": limits.memory_mb + extra_memory_mb})
        launch = parse_launch(shlex.join(run_command))
        command = harness_prefix(self.python, launch.nproc)
        command += ["-m", "torchdoctor.sandbox.probes", launch.script, "--steps", str(steps)]
        # the harness stops itself before the sandbox kills it, so the evidence gets written
        budget = max(10.0, self.limits.wall_s - HARNESS_MARGIN_S)
        command += ["--out", EVIDENCE_FILE, "--no-flops", "--time-budget", f"{budget:g}"]
        if seed is not None:
            command += ["--seed", str(seed)]
        for path in trace or []:
            command += ["--trace-lines", path]
        command += ["--", *launch.args]
        job = Job(
            workspace=workspace,
            command=command,
            env={"PYTHONPATH": str(PACKAGE_ROOT)},
            limits=limits,
            collect=[EVIDENCE_FILE, RANK_EVIDENCE_FILES],
            gpu=self.gpu,
        )
        result = self.sandbox.run(job)
        document = next((f for f in result.files if f.path.endswith(EVIDENCE_FILE)), None)
        if document is None:
            tail = (result.stderr or result.stdout)[-800:]
            return SmokeRun(ok=False, detail=f"{result.outcome}: {result.reason}\n{tail}".strip())
        try:
            evidence = ProbeDocument.model_validate_json(document.content)
            ranks = [
                ProbeDocument.model_validate_json(f.content)
                for f in sorted(result.files, key=lambda f: f.path)
                if fnmatch(posixpath.basename(f.path), RANK_EVIDENCE_FILES)
            ]
        except ValidationError as err:
            return SmokeRun(ok=False, detail=f"unreadable evidence document: {err}")
        run = smoke_run_from_evidence(evidence, ranks)
        usage = result.usage
        return run.model_copy(update={"peak_host_mb": usage.peak_memory_mb, "wall_s": usage.wall_s})


def smoke_run_from_evidence(
    evidence: ProbeDocument, other_ranks: list[ProbeDocument] | None = None
) -> SmokeRun:
    """Reduce the probes' evidence document to losses, steady step times and symptoms; under
    torchrun, rank 0's, with the distributed findings of all the ranks' documents."""
    outcome = evidence.outcome
    ok = outcome.kind in _OK_OUTCOMES or (outcome.kind == "sys-exit" and not outcome.exit_code)
    detail = f"{outcome.kind}: {outcome.detail}".strip()
    if outcome.error_type:
        detail += f" ({outcome.error_type} at {outcome.file}:{outcome.line})"
    losses = [math.nan if v is None else float(v) for v in evidence.loss.values]
    memory = evidence.memory
    scanned = {scan.step for scan in memory.graph_scans}
    steady = [
        ms / 1e3
        for step, ms in enumerate(evidence.timing.step_ms)
        if ms is not None and step >= 1 and step not in scanned
    ]
    issues = evidence.mode_issues
    signals: dict[str, Any] = {
        "graph_retention": memory.retention.model_dump() if memory.retention else None,
        "memory_slope_bytes_per_step": memory.slope_bytes_per_step,
        "train_mode_forwards_without_grad": sum(
            i.count for i in issues if i.kind == "train-mode-at-inference"
        ),
        "eval_forwards_with_grad": sum(i.count for i in issues if i.kind == "eval-with-grad"),
        "nonfinite": evidence.nonfinite.model_dump() if evidence.nonfinite else None,
        "syncs_per_step": evidence.syncs.cuda_syncs_per_step,
        "device": evidence.device.name,
        "grad_norms": [n for n in evidence.gradients.global_norm if n is not None],
        "joules_per_step": evidence.energy.joules_per_step if evidence.energy else None,
        "distributed_findings": distributed_rules([evidence, *(other_ranks or [])]),
    }
    return SmokeRun(
        ok=ok,
        detail=detail,
        losses=losses,
        step_times_s=steady,
        signals=signals,
        executed_lines=dict(evidence.executed_lines),
    )
