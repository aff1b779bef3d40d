"""cpu-then-move: a tensor is created on the CPU and then copied to the device."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_FACTORIES = frozenset(
    f"torch.{name}"
    for name in (
        "rand",
        "randn",
        "randint",
        "randperm",
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "eye",
        "linspace",
        "logspace",
    )
)
"""Factories that can fill the tensor on the device. Not `torch.tensor(data)`: it copies host
data, and with `device=` it still builds the tensor on the host and copies it over (as
`.to(device)` does), so moving it afterwards costs nothing more."""

_REPEATING = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.For, ast.AsyncFor,
    ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
)  # fmt: skip
"""Scopes whose code may run many times (a function may be called every step)."""


class CpuThenMove(Rule):
    """Detects a tensor factory immediately moved to a device: `torch.zeros(n).cuda()`,
    `torch.randn(b, d).to(device)`.

    Why it matters: the tensor is first allocated and filled on the CPU, then copied over PCIe
    (a synchronous copy from pageable memory), where passing `device=` allocates and fills it
    directly on the GPU; inside a training step this costs a copy per step (the profiler's
    ExtraCUDACopyPattern). Not reported: `torch.tensor(data).to(device)`, whose data is on
    the host either way, and a script's set-up at module level outside any loop (the rollout
    buffers allocated once before training: one copy per run).

    Example:
        mask = torch.ones(batch, seq).cuda()

    Fix: `torch.ones(batch, seq, device="cuda")` (or `device=x.device`).
    """

    id = "cpu-then-move"
    point = 6
    severity = Severity.LOW
    title = "Tensor created on CPU then moved"
    items: ClassVar[tuple[str, ...]] = ("6.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"cuda", "to"})

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr not in ("cuda", "to"):
            return
        inner = func.value
        if not isinstance(inner, ast.Call) or ctx.call_qualname(inner) not in _FACTORIES:
            return
        if kwarg(inner, "device") is not None or _runs_once(ctx, node):
            return
        if func.attr == "to" and not self._moves_device(ctx, node):
            return
        ctx.report(
            self,
            node,
            "the tensor is built on the CPU and then copied to the device: pass device= to "
            "the factory instead",
        )

    @staticmethod
    def _moves_device(ctx: ModuleContext, call: ast.Call) -> bool:
        """`.to(device)` / `.to("cuda")` moves; `.to(torch.float16)` only casts."""
        target = call.args[0] if call.args else kwarg(call, "device")
        if target is None:
            return False
        qual = ctx.qualname(target) or ""
        if qual.startswith("torch.") and qual != "torch.device":
            return False  # a dtype such as torch.float16
        if isinstance(target, ast.Constant):
            return isinstance(target.value, str) and target.value.startswith(("cuda", "mps", "xpu"))
        return "dtype" not in ast.unparse(target)


def _runs_once(ctx: ModuleContext, node: ast.AST) -> bool:
    """Module-level code outside any loop or comprehension runs once per process."""
    return not any(isinstance(a, _REPEATING) for a in ctx.ancestors(node))
