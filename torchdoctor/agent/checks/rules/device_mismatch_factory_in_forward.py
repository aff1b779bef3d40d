"""device-mismatch-factory-in-forward: `forward` creates CPU tensors with no `device=`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.device_scope import is_script, touches_accelerator
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.models import Severity

_FACTORIES = frozenset(
    f"torch.{name}"
    for name in (
        "zeros",
        "ones",
        "empty",
        "full",
        "rand",
        "randn",
        "randint",
        "arange",
        "eye",
        "linspace",
        "tensor",
    )
)
_MOVES = frozenset({"to", "cuda", "type_as", "to_device"})


class DeviceMismatchFactoryInForward(Rule):
    """Detects tensor factories (`torch.zeros/ones/empty/full/rand/randn/randint/arange/eye/
    linspace/tensor`) called inside an `nn.Module.forward` without `device=` and without an
    `.to(...)`/`.cuda()`/`.type_as(...)` in the same chain (`torch.arange(n).view(-1, 1)
    .to(device)`). Not reported: scalar `torch.tensor(0.5)` and `torch.tensor(2.0 /
    torch.pi)` (0-dim CPU tensors mix with CUDA tensors), index tensors
    (`x[torch.arange(B), idx]`: a CUDA tensor may be indexed with CPU indices), and scripts
    that never mention a device (a `__main__` guard or a module-level loop and no cuda,
    device or accelerator anywhere: the model runs on the CPU).

    Why it matters: the tensor is created on the CPU whatever device the model runs on: on a
    GPU the forward fails with "Expected all tensors to be on the same device", or pays a
    host-to-device copy on every call when moved afterwards.

    Example:
        def forward(self, x):
            mask = torch.ones(x.shape[0], x.shape[1])
            return x * mask

    Fix: `torch.ones(..., device=x.device, dtype=x.dtype)`, `torch.ones_like(x)` or
    `x.new_ones(...)`; constant tensors belong in a registered buffer.
    """

    id = "device-mismatch-factory-in-forward"
    point = 1
    severity = Severity.MEDIUM
    title = "Tensor created without device= in forward()"
    items: ClassVar[tuple[str, ...]] = ("1.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "def forward" in ctx.source and bool(ctx.flow.module_classes)

    def finish(self, ctx: ModuleContext) -> None:
        if "def forward" not in ctx.source:
            return
        if not touches_accelerator(ctx.source) and is_script(ctx.tree):
            return  # a CPU-only script: there is no other device to mismatch
        flow = ctx.flow
        for name in sorted(flow.module_classes):
            for stmt in flow.classes[name].body:
                if isinstance(stmt, ast.FunctionDef) and stmt.name == "forward":
                    self._check_forward(ctx, stmt)

    def _check_forward(self, ctx: ModuleContext, forward: ast.FunctionDef) -> None:
        for node in walk_scope(forward.body):
            if not isinstance(node, ast.Call):
                continue
            qual = ctx.flow.qualname_of(node)
            if qual not in _FACTORIES or _placed(ctx, node):
                continue
            ctx.report(
                self,
                node,
                f"`{qual}` in forward() creates a CPU tensor whatever the model's device: "
                "pass device= (e.g. device=x.device) or use a *_like / x.new_* factory",
                data={"factory": qual},
            )


def _placed(ctx: ModuleContext, call: ast.Call) -> bool:
    if kwarg(call, "device") is not None or any(k.arg is None for k in call.keywords):
        return True
    scalar = bool(call.args) and (
        isinstance(call.args[0], ast.Constant) or _scalar_arithmetic(call.args[0])
    )
    if scalar and ctx.flow.qualname_of(call) == "torch.tensor":
        return True
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Attribute | ast.Tuple) or (
        isinstance(parent, ast.Call) and parent.func is node
    ):
        if isinstance(parent, ast.Attribute) and parent.attr in _MOVES:
            return True  # moved later in the chain: `.view(-1, 1).to(device)`
        node, parent = parent, ctx.parents.get(parent)
    return isinstance(parent, ast.Subscript) and parent.slice is node  # an index tensor


def _scalar_arithmetic(expr: ast.expr) -> bool:
    """`-1`, `2.0 / torch.pi`, `self.config.n_embd ** 0.5`: arithmetic over numbers, names
    and attributes with at least one number, so a Python scalar (the tensor is 0-dim)."""
    return (
        isinstance(expr, ast.BinOp | ast.UnaryOp)
        and _arithmetic(expr)
        and any(_number(n) for n in ast.walk(expr))
    )


def _arithmetic(expr: ast.expr) -> bool:
    if isinstance(expr, ast.BinOp):
        return _arithmetic(expr.left) and _arithmetic(expr.right)
    if isinstance(expr, ast.UnaryOp):
        return _arithmetic(expr.operand)
    return _number(expr) or isinstance(expr, ast.Name | ast.Attribute)


def _number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )
