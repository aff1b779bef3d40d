"""Cost of watching: step time of a reference training loop, plain vs with the probes
harness's cheap probes on (module/optimizer/backward hooks, loss and gradient norms kept on
the device, activation sampling every k steps, graph scans on a sparse schedule).

Run: `PYTHONPATH=. python benchmarks/probe_overhead.py [--rounds 40] [--steps 10]
[--device cpu|cuda] [--batch N]`.
Each round runs a plain block and a probed block side by side (the order alternating
between rounds), each `--steps` timed steps after `--warmup` untimed ones (a fresh harness
session per probed block; the default 9 takes it past the graph scans of its first eight
steps). The step time drifts by more than the effect between blocks seconds apart (1-3 ms on
a 11-16 ms step on an H100), so the overhead is estimated per pair: each round's ratio of
block medians, their geometric mean, and a 95% bootstrap interval resampling rounds, then
steps (`stats.paired_ratio`). The unpaired figure (all steps of each variant pooled, runs
resampled independently, as the fix verifier does) is printed beside it.
Step times are per-step CUDA events on the GPU, wall clock on the CPU; the mean ratio also
carries the sparse, costly steps. The host time one step takes to issue is read in the same
blocks (on a launch-bound GPU loop that is what the probes add), then the host cost of each
per-step probe read.
Target: at most 1.05x on the GPU.

`--step-kinds` then times each step on the host by kind: ordinary steps, sampled steps (every
module's output read), flush steps (values read back) and graph-scan steps (the autograd graph
walked: the first eight, then powers of two), as the harness itself classes them, against the
plain loop's median, which shows where the probes' cost sits (use a small `--batch`, so the
host is what a step waits on).

`--ablate` then times the instrumented loop again with one probe part left out at a time
(the NVML power sampler, CUDA's sync debug mode, the sync wrappers, the per-step CUDA event,
the loss kept on device, the optimizer and module hooks, the allocator reads): which part
the overhead is.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from torchdoctor.agent.fixes.stats import PairedRatio, paired_ratio, speed_up
from torchdoctor.sandbox.probes import session as session_module
from torchdoctor.sandbox.probes.config import ProbeConfig
from torchdoctor.sandbox.probes.control import StopRun
from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.memory import MemoryProbe
from torchdoctor.sandbox.probes.numerics import GradientProbe, LossProbe
from torchdoctor.sandbox.probes.power import PowerProbe
from torchdoctor.sandbox.probes.session import Session
from torchdoctor.sandbox.probes.syncs import SyncProbe

# One probe part each: the attributes replaced by a no-op while that part is left out.
ABLATIONS: dict[str, list[tuple[object, str]]] = {
    "power sampler (NVML thread)": [(PowerProbe, "start")],
    "sync debug mode": [(SyncProbe, "set_cuda_mode")],
    "sync wrappers": [(SyncProbe, "install")],
    "per-step CUDA event": [(session_module, "cuda_in_use")],
    "loss kept on device": [
        (LossProbe, "on_criterion"),
        (LossProbe, "on_backward"),
        (LossProbe, "end_step"),
    ],
    "optimizer hooks": [(Session, "_optimizer_pre")],
    "root and loss module hooks": [(Session, "_own_pre"), (Session, "_own_post")],
    "allocator reads, graph scans": [(MemoryProbe, "end_step")],
    "gradient bookkeeping": [(GradientProbe, "before_step")],
}


def _off(*args: object, **kwargs: object) -> None:
    """A part left out: does nothing, answers None (falsy; a hook's None keeps the output)."""


@contextlib.contextmanager
def without(part: str) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name in ABLATIONS[part]]
    for owner, name, _ in saved:
        setattr(owner, name, _off)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@dataclass(frozen=True)
class Shape:
    width: int
    layers: int
    heads: int
    batch: int
    tokens: int


TARGET = 1.05
GPU_SHAPE = Shape(width=1024, layers=6, heads=16, batch=16, tokens=256)
CPU_SHAPE = Shape(width=128, layers=2, heads=4, batch=8, tokens=64)


def build(shape: Shape, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    layer = nn.TransformerEncoderLayer(
        shape.width, shape.heads, 4 * shape.width, dropout=0.1, batch_first=True
    )
    model = nn.Sequential(
        nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False),
        nn.LayerNorm(shape.width),
        nn.Linear(shape.width, 10),
    ).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def make_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, shape: Shape, device: torch.device
) -> Callable[[], None]:
    x = torch.randn(shape.batch, shape.tokens, shape.width, device=device)
    y = torch.randint(0, 10, (shape.batch,), device=device)
    criterion = nn.CrossEntropyLoss()
    autocast = device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = criterion(model(x).mean(dim=1), y)
        loss.backward()
        optimizer.step()

    return step


