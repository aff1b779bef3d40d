"""optimizer-lr-attribute-set: a learning rate assigned to an attribute of a torch optimizer."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_RATE_ATTRIBUTES = frozenset({"lr", "learning_rate"})
_NOT_OPTIMIZERS = ("lr_scheduler", "swa_utils", "Optimizer")


class OptimizerLrAttributeSet(Rule):
    """Detects a learning rate written to an attribute of a torch optimizer: `opt.lr = lr`,
    `self.optimizer.lr *= 0.5`, `optimizer.learning_rate = new_lr`, where the receiver is
    bound (in the same function, module or class) to a `torch.optim` optimizer's constructor.

    Why it matters: an optimizer reads its rate from `optimizer.param_groups[i]["lr"]`; an
    `lr` attribute on the optimizer object is a new Python attribute nobody reads, so the
    warmup or decay written this way never changes the step size and training runs at the
    initial rate throughout. pbloem/former's warmup did exactly this (`59994a9`, "Fix learning
    rate warmup": `opt.lr = lr` replaced by a `LambdaLR` scheduler).

    Also a hyperparameter written with a key straight into `param_groups`
    (`self.optimizer.param_groups["momentum"] = m`): `param_groups` is a list of per-group
    dicts, so the write raises `TypeError: list indices must be integers` the first time the
    schedule runs (nnU-Net's momentum-reducing trainer, `679a3c6f`: `param_groups[0][...]`).
    Any receiver counts: every optimizer, wrapper or not, keeps its groups in a list.

    Not reported: receivers not shown to be a `torch.optim` optimizer (a project's own
    optimizer wrapper may define an `lr` property), schedulers, reading `opt.lr`, writes into
    `param_groups` entries.

    Example:
        opt = torch.optim.Adam(model.parameters(), lr=arg.lr)
        ...
        opt.lr = max(arg.lr / arg.lr_warmup * seen, 1e-10)

    Fix: write every parameter group's rate (`for g in opt.param_groups: g["lr"] = lr`), or
    use a scheduler (`torch.optim.lr_scheduler.LambdaLR`).
    """

    id = "optimizer-lr-attribute-set"
    point = 4
    severity = Severity.HIGH
    title = "Learning rate assigned to an optimizer attribute"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Assign, ast.AugAssign)
    triggers = Triggers(
        words=('param_groups["', "param_groups['"),
        all_of=(("lr", "learning_rate"), ("optim",)),
    )

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Assign | ast.AugAssign)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if _keyed_param_groups(target):
                assert isinstance(target, ast.Subscript)
                ctx.report(
                    self,
                    target,
                    f"`{ast.unparse(target)}`: `param_groups` is a list of per-group dicts, so "
                    "a string key raises TypeError; write each group's entry (`for g in "
                    f"{ast.unparse(target.value)}: g[{ast.unparse(target.slice)}] = ...`).",
                )
                continue
            if not (isinstance(target, ast.Attribute) and target.attr in _RATE_ATTRIBUTES):
                continue
            optimizer = _optimizer_binding(ctx, target.value)
            if optimizer is None:
                continue
            ctx.report(
                self,
                target,
                f"`{ast.unparse(target)}` sets an attribute the optimizer never reads "
                f"(`{optimizer}` takes its rate from `param_groups[i]['lr']`): the learning "
                "rate does not change. Write each group's `'lr'`, or use a scheduler.",
            )


def _keyed_param_groups(target: ast.expr) -> bool:
    """`<x>.param_groups["<key>"]`: a string key into the list of groups."""
    return (
        isinstance(target, ast.Subscript)
        and isinstance(target.value, ast.Attribute)
        and target.value.attr == "param_groups"
        and isinstance(target.slice, ast.Constant)
        and isinstance(target.slice.value, str)
    )


def _optimizer_binding(ctx: ModuleContext, receiver: ast.expr) -> str | None:
    """The optimizer class `receiver` is bound to (a name in the enclosing function or at
    module level, `self.x` anywhere in the enclosing class), or None."""
    if isinstance(receiver, ast.Name):
        function = ctx.enclosing_function(receiver)
        scopes: list[ast.AST] = [ctx.tree] if function is None else [function, ctx.tree]
        for scope in scopes:
            for inner in walk_scope(scope):
                if isinstance(inner, ast.Assign):
                    for target in inner.targets:
                        if isinstance(target, ast.Name) and target.id == receiver.id:
                            found = _optimizer_class(ctx, inner.value)
                            if found:
                                return found
        return None
    if (
        isinstance(receiver, ast.Attribute)
        and isinstance(receiver.value, ast.Name)
        and receiver.value.id == "self"
    ):
        cls = ctx.enclosing_class(receiver)
        if cls is None:
            return None
        for inner in ast.walk(cls):
            if isinstance(inner, ast.Assign):
                for target in inner.targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and target.attr == receiver.attr
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        found = _optimizer_class(ctx, inner.value)
                        if found:
                            return found
    return None


def _optimizer_class(ctx: ModuleContext, value: ast.expr) -> str | None:
    """`torch.optim.Adam` when `value` constructs a torch optimizer."""
    if not isinstance(value, ast.Call):
        return None
    qualified = ctx.call_qualname(value)
    if qualified is None or not qualified.startswith("torch.optim."):
        return None
    if any(part in qualified for part in _NOT_OPTIMIZERS):
        return None
    name = qualified.rsplit(".", 1)[-1]
    return qualified if name[:1].isupper() else None
