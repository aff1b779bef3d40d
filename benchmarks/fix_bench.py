"""torchdoctor's fix pipeline on a naive workload, then a timed, energy-metered A/B.

Workloads (the naive scripts beside this file):
    gpt2    gpt2_naive_train.py   GPT-2 small trainer      tokens/s, target >= 10x, MFU >= 0.40
    resnet  resnet_naive_train.py ResNet-style trainer     images/s, target >= 3x
    infer   infer_naive.py        batch-of-one inference   samples/s, target >= 5x, same outputs

1. audit a copy of the script (static engine, every codemod's rule selected, offline reasoner);
2. `propose_and_verify`: each fix verified in the sandbox through the probes harness (smoke
   run, loss trajectory within the fix's tolerance, for performance fixes a bootstrapped 95%
   interval of the speed-up that clears 1%), then all verified fixes together;
3. `apply_fixes` writes the verified combination -> `<out>/<workload>_fixed.py`;
4. times original and fixed alternately (`--repeats`), sampling GPU power through NVML
   (nvidia-ml-py, when importable) inside each script's timed window: throughput, speed-up
   with its bootstrap interval, FLOPs per step (FlopCounterMode, or 6N+12LHQT for GPT-2),
   TFLOP/s and MFU against the GPU's dense bf16 peak, joules per step, kWh and cost per epoch
   at `--price-per-kwh`, and the peak host memory of each run's process tree.

    python benchmarks/fix_bench.py --workload resnet                 # GPU
    python benchmarks/fix_bench.py --workload infer --tiny           # CPU smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchdoctor.agent.checks.base import EngineConfig  # noqa: E402
from torchdoctor.agent.checks.engine import analyse_files  # noqa: E402
from torchdoctor.agent.checks.registry import rules_by_id  # noqa: E402
from torchdoctor.agent.config import RunBudget  # noqa: E402
from torchdoctor.agent.fixes.apply import apply_fixes  # noqa: E402
from torchdoctor.agent.fixes.codemods import all_codemods, fix_order  # noqa: E402
from torchdoctor.agent.fixes.codemods.no_torch_compile import COMPILE_MODES  # noqa: E402
from torchdoctor.agent.fixes.combine import merge_fixes  # noqa: E402
from torchdoctor.agent.fixes.diffs import PatchError  # noqa: E402
from torchdoctor.agent.fixes.pipeline import propose_and_verify, propose_patch  # noqa: E402
from torchdoctor.agent.fixes.stats import speed_up, trajectories_agree  # noqa: E402
from torchdoctor.agent.models import Finding, Fix  # noqa: E402
from torchdoctor.agent.reasoning.base import PointRequest  # noqa: E402
from torchdoctor.agent.reasoning.offline import OfflineReasoner  # noqa: E402
from torchdoctor.sandbox.config import get_sandbox  # noqa: E402
from torchdoctor.sandbox.probes.gpu_peaks import peak_tflops  # noqa: E402

HERE = Path(__file__).resolve().parent
GPU_BUDGET = RunBudget(
    wall_s=300,
    cpu_s=7200,
    memory_mb=65536,
    processes=8192,
    file_size_mb=4096,
    disk_mb=16384,
    open_files=8192,
)
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}
GPT2_TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}


@dataclass(frozen=True)
class Workload:
    script: str
    unit: str
    size_flag: str
    """The script's flag for how much to run (`--steps` or `--samples`)."""
    timed: int
    verify: int
    """Probe steps of each verification run. The harness's graph scans (steps 0-8, then powers
    of two) are left out of the timing: 14 steps kept 5 per run on the H200, 30 keep 20."""
    batch: list[str] = field(default_factory=list)
    tolerance: float = 2e-2
    epoch_samples: int = 0
    """Samples (tokens, images) of one epoch, for the per-epoch energy and cost."""
    compares: str = "losses"


