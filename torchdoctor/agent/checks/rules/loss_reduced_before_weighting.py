"""loss-reduced-before-weighting: a mask or per-sample weights applied to a loss that the
criterion has already averaged over the batch."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier, kwarg
from torchdoctor.agent.checks.analysis.vocabulary import (
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
)
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_REDUCTIONS = frozenset({"sum", "mean"})
_TORCH_REDUCTIONS = frozenset({"torch.sum", "torch.mean"})
# Names of per-element factors: masks, validity flags, per-sample weights (`loss_weight`,
# a scalar hyper-parameter, is not one).
_PER_ELEMENT = re.compile(r"mask|valid|sample_?weights?$|(^|_)weights$|^w$", re.IGNORECASE)
_PEELED_METHODS = PASSTHROUGH_METHODS | {"type"}
_COMPARISONS = frozenset({"ne", "eq", "gt", "ge", "lt", "le", "logical_not", "bool"})


class LossReducedBeforeWeighting(Rule):
    """Detects a loss from a torch criterion left at its default reduction (`mean`, or an
    explicit `mean`/`sum`), so already one number for the whole batch, that is then
    multiplied by a per-element factor — a mask (`mask`, `valid`, a comparison such as
    `y != pad`) or per-sample weights (`weights`, `sample_weight`) — and reduced again
    (`(loss * mask).sum() / mask.sum()`, directly or through a name).

    Why it matters: the weighting was meant per sample or per token, but the criterion has
    already averaged everything, padding and ignored samples included; the product only
    rescales one scalar (by `mask.sum()`, which the division then cancels). Padding keeps
    contributing to the gradient and the weights do nothing; training runs and the loss
    looks plausible.

    Not reported: criteria built with `reduction="none"` (or a reduction held in a
    variable, `reduce=False`, extra positional arguments), losses computed by hand or by the
    project's own functions (their shape is unknown), factors that are not named or built
    like a mask or per-sample weights (`loss * self.balance[i]`, `loss * args.alpha`), and
    products that are not reduced afterwards.

    Example:
        criterion = nn.CrossEntropyLoss()
        loss = criterion(logits.view(-1, V), targets.view(-1))
        loss = (loss * mask.view(-1)).sum() / mask.sum()

    Fix: build the criterion with `reduction="none"` (`F.cross_entropy(..., reduction=
    "none")`) so it returns one loss per element, then apply the mask or weights and reduce.
    """

    id = "loss-reduced-before-weighting"
    point = 3
    severity = Severity.HIGH
    title = "Mask or sample weights applied to an already-averaged loss"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(("Loss", "_loss", "entropy"))

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        return ("Loss" in text or "_loss" in text or "entropy" in text) and "*" in text

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for product in ctx.flow.nodes(ast.BinOp):
            assert isinstance(product, ast.BinOp)
            if not isinstance(product.op, ast.Mult):
                continue
            for loss, factor in ((product.left, product.right), (product.right, product.left)):
                criterion = _averaged_loss(ctx, loss)
                if criterion is None:
                    continue
                reduction = _reduced_again(ctx, product)
                if reduction is None or not _per_element(ctx, factor, reduction):
                    continue
                ctx.report(
                    self,
                    product,
                    f"`{ast.unparse(loss)}` comes from `{criterion}`, which already reduces the "
                    f"batch to one number; multiplying it by `{ast.unparse(factor)}` and "
                    "reducing again weights nothing per element: use reduction='none'",
                )
                break


def _averaged_loss(ctx: ModuleContext, value: ast.expr) -> str | None:
    """The criterion (as written) whose reduced output `value` is, when every call producing
    it is a torch loss left at a batch-reducing reduction; else None."""
    in_loop = any(isinstance(a, ast.For | ast.While) for a in ctx.ancestors(value))
    producers = [
        p
        for p in ctx.flow.producers(value)
        if not _passthrough(ctx, p) and (in_loop or p.lineno <= value.lineno)
    ]  # a later re-binding (`loss = loss.sum() / n`) cannot reach `value` outside a loop
    if not producers:
        return None
    for call in producers:
        if not _reducing_loss_call(ctx, call):
            return None
    return ast.unparse(producers[0].func)


def _passthrough(ctx: ModuleContext, call: ast.Call) -> bool:
    """A view or cast (`losses.view(B, -1)`): the producers behind it are what counts."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual in PASSTHROUGH_FUNCTIONS
    return isinstance(call.func, ast.Attribute) and call.func.attr in PASSTHROUGH_METHODS


