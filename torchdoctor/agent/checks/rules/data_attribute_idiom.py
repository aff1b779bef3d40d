"""data-attribute-idiom: tensors read or written through `.data`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_PARAMETER_ATTRS = frozenset({"weight", "bias", "grad", "running_mean", "running_var"})
_INIT_FUNCTION = ("init", "reset_parameters")
# What gives a parameter new storage from its own values: conversions, views and shards.
_RESHAPES = frozenset(
    {"half", "float", "double", "bfloat16", "to", "type", "cuda", "cpu", "contiguous"}
    | {"chunk", "split", "tensor_split", "narrow", "view", "reshape", "t", "transpose"}
)
_RESTORE_DEPTH = 4


def _initialisation(ctx: ModuleContext, node: ast.AST) -> bool:
    """`.data` while initialising weights (an `nn.init.*` argument, or a function named
    `*init*` / `reset_parameters`): no backward pass is in flight, so nothing goes wrong."""
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.Call) and (ctx.call_qualname(ancestor) or "").startswith(
            "torch.nn.init."
        ):
            return True
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            return any(word in ancestor.name.lower() for word in _INIT_FUNCTION)
    return False


def _restores_itself(ctx: ModuleContext, node: ast.Attribute) -> bool:
    """`p.data = p.data.half()`, `w.data = torch.tensor_split(w, n)[rank]` (either side):
    the parameter gets new storage made from its own values only (a dtype or device
    conversion, a shard or view), as `nn.Module.half()` does; `torch.no_grad()` offers no way
    to change a Parameter's dtype, device or shape while keeping the object the optimizer
    (or a quantisation subclass) holds."""
    assign: ast.AST | None = node
    while assign is not None and not isinstance(assign, ast.stmt):
        assign = ctx.parents.get(assign)
    if not isinstance(assign, ast.Assign) or len(assign.targets) != 1:
        return False
    target = assign.targets[0]
    if not (isinstance(target, ast.Attribute) and target.attr == "data"):
        return False
    owner = ast.unparse(target.value)
    if isinstance(node.ctx, ast.Load) and ast.unparse(node.value) != owner:
        return False
    return _built_from(ctx, assign.value, owner, 0)


def _built_from(ctx: ModuleContext, value: ast.expr, owner: str, depth: int) -> bool:
    """`value` is `owner` (or its `.data`) through conversions, views and splits only."""
    if depth > _RESTORE_DEPTH:
        return False
    if isinstance(value, ast.Attribute) and value.attr == "data":
        value = value.value
    if ast.unparse(value) == owner:
        return True
    if isinstance(value, ast.Subscript):
        return _built_from(ctx, value.value, owner, depth + 1)
    if isinstance(value, ast.Name):
        bound = ctx.flow.definitions(value)
        return bool(bound) and all(_built_from(ctx, v, owner, depth + 1) for v in bound)
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Attribute):
        return False
    if value.func.attr not in _RESHAPES:
        return False
    if (ctx.call_qualname(value) or "").startswith("torch.") and value.args:
        return _built_from(ctx, value.args[0], owner, depth + 1)  # torch.chunk(w, n)
    return _built_from(ctx, value.func.value, owner, depth + 1)  # w.chunk(n), w.half()


def _declares_data_field(ctx: ModuleContext) -> bool:
    """The module declares a record with a `data` field (`namedtuple("Binding", (..., "data"))`,
    a NamedTuple or dataclass with `data: Tensor`): `bindings[name].data` is that field, a
    tensor in its own right, not `Tensor.data`."""
    memo = ctx.memo_table("data-attribute-idiom.record")
    if "" not in memo:
        memo[""] = any(  # the only nodes `_data_field` accepts, from the engine's indexes
            _data_field(node)
            for node in [
                *ctx.nodes_by_type().get(ast.ClassDef, ()),
                *ctx.flow.calls_named(("namedtuple",)),
            ]
        )
    return bool(memo[""])


def _data_field(node: ast.AST) -> bool:
    if isinstance(node, ast.ClassDef):
        return any(
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and stmt.target.id == "data"
            for stmt in node.body
        )
    if not isinstance(node, ast.Call) or len(node.args) < 2:
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    fields = node.args[1]
    if name != "namedtuple":
        return False
    if isinstance(fields, ast.Constant) and isinstance(fields.value, str):
        return "data" in fields.value.replace(",", " ").split()
    return isinstance(fields, ast.Tuple | ast.List) and any(
        isinstance(e, ast.Constant) and e.value == "data" for e in fields.elts
    )


class DataAttributeIdiom(Rule):
    """Detects the `.data` idiom on parameters and tensors: `p.data = ...`,
    `p.data.mul_(...)` (any in-place method), and `.weight.data` / `.bias.data` /
    `.grad.data`, or `.data` on the loop variable of `for p in model.parameters()`.

    Why it matters: `.data` returns a tensor that autograd does not track and whose changes
    skip the version counter, so an in-place update of a tensor needed for backward yields
    silently wrong gradients instead of an error; it is a pre-0.4 idiom.

    Example:
        for p in model.parameters():
            p.data.add_(-lr * p.grad.data)

    Not reported while initialising weights (an `nn.init.*` argument, a function named
    `*init*` or `reset_parameters`), where no backward pass is in flight, nor a parameter
    given new storage from its own values (`p.data = p.data.half()`, what `Module.half()`
    does, or a tensor-parallel shard of itself), nor an
    in-place call on the `data` field of a record the module declares
    (`bindings[name].data.resize_(...)`), nor `x.data.detach()`, which is `x.detach()`.

    Fix: `with torch.no_grad(): p.add_(p.grad, alpha=-lr)`, and `x.detach()` to read a value
    without tracking.
    """

    id = "data-attribute-idiom"
    point = 10
    severity = Severity.LOW
    title = "Tensor accessed through .data"
    items: ClassVar[tuple[str, ...]] = ("10.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Attribute,)
    triggers = Triggers(("data",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Attribute)
        if node.attr != "data":
            return
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "data":
            return  # `.data.data`: report the outer one only
        if isinstance(parent, ast.Attribute) and parent.attr == "detach":
            return  # `g.data.detach()` is `g.detach()`: a detached copy, nothing bypassed
        reason = ""
        if isinstance(node.ctx, ast.Store):
            if self._tensor_store(ctx, node):
                reason = "assigning to .data"
        elif (
            isinstance(parent, ast.Attribute)
            and parent.attr.endswith("_")
            and not parent.attr.startswith("_")
            and not (_declares_data_field(ctx) and isinstance(node.value, ast.Subscript | ast.Call))
        ):
            reason = f".data.{parent.attr}() changes the tensor behind autograd's back"
        elif isinstance(node.value, ast.Attribute) and node.value.attr in _PARAMETER_ATTRS:
            reason = f".{node.value.attr}.data bypasses autograd"
        elif isinstance(node.value, ast.Name) and self._parameter_loop_var(
            ctx, node, node.value.id
        ):
            reason = "a parameter's .data bypasses autograd"
        if reason and not _initialisation(ctx, node) and not _restores_itself(ctx, node):
            ctx.report(self, node, f"{reason}: use torch.no_grad() or .detach() instead")

    def _tensor_store(self, ctx: ModuleContext, node: ast.Attribute) -> bool:
        """`w.weight.data = ...`, `p.data = ...` in a parameter loop, or `m.data = torch.f(...)`.

        A plain `self.data = ...` is an ordinary attribute of a class, not the tensor idiom.
        """
        receiver = node.value
        if isinstance(receiver, ast.Attribute) and receiver.attr in _PARAMETER_ATTRS:
            return True
        if not isinstance(receiver, ast.Name) or receiver.id in ("self", "cls"):
            return False
        if self._parameter_loop_var(ctx, node, receiver.id):
            return True
        assign = ctx.parents.get(node)
        value = assign.value if isinstance(assign, ast.Assign) else None
        return isinstance(value, ast.Call) and (ctx.call_qualname(value) or "").startswith("torch.")

    @staticmethod
    def _parameter_loop_var(ctx: ModuleContext, node: ast.AST, name: str) -> bool:
        for anc in ctx.ancestors(node):
            if isinstance(anc, ast.For) and isinstance(anc.target, ast.Name | ast.Tuple):
                targets = [anc.target] if isinstance(anc.target, ast.Name) else anc.target.elts
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return "parameters()" in ast.unparse(anc.iter)[:200]
        return False
