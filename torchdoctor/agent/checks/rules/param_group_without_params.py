"""param-group-without-params: an optimizer parameter group whose tensors are not under 'params'."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

# per-group options every torch optimizer reads from a group
_GROUP_OPTIONS = frozenset(
    {"lr", "weight_decay", "momentum", "betas", "eps", "initial_lr", "dampening", "nesterov"}
)
_OPTIMIZERS = frozenset(
    {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
     "ASGD", "Rprop", "LBFGS", "SparseAdam", "Adafactor", "Lamb", "LAMB", "LARS", "FusedAdam",
     "FusedLAMB", "AdamW8bit", "Adam8bit", "Lion", "Muon"}
)  # fmt: skip


class ParamGroupWithoutParams(Rule):
    """Detects a parameter group (a dict literal with group options such as `lr` or
    `weight_decay`) whose tensors sit under another key than `params` (`'kwargs'`, `'param'`,
    `'parameters'`), in a list given to an optimizer, directly or through the name it is
    bound to or appended to: `[{'kwargs': decay, 'weight_decay': wd}, ...]` then
    `torch.optim.AdamW(groups)` or a project's `get_optimizer(groups, ...)`.

    Why it matters: an optimizer reads a group's tensors from its `params` key only and
    refuses a group without it ("parameter group didn't specify a value of required
    optimization parameter params"), or, in wrappers that fill in defaults, trains a group
    with no tensors. The weight-decay / no-decay split that every fine-tuning script copies
    is where a renamed key hides. yoshitomo-matsubara/torchdistill fixed exactly this
    (`fc1f23e`: both groups of `optimizer_no_decay` keyed `'kwargs'`, now `'params'`).

    Not reported: groups with a `params` key, dicts built with `**` or non-literal keys,
    dicts of options alone (no list or comprehension of tensors in them), lists that never
    reach an optimizer or a function whose name says optimizer.

    Example:
        groups = [
            {"kwargs": [p for n, p in named if "bias" not in n], "weight_decay": 0.01},
            {"kwargs": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr)

    Fix: key each group's tensors `params`: `{"params": [...], "weight_decay": 0.01}`.
    """

    id = "param-group-without-params"
    point = 1
    severity = Severity.HIGH
    title = "Optimizer parameter group without 'params'"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Dict,)
    triggers = Triggers(("weight_decay", "lr", "momentum", "betas"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Dict)
        keys: list[str] = []
        for key in node.keys:
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return  # `**options` or a computed key: the group is not all literal
            keys.append(key.value)
        if not keys or "params" in keys or not _GROUP_OPTIONS & set(keys):
            return
        tensors = [
            (k, key_node)
            for k, key_node, value in zip(keys, node.keys, node.values, strict=True)
            if isinstance(value, ast.ListComp | ast.GeneratorExp | ast.List | ast.Call)
            and k not in _GROUP_OPTIONS
        ]
        if len(tensors) != 1:
            return
        optimizer = _reaches_optimizer(ctx, node)
        if optimizer is None:
            return
        tensor_key, key_node = tensors[0]
        assert key_node is not None
        ctx.report(
            self,
            key_node,
            f"this parameter group keeps its tensors under '{tensor_key}', not 'params', and "
            f"it goes to `{optimizer}`: optimizers read a group's tensors from 'params' "
            "only, so the group is refused (or trains nothing). Key them 'params'.",
        )


def _reaches_optimizer(ctx: ModuleContext, group: ast.Dict) -> str | None:
    """The optimizer call the list holding `group` is given to, directly or through the
    name it is bound to or appended to."""
    holder = ctx.parents.get(group)
    name: str | None = None
    if isinstance(holder, ast.List | ast.Tuple):
        parent = ctx.parents.get(holder)
        if isinstance(parent, ast.Call) and holder in parent.args:
            return _optimizer_name(ctx, parent)
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
            target = parent.targets[0]
            name = target.id if isinstance(target, ast.Name) else None
    elif isinstance(holder, ast.Call) and group in holder.args:
        func = holder.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("append", "extend", "add_param_group")
            and isinstance(func.value, ast.Name)
        ):
            if func.attr == "add_param_group":
                return "add_param_group"
            name = func.value.id
    if name is None:
        return None
    scope: ast.AST = ctx.enclosing_function(group) or ctx.tree
    for inner in walk_scope(scope):
        if (
            isinstance(inner, ast.Call)
            and any(isinstance(a, ast.Name) and a.id == name for a in inner.args)
            and (found := _optimizer_name(ctx, inner)) is not None
        ):
            return found
    return None


def _optimizer_name(ctx: ModuleContext, call: ast.Call) -> str | None:
    qualified = ctx.call_qualname(call) or ""
    name = terminal_name(call.func)
    if qualified.startswith("torch.optim.") or name in _OPTIMIZERS or "optim" in name.lower():
        return ast.unparse(call.func)
    return None
