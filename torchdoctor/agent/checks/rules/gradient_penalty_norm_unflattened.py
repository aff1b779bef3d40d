"""gradient-penalty-norm-unflattened: a gradient penalty's norm taken over the channels of
image gradients, not over each example."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import constant_int, kwarg
from torchdoctor.agent.models import Severity

_NORM_FUNCTIONS = {"torch.norm": 2, "torch.linalg.norm": 2, "torch.linalg.vector_norm": 2}
"""Norm functions and the position of `dim` among their arguments."""
_GRAD = frozenset({"torch.autograd.grad"})
_OUTPUT_METHODS = frozenset({"sum", "mean", "view", "reshape", "squeeze", "flatten"})
_CONVOLUTIONS = frozenset(
    f"torch.nn.{name}" for name in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d")
)


def _dim_one(node: ast.Call, position: int) -> bool:
    dim = kwarg(node, "dim")
    if dim is None and len(node.args) > position:
        dim = node.args[position]
    return dim is not None and constant_int(dim) == 1


class GradientPenaltyNormUnflattened(Rule):
    """Detects a gradient penalty (the gradient of a critic's output with respect to its
    input, from `torch.autograd.grad`) whose norm is taken over `dim=1` while the critic is
    convolutional (a class of the module, built here or passed by every caller of the
    penalty function), so its input, and the gradient, are `(N, C, H, W)`:
    `((gradients.norm(2, dim=1) - 1) ** 2).mean()` with no `view(N, -1)` before it.

    Why it matters: WGAN-GP constrains the norm of each example's whole input gradient to 1.
    Over `dim=1` of an image gradient the norm runs over the channels of each pixel, giving an
    `(N, H, W)` map: the penalty then pushes every pixel's channel vector towards norm 1, a
    far stronger and different constraint (the critic's total gradient norm becomes about
    sqrt(H*W)), and the Lipschitz condition the loss relies on is not what is enforced.

    Also reported, whatever the critic: one norm of the input gradient over all its
    dimensions, the batch included (`torch.sqrt(torch.sum(grad ** 2))`, `grad.norm(2)`, also
    after `grad.view(grad.size(0), -1)`), compared with 1 (`(norm - 1) ** 2`): the penalty
    then drives the batch's total norm to 1, about sqrt(N) times too strong a constraint per
    example, and no example's own gradient norm is what it controls. An R1 penalty's summed
    squares (no root, no 1: additive over the batch) is not reported.

    Not reported: gradients flattened first (`gradients.view(gradients.size(0), -1)`,
    `.reshape(n, -1)`, `.flatten(1)`), a norm over all of the example's dimensions
    (`dim=(1, 2, 3)`), a critic with no convolution of the module (an MLP on vectors, where
    dim 1 is every feature), and a critic defined elsewhere (its input's rank is unknown).

    Example:
        gradients = autograd.grad(outputs=D(x_hat), inputs=x_hat,
                                  grad_outputs=torch.ones(...), create_graph=True)[0]
        penalty = ((gradients.norm(2, dim=1) - 1) ** 2).mean()

    Fix: `gradients = gradients.view(gradients.size(0), -1)` before the norm.
    """

    id = "gradient-penalty-norm-unflattened"
    point = 4
    severity = Severity.HIGH
    title = "Gradient penalty normed per pixel, not per example"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("autograd",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        whole = _normed_without_dim(ctx, node)
        if whole is not None:
            grad = _input_gradient(ctx, whole, through_reshapes=True)
            if grad is not None and _distance_to_one(ctx, node):
                ctx.report(
                    self,
                    node,
                    f"`{ast.unparse(node)}` takes one norm of the critic's input gradient over "
                    "the whole batch (no dim): the penalty drives the batch's total gradient "
                    "norm to 1, not each example's; take it per example (`.norm(2, dim=1)` of "
                    "the flattened gradient)",
                )
            return
        normed = self._normed(node, ctx)
        if normed is None:
            return
        grad = _input_gradient(ctx, normed)
        if grad is None or not _convolutional_critic(ctx, grad):
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` takes the norm of the critic's input gradient over dim 1, "
            "the channels of each pixel of an (N, C, H, W) image gradient: the penalty "
            "constrains every pixel instead of each example's whole gradient; flatten it first "
            "(`.view(gradients.size(0), -1)`)",
        )

    @staticmethod
    def _normed(node: ast.Call, ctx: ModuleContext) -> ast.expr | None:
        """What a norm over dim 1 is taken of, or None."""
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "norm":
            qual = ctx.flow.qualname_of(node)
            if qual in _NORM_FUNCTIONS:
                return node.args[0] if node.args and _dim_one(node, _NORM_FUNCTIONS[qual]) else None
            return func.value if _dim_one(node, 1) else None
        qual = ctx.flow.qualname_of(node)
        if qual in _NORM_FUNCTIONS and node.args and _dim_one(node, _NORM_FUNCTIONS[qual]):
            return node.args[0]
        return None


def _input_gradient(
    ctx: ModuleContext, expr: ast.expr, hops: int = 3, through_reshapes: bool = False
) -> ast.Call | None:
    """The `torch.autograd.grad(...)` call whose first result `expr` holds as it is (through
    names; a `view`/`reshape`/`flatten` on the way is followed only when `through_reshapes`),
    or None."""
    if isinstance(expr, ast.Name):
        bound = ctx.flow.reaching(expr)
        if bound is None or hops == 0:
            return None
        return _input_gradient(ctx, bound, hops - 1, through_reshapes)
    if (
        through_reshapes
        and isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in _RESHAPES
    ):
        return _input_gradient(ctx, expr.func.value, hops, through_reshapes)
    if (
        isinstance(expr, ast.Subscript)
        and constant_int(expr.slice) == 0
        and isinstance(expr.value, ast.Call)
        and ctx.flow.qualname_of(expr.value) in _GRAD
    ):
        return expr.value
    return None


def _convolutional_critic(ctx: ModuleContext, grad: ast.Call) -> bool:
    """The outputs differentiated come from a module class of this file that has a
    convolution: its input (the gradient's shape) is an image batch."""
    outputs = kwarg(grad, "outputs")
    if outputs is None and grad.args:
        outputs = grad.args[0]
    if isinstance(outputs, ast.Name):
        outputs = ctx.flow.reaching(outputs)
    while (  # `critic(x_hat).sum()`, `D(x).mean()`, `D(x).view(-1)`: the critic's call
        isinstance(outputs, ast.Call)
        and isinstance(outputs.func, ast.Attribute)
        and outputs.func.attr in _OUTPUT_METHODS
    ):
        outputs = outputs.func.value
    if not isinstance(outputs, ast.Call):
        return False
    classes = _critic_classes(ctx, outputs.func)
    return bool(classes) and all(
        any(
            isinstance(node, ast.Call) and ctx.flow.qualname_of(node) in _CONVOLUTIONS
            for node in ast.walk(cls)
        )
        for cls in classes
    )


def _critic_classes(ctx: ModuleContext, critic: ast.expr) -> list[ast.ClassDef]:
    """The module's classes the critic is an instance of: built here (`D = Discriminator()`,
    `self.D`), or, for a parameter of a module-level function (`compute_gradient_penalty(D,
    X)`), what every call of that function in the module passes (empty when any is
    unknown)."""
    own = ctx.flow.local_class(critic)
    if own is not None:
        return [own]
    fn = ctx.enclosing_function(critic)
    if fn is None or not isinstance(critic, ast.Name) or ctx.calls.owner(fn) is not None:
        return []
    params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if critic.id not in params:
        return []
    found: list[ast.ClassDef] = []
    for site in ctx.calls.call_sites(fn):
        given = kwarg(site, critic.id)
        index = params.index(critic.id)
        if given is None and index < len(site.args):
            given = site.args[index]
        cls = None if given is None else ctx.flow.local_class(given)
        if cls is None:
            return []
        found.append(cls)
    return found


_RESHAPES = frozenset({"view", "reshape", "flatten", "contiguous"})


def _normed_without_dim(ctx: ModuleContext, node: ast.Call) -> ast.expr | None:
    """What `node` takes one norm of, all dimensions at once: `g.norm()`, `g.norm(2)`,
    `torch.norm(g)`, `torch.sqrt(torch.sum(g ** 2))`, `(g ** 2).sum().sqrt()`; None when a
    `dim` is given or `node` is no norm."""
    func = node.func
    qual = ctx.flow.qualname_of(node)
    if qual in _NORM_FUNCTIONS:
        position = _NORM_FUNCTIONS[qual]
        whole = kwarg(node, "dim") is None and len(node.args) <= position
        return node.args[0] if node.args and whole else None
    if qual is None and isinstance(func, ast.Attribute) and func.attr == "norm":
        return func.value if kwarg(node, "dim") is None and len(node.args) <= 1 else None
    if qual == "torch.sqrt" and len(node.args) == 1:
        return _squares_summed_whole(ctx, node.args[0])
    if qual is None and isinstance(func, ast.Attribute) and func.attr == "sqrt" and not node.args:
        return _squares_summed_whole(ctx, func.value)
    return None


def _squares_summed_whole(ctx: ModuleContext, value: ast.expr) -> ast.expr | None:
    """`g` of `torch.sum(g ** 2)`, `(g ** 2).sum()`, `g.pow(2).sum()` with no dim."""
    if not isinstance(value, ast.Call) or kwarg(value, "dim") is not None:
        return None
    if ctx.flow.qualname_of(value) == "torch.sum" and len(value.args) == 1:
        summed = value.args[0]
    elif isinstance(value.func, ast.Attribute) and value.func.attr == "sum" and not value.args:
        summed = value.func.value
    else:
        return None
    if isinstance(summed, ast.BinOp) and isinstance(summed.op, ast.Pow):
        return summed.left if constant_int(summed.right) == 2 else None
    if (
        isinstance(summed, ast.Call)
        and isinstance(summed.func, ast.Attribute)
        and summed.func.attr == "pow"
        and len(summed.args) == 1
        and constant_int(summed.args[0]) == 2
    ):
        return summed.func.value
    return None


def _distance_to_one(ctx: ModuleContext, norm: ast.Call) -> bool:
    """The norm is compared with 1 the WGAN-GP way: `norm - 1` right there, or through the
    name it is bound to in the same function (`grad_l2norm = ...; ((grad_l2norm - 1) ** 2)`).
    An R1 penalty's summed squares (no root, no 1) is not."""
    parent = ctx.parents.get(norm)
    if _minus_one(parent):
        return True
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and isinstance(parent.targets[0], ast.Name)
    ):
        return False
    name = parent.targets[0].id
    scope = ctx.enclosing_function(norm)
    body = scope.body if scope is not None else ctx.tree.body
    return any(
        _minus_one(node) and isinstance(node.left, ast.Name) and node.left.id == name
        for statement in body
        for node in ast.walk(statement)
        if isinstance(node, ast.BinOp)
    )


def _minus_one(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Sub)
        and isinstance(node.right, ast.Constant)
        and node.right.value in (1, 1.0)
    )
