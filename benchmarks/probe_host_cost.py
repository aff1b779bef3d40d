"""Host cost of the probes on an ordinary step, measured on the CPU: what a launch-bound GPU
loop pays for watching on each step that is neither sampled nor a flush.

A small transformer trained with AdamW (`foreach=True`, as on a GPU) on one pinned thread,
so a plain step takes a few milliseconds. Plain and probed blocks alternate (`--rounds` x
`--steps`, each after `--warmup` steps; a fresh session each probed block, sampling every 10
steps and reading values back every 25, the harness's GPU settings). Each step is timed with
the thread's CPU clock (`time.thread_time_ns`: time the box's other processes take is not
counted) and filed by kind (ordinary, sampled, flush, graph scan). Printed:

- the median ordinary step, plain and probed, and the difference with a bootstrap interval
  (what the probes add to an ordinary step, hooks' dispatch in torch included);
- the CPU time spent inside the probes' own code on an ordinary step, by entry point
  (`perf_counter_ns` around each hook the harness installs, the timer's own cost taken off);
- the calls the harness makes on an ordinary step (`sys.setprofile`): Python functions of
  the probes package, and calls from it into C (torch operations among them).

Run: `PYTHONPATH=. python benchmarks/probe_host_cost.py [--rounds 12] [--steps 30]`.
Timing figures depend on the machine and its load; the call counts do not (a unit test pins
them: tests/unit/test_probe_step_work.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

import torchdoctor.sandbox.probes as probes_package
from torchdoctor.sandbox.probes.config import ProbeConfig
from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.session import Session

SAMPLE_EVERY = 10
FLUSH_EVERY = 25
PROBES_DIR = os.path.dirname(os.path.realpath(probes_package.__file__))


def build(width: int, layers: int, batch: int, tokens: int) -> Callable[[], None]:
    """One training step of a small transformer (the GPU benchmark's model, shrunk)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
    model = nn.Sequential(
        nn.TransformerEncoder(layer, layers, enable_nested_tensor=False),
        nn.LayerNorm(width),
        nn.Linear(width, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x = torch.randn(batch, tokens, width)
    y = torch.randint(0, 10, (batch,))
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x).mean(dim=1), y)
        loss.backward()
        optimizer.step()

    return step


def config() -> ProbeConfig:
    return ProbeConfig(
        script=__file__, steps=10**9, sample_every=SAMPLE_EVERY, flush_every=FLUSH_EVERY
    )


class EntryTimer:
    """CPU nanoseconds inside the harness's hooks, by entry point, for the step running now."""

    def __init__(self) -> None:
        self.now: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        now, calls, clock = self.now, self.calls, time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                now[name] += clock() - start
                calls[name] += 1

        return timed

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        spent, counted = dict(self.now), dict(self.calls)
        self.now.clear()
        self.calls.clear()
        return spent, counted


def timer_cost_ns(timer: EntryTimer, repeats: int = 20000) -> float:
    """The timer's own cost per call (the wrapped function does nothing)."""
    empty = timer.wrap("calibration", lambda *_: None)
    bare = lambda *_: None  # noqa: E731
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(repeats):
            empty()
        middle = time.perf_counter_ns()
        for _ in range(repeats):
            bare()
        best = min(best, ((middle - start) - (time.perf_counter_ns() - middle)) / repeats)
    timer.take()
    return max(best, 0.0)


def instrument(session: Session, timer: EntryTimer) -> None:
    """Time the harness's entry points: each is looked up on the session when it installs."""
    session._optimizer_pre = timer.wrap("optimizer pre-hook", session._optimizer_pre)  # type: ignore[method-assign]
    session._optimizer_post = timer.wrap(  # type: ignore[method-assign]
        "optimizer post-hook (step end)", session._optimizer_post
    )
    session._own_pre = timer.wrap("root/loss module hooks", session._own_pre)  # type: ignore[method-assign]
    session._own_post = timer.wrap("root/loss module hooks", session._own_post)  # type: ignore[method-assign]
    session.loss.on_backward = timer.wrap("backward wrapper", session.loss.on_backward)  # type: ignore[method-assign]
    session.mode.on_backward = timer.wrap("backward wrapper", session.mode.on_backward)  # type: ignore[method-assign]
    session._reached_if_looking = timer.wrap(  # type: ignore[method-assign]
        "backward wrapper", session._reached_if_looking
    )
    session._evaluation_begins = timer.wrap("no-grad block wrapper", session._evaluation_begins)  # type: ignore[method-assign]


@contextmanager
def probed(timer: EntryTimer | None = None) -> Iterator[Session]:
    session = Session(config(), UserFiles(__file__))
    if timer is not None:
        instrument(session, timer)
    session.install()
    try:
        yield session
    finally:
        session.uninstall()


def block(
    step: Callable[[], None], steps: int, warmup: int, session: Session | None
) -> dict[str, list[int]]:
    for _ in range(warmup):
        step()
    out: dict[str, list[int]] = collections.defaultdict(list)
    for _ in range(steps):
        name = session.next_step_kind if session is not None else "ordinary"
        start = time.thread_time_ns()
        step()
        out[name].append(time.thread_time_ns() - start)
    return out


def median_difference(
    probed_ns: list[int], plain_ns: list[int], draws: int = 2000
) -> tuple[float, float, float]:
    """Median probed minus median plain step (us), with a 95% bootstrap interval."""
    rng = random.Random(0)
    point = (statistics.median(probed_ns) - statistics.median(plain_ns)) / 1e3
    diffs = sorted(
        (
            statistics.median(rng.choices(probed_ns, k=len(probed_ns)))
            - statistics.median(rng.choices(plain_ns, k=len(plain_ns)))
        )
        / 1e3
        for _ in range(draws)
    )
    return point, diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]


