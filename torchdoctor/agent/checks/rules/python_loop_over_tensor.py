"""python-loop-over-tensor: a Python loop over a tensor's rows in forward()."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.patterns import class_methods, module_class_defs
from torchdoctor.agent.models import Severity


class PythonLoopOverTensor(Rule):
    """Detects, in an `nn.Module`'s `forward`, a Python `for` loop over the indices of one of
    its tensor arguments (`for i in range(x.size(0))`, `range(x.shape[0])`, `range(len(x))`)
    whose body indexes that tensor (`x[i]`).

    Why it matters: each iteration launches its own small kernels and the batch dimension is
    no longer parallel: on a GPU the loop is typically one to two orders of magnitude slower
    than the vectorised operation, and it cannot be fused or captured well by `torch.compile`.

    Example:
        def forward(self, x):
            for i in range(x.size(0)):
                x[i] = x[i] / x[i].norm()

    Not reported: a loop whose index also picks the layer that runs (`self.
    atom_embedding_list[i](x[:, i])`, OGB's molecule encoders: one embedding table per
    feature column): each iteration runs a different module, so there is no single
    operation to vectorise into. Nor a loop that carries a value from one iteration to the
    next (a name read in the body before the body assigns it: a teacher-forced decoder's
    `yo.append(self.dec(yi)); yi = y[:, t]`, an unrolled cell's `h = self.cell(x[:, t], h)`):
    each step needs the one before, a recurrence no batched operation replaces.

    Fix: operate on the whole batch at once (broadcasting, `x / x.norm(dim=1, keepdim=True)`,
    `torch.bmm`, `torch.vmap`).
    """

    id = "python-loop-over-tensor"
    point = 4
    severity = Severity.MEDIUM
    title = "Python loop over a tensor in forward()"
    items: ClassVar[tuple[str, ...]] = ("4.2",)

    def finish(self, ctx: ModuleContext) -> None:
        if "range(" not in ctx.source or "forward" not in ctx.source:
            return
        for cls in module_class_defs(ctx):
            forward = class_methods(cls).get("forward")
            if forward is None:
                continue
            params = {a.arg for a in forward.args.args[1:]}
            for node in walk_tree(forward):
                if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                    tensor = _ranged_tensor(node.iter)
                    if (
                        tensor in params
                        and _indexes(node.body, tensor, node.target.id)
                        and not _picks_a_layer(node.body, node.target.id)
                        and not _carries_state(node.body)
                    ):
                        ctx.report(
                            self,
                            node,
                            f"a Python loop walks `{tensor}` row by row: vectorise it over the "
                            "batch dimension",
                            header_only=True,
                        )


def _ranged_tensor(expr: ast.expr) -> str:
    """`range(x.size(0))`, `range(x.shape[0])`, `range(len(x))` -> 'x'."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
        return ""
    if expr.func.id != "range" or len(expr.args) != 1:
        return ""
    bound = expr.args[0]
    if isinstance(bound, ast.Call) and isinstance(bound.func, ast.Name) and bound.func.id == "len":
        inner = bound.args[0] if bound.args else None
        return inner.id if isinstance(inner, ast.Name) else ""
    if (
        isinstance(bound, ast.Call)
        and isinstance(bound.func, ast.Attribute)
        and bound.func.attr == "size"
        and isinstance(bound.func.value, ast.Name)
    ):
        return bound.func.value.id
    if (
        isinstance(bound, ast.Subscript)
        and isinstance(bound.value, ast.Attribute)
        and bound.value.attr == "shape"
        and isinstance(bound.value.value, ast.Name)
    ):
        return bound.value.value.id
    return ""


def _indexes(body: list[ast.stmt], tensor: str, index: str) -> bool:
    for stmt in body:
        for node in walk_tree(stmt):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == tensor
                and any(isinstance(n, ast.Name) and n.id == index for n in walk_tree(node.slice))
            ):
                return True
    return False


def _picks_a_layer(body: list[ast.stmt], index: str) -> bool:
    """`self.layers[i](...)`: the loop index selects the module called in the body."""
    for stmt in body:
        for node in walk_tree(stmt):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Subscript)
                and isinstance(node.func.value, ast.Attribute)
                and isinstance(node.func.value.value, ast.Name)
                and node.func.value.value.id == "self"
                and isinstance(node.func.slice, ast.Name)
                and node.func.slice.id == index
            ):
                return True
    return False


def _carries_state(body: list[ast.stmt]) -> bool:
    """A name the body hands to a call before (or while) it rebinds it: each iteration's
    call takes the value the previous one left (an accumulation, `s = s + x[i]`, is not
    this: no call receives the running value)."""
    for position, stmt in enumerate(body):
        passed = {
            n.id
            for call in walk_tree(stmt)
            if isinstance(call, ast.Call)
            for arg in [*call.args, *(k.value for k in call.keywords)]
            for n in ast.walk(arg)
            if isinstance(n, ast.Name)
        }
        earlier = {name for before in body[:position] for name in _rebound(before)}
        later = {name for after in body[position:] for name in _rebound(after)}
        if (passed - earlier) & later:
            return True
    return False


def _rebound(stmt: ast.stmt) -> set[str]:
    """Names an assignment statement rebinds (not `x[i] = ...` nor `self.h = ...`)."""
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, ast.AugAssign | ast.AnnAssign):
        targets = [stmt.target]
    names: set[str] = set()
    while targets:
        target = targets.pop()
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            targets.extend(target.elts)
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
    return names