WORKLOADS = {
    "gpt2": Workload(
        "gpt2_naive_train.py",
        "tokens",
        "--steps",
        30,
        30,
        ["--batch-size", "8"],
        epoch_samples=9_000_000_000,
    ),
    "resnet": Workload(
        "resnet_naive_train.py",
        "images",
        "--steps",
        40,
        30,
        ["--batch-size", "256"],
        epoch_samples=1_281_167,
    ),
    "infer": Workload(
        "infer_naive.py", "samples", "--samples", 400, 40, epoch_samples=50_000, compares="logits"
    ),
}


# --- the fix pipeline -----------------------------------------------------------------------


def audit(workspace: Path, name: str) -> list[Finding]:
    """Findings as the audit graph makes them: static engine, then the offline reasoner."""
    source = (workspace / name).read_text()
    config = EngineConfig(select=frozenset(all_codemods()))
    raw = analyse_files([(name, source)], config, workers=1).all_findings()
    rules = rules_by_id()
    findings: list[Finding] = []
    for point in sorted({rules[r.rule].point for r in raw}):
        request = PointRequest(
            point=point, raw_findings=[r for r in raw if rules[r.rule].point == point]
        )
        findings += OfflineReasoner().reason(request).findings
    return findings


def fix(args: argparse.Namespace, work: Workload, out: Path) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="fix-bench-") as tmp:
        workspace = Path(tmp)
        shutil.copy(args.start_from or HERE / work.script, workspace / work.script)
        findings = audit(workspace, work.script)
        command = ["python", work.script, work.size_flag, str(work.verify + 6), *work.batch]
        command += ["--tiny"] if args.tiny else []
        cuda = torch.cuda.is_available()
        started = time.perf_counter()
        result = propose_and_verify(
            workspace,
            findings,
            get_sandbox(),
            run_command=command,
            steps=work.verify,
            timing_runs=args.timing_runs,
            max_timing_runs=args.max_timing_runs,
            gpu=cuda,
            budget=GPU_BUDGET if cuda else None,
            compile_modes=tuple(args.compile_modes.split(",")),
            deadline=time.monotonic() + args.fix_budget_s if args.fix_budget_s else None,
            progress=lambda line: print(
                f"  [{time.perf_counter() - started:6.0f}s] {line}", flush=True
            ),
        )
        verify_s = time.perf_counter() - started
        applied = apply_fixes(workspace, result, force=True)
        shutil.copy(workspace / work.script, out / f"{args.workload}_fixed.py")
    fixes = []
    for finding in result:
        if finding.fix is None:
            why = [e.message for e in finding.evidence if e.source == "torchdoctor-codemod"]
            if why:
                fixes.append({"rule": finding.rule, "verified": False, "why": why[0]})
            continue
        speed = [v for v in finding.fix.verification if v.step.endswith("speed-up")]
        ladder = [v.detail for v in finding.fix.verification if v.step == "compile-ladder"]
        last = finding.fix.verification[-1] if finding.fix.verification else None
        fixes.append(
            {
                "rule": finding.rule,
                "verified": finding.fix.verified,
                "speed_up": speed[-1].detail if speed else None,
                "last_step": f"{last.step}: {last.detail}" if last else None,
                **({"compile_ladder": ladder[0]} if ladder else {}),
            }
        )
    report = {
        "verify_seconds": verify_s,
        "fixes": fixes,
        "applied": [f.rule for f in result if f.id in applied.applied],
    }
    for entry in fixes:
        verdict = "VERIFIED" if entry["verified"] else "not verified"
        detail = entry.get("speed_up") or entry.get("last_step") or entry.get("why")
        print(f"  {entry['rule']:<28} {verdict}: {detail}", flush=True)
        if "compile_ladder" in entry:
            print(f"  {'':<28} compile ladder: {entry['compile_ladder']}", flush=True)
    return report


