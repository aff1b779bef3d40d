"""torchscript-for-deploy: new deployment code built on TorchScript."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
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

    Not reported: a training module that scripts its live model in place for speed
    (`self.model = torch.jit.script(self.model)`, nothing saved with `.save`): no deployment
    artefact is built there.

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
    triggers = Triggers(("trace", "script"))

    def __init__(self) -> None:
        self.calls: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("trace", "script", "trace_module"):
            return
        if not source_has(ctx, "jit") or ctx.call_qualname(node) not in _TORCHSCRIPT:
            return
        if (target_torch(ctx) or (2, 0)) < (2, 0):
            return
        self.calls.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        for node in self.calls:  # judged once the training loops are known
            if not _compiles_the_live_model(ctx, node):
                self._report(ctx, node)

    def _report(self, ctx: ModuleContext, node: ast.Call) -> None:
        ctx.report(
            self,
            node,
            "TorchScript is in maintenance mode: export with torch.export (and AOTInductor "
            "for C++ serving)",
        )


def _compiles_the_live_model(ctx: ModuleContext, call: ast.Call) -> bool:
    """`self.model = torch.jit.script(self.model)` in a module that trains and saves no
    TorchScript file: the scripted model replaces the one being trained (a speed option)."""
    parent = ctx.parents.get(call)
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and call.args
        and ast.unparse(parent.targets[0]) == ast.unparse(call.args[0])
    ):
        return False
    if not (ctx.loops.training_loops or source_has(ctx, ".backward(")):
        return False
    return not source_has(ctx, ".save(")
