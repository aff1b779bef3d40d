"""torchdoctor's fix pipeline on a naive GPT-2 training script, then a timed A/B.

1. audit `gpt2_naive_train.py` (a copy; the repository file is never touched) with the static
   engine and the offline reasoner;
2. `propose_and_verify`: every codemod fix verified in the sandbox through the probes harness
   (N seeded steps: smoke run, loss trajectory within the fix's tolerance, a speed-up beyond
   noise for performance fixes), then all verified fixes verified together;
3. `apply_fixes` writes the verified combination into the copy -> `<out>/gpt2_fixed_train.py`;
4. times the original and the fixed script in this same call (alternating, `--repeats`),
   and reports tokens/s, the speed-up, MFU against the GPU's dense bf16 peak
   (6·N + 12·L·H·Q·T FLOPs per token), and whether the seeded losses stay within bf16
   tolerance.

One command, needs torch plus this repository (and its Python deps) on PYTHONPATH:

    python benchmarks/gpt2_fix_bench.py                      # H100: GPT-2 small, batch 8 x 1024
    python benchmarks/gpt2_fix_bench.py --tiny --steps 8     # CPU smoke test of the whole path
    python benchmarks/gpt2_fix_bench.py --stage time         # re-time an existing fixed script
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchdoctor.agent.checks.base import EngineConfig  # noqa: E402
from torchdoctor.agent.checks.engine import analyse_files  # noqa: E402
from torchdoctor.agent.checks.registry import rules_by_id  # noqa: E402
from torchdoctor.agent.config import RunBudget  # noqa: E402
from torchdoctor.agent.fixes.apply import apply_fixes  # noqa: E402
from torchdoctor.agent.fixes.codemods import all_codemods  # noqa: E402
from torchdoctor.agent.fixes.pipeline import propose_and_verify  # noqa: E402
from torchdoctor.agent.fixes.stats import trajectories_match  # noqa: E402
from torchdoctor.agent.models import Finding  # noqa: E402
from torchdoctor.agent.reasoning.base import PointRequest  # noqa: E402
from torchdoctor.agent.reasoning.offline import OfflineReasoner  # noqa: E402
from torchdoctor.sandbox.config import get_sandbox  # noqa: E402
from torchdoctor.sandbox.probes.gpu_peaks import peak_tflops  # noqa: E402

NAIVE = Path(__file__).with_name("gpt2_naive_train.py")
LOSS_RTOL = 2e-2
GPU_BUDGET = RunBudget(
    wall_s=540,
    cpu_s=7200,
    memory_mb=65536,
    processes=8192,
    file_size_mb=4096,
    disk_mb=16384,
    open_files=8192,
)
FULL_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}
TINY_SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}


def audit(workspace: Path) -> list[Finding]:
    """Findings as the audit graph makes them: static engine, then the offline reasoner."""
    source = (workspace / "train.py").read_text()
    config = EngineConfig(select=frozenset(all_codemods()))
    raw = analyse_files([("train.py", source)], config, workers=1).all_findings()
    rules = rules_by_id()
    findings: list[Finding] = []
    for point in sorted({rules[r.rule].point for r in raw}):
        request = PointRequest(
            point=point, raw_findings=[r for r in raw if rules[r.rule].point == point]
        )
        findings += OfflineReasoner().reason(request).findings
    return findings


def fix(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="gpt2-fix-") as tmp:
        workspace = Path(tmp)
        shutil.copy(NAIVE, workspace / "train.py")
        findings = audit(workspace)
        command = ["python", "train.py", "--batch-size", str(args.batch_size)]
        command += ["--steps", str(args.verify_steps + 5)] + (["--tiny"] if args.tiny else [])
        cuda = torch.cuda.is_available()
        started = time.perf_counter()
        result = propose_and_verify(
            workspace,
            findings,
            get_sandbox(),
            run_command=command,
            steps=args.verify_steps,
            timing_runs=args.timing_runs,
            gpu=cuda,
            budget=GPU_BUDGET if cuda else None,
            progress=lambda line: print(
                f"  [{time.perf_counter() - started:6.0f}s] {line}", flush=True
            ),
        )
        verify_s = time.perf_counter() - started
        applied = apply_fixes(workspace, result, force=True)
        shutil.copy(workspace / "train.py", out / "gpt2_fixed_train.py")
    fixes = [
        {
            "rule": f.rule,
            "kind": all_codemods()[f.rule].kind.value if f.rule in all_codemods() else None,
            "verified": f.fix.verified,
            "steps": [v.model_dump() for v in f.fix.verification],
        }
        for f in result
        if f.fix is not None
    ]
    unfixed = sorted({f.rule for f in result if f.fix is None})
    report = {
        "verify_seconds": verify_s,
        "fixes": fixes,
        "no_codemod_or_not_applicable": unfixed,
        "applied": [f.rule for f in result if f.id in applied.applied],
        "skipped": applied.skipped,
    }
    (out / "verification.json").write_text(json.dumps(report, indent=2))
    for entry in fixes:
        last = entry["steps"][-1] if entry["steps"] else {"step": "-", "detail": ""}
        verdict = "VERIFIED" if entry["verified"] else f"not verified ({last['step']})"
        print(f"  {entry['rule']:<28} {entry['kind'] or '':<12} {verdict}: {last['detail']}")
    return report


def run_script(script: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(script), "--steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size)] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{script.name} failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    summary["losses"] = [entry["loss"] for entry in lines[:-1]]
    return summary


def flops_per_token(parameters: int, shape: dict[str, int]) -> float:
    """6·N (forward+backward matmuls, position embeddings excluded) + 12·L·H·Q·T attention."""
    n = parameters - shape["block_size"] * shape["n_embd"]
    head = shape["n_embd"] // shape["n_head"]
    return 6 * n + 12 * shape["n_layer"] * shape["n_head"] * head * shape["block_size"]


def time_both(args: argparse.Namespace, fixed: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"original": [], "fixed": []}
    for _ in range(args.repeats):  # alternate, so machine drift hits both alike
        runs["original"].append(run_script(NAIVE, args))
        runs["fixed"].append(run_script(fixed, args))
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    device = runs["original"][0]["device"]
    peak = peak_tflops(device)
    summary: dict[str, Any] = {"device": device, "peak_bf16_dense_tflops": peak}
    for name, results in runs.items():
        tps = [r["tokens_per_s"] for r in results]
        per_token = flops_per_token(results[0]["parameters"], shape)
        median = statistics.median(tps)
        summary[name] = {
            "tokens_per_s_median": median,
            "tokens_per_s_runs": tps,
            "tflops": per_token * median / 1e12,
            "mfu": per_token * median / (peak * 1e12) if peak else None,
        }
    summary["speed_up"] = (
        summary["fixed"]["tokens_per_s_median"] / summary["original"]["tokens_per_s_median"]
    )
    same, detail = trajectories_match(
        runs["original"][0]["losses"], runs["fixed"][0]["losses"], LOSS_RTOL
    )
    summary["loss_within_tolerance"] = same
    summary["loss_comparison"] = detail
    summary["final_loss"] = {
        "original": runs["original"][0]["losses"][-1],
        "fixed": runs["fixed"][0]["losses"][-1],
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "fix", "time"], default="all")
    parser.add_argument("--steps", type=int, default=30, help="steps of each timed run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--verify-steps", type=int, default=14, help="probe steps per check")
    parser.add_argument("--timing-runs", type=int, default=1, help="runs per side, fix check")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpt2-fix-bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if args.stage in ("all", "fix"):
        print("fix pipeline (each fix verified in the sandbox):")
        report["fix"] = fix(args, args.out)
    if args.stage in ("all", "time"):
        report["timing"] = time_both(args, args.out / "gpt2_fixed_train.py")
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.get("timing", {}).items()}, indent=2))
    print(f"fixed script: {args.out / 'gpt2_fixed_train.py'}; report: {args.out / 'bench.json'}")


if __name__ == "__main__":
    main()
