"""loss-averaged-twice: a batch-averaged loss divided again by the batch size."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import kwarg
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_BATCH_NAME = re.compile(r"^(batch_?size|bs|n_?b|n_?batch|num_?batch(es)?_?size)$", re.IGNORECASE)


class LossAveragedTwice(Rule):
    """Detects the output of a torch criterion left at its default `mean` reduction
    (`nn.CrossEntropyLoss()`, `F.mse_loss(a, b)`) divided by the batch size, or multiplied by
    its inverse: `criterion(out, y) / x.size(0)`, `(1 / nB) * self.ce_loss(...)` with
    `nB = x.size(0)`, `F.mse_loss(p, t) / batch_size`, `loss / len(y)` where `y` is one of
    the criterion's arguments.

    Why it matters: the criterion has already averaged over the batch; dividing by the batch
    size again shrinks that loss term (and its gradients) by the batch size, so its weight
    against the other terms, and the effective learning rate, change with the batch size.
    Nothing fails; the term just stops counting (a YOLOv3 port's class loss).

    Not reported: criteria built with `reduction="sum"` or `"none"` (dividing a sum by the
    batch size is the mean), legacy `size_average=False`/`reduce=False`, divisions by other
    counts (accumulation steps, the number of batches of an epoch), and losses computed by
    the project's own functions.

    Example:
        nB = x.size(0)
        loss_cls = (1 / nB) * self.ce_loss(pred_cls[mask], tcls[mask])

    Fix: drop the division (or build the criterion with `reduction="sum"` if a per-batch sum
    divided by the batch size was meant).
    """

    id = "loss-averaged-twice"
    point = 3
    severity = Severity.MEDIUM
    title = "Batch-averaged loss divided again by the batch size"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.BinOp, ast.AugAssign)
    triggers = Triggers(("oss",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.BinOp | ast.AugAssign)
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.AugAssign):
            # `error = loss(out, y)` then `error /= len(x)`: the loss the name holds here
            if isinstance(node.op, ast.Div) and isinstance(node.target, ast.Name):
                held = ctx.flow.reaching(node.target)
                if held is not None:
                    pairs.append((held, node.value))
        elif isinstance(node.op, ast.Div):
            pairs.append((node.left, node.right))
        elif isinstance(node.op, ast.Mult):
            for loss, factor in ((node.left, node.right), (node.right, node.left)):
                if (
                    isinstance(factor, ast.BinOp)
                    and isinstance(factor.op, ast.Div)
                    and isinstance(factor.left, ast.Constant)
                    and factor.left.value in (1, 1.0)
                ):
                    pairs.append((loss, factor.right))
        for loss, divisor in pairs:
            if not isinstance(loss, ast.Call) or not _mean_loss_call(ctx, loss):
                continue
            if not _batch_size(ctx, divisor, loss):
                continue
            ctx.report(
                self,
                node,
                f"`{ast.unparse(loss.func)}` already averages over the batch (reduction "
                f"'mean'); dividing by `{ast.unparse(divisor)}` averages it a second time and "
                "shrinks this term by the batch size; drop the division, or use "
                "reduction='sum' if a sum over the batch was meant",
            )
            return


def _mean_loss_call(ctx: ModuleContext, call: ast.Call) -> bool:
    sites = ctx.flow.reduction_sites(call) or _passed_criteria(ctx, call)
    return bool(sites) and all(_mean_keywords(site) for site in sites or ())


def _passed_criteria(ctx: ModuleContext, call: ast.Call) -> list[ast.Call] | None:
    """The criteria a helper's parameter receives, when `call` calls that parameter
    (`fast_adapt(batch, learner, loss, ...)` computing `loss(learner(x), y)`) and every call
    of the helper in the module passes a torch loss built there
    (`loss = nn.CrossEntropyLoss(reduction='mean')`); None otherwise."""
    fn = ctx.enclosing_function(call)
    if fn is None or not isinstance(call.func, ast.Name):
        return None
    params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if call.func.id not in params and call.func.id not in {a.arg for a in fn.args.kwonlyargs}:
        return None
    callers = ctx.calls.call_sites(fn)
    if not callers or ctx.calls.owner(fn) is not None:
        return None  # a method: its parameters shift by `self`; nothing known of callers
    built: list[ast.Call] = []
    for site in callers:
        index = params.index(call.func.id) if call.func.id in params else -1
        given = kwarg(site, call.func.id)
        if given is None and 0 <= index < len(site.args):
            given = site.args[index]
        if given is None or isinstance(given, ast.Starred):
            return None
        made = list(ctx.flow.constructors(given))
        if not made or not all(_torch_loss(ctx, c) for c in made):
            return None
        built += made
    return built


def _torch_loss(ctx: ModuleContext, constructor: ast.Call) -> bool:
    """A torch loss module built with at most its first positional argument (a weight)."""
    made = ctx.flow.qualname_of(constructor) or ""
    return made.startswith("torch.nn.") and made.endswith("Loss") and len(constructor.args) <= 1


def _mean_keywords(call: ast.Call) -> bool:
    """No `reduction=` (the default) or a literal 'mean'; no legacy `size_average`/`reduce`."""
    if any(k.arg is None or k.arg in ("size_average", "reduce") for k in call.keywords):
        return (
            any(
                k.arg == "size_average"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in call.keywords
            )
            and kwarg(call, "reduce") is None
            and kwarg(call, "reduction") is None
        )
    reduction = kwarg(call, "reduction")
    return reduction is None or (isinstance(reduction, ast.Constant) and reduction.value == "mean")


def _size_of_first_dim(ctx: ModuleContext, expr: ast.expr, loss: ast.Call) -> bool:
    """`t.size(0)`, `t.shape[0]`, `t.size()[0]`, or `len(a)` of an argument of the loss."""
    if (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "size"
        and len(expr.args) == 1
        and isinstance(expr.args[0], ast.Constant)
        and expr.args[0].value == 0
    ):
        return True
    if (
        isinstance(expr, ast.Subscript)
        and isinstance(expr.slice, ast.Constant)
        and expr.slice.value == 0
        and (
            (isinstance(expr.value, ast.Attribute) and expr.value.attr == "shape")
            or (
                isinstance(expr.value, ast.Call)
                and isinstance(expr.value.func, ast.Attribute)
                and expr.value.func.attr == "size"
                and not expr.value.args
            )
        )
    ):
        return True
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "len":
        return bool(expr.args) and ast.unparse(expr.args[0]) in _fed(ctx, loss)
    return False


def _fed(ctx: ModuleContext, loss: ast.Call) -> set[str]:
    """What the loss is given, and the batch fed to the model that made its inputs, inline or
    one binding away (`loss(learner(x), y)`; `predictions = learner(x)` then
    `loss(predictions, y)`): `len()` of any of them is the batch size."""
    values: list[ast.expr] = list(loss.args)
    for arg in loss.args:
        if isinstance(arg, ast.Name) and (bound := ctx.flow.reaching(arg)) is not None:
            values.append(bound)
    return {ast.unparse(n) for v in values for n in ast.walk(v) if isinstance(n, ast.expr)}


def _batch_size(ctx: ModuleContext, divisor: ast.expr, loss: ast.Call) -> bool:
    if _size_of_first_dim(ctx, divisor, loss):
        return True
    if isinstance(divisor, ast.Attribute) and _BATCH_NAME.match(divisor.attr):
        return True
    if not isinstance(divisor, ast.Name):
        return False
    if _BATCH_NAME.match(divisor.id):
        return True
    function = ctx.enclosing_function(divisor)
    if function is None:
        return False
    bindings = [
        n.value
        for n in walk_scope(function.body)
        if isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == divisor.id for t in n.targets)
    ]
    return len(bindings) == 1 and _size_of_first_dim(ctx, bindings[0], loss)
