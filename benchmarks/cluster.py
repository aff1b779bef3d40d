"""What the Ray executor costs on one machine, and that it changes nothing in the findings.

The installed torch package's own sources (~2,285 files) are audited twice through the same
entry point as the CLI (offline, no peer linters): with the local executor (the engine's process
pool on this machine's cores), then with `TORCHDOCTOR_EXECUTOR=ray` on a two-node local Ray
cluster started here (`ray start`, head and worker on 127.0.0.1, this machine's cores split
between them; stopped by PID at the end). It prints both times, Ray's overhead, and whether the
findings are identical (exit 1 when not).

With `--run`, it also measures an audit with an instrumented run (examples/train_buggy.py under
the probes harness, the run sent to the worker node as a GPU job through a stand-in resource):
the cost the README's audits-per-hour-per-GPU-node estimate is computed from.

    .venv/bin/python benchmarks/cluster.py [--limit N] [--run]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.ray_cluster import RayCluster  # noqa: E402
from torchdoctor.agent.audit import AuditOptions, run_audit  # noqa: E402
from torchdoctor.agent.models import Finding  # noqa: E402

GPU_STAND_IN = "bench_gpu"


def torch_root() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("torch is not installed in this interpreter")
    return Path(spec.origin).parent


def limited_copy(root: Path, limit: int) -> Path:
    """The first `limit` .py files of torch, copied (a quicker run of the same shape)."""
    copy = Path(tempfile.mkdtemp(prefix="td-cluster-bench-"))
    for path in sorted(root.rglob("*.py"))[:limit]:
        target = copy / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return copy


class Audited(NamedTuple):
    seconds: float
    findings: list[Finding]
    runs: int
    stopped: set[str]
    """Files the engine stopped at its per-file deadline (a busy machine's doing)."""


def audit(target: Path, run: list[str] | None = None) -> Audited:
    """One offline audit without peer linters."""
    options = AuditOptions(
        target=target,
        offline=True,
        linters=False,
        search_parents=False,
        write_ledger=False,
        run=run or [],
        steps=5,
    )
    started = time.perf_counter()
    outcome = run_audit(options)
    report = outcome.report
    stopped = {n.file for n in report.summary.files_skipped if "deadline" in n.reason}
    runs = len(report.provenance.extra.get("runs", []))
    return Audited(time.perf_counter() - started, report.findings, runs, stopped)


def signature(findings: list[Finding], leave_out: set[str]) -> list[str]:
    return [f.model_dump_json() for f in findings if f.file not in leave_out]


def describe(name: str, audited: Audited) -> None:
    print(
        f"{name:<27}{audited.seconds:8.1f}s  {len(audited.findings)} findings, "
        f"{len(audited.stopped)} files stopped at the per-file deadline"
    )


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    parser.add_argument("--run", action="store_true", help="also time an audit with a run")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="td-cluster-home-"))
    os.environ["TORCHDOCTOR_HOME"] = str(home)  # checkpoints of the audits with a run
    root = torch_root()
    target = limited_copy(root, args.limit) if args.limit else root
    example = Path(tempfile.mkdtemp(prefix="td-cluster-run-"))
    shutil.copyfile(REPO / "examples" / "train_buggy.py", example / "train_buggy.py")
    files = sum(1 for _ in target.rglob("*.py"))
    cores = os.cpu_count() or 1
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch sources: {files} files under {target}; {cores} cores, load {load}")
    os.environ.pop("TORCHDOCTOR_EXECUTOR", None)
    audit(example)  # warm-up: the audit machinery's imports are not the executor's cost
    local = audit(target)
    describe("local executor:", local)
    if args.run:
        print(
            f"audit with a run, local:   {audit(example, ['python train_buggy.py']).seconds:8.1f}s"
        )

    cluster = RayCluster()
    try:
        started = time.perf_counter()
        half = max(1, cores // 2)
        cluster.start(head_cpus=half, workers=[(half, {GPU_STAND_IN: 1})])
        print(f"two-node Ray cluster up:   {time.perf_counter() - started:8.1f}s (not counted)")
        os.environ.update(
            {k: v for k, v in cluster.env.items() if k.startswith("RAY_")},
            TORCHDOCTOR_EXECUTOR="ray",
            TORCHDOCTOR_RAY_GPU_RESOURCE=GPU_STAND_IN,
        )
        first = audit(target)  # connects, starts the workers, ships the rule code
        describe("Ray executor, first audit:", first)
        on_ray = audit(target)
        describe("Ray executor:", on_ray)
        if args.run:
            with_run = audit(example, ["python train_buggy.py"])
            print(f"audit with a run, on Ray:  {with_run.seconds:8.1f}s  (run on the GPU node)")
    finally:
        cluster.stop()
        os.environ.pop("TORCHDOCTOR_EXECUTOR", None)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(example, ignore_errors=True)
        if args.limit:
            shutil.rmtree(target, ignore_errors=True)
    stopped = local.stopped | on_ray.stopped
    same = signature(local.findings, stopped) == signature(on_ray.findings, stopped)
    whole = signature(local.findings, set()) == signature(on_ray.findings, set())
    print(
        f"identical findings: {'yes' if same else 'NO'}"
        + (
            f" (all {len(local.findings)})"
            if whole
            else f", outside the {len(stopped)} files a deadline stopped"
        )
    )
    print(
        f"Ray's overhead on one machine: {on_ray.seconds - local.seconds:+.1f}s "
        f"({on_ray.seconds / local.seconds:.2f}x the local executor's time)"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
