"""trainable-tensor-not-parameter: an nn.Module keeps a trainable tensor that is not a Parameter."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg, self_attribute
from torchdoctor.agent.models import Severity

_FACTORIES = frozenset(
    {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "rand", "randn", "eye",
     "linspace", "arange", "zeros_like", "ones_like", "randn_like", "rand_like", "full_like"}
)  # fmt: skip


class TrainableTensorNotParameter(Rule):
    """Detects an `nn.Module` that keeps, as a plain attribute, a tensor it makes trainable:
    `self.log_alpha = torch.tensor(0.0, requires_grad=True)`, `self.w = torch.zeros(n,
    requires_grad=True)`, `self.scale = torch.ones(1).requires_grad_()`, never wrapped in
    `nn.Parameter` nor registered with `register_parameter`.

    Why it matters: only Parameters are module state. The tensor is missing from
    `module.parameters()` (an optimizer built on them never updates it), from `state_dict()`
    (a checkpoint loses it, and resuming restarts it from its initial value), and from
    `module.to()`/`.cuda()` (it stays on the CPU). Wrapping it afterwards (`ParameterList([t])`,
    `nn.Parameter(t)`) makes a new leaf: the loss still reads the old tensor, so the optimizer
    holds a parameter whose gradient stays None. thu-ml/tianshou fixed exactly this in SAC's
    automatic entropy tuning (`8e593e5`: `self._log_alpha = torch.tensor(log_alpha,
    requires_grad=True)` -> `torch.nn.Parameter(torch.tensor(log_alpha))`).

    Not reported: tensors made outside `__init__`/`reset_parameters` (a Lagrange multiplier
    re-created with its own optimizer in each explanation step, a test stand-in's fixed
    hidden states), tensors wrapped in `nn.Parameter(...)` (with or without `requires_grad`),
    attributes re-assigned as a Parameter or registered elsewhere in the class, classes that
    are not modules (an RL agent object holding `log_alpha` beside its own optimizer).

    Example:
        class AutoAlpha(nn.Module):
            def __init__(self, log_alpha):
                super().__init__()
                self._log_alpha = torch.tensor(log_alpha, requires_grad=True)

    Fix: `self._log_alpha = nn.Parameter(torch.tensor(log_alpha))`, and build the optimizer
    over `self.parameters()`.
    """

    id = "trainable-tensor-not-parameter"
    point = 4
    severity = Severity.HIGH
    title = "Trainable tensor kept outside the module's parameters"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef,)
    triggers = Triggers(("requires_grad", "requires_grad_"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.ClassDef)
        if node.name not in ctx.flow.module_classes:
            return
        trainable: list[tuple[str, ast.Assign]] = []
        registered: set[str] = set()
        for inner in walk_tree(node):
            if isinstance(inner, ast.Assign) and len(inner.targets) == 1:
                attribute = self_attribute(inner.targets[0])
                if attribute is None:
                    continue
                if _makes_trainable(ctx, inner.value) and _builds_state(ctx, inner):
                    trainable.append((attribute, inner))
                elif _is_parameter(ctx, inner.value):
                    registered.add(attribute)
            elif (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Attribute)
                and inner.func.attr == "register_parameter"
                and inner.args
                and isinstance(inner.args[0], ast.Constant)
            ):
                registered.add(str(inner.args[0].value))
        for attribute, assign in trainable:
            if attribute in registered:
                continue
            ctx.report(
                self,
                assign,
                f"`self.{attribute}` requires grad but is a plain tensor, not an "
                "`nn.Parameter`: `parameters()` (so an optimizer built on them), "
                "`state_dict()` and `.to()` all skip it. Wrap it: "
                f"`self.{attribute} = nn.Parameter(...)`.",
            )


_BUILDERS = frozenset({"__init__", "reset_parameters", "build", "_build"})


def _builds_state(ctx: ModuleContext, assign: ast.Assign) -> bool:
    """Made where a module builds its state (`__init__`, `reset_parameters`): a tensor made
    in a step method and handed to its own optimizer there is that step's scratch."""
    function = ctx.enclosing_function(assign)
    return function is not None and function.name in _BUILDERS


def _makes_trainable(ctx: ModuleContext, value: ast.expr) -> bool:
    """A torch factory given `requires_grad=True`, or one whose chain ends in
    `.requires_grad_()` / `.requires_grad_(True)`."""
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Attribute) and func.attr == "requires_grad_":
        flag = value.args[0] if value.args else kwarg(value, "requires_grad")
        if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is True):
            return False
        inner = func.value
        while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
            if _is_factory(ctx, inner):
                return True
            inner = inner.func.value
        return isinstance(inner, ast.Call) and _is_factory(ctx, inner)
    flag = kwarg(value, "requires_grad")
    return isinstance(flag, ast.Constant) and flag.value is True and _is_factory(ctx, value)


def _is_factory(ctx: ModuleContext, call: ast.Call) -> bool:
    qualified = ctx.call_qualname(call) or ""
    return qualified.startswith("torch.") and qualified.rsplit(".", 1)[-1] in _FACTORIES


def _is_parameter(ctx: ModuleContext, value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and (ctx.call_qualname(value) or "").endswith("Parameter")
