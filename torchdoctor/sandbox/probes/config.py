"""The harness's command line, parsed into one frozen config."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import torch

from torchdoctor.sandbox.probes.distributed import launched_rank

DEFAULT_TIME_BUDGET_S = 600.0


@dataclass(frozen=True)
class ProbeConfig:
    script: str
    script_args: tuple[str, ...] = ()
    steps: int = 20
    out: str = "evidence.json"
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    grace_s: float = 10.0
    probes: frozenset[str] = field(default_factory=frozenset)
    determinism_steps: int = 0
    export: bool = False
    int8: bool = False
    seed: int | None = None
    sample_every: int = 1
    flush_every: int = 1
    compile_backend: str = "inductor"
    flops: bool = True
    trace_files: tuple[str, ...] = ()
    """Files (relative to the working folder) whose executed lines the run records."""
    groups: str | None = None
    """Where each evaluated row's group is, for per-group metrics (see probes/groups.py)."""
    module: str | None = None
    """Run `script` as this module (`python -m pkg.train`): its package's relative imports
    resolve, and the working folder, not the script's, heads sys.path."""

    @property
    def flop_step(self) -> int:
        """One step away from the first (warm-up, lazy init) when the run is long enough."""
        return 1 if self.steps >= 3 else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchdoctor.sandbox.probes",
        description="Run a training or inference script for a bounded number of steps, "
        "instrumented, and write an evidence document. Arguments the harness does not know "
        "are passed to the script; put the script's own arguments after `--` when they clash.",
    )
    parser.add_argument("script")
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="optimizer steps (backward passes when parameters are updated by hand; forwards for "
        "inference)",
    )
    parser.add_argument("--out", default="evidence.json")
    parser.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET_S)
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds after the budget before a stuck script is killed",
    )
    parser.add_argument("--probe", action="append", default=[], choices=["compile"])
    parser.add_argument(
        "--determinism",
        type=int,
        default=0,
        metavar="K",
        help="compare the losses of two seeded runs of K steps",
    )
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help="activation/NaN sampling interval (default 1 on CPU, 10 on CUDA)",
    )
    parser.add_argument(
        "--flush-every",
        type=int,
        default=None,
        help="steps between device reads (default 1 on CPU, 25 on CUDA)",
    )
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument(
        "--groups",
        default=None,
        help="per-group metrics of evaluation outputs: batch:GROUP_POS:LABEL_POS or "
        "feature:COLUMN:LABEL_POS",
    )
    parser.add_argument(
        "--module",
        default=None,
        help="run SCRIPT as this module, as `python -m MODULE` does (SCRIPT is its file)",
    )
    parser.add_argument(
        "--trace-lines",
        action="append",
        default=[],
        metavar="FILE",
        help="record which lines of FILE (relative to the working folder) the run executes",
    )
    return parser


def parse_args(argv: list[str]) -> ProbeConfig:
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    ns, extra = _parser().parse_known_args(argv)
    cuda = torch.cuda.is_available()
    ranks = launched_rank()
    if ranks is not None:
        # Each rank writes its own document; the probes that re-run or re-trace the model in
        # one process (determinism, export, int8, compile) do not apply to a distributed run.
        ns.out = rank_path(ns.out, ranks[0])
        ns.determinism, ns.export, ns.int8, ns.probe = 0, False, False, []
    return ProbeConfig(
        script=os.path.abspath(ns.script),  # the script may chdir; paths must not move
        script_args=tuple(extra + passthrough),
        steps=max(ns.steps, 1),
        out=os.path.abspath(ns.out),
        time_budget_s=ns.time_budget,
        grace_s=ns.grace,
        probes=frozenset(ns.probe),
        determinism_steps=ns.determinism,
        export=ns.export,
        int8=ns.int8,
        seed=ns.seed,
        sample_every=ns.sample_every if ns.sample_every is not None else (10 if cuda else 1),
        flush_every=ns.flush_every if ns.flush_every is not None else (25 if cuda else 1),
        compile_backend=ns.compile_backend,
        flops=not ns.no_flops,
        trace_files=tuple(ns.trace_lines),
        groups=ns.groups,
        module=ns.module,
    )


def rank_path(out: str, rank: int) -> str:
    """`evidence.json` for rank 0 (the document the host reads first), `evidence.rank1.json`..."""
    if rank == 0:
        return out
    stem, ext = os.path.splitext(out)
    return f"{stem}.rank{rank}{ext}"