def _reducing_loss_call(ctx: ModuleContext, call: ast.Call) -> bool:
    sites = ctx.flow.reduction_sites(call)
    return sites is not None and all(_reducing_keywords(site) for site in sites)


def _reducing_keywords(call: ast.Call) -> bool:
    """No `reduction=` (the default, 'mean'), or a literal 'mean'/'sum'; no `reduce=False`."""
    if any(k.arg is None for k in call.keywords):
        return False  # `**kwargs`: the reduction may be in there
    reduce = kwarg(call, "reduce")
    if reduce is not None and not (isinstance(reduce, ast.Constant) and reduce.value is True):
        return False
    reduction = kwarg(call, "reduction")
    return reduction is None or (
        isinstance(reduction, ast.Constant) and reduction.value in _REDUCTIONS
    )


def _reduced_again(ctx: ModuleContext, product: ast.BinOp) -> ast.Call | None:
    """The call reducing the product (`(p).sum()`, `torch.mean(p)`, or the same on a name
    bound to it later in the same function), else None."""
    direct = _reduction_of(ctx, product)
    parent = ctx.parents.get(product)
    if direct is not None or not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return direct
    target = parent.targets[0]
    if not isinstance(target, ast.Name):
        return None
    function = ctx.enclosing_function(product)
    for read in ctx.flow.reads_of(target.id):
        if read.lineno > product.lineno and ctx.enclosing_function(read) is function:
            found = _reduction_of(ctx, read)
            if found is not None:
                return found
    return None


def _reduction_of(ctx: ModuleContext, value: ast.expr) -> ast.Call | None:
    """`value.sum(...)` / `value.mean(...)` / `torch.sum(value, ...)`: that call."""
    parent = ctx.parents.get(value)
    if isinstance(parent, ast.Attribute) and parent.attr in _REDUCTIONS:
        call = ctx.parents.get(parent)
        return call if isinstance(call, ast.Call) and call.func is parent else None
    if isinstance(parent, ast.Call) and parent.args and parent.args[0] is value:
        return parent if ctx.flow.qualname_of(parent) in _TORCH_REDUCTIONS else None
    return None


def _per_element(ctx: ModuleContext, factor: ast.expr, reduction: ast.expr) -> bool:
    """The factor is a mask or per-sample weights: by its name, by being a comparison, or
    because the reduced product is divided by its sum (`/ mask.sum()`)."""
    base = _peel(factor)
    if isinstance(base, ast.Compare):
        return True
    if (
        isinstance(base, ast.Call)
        and isinstance(base.func, ast.Attribute)
        and base.func.attr in _COMPARISONS
    ):
        return True
    if isinstance(base, ast.Name | ast.Attribute) and _PER_ELEMENT.search(identifier(base)):
        return True
    division = ctx.parents.get(reduction)
    if not (
        isinstance(division, ast.BinOp)
        and isinstance(division.op, ast.Div)
        and division.left is reduction
    ):
        return False
    summed = _summed(ctx, _peel(division.right))
    return summed is not None and ast.unparse(_peel(summed)) == ast.unparse(base)


def _summed(ctx: ModuleContext, node: ast.expr) -> ast.expr | None:
    """`x` in `x.sum()` / `torch.sum(x)`."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr == "sum":
            return node.func.value
        if ctx.flow.qualname_of(node) == "torch.sum" and node.args:
            return node.args[0]
    return None


def _peel(node: ast.expr) -> ast.expr:
    """`mask[:, 1:].float().view(-1)` -> `mask`: casts, views and slices of a factor."""
    while True:
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _PEELED_METHODS
        ):
            node = node.func.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return node
