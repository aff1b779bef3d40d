"""synchronize-in-step: an explicit device synchronisation on every training step."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import under_periodic_guard
from torchdoctor.agent.models import Severity

_SYNCS = frozenset(
    {"torch.cuda.synchronize", "torch.accelerator.synchronize", "torch.mps.synchronize",
     "torch.xpu.synchronize"}
)  # fmt: skip
_CLOCKS = frozenset(
    {"time.time", "time.perf_counter", "time.monotonic", "time.perf_counter_ns", "time.time_ns"}
)


class SynchronizeInStep(Rule):
    """Detects `torch.cuda.synchronize()` (or `torch.accelerator/mps/xpu.synchronize()`)
    that runs on every training step: in a training loop's body or in a function it calls,
    outside an `if step % N == 0:`-style guard.

    Why it matters: CUDA kernels run asynchronously; the host queues the next step while the
    GPU computes. A synchronisation makes the host wait for the queue to drain every step,
    so the GPU idles while Python prepares the next batch: steps get slower, more so for
    small models and fast GPUs. Ops on one stream are already ordered: the call buys nothing.

    Not reported: steps that time themselves (a `time.perf_counter()`/`time.time()` call in
    the same loop or function that runs on every step, not only under a periodic guard: a
    synchronisation is needed to read a clock correctly),
    synchronisations under a periodic guard, outside training loops (benchmarks, evaluation).

    Example:
        for x, y in loader:
            loss = criterion(model(x.cuda()), y.cuda())
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()

    Fix: delete the call; synchronise only where the host must read a device result or a
    timer, and only every N steps.
    """

    id = "synchronize-in-step"
    point = 6
    severity = Severity.MEDIUM
    title = "Device synchronised on every training step"
    items: ClassVar[tuple[str, ...]] = ("6.1",)
    triggers = Triggers(("synchronize",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "synchronize" in ctx.source and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for call in ctx.flow.calls_named(("synchronize",)):
            if ctx.flow.qualname_of(call) not in _SYNCS:
                continue
            if not ctx.loops.in_training_step(call):
                continue
            loop = ctx.loops.loop_containing(call)
            stop = loop.node if loop is not None else ctx.enclosing_function(call)
            if under_periodic_guard(ctx, call, stop) or _timed(ctx, stop):
                continue
            statement = ctx.parents.get(call)
            standalone = isinstance(statement, ast.Expr)
            ctx.report(
                self,
                call,
                "the device is synchronised on every training step: the host waits for the "
                "GPU and the GPU then waits for the host",
                data={"standalone": standalone},
            )


def _timed(ctx: ModuleContext, owner: ast.AST | None) -> bool:
    """The loop or function reads a wall clock on every step (timing code needs its
    synchronisations); a clock read only every N steps (Conv-TasNet's `ms/batch` printed
    under `if i % print_freq == 0:`) does not need one on the other steps."""
    if owner is None:
        return False
    body = getattr(owner, "body", [])
    return any(
        isinstance(n, ast.Call)
        and (ctx.flow.qualname_of(n) in _CLOCKS or getattr(n.func, "attr", "") == "elapsed_time")
        and not under_periodic_guard(ctx, n, owner)
        for n in walk_scope(body)
    )