def propose_all(args: argparse.Namespace, work: Workload, out: Path) -> dict[str, Any]:
    """Every fix the codemods propose, merged in phase order WITHOUT verification: the ceiling
    the codemods could reach, written as `<workload>_fixed.py` for `--stage time` when a GPU
    run of the whole verifying pipeline does not fit the time at hand. Said so in the report."""
    with tempfile.TemporaryDirectory(prefix="fix-bench-") as tmp:
        workspace = Path(tmp)
        shutil.copy(args.start_from or HERE / work.script, workspace / work.script)
        findings = sorted(audit(workspace, work.script), key=fix_order)
        kept: list[Finding] = []
        refused: dict[str, str] = {}
        for finding in findings:
            patch = propose_patch(workspace, finding)
            if patch is None:
                refused[finding.rule] = "no codemod patch"
                continue
            candidate = finding.model_copy(update={"fix": Fix(diff=patch.diff)})
            try:
                merge_fixes(workspace, [*kept, candidate])
            except PatchError as err:
                refused[finding.rule] = f"conflicts with the fixes before it: {err}"
                continue
            kept.append(candidate)
        texts = merge_fixes(workspace, kept)
        text = texts.get(work.script, (workspace / work.script).read_text())
        (out / f"{args.workload}_fixed.py").write_text(text)
    report = {"unverified": [f.rule for f in kept], "not_proposed": refused}
    print(f"  merged without verification: {', '.join(report['unverified'])}", flush=True)
    for rule, why in refused.items():
        print(f"  {rule:<28} not merged: {why}", flush=True)
    return report


# --- timing, power, memory ------------------------------------------------------------------


