"""backward-gradient-is-loss: a loss back-propagated with itself as its output gradient."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.model_facts import LOSS_NAME
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_SAME_VALUE_METHODS = frozenset({"detach", "clone", "contiguous"})
"""Methods whose result holds the receiver's values: `loss.backward(loss.detach())` is the bug
too."""
_REDUCTIONS = frozenset({"mean", "sum"})
_AUTOGRAD_BACKWARD = frozenset({"torch.autograd.backward"})


def _values_of(expr: ast.expr) -> ast.expr:
    """`expr` without the wrappers that keep its values (`.data`, `.detach()`, `.clone()`)."""
    while True:
        if isinstance(expr, ast.Attribute) and expr.attr == "data":
            expr = expr.value
        elif (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in _SAME_VALUE_METHODS
            and not expr.args
        ):
            expr = expr.func.value
        else:
            return expr


def _scalar_loss(ctx: ModuleContext, expr: ast.expr, hops: int = 2) -> bool:
    """`expr` is a loss, i.e. one number: a loss function's or module's result, a whole-tensor
    `mean()`/`sum()`, a name bound to one (or named like one: `loss`, `d_loss`)."""
    if isinstance(expr, ast.Call):
        func = expr.func
        if ctx.flow.is_loss_callee(func):
            return True
        return (
            isinstance(func, ast.Attribute)
            and func.attr in _REDUCTIONS
            and not expr.args
            and kwarg(expr, "dim") is None
        )
    if isinstance(expr, ast.Name):
        if LOSS_NAME.search(expr.id):
            return True
        bound = ctx.flow.reaching(expr)
        return hops > 0 and bound is not None and _scalar_loss(ctx, bound, hops - 1)
    if isinstance(expr, ast.Attribute):
        return bool(LOSS_NAME.search(expr.attr))
    return False


class BackwardGradientIsLoss(Rule):
    """Detects a loss back-propagated with itself as the output gradient:
    `loss.backward(loss)`, `loss.backward(gradient=loss.detach())`,
    `torch.autograd.backward(loss, loss)`.

    Why it matters: `backward(gradient)` computes the vector-Jacobian product with
    `gradient`, the derivative of the final objective with respect to the tensor; for a loss
    that derivative is 1 (what `backward()` uses). Passing the loss itself multiplies every
    parameter's gradient by the loss's current value: the effective learning rate follows
    the loss, large at the start and vanishing as training converges, and the optimiser
    minimises loss²/2 instead of the loss (tanelp/tiny-diffusion trained its DDPM this way).

    Not reported: a tensor that is not a loss given itself as gradient (`act.backward(act)`,
    the gradient of ½‖act‖², a known trick), another tensor's gradient (`out.backward(dout)`),
    `torch.ones_like(loss)`, and keyword arguments other than the gradient.

    Example:
        loss = F.mse_loss(noise_pred, noise)
        loss.backward(loss)

    Fix: `loss.backward()` (a scaled objective, if that was the intent, is `(w * loss).backward()`
    with a weight that does not follow the loss).
    """

    id = "backward-gradient-is-loss"
    point = 4
    severity = Severity.HIGH
    title = "Loss back-propagated with itself as its gradient"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("backward(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        pair = self._loss_and_gradient(node, ctx)
        if pair is None:
            return
        loss, gradient = pair
        if ast.dump(_values_of(gradient)) != ast.dump(loss) or not _scalar_loss(ctx, loss):
            return
        name = identifier(loss) or ast.unparse(loss)
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` passes the loss `{name}` as its own output gradient: every "
            "gradient is multiplied by the loss's current value, so the step size follows the "
            "loss (and the objective becomes loss²/2); call `.backward()` with no gradient",
            data={"loss": name},
        )

    @staticmethod
    def _loss_and_gradient(node: ast.Call, ctx: ModuleContext) -> tuple[ast.expr, ast.expr] | None:
        """(the tensor back-propagated, the gradient given for it), or None."""
        if isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
            if ctx.flow.qualname_of(node) in _AUTOGRAD_BACKWARD:
                tensors = node.args[0] if node.args else kwarg(node, "tensors")
                gradient = node.args[1] if len(node.args) > 1 else kwarg(node, "grad_tensors")
            else:
                tensors = node.func.value
                gradient = node.args[0] if node.args else kwarg(node, "gradient")
            if tensors is not None and gradient is not None:
                return tensors, gradient
        return None
