"""torchscript-for-deploy: new deployment code built on TorchScript."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import source_has, target_torch, terminal_name
from torchdoctor.agent.models import Severity

_TORCHSCRIPT = frozenset({"torch.jit.trace", "torch.jit.script", "torch.jit.trace_module"})


class TorchScriptForDeploy(Rule):
    """Detects `torch.jit.trace` / `torch.jit.script` calls (for torch 2.x targets).

    Why it matters: TorchScript is in maintenance mode; new operators and compiler work go to
    `torch.export` (an ahead-of-time graph with explicit dynamic shapes) and AOTInductor, and
    tracing silently freezes Python control flow and shapes into the graph.

    Example:
        scripted = torch.jit.trace(model, example)
        scripted.save("model.pt")

    Fix: `ep = torch.export.export(model, (example,))`, then `torch.export.save(ep, ...)`, or
    compile it with AOTInductor (`torch._inductor.aoti_compile_and_package`) for C++ serving.
    """

    id = "torchscript-for-deploy"
    point = 7
    severity = Severity.LOW
    title = "TorchScript used for deployment"
    items: ClassVar[tuple[str, ...]] = ("7.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"trace", "script", "trace_module"})
    visit_gate: ClassVar[tuple[str, ...]] = ("trace", "script")

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("trace", "script", "trace_module"):
            return
        if not source_has(ctx, "jit") or ctx.call_qualname(node) not in _TORCHSCRIPT:
            return
        if (target_torch(ctx) or (2, 0)) < (2, 0):
            return
        ctx.report(
            self,
            node,
            "TorchScript is in maintenance mode: export with torch.export (and AOTInductor "
            "for C++ serving)",
        )
