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


def audit(target: Path, run: list[str] | None = None) -> tuple[float, list[Finding], int]:
    """(seconds, findings, runs) of one offline audit without peer linters."""
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
    runs = outcome.report.provenance.extra.get("runs", [])
    return time.perf_counter() - started, outcome.report.findings, len(runs)


def signature(findings: list[Finding]) -> list[str]:
    return [f.model_dump_json() for f in findings]


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
    files = sum(1 for _ in target.rglob("*.py"))
    cores = os.cpu_count() or 1
    print(f"torch sources: {files} files under {target}; {cores} cores, load {os.getloadavg()}")
    os.environ.pop("TORCHDOCTOR_EXECUTOR", None)
    local_s, local, _ = audit(target)
    print(f"local executor:            {local_s:8.1f}s  {len(local)} findings")
    if args.run:
        example = Path(tempfile.mkdtemp(prefix="td-cluster-run-"))
        shutil.copyfile(REPO / "examples" / "train_buggy.py", example / "train_buggy.py")
        run_local_s, _, runs = audit(example, ["python train_buggy.py"])
        print(f"audit with a run, local:   {run_local_s:8.1f}s  ({runs} run)")

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
        first_s, _, _ = audit(target)  # connects, starts the workers, ships the rule code
        ray_s, on_ray, _ = audit(target)
        print(f"Ray executor, first audit: {first_s:8.1f}s  (connection and worker start-up)")
        print(f"Ray executor:              {ray_s:8.1f}s  {len(on_ray)} findings")
        if args.run:
            run_ray_s, _, runs = audit(example, ["python train_buggy.py"])
            print(f"audit with a run, on Ray:  {run_ray_s:8.1f}s  ({runs} run on the GPU node)")
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
        if args.limit:
            shutil.rmtree(target, ignore_errors=True)
    same = signature(local) == signature(on_ray)
    print(f"identical findings: {'yes' if same else 'NO'} ({len(local)} vs {len(on_ray)})")
    overhead = ray_s - local_s
    print(
        f"Ray's overhead on one machine: {overhead:+.1f}s ({ray_s / local_s:.2f}x the local "
        "executor): shipping sources to the object store, task scheduling, two raylets"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