class PowerSampler:
    """GPU board power through NVML every 50 ms, in a thread; nothing without nvidia-ml-py."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> PowerSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            self.samples.append((time.time(), watts))
            time.sleep(0.05)

    def joules(self, start: float, end: float) -> float | None:
        """Energy over [start, end]: mean sampled power times the duration."""
        inside = [w for t, w in self.samples if start <= t <= end]
        return statistics.fmean(inside) * (end - start) if len(inside) >= 3 else None


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (compile workers included)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def run_script(script: Path, work: Workload, args: argparse.Namespace) -> dict[str, Any]:
    logits = args.out / f"{script.stem}.logits.pt"
    command = [sys.executable, str(script), work.size_flag, str(work.timed), *work.batch]
    command += ["--tiny"] if args.tiny else []
    command += ["--out", str(logits)] if work.compares == "logits" else []
    peak_mb = 0.0
    with (
        PowerSampler() as power,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc,
    ):
        while proc.poll() is None:
            peak_mb = max(peak_mb, _tree_rss_mb(proc.pid))
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{script.name} failed:\n{stderr[-3000:]}")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    summary: dict[str, Any] = lines[-1]
    summary["losses"] = [entry["loss"] for entry in lines[:-1] if "loss" in entry]
    summary["peak_host_mb"] = peak_mb
    start, end = summary["window"]
    joules = power.joules(start, end)
    summary["joules_per_step"] = joules / summary["timed_steps"] if joules else None
    summary["logits"] = str(logits) if logits.exists() else None
    return summary


def flops_per_step(args: argparse.Namespace, work: Workload, original: dict[str, Any]) -> float:
    """FLOPs of one step (a training step, or one forward for inference), counted on the
    naive model by FlopCounterMode; GPT-2 by the 6N + 12LHQT formula per token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if args.workload == "gpt2":
        shape = GPT2_TINY if args.tiny else GPT2_SHAPE
        n = original["parameters"] - shape["block_size"] * shape["n_embd"]
        head = shape["n_embd"] // shape["n_head"]
        per_token = 6 * n + 12 * shape["n_layer"] * shape["n_head"] * head * shape["block_size"]
        return float(per_token * original["batch_size"] * original["block_size"])
    spec = importlib.util.spec_from_file_location("naive", HERE / work.script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build(args.tiny)
    model, size = built[0], built[1]
    batch = 1 if args.workload == "infer" else int(work.batch[1]) if not args.tiny else 8
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if args.workload != "infer":
            out.sum().backward()
    return float(counter.get_total_flops())


def time_both(args: argparse.Namespace, work: Workload, fixed: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"original": [], "fixed": []}
    for repeat in range(args.repeats):  # alternate, so machine drift hits both alike
        for name, script in (("original", HERE / work.script), ("fixed", fixed)):
            result = run_script(script, work, args)
            runs[name].append(result)
            rate = result.get("samples_per_s", result.get("tokens_per_s"))
            # each run as it ends: a benchmark cut short by a time limit still says something
            print(f"  run {repeat + 1} {name}: {rate:,.1f} {work.unit}/s", flush=True)
    device = runs["original"][0]["device"]
    peak = peak_tflops(device)
    flops = flops_per_step(args, work, runs["original"][0])
    per_step = 1 if args.workload == "infer" else None
    summary: dict[str, Any] = {
        "workload": args.workload,
        "device": device,
        "peak_bf16_dense_tflops": peak,
        "flops_per_step": flops,
        "price_per_kwh": args.price_per_kwh,
    }
    for name, results in runs.items():
        rate = statistics.median(
            r["samples_per_s"] if "samples_per_s" in r else r["tokens_per_s"] for r in results
        )
        step_s = statistics.median(r["seconds"] / r["timed_steps"] for r in results)
        joules = [r["joules_per_step"] for r in results if r["joules_per_step"]]
        j_step = statistics.median(joules) if joules else None
        samples_per_step = per_step or rate * step_s
        kwh = j_step * work.epoch_samples / samples_per_step / 3.6e6 if j_step else None
        summary[name] = {
            f"{work.unit}_per_s": rate,
            "runs": [r.get("samples_per_s", r.get("tokens_per_s")) for r in results],
            "step_ms": step_s * 1e3,
            "tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / (peak * 1e12) if peak else None,
            "joules_per_step": j_step,
            "kwh_per_epoch": kwh,
            "cost_per_epoch": kwh * args.price_per_kwh if kwh else None,
            "peak_host_mb": max(r["peak_host_mb"] for r in results),
        }
    before = [[r["seconds"] / r["timed_steps"]] for r in runs["original"]]
    after = [[r["seconds"] / r["timed_steps"]] for r in runs["fixed"]]
    rate_key = f"{work.unit}_per_s"
    summary["speed_up"] = summary["fixed"][rate_key] / summary["original"][rate_key]
    if args.repeats >= 4:
        gain = speed_up(before, after)
        summary["step_time_gain_interval_95"] = gain.interval
    summary["behaviour"] = _compare(work, runs)
    return summary


def _compare(work: Workload, runs: dict[str, list[dict[str, Any]]]) -> str:
    if work.compares == "losses":
        original = runs["original"]
        same, detail = trajectories_agree(
            original[0]["losses"],
            runs["fixed"][0]["losses"],
            work.tolerance,
            original[1]["losses"] if len(original) > 1 else original[0]["losses"],
        )
        return f"losses {'within' if same else 'OUTSIDE'} tolerance: {detail}"
    import torch

    # the original runs in training mode (the bug); the reference is its model in eval mode
    fixed = torch.load(runs["fixed"][0]["logits"])
    reference = _reference_logits(fixed.shape[0])
    worst = ((fixed - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    agree = (fixed.argmax(1) == reference.argmax(1)).float().mean().item()
    ok = worst <= work.tolerance
    return (
        f"fixed logits vs eval-mode float32 reference: max relative deviation {worst:.2e} "
        f"({'within' if ok else 'OUTSIDE'} {work.tolerance:.0e}), top-1 agreement {agree:.1%}"
    )


def _reference_logits(count: int) -> Any:
    import torch

    spec = importlib.util.spec_from_file_location("naive", HERE / WORKLOADS["infer"].script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(1337)
    model, size = module.build(ARGS.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    images = torch.randn(count, 3, size, size)
    with torch.inference_mode():
        return torch.cat([model(images[i : i + 1].to(device)) for i in range(count)]).float().cpu()


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--stage", choices=["all", "fix", "propose", "time"], default="all")
    parser.add_argument("--timing-runs", type=int, default=2, help="runs per side, fix check")
    parser.add_argument("--verify-steps", type=int, default=None, help="probe steps per check")
    parser.add_argument("--max-timing-runs", type=int, default=4, help="while undecided")
    parser.add_argument("--repeats", type=int, default=4, help="timed runs per side")
    parser.add_argument("--price-per-kwh", type=float, default=0.15)
    parser.add_argument(
        "--compile-modes",
        default=",".join(COMPILE_MODES),
        help="torch.compile modes the ladder may try, comma-separated",
    )
    parser.add_argument(
        "--fix-budget-s",
        type=float,
        default=None,
        help="the fix stage should end by then: no verification is started that those so far "
        "say would overrun it (the rest stay unverified, the verified ones are combined and "
        "timed): one device call ends with a before/after",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        default=None,
        help="fix this script instead of the naive one (an earlier --stage fix's output, to "
        "go on where a device call's limit cut it); timing still compares with the naive one",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the trainers' batch (gpt2 8, resnet 256 by default), for the fix stage and the "
        "timing alike: a small batch leaves the GPU's throughput to kernel launches",
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fix-bench")
    args = ARGS = parser.parse_args()
    work = WORKLOADS[args.workload]
    if args.verify_steps:
        work = replace(work, verify=args.verify_steps)
    if args.batch_size:
        if not work.batch:
            parser.error(f"--batch-size: the {args.workload} workload has no batch to set")
        work = replace(work, batch=["--batch-size", str(args.batch_size)])
    if args.tiny:
        work = Workload(
            work.script,
            work.unit,
            work.size_flag,
            max(6, work.timed // 10),
            4,
            ["--batch-size", "8"] if work.batch else [],
            work.tolerance,
            work.epoch_samples,
            work.compares,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / f"{args.workload}_bench.json"
    # `--stage time` after `--stage fix` (two device calls): the fix report is kept
    report: dict[str, Any] = (
        json.loads(saved.read_text()) if args.stage == "time" and saved.is_file() else {}
    )
    if args.stage in ("all", "fix"):
        print(f"{args.workload}: fix pipeline (each fix verified in the sandbox):", flush=True)
        report["fix"] = fix(args, work, args.out)
        saved.write_text(json.dumps(report, indent=2))  # kept if the timing is cut short
    if args.stage == "propose":
        print(f"{args.workload}: every proposed fix, merged, NOT verified:", flush=True)
        report["proposed"] = propose_all(args, work, args.out)
    if args.stage in ("all", "time"):
        report["timing"] = time_both(args, work, args.out / f"{args.workload}_fixed.py")
    saved.write_text(json.dumps(report, indent=2))
    print(json.dumps(report.get("timing", {}), indent=2), flush=True)
    if "timing" in report:
        print(summary_text(work, report), flush=True)


def summary_text(work: Workload, report: dict[str, Any]) -> str:
    """The figures the issue asks of every benchmark, in a few lines."""
    timing = report["timing"]
    rate = f"{work.unit}_per_s"
    lines = [f"{timing['workload']} on {timing['device']}:"]
    for side in ("original", "fixed"):
        figures = timing[side]
        joules = figures["joules_per_step"]
        lines.append(
            f"  {side:<8} {figures[rate]:>12,.1f} {work.unit}/s  {figures['tflops']:8.3g} TFLOP/s"
            + (f"  MFU {figures['mfu']:.3f}" if figures["mfu"] is not None else "")
            + (f"  {joules:.3f} J/step" if joules is not None else "  no power reading")
        )
    interval = timing.get("step_time_gain_interval_95")
    lines.append(
        f"  speed-up {timing['speed_up']:.2f}x"
        + (f" (step-time gain 95% CI [{interval[0]:+.1%}, {interval[1]:+.1%}])" if interval else "")
        + f"; {timing['behaviour']}"
    )
    fixes = report.get("fix", {}).get("fixes")
    if fixes is None:
        lines.append(
            "  fixes: "
            + ", ".join(report.get("proposed", {}).get("unverified", []))
            + " (merged WITHOUT verification)"
        )
    for entry in fixes or []:
        verdict = "verified" if entry["verified"] else "not verified"
        detail = entry.get("speed_up") or entry.get("last_step") or entry.get("why")
        lines.append(f"  {entry['rule']:<28} {verdict}: {detail}")
    return "\n".join(lines)


ARGS: argparse.Namespace

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