def step_times(step: Callable[[], None], args: argparse.Namespace) -> None:
    plain: list[int] = []
    by_kind: dict[str, list[int]] = collections.defaultdict(list)
    for _ in range(args.rounds):  # interleaved, so the box's load hits both alike
        plain += block(step, args.steps, args.warmup, None)["ordinary"]
        with probed() as session:
            for name, values in block(step, args.steps, args.warmup, session).items():
                by_kind[name] += values
    base = statistics.median(plain)
    print(f"plain step (median of {len(plain)}): {base / 1e3:.0f} us of CPU time")
    for name in ("ordinary", "sampled", "flush", "scan"):
        values = by_kind.get(name, [])
        if not values:
            continue
        point, low, high = median_difference(values, plain)
        print(
            f"  probed {name:<9} {len(values):5} steps  {point:+8.1f} us "
            f"[{low:+.1f}, {high:+.1f}]  ({statistics.median(values) / base:.3f}x)"
        )


def entry_costs(step: Callable[[], None], args: argparse.Namespace) -> None:
    timer = EntryTimer()
    overhead = timer_cost_ns(timer)
    totals: dict[str, list[float]] = collections.defaultdict(list)
    calls: dict[str, list[int]] = collections.defaultdict(list)
    with probed(timer) as session:
        for _ in range(args.warmup):
            step()
        timer.take()
        for _ in range(args.rounds * args.steps):
            name = session.next_step_kind
            step()
            spent, counted = timer.take()
            if name != "ordinary":
                continue
            for entry, ns in spent.items():
                totals[entry].append(ns - counted[entry] * overhead)
                calls[entry].append(counted[entry])
            totals["(all entry points)"].append(
                sum(ns - counted[e] * overhead for e, ns in spent.items())
            )
    print(
        f"Time inside the probes' hooks on an ordinary step (median; timer's own "
        f"{overhead:.0f} ns a call taken off):"
    )
    for entry, values in sorted(totals.items(), key=lambda kv: -statistics.median(kv[1])):
        count = statistics.median(calls[entry]) if entry in calls else None
        suffix = f"  ({count:g} calls)" if count is not None else ""
        print(f"  {entry:<34} {statistics.median(values) / 1e3:8.1f} us{suffix}")


def ordinary_step_calls(step: Callable[[], None], steps: int = 20) -> collections.Counter[str]:
    """Calls made by the probes' code on `steps` ordinary steps, per step: Python functions
    of the probes package, and C functions called from it (torch operations among them)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if not code.co_filename.startswith(PROBES_DIR):
            return
        if event == "call":
            counts[("python", f"{os.path.basename(code.co_filename)}:{code.co_name}")] += 1
        elif event == "c_call":
            counts[("c", getattr(arg, "__qualname__", getattr(arg, "__name__", "?")))] += 1

    seen = 0
    with probed() as session:
        while seen < steps:
            if session.next_step_kind != "ordinary":
                step()
                continue
            sys.setprofile(profile)
            try:
                step()
            finally:
                sys.setprofile(None)
            seen += 1
    per_step: collections.Counter[str] = collections.Counter()
    for (where, name), count in counts.items():
        per_step[f"{where} {name}"] = round(count / steps)
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="steps before each block")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    step = build(args.width, args.layers, args.batch, args.tokens)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"{load:.1f}; torch {torch.__version__} ({args.threads} thread); Python "
        f"{platform.python_version()}; {args.rounds} rounds x {args.steps} steps a variant"
    )
    step_times(step, args)
    entry_costs(step, args)
    calls = ordinary_step_calls(step)
    python_calls = sum(n for name, n in calls.items() if name.startswith("python"))
    c_calls = sum(n for name, n in calls.items() if name.startswith("c "))
    print(f"calls by the probes' code on an ordinary step: {python_calls} Python, {c_calls} C:")
    for name, count in calls.most_common():
        print(f"  {count:4}  {name}")


if __name__ == "__main__":
    main()
