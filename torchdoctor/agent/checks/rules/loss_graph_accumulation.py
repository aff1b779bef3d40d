"""loss-graph-accumulation: a loss tensor is summed or stored across iterations with its graph."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.accumulation import Accumulation
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity


class LossGraphAccumulation(Rule):
    """Detects a loss that is accumulated across loop iterations while still attached to the
    autograd graph: `running_loss += loss`, `total = total + loss`, `losses.append(loss)`,
    where `loss` comes from a criterion or loss function (directly or through variables and
    local functions) and was not passed through `.item()`, `.detach()` or `float()`.

    Why it matters: each stored tensor keeps its whole computation graph alive (activations
    included), so memory grows every step until the process runs out of memory; the PyTorch
    FAQ calls this "accumulating history across your training loop". Accumulation under
    `torch.no_grad()`/`inference_mode()`, into a variable reset every iteration, or into a
    total that is itself back-propagated (micro-batch losses summed before one backward), or
    into the total a loss function returns (one term per head or scale, back-propagated by its
    caller) is not reported.

    Example:
        running_loss = 0.0
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss

    Fix: accumulate a detached value: `running_loss += loss.detach()` (keeps the sum on the
    device, no sync), or `loss.item()` when a Python float is needed anyway.
    """

    id = "loss-graph-accumulation"
    point = 1
    severity = Severity.HIGH
    title = "Loss accumulated with its autograd graph"
    items: ClassVar[tuple[str, ...]] = ("1.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return _may_have_losses(ctx)

    def finish(self, ctx: ModuleContext) -> None:
        if not _may_have_losses(ctx):
            return
        flow = ctx.flow
        for acc in flow.accumulations:
            if flow.grad_disabled_at(acc.node) or flow.graph_origin(acc.value) != "loss":
                continue
            if not flow.carried_across_iterations(acc) or flow.total_returned_by_loss_function(acc):
                continue
            target = ast.unparse(acc.target)
            if _never_read(ctx, acc):
                ctx.report(
                    self,
                    acc.node,
                    f"`{target}` collects `{ast.unparse(acc.value)}`, and nothing reads it "
                    "afterwards: no backward reaches these losses, so they train nothing (a "
                    "term left out of the total?), while their graphs stay in memory",
                    data={"accumulator": target, "value": ast.unparse(acc.value), "unread": True},
                )
                continue
            ctx.report(
                self,
                acc.node,
                f"`{target}` accumulates `{ast.unparse(acc.value)}`, which still holds the "
                "autograd graph: every iteration's graph stays in memory",
                data={"accumulator": target, "value": ast.unparse(acc.value), "fix": "detach"},
            )


def _never_read(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A local accumulator its function never reads but to fill it (`value_loss.append(...)`
    in an actor-critic update whose total sums `policy_loss` twice)."""
    target = acc.target
    function = ctx.enclosing_function(acc.node)
    if not isinstance(target, ast.Name) or function is None:
        return False
    filling = [
        other.node
        for other in ctx.flow.accumulations
        if isinstance(other.target, ast.Name) and other.target.id == target.id
    ]
    for read in ctx.flow.reads_of(target.id):
        if ctx.enclosing_function(read) is not function:
            continue
        if not any(a in filling for a in [read, *ctx.ancestors(read)]):
            return False
    return True


def _may_have_losses(ctx: ModuleContext) -> bool:
    text = ctx.source
    return ("loss" in text or "criterion" in text) and (
        "+=" in text or "append" in text or "+ " in text
    )
