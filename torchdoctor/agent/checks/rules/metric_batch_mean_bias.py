"""metric-batch-mean-bias: accuracy averaged over per-batch means."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.models import Severity

_MEANS = frozenset({"mean", "average"})


class MetricBatchMeanBias(Rule):
    """Detects a metric accumulated as the mean of per-batch means inside a loop:
    `acc += (pred == y).float().mean()` or `accs.append((pred == y).float().mean())`, later
    divided by a count or averaged.

    Why it matters: the last batch is usually smaller, yet weighs as much as a full one, so
    the reported accuracy is not the dataset accuracy; with a batch of 1 at the end the bias
    can reach several points on small validation sets.

    Example:
        for x, y in val_loader:
            acc += (model(x).argmax(1) == y).float().mean().item()
        acc /= len(val_loader)

    Fix: accumulate counts: `correct += (pred == y).sum().item(); total += y.numel()` and
    report `correct / total`.
    """

    id = "metric-batch-mean-bias"
    point = 3
    severity = Severity.LOW
    title = "Metric averaged over batch means"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "==" in ctx.source and bool(ctx.flow.accumulations)

    def finish(self, ctx: ModuleContext) -> None:
        if "==" not in ctx.source or "mean" not in ctx.source:
            return
        flow = ctx.flow
        for acc in flow.accumulations:
            if not _batch_mean_of_comparison(acc.value) or not flow.carried_across_iterations(acc):
                continue
            scope = ctx.enclosing_function(acc.node)
            body = scope.body if scope is not None else ctx.tree.body
            if not _averaged_later(ast.unparse(acc.target), body):
                continue
            ctx.report(
                self,
                acc.node,
                f"`{ast.unparse(acc.target)}` averages per-batch means: a smaller last batch "
                "weighs like a full one; sum correct counts and divide by the sample count",
            )


def _batch_mean_of_comparison(value: ast.expr) -> bool:
    for node in ast.walk(value):
        if (
            isinstance(node, ast.Call)
            and identifier(node.func) in _MEANS
            and any(
                isinstance(c, ast.Compare) and isinstance(c.ops[0], ast.Eq) for c in ast.walk(node)
            )
        ):
            return True
    return False


def _averaged_later(target: str, body: list[ast.stmt]) -> bool:
    for node in walk_scope(body):
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            left = node.left if isinstance(node, ast.BinOp) else node.target
            if ast.unparse(left) == target:
                return True
        if (
            isinstance(node, ast.Call)
            and identifier(node.func) in _MEANS | {"sum"}
            and any(ast.unparse(a) == target for a in node.args)
        ):
            return True
    return False
