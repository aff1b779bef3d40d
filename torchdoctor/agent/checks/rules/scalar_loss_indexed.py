"""scalar-loss-indexed: `loss.data[0]` on a 0-dim loss (the pre-0.4 idiom)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity


class ScalarLossIndexed(Rule):
    """Detects indexing a reduced loss with `[0]`: `loss.data[0]`, or `loss[0]` where `loss`
    comes from a torch loss (`nn.CrossEntropyLoss()(...)`, `F.nll_loss(...)`).

    Why it matters: since PyTorch 0.4 a mean- or sum-reduced loss is a 0-dim tensor, and
    indexing it raises `IndexError: invalid index of a 0-dim tensor`. Old training scripts die
    at their first log line, or in the evaluation function only, after a full epoch.

    Not reported: losses computed with `reduction='none'` (or `reduce=False`), whose result
    is a vector, and `[0]` on the result of a project loss that is not known to be a torch
    loss (detection losses return tuples: `loss, parts = criterion(...)` style).

    Example:
        loss = criterion(output, target)
        running += loss.data[0]

    Fix: `loss.item()` (a Python number), or `loss.detach()` to keep a tensor.
    """

    id = "scalar-loss-indexed"
    point = 1
    severity = Severity.HIGH
    title = "0-dim loss indexed"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Subscript,)
    visit_gate: ClassVar[tuple[str, ...]] = ("[0]",)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Subscript)
        index = node.slice
        if not (isinstance(index, ast.Constant) and index.value == 0):
            return
        if not isinstance(node.ctx, ast.Load):
            return
        base = node.value
        through_data = isinstance(base, ast.Attribute) and base.attr == "data"
        if through_data:
            assert isinstance(base, ast.Attribute)
            base = base.value
        if not isinstance(base, ast.Name) or not ctx.flow.text_names_a_loss:
            return  # no loss callee can be named here (`_reduced_loss` needs one)
        if not _reduced_loss(base, ctx, through_data):
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` indexes a reduced loss, a 0-dim tensor since PyTorch 0.4: "
            "this raises IndexError; use .item()",
        )


def _reduced_loss(name: ast.Name, ctx: ModuleContext, through_data: bool) -> bool:
    """Every definition of `name` is a loss call that reduces (`.data[0]`: any loss callee;
    a bare `[0]`: a torch loss only)."""
    calls = [d for d in ctx.flow.definitions(name) if isinstance(d, ast.Call)]
    if not calls or len(calls) != len(ctx.flow.definitions(name)):
        return False
    return all(_reducing_loss_call(call, ctx, through_data) for call in calls)


def _reducing_loss_call(call: ast.Call, ctx: ModuleContext, any_loss: bool) -> bool:
    made: list[ast.expr] = (
        [call.func] if isinstance(call.func, ast.Call) else list(ctx.flow.constructors(call.func))
    )
    if any(_unreduced(c) for c in (call, *made)) or not ctx.flow.is_loss_callee(call.func):
        return False
    qual = ctx.call_qualname(call) or ""
    torch_loss = qual.startswith("torch.nn.functional.") or bool(ctx.flow.loss_class(call.func))
    return any_loss or torch_loss


def _unreduced(call: ast.expr) -> bool:
    """`reduction='none'` or the legacy `reduce=False` among the call's arguments."""
    if not isinstance(call, ast.Call):
        return False
    reduction, reduce = kwarg(call, "reduction"), kwarg(call, "reduce")
    return (isinstance(reduction, ast.Constant) and reduction.value == "none") or (
        isinstance(reduce, ast.Constant) and reduce.value is False
    )
