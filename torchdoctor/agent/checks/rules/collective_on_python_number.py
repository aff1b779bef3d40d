"""collective-on-python-number: a `torch.distributed` collective given a Python number."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Collectives that reduce or send their first argument in place.
_IN_PLACE = frozenset(
    {
        "torch.distributed.all_reduce",
        "torch.distributed.reduce",
        "torch.distributed.broadcast",
    }
)
_NUMBER_CALLS = frozenset({"float", "int", "len", "round"})
_NUMBER_METHODS = frozenset({"item"})


class CollectiveOnPythonNumber(Rule):
    """Detects `dist.all_reduce(x)`, `dist.reduce(x, dst)` or `dist.broadcast(x, src)` where
    `x` is a local name that every assignment above the call makes a Python number: a
    number literal, `float(...)`, `int(...)`, `len(...)`, `t.item()`, and sums or
    augmented assignments of those (`val_loss = 0.0` then `val_loss += loss.item()`).

    Why it matters: collectives work in place on tensors; given a float they raise, so the
    validation loss meant to be averaged over ranks never is (modded-nanogpt accumulated
    `val_loss += loss.item()` before `dist.all_reduce(val_loss)` until `01a9f76`).

    Not reported: names that any assignment makes a tensor (`torch.tensor(...)`,
    `loss.detach()`, a call of anything else), function parameters and loop variables
    (their type is not known here), and attributes.

    Example:
        val_loss = 0.0
        for _ in range(val_steps):
            val_loss += model(x, y).item()
        dist.all_reduce(val_loss, op=dist.ReduceOp.AVG)

    Fix: accumulate a tensor on the device (`val_loss += loss.detach()`, or `val_loss =
    torch.tensor(val_loss, device=device)` before the collective).
    """

    id = "collective-on-python-number"
    point = 1
    severity = Severity.HIGH
    title = "Collective called on a Python number"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("all_reduce", "broadcast", "reduce("))

    def finish(self, ctx: ModuleContext) -> None:
        for call in ctx.flow.calls_to(_IN_PLACE):
            if not call.args or not isinstance(call.args[0], ast.Name):
                continue
            name = call.args[0].id
            fn = ctx.enclosing_function(call)
            if fn is None or not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                body: list[ast.stmt] = ctx.tree.body
            else:
                if name in {
                    a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)
                }:
                    continue
                body = fn.body
            values = _assigned_values(body, name, call.lineno)
            if not values or not all(_python_number(v, name) for v in values):
                continue
            ctx.report(
                self,
                call,
                f"`{name}` is a Python number here (`{ast.unparse(values[0])}`"
                f"{', ...' if len(values) > 1 else ''}): "
                f"`{ast.unparse(call.func)}` reduces a tensor in place and raises on a "
                f"float; accumulate `{name}` as a tensor on the device",
                data={"name": name},
            )


def _assigned_values(body: list[ast.stmt], name: str, before: int) -> list[ast.expr]:
    """What the statements above line `before` assign to `name` (augmented assignments'
    right-hand sides too); [] when a loop, `with`, unpacking, walrus or `global` binds it
    (its value is unknown)."""
    values: list[ast.expr] = []
    for node in walk_scope(body):
        if getattr(node, "lineno", 0) >= before:
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    values.append(node.value)
                elif any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target)):
                    return []
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                if node.value is None:
                    return []
                values.append(node.value)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.withitem | ast.NamedExpr):
            bound: ast.expr | None = (
                node.optional_vars if isinstance(node, ast.withitem) else node.target
            )
            if bound is not None and any(
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(bound)
            ):
                return []
        elif isinstance(node, ast.Global | ast.Nonlocal) and name in node.names:
            return []
    return values


def _python_number(value: ast.expr, name: str) -> bool:
    if isinstance(value, ast.Constant):
        return isinstance(value.value, int | float) and not isinstance(value.value, bool)
    if isinstance(value, ast.Name):
        return value.id == name
    if isinstance(value, ast.UnaryOp):
        return _python_number(value.operand, name)
    if isinstance(value, ast.BinOp):
        return _python_number(value.left, name) and _python_number(value.right, name)
    if isinstance(value, ast.Call):
        func = value.func
        if isinstance(func, ast.Name):
            return func.id in _NUMBER_CALLS
        return isinstance(func, ast.Attribute) and func.attr in _NUMBER_METHODS and not value.args
    return False