def timed(
    step: Callable[[], None], steps: int, warmup: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Per-step seconds, and the host seconds each step took to issue: CUDA events on the GPU
    (no host sync inside the loop), the wall clock for both on the CPU."""
    for _ in range(warmup):
        step()
    host = []
    if device.type == "cuda":
        events = [
            torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            for _ in range(steps + 1)
        ]
        torch.cuda.synchronize()
        events[0].record()
        for i in range(steps):
            start = time.perf_counter()
            step()
            host.append(time.perf_counter() - start)
            events[i + 1].record()
        torch.cuda.synchronize()
        return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)], host
    for _ in range(steps):
        start = time.perf_counter()
        step()
        host.append(time.perf_counter() - start)
    return list(host), host


def host_seconds(
    step: Callable[[], None], steps: int, warmup: int, device: torch.device
) -> list[float]:
    """Host time to issue each step (no sync inside the loop): the probes' cost as the CPU
    sees it, which on a launch-bound GPU loop is the step time."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return times


def per_call_us(call: Callable[[], object], repeats: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e6


def breakdown(model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None]) -> None:
    """Host microseconds of the per-step pieces: where a probe's cost goes."""
    step()
    grads = GradientProbe()
    costs: dict[str, Callable[[], object]] = {
        "gradient norms (foreach, on device)": lambda: grads.before_step(0, optimizer),
        "loss kept on device": lambda: (
            torch.ones((), device=next(model.parameters()).device).float().reshape(())
        ),
    }
    if torch.cuda.is_available():
        costs["torch.cuda.memory_allocated()"] = torch.cuda.memory_allocated
        costs["CUDA event record"] = lambda: torch.cuda.Event(enable_timing=True).record()  # type: ignore[no-untyped-call]
    for name, call in costs.items():
        print(f"  {name:<40} {per_call_us(call):8.1f} us")


def instrumented(
    step: Callable[[], None],
    steps: int,
    warmup: int,
    device: torch.device,
    sample_every: int | None,
) -> tuple[list[float], list[float], Session]:
    """`timed` with a fresh harness session installed for the block."""
    cuda = device.type == "cuda"
    config = ProbeConfig(
        script=__file__,
        steps=10**9,
        sample_every=sample_every or (10 if cuda else 1),
        flush_every=25 if cuda else 1,
    )
    session = Session(config, UserFiles(__file__))
    session.install()
    try:
        return *timed(step, steps, warmup, device), session
    except StopRun:
        raise RuntimeError("the benchmark must not reach the step limit") from None
    finally:
        session.uninstall()


@dataclass
class Blocks:
    """One variant's blocks: step times and host issue times, one list per round."""

    steps: list[list[float]]
    host: list[list[float]]


def side_by_side(
    step: Callable[[], None], args: argparse.Namespace, device: torch.device
) -> tuple[Blocks, Blocks, Session]:
    """`args.rounds` rounds of a plain and a probed block next to each other, plain first in
    even rounds and second in odd ones (a drift within a round weighs on neither side)."""
    plain, probed = Blocks([], []), Blocks([], [])
    session: Session | None = None
    for round_ in range(args.rounds):
        for probed_now in (round_ % 2 == 1, round_ % 2 == 0):
            if probed_now:
                times, host, session = instrumented(
                    step, args.steps, args.warmup, device, args.sample_every
                )
                probed.steps.append(times)
                probed.host.append(host)
            else:
                times, host = timed(step, args.steps, args.warmup, device)
                plain.steps.append(times)
                plain.host.append(host)
    assert session is not None
    return plain, probed, session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument(
        "--warmup",
        type=int,
        default=9,
        help="untimed steps before each block (a fresh session scans its first eight)",
    )
    parser.add_argument(
        "--rounds", type=int, default=40, help="pairs of plain and probed blocks side by side"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help="activation/NaN sampling interval (harness default per device)",
    )
    parser.add_argument(
        "--ablate", action="store_true", help="then time the probes with one part left out"
    )
    parser.add_argument(
        "--step-kinds", action="store_true", help="then the host time a step, by kind of step"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help=(
            "sequences per step (GPU default 16: host and device times close, where host "
            "jitter shows most; 64 keeps the GPU ahead)"
        ),
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    if args.batch:
        shape = replace(shape, batch=args.batch)
    torch.manual_seed(0)
    model, optimizer = build(shape, device)
    step = make_step(model, optimizer, shape, device)
    plain, probed, session = side_by_side(step, args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    flat_plain = [t for block in plain.steps for t in block]
    flat_probed = [t for block in probed.steps for t in block]
    paired = paired_ratio(plain.steps, probed.steps)
    unpaired = overhead_ratio(probed.steps, plain.steps)
    print(f"device: {name}; torch {torch.__version__}; shape {shape}")
    print(
        f"steps measured: {args.rounds} rounds of a plain and a probed block side by side, "
        f"{args.steps} timed steps each after {args.warmup} untimed"
    )
    print(
        f"plain        median {statistics.median(flat_plain) * 1e3:8.2f} ms  "
        f"mean {statistics.mean(flat_plain) * 1e3:8.2f} ms"
    )
    print(
        f"instrumented median {statistics.median(flat_probed) * 1e3:8.2f} ms  "
        f"mean {statistics.mean(flat_probed) * 1e3:8.2f} ms"
    )
    mean_ratio = statistics.mean(flat_probed) / statistics.mean(flat_plain)
    print(
        f"overhead ratio (median, paired): {_ratio(paired)} (each round's ratio of block "
        f"medians, geometric mean; rounds resampled, then steps)"
    )
    print(
        f"unpaired ratio (median of all steps): {unpaired.ratio:.3f}x, 95% CI "
        f"[{unpaired.low:.3f}x, {unpaired.high:.3f}x] (blocks resampled, then steps)   "
        f"(mean): {mean_ratio:.3f}x"
    )
    print(
        f"probe errors: {len(session.errors)}; sampled every {session.config.sample_every} "
        f"steps; device reads every {session.config.flush_every} steps"
    )
    host = paired_ratio(plain.host, probed.host)
    hp = statistics.median(t for block in plain.host for t in block)
    hq = statistics.median(t for block in probed.host for t in block)
    print(
        f"host time to issue a step (median): plain {hp * 1e3:.2f} ms, instrumented "
        f"{hq * 1e3:.2f} ms (+{(hq - hp) * 1e6:.0f} us per step); paired {_ratio(host)}"
    )
    print("host cost of the per-step probe reads:")
    breakdown(model, optimizer, step)
    if device.type == "cuda":
        verdict = "met" if paired.ratio <= TARGET else "NOT met"
        bound = "within" if paired.interval[1] <= TARGET else "not all within"
        print(f"target <= {TARGET}x on the GPU: {verdict} (the interval is {bound} it)")
    if args.step_kinds:
        step_kinds(step, args, device)
    if args.ablate:
        ablate(step, args, device)


def step_kinds(step: Callable[[], None], args: argparse.Namespace, device: torch.device) -> None:
    """Host seconds of each probed step by kind, against the plain loop's median step."""
    cuda = device.type == "cuda"
    config = ProbeConfig(
        script=__file__,
        steps=10**9,
        sample_every=args.sample_every or (10 if cuda else 1),
        flush_every=25 if cuda else 1,
    )
    plain: list[float] = []
    by_kind: dict[str, list[float]] = {"ordinary": [], "sampled": [], "flush": [], "scan": []}
    for _ in range(args.rounds):
        plain += host_seconds(step, args.steps, args.warmup, device)
        session = Session(config, UserFiles(__file__))
        session.install()
        try:
            for _ in range(args.warmup):
                step()
            for _ in range(args.steps):
                kind = session.next_step_kind
                start = time.perf_counter()
                step()
                by_kind[kind].append(time.perf_counter() - start)
            if cuda:
                torch.cuda.synchronize()
        finally:
            session.uninstall()
    base = statistics.median(plain)
    print(f"host time a step by kind (median, against the plain loop's {base * 1e3:.2f} ms):")
    for label, times in by_kind.items():
        if times:
            extra = (statistics.median(times) - base) * 1e6
            print(f"  {label:<9} {len(times):6} steps  {extra:+9.0f} us")


def ablate(step: Callable[[], None], args: argparse.Namespace, device: torch.device) -> None:
    """The overhead with one part left out, each variant's blocks side by side with fresh
    plain ones and paired the same way."""
    print("with one probe part left out (overhead ratio of the median step, paired, 95% CI):")
    for part in ABLATIONS:
        with without(part):
            overhead = side_by_side(step, args, device)
        print(f"  without {part:<32} {_ratio(paired_ratio(overhead[0].steps, overhead[1].steps))}")


def _ratio(ratio: PairedRatio) -> str:
    low, high = ratio.interval
    return f"{ratio.ratio:.3f}x, 95% CI [{low:.3f}x, {high:.3f}x] over {ratio.pairs} pairs"


@dataclass(frozen=True)
class Overhead:
    ratio: float
    low: float
    high: float


def overhead_ratio(probed: list[list[float]], plain: list[list[float]]) -> Overhead:
    """Probed over plain median step, with the fix verifier's hierarchical bootstrap (blocks
    share a round's conditions): its gain g of plain over probed is the ratio 1 / (1 - g)."""
    gain = speed_up(probed, plain)
    low, high = gain.interval
    return Overhead(1 / (1 - gain.improvement), 1 / (1 - low), 1 / (1 - high))


if __name__ == "__main__":
    main()
