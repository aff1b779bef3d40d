"""scalar-loss-indexed: `loss.data[0]` on a 0-dim loss (the pre-0.4 idiom)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.model_facts import LOSS_TEXT
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity


class ScalarLossIndexed(Rule):
    """Detects indexing a reduced loss with `[0]`: `loss.data[0]`, or `loss[0]` where `loss`
    comes from a torch loss (`nn.CrossEntropyLoss()(...)`, `F.nll_loss(...)`), or from
    arithmetic on such losses and numbers (`d_loss = d_loss_real + d_loss_fake`).

    Why it matters: since PyTorch 0.4 a mean- or sum-reduced loss is a 0-dim tensor, and
    indexing it raises `IndexError: invalid index of a 0-dim tensor`. Old training scripts die
    at their first log line, or in the evaluation function only, after a full epoch.

    Not reported: losses computed with `reduction='none'` (or `reduce=False`), whose result
    is a vector, a sum with any term that is not such a loss (a penalty tensor), and `[0]`
    on the result of a project loss that is not known to be a torch loss (detection losses
    return tuples: `loss, parts = criterion(...)` style).

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
    triggers = LOSS_TEXT  # a report needs a loss callee

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
            data={"indexed": ast.unparse(node)},
        )


def _reduced_loss(name: ast.Name, ctx: ModuleContext, through_data: bool, depth: int = 0) -> bool:
    """Every definition of `name` is a loss call that reduces (`.data[0]`: any loss callee;
    a bare `[0]`: a torch loss only), or arithmetic on such losses and numbers (a GAN's
    `d_loss = d_loss_real + d_loss_fake`, a weighted `loss = a + 0.5 * b`), or the number a
    sum of them starts from (a char-RNN's `loss = 0`, then `loss += criterion(...)` per
    character: a number has no `.data` to index)."""
    definitions = [
        d
        for d in ctx.flow.definitions(name)
        if not (isinstance(d, ast.Constant) and _number(d.value))
    ]
    if not definitions:
        return False
    return all(_reduced_value(d, ctx, through_data, depth) for d in definitions)


def _reduced_value(value: ast.AST, ctx: ModuleContext, through_data: bool, depth: int) -> bool:
    if isinstance(value, ast.Call):
        return _reducing_loss_call(value, ctx, through_data)
    if depth >= _MAX_SUM_DEPTH or not isinstance(value, ast.BinOp):
        return False
    operands = _operands(value)  # [value] itself for another operator (`a @ b`): not a Name
    losses = [o for o in operands if not (isinstance(o, ast.Constant) and _number(o.value))]
    return bool(losses) and all(
        isinstance(o, ast.Name) and _reduced_loss(o, ctx, through_data, depth + 1) for o in losses
    )


_MAX_SUM_DEPTH = 4


def _operands(value: ast.expr) -> list[ast.expr]:
    """The leaves of a chain of + - * / (`a + b + 0.5 * c` -> a, b, 0.5, c)."""
    if isinstance(value, ast.BinOp) and isinstance(
        value.op, ast.Add | ast.Sub | ast.Mult | ast.Div
    ):
        return [*_operands(value.left), *_operands(value.right)]
    return [value]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
