"""Bounded, seeded runs of the user's script through the sandbox and the probes harness.

The harness (`python -m sandbox.probes`) stops the script after N optimizer steps and writes
an evidence document; this module builds that job, runs it through any `Sandbox`, and reduces
the document to what fix verification compares: losses, steady-state step times, symptoms.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agent.fixes.models import SmokeRun
from sandbox.models import Job, Limits
from sandbox.protocol import Sandbox

EVIDENCE_FILE = ".torchdoctor-probe.json"
_OK_OUTCOMES = {"completed-steps", "script-finished"}
_PYTHON_FLAGS = {"-u", "-B", "-O", "-OO"}
REPO_ROOT = Path(__file__).resolve().parents[2]


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
        self, workspace: Path, run_command: list[str], steps: int, *, seed: int | None = 0
    ) -> SmokeRun:
        script, args = split_command(run_command)
        command = [self.python, "-m", "sandbox.probes", script, "--steps", str(steps)]
        command += ["--out", EVIDENCE_FILE, "--no-flops"]
        if seed is not None:
            command += ["--seed", str(seed)]
        command += ["--", *args]
        job = Job(
            workspace=workspace,
            command=command,
            env={"PYTHONPATH": str(REPO_ROOT)},
            limits=self.limits,
            collect=[EVIDENCE_FILE],
            gpu=self.gpu,
        )
        result = self.sandbox.run(job)
        document = next((f for f in result.files if f.path.endswith(EVIDENCE_FILE)), None)
        if document is None:
            tail = (result.stderr or result.stdout)[-800:]
            return SmokeRun(ok=False, detail=f"{result.outcome}: {result.reason}\n{tail}".strip())
        try:
            evidence = json.loads(document.content)
        except ValueError as err:
            return SmokeRun(ok=False, detail=f"unreadable evidence document: {err}")
        return smoke_run_from_evidence(evidence)


def split_command(run_command: list[str]) -> tuple[str, list[str]]:
    """`python -u train.py --lr 1` -> ('train.py', ['--lr', '1'])."""
    tokens = list(run_command)
    while tokens and (Path(tokens[0]).name.startswith("python") or tokens[0] in _PYTHON_FLAGS):
        tokens.pop(0)
    if not tokens:
        raise ValueError(f"no script in run command {run_command!r}")
    return tokens[0], tokens[1:]


def smoke_run_from_evidence(evidence: dict[str, Any]) -> SmokeRun:
    """Reduce the probes' evidence document to losses, steady step times and symptoms."""
    outcome = evidence.get("outcome") or {}
    kind = outcome.get("kind", "")
    ok = kind in _OK_OUTCOMES or (kind == "sys-exit" and not outcome.get("exit_code"))
    detail = f"{kind}: {outcome.get('detail', '')}".strip()
    if outcome.get("error_type"):
        detail += f" ({outcome['error_type']} at {outcome.get('file')}:{outcome.get('line')})"
    loss = evidence.get("loss") or {}
    losses = [float("nan") if v is None else float(v) for v in loss.get("values", [])]
    memory = evidence.get("memory") or {}
    scanned = {g.get("step") for g in memory.get("graph_scans") or []}
    step_ms = (evidence.get("timing") or {}).get("step_ms") or []
    steady = [ms / 1e3 for step, ms in enumerate(step_ms) if step >= 1 and step not in scanned]
    mode_issues = evidence.get("mode_issues") or []
    syncs = evidence.get("syncs") or {}
    signals: dict[str, Any] = {
        "graph_retention": memory.get("retention"),
        "memory_slope_bytes_per_step": memory.get("slope_bytes_per_step"),
        "train_mode_forwards_without_grad": sum(
            i.get("count", 0) for i in mode_issues if i.get("kind") == "train-mode-at-inference"
        ),
        "eval_forwards_with_grad": sum(
            i.get("count", 0) for i in mode_issues if i.get("kind") == "eval-with-grad"
        ),
        "nonfinite": evidence.get("nonfinite"),
        "syncs_per_step": syncs.get("cuda_syncs_per_step"),
        "device": (evidence.get("device") or {}).get("name"),
        "grad_norms": (evidence.get("gradients") or {}).get("global_norm") or [],
    }
    return SmokeRun(ok=ok, detail=detail, losses=losses, step_times_s=steady, signals=signals)
