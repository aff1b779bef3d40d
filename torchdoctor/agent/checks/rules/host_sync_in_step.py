"""host-sync-in-step: a device-to-host copy on every training step."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import under_periodic_guard
from torchdoctor.agent.models import Severity

_SYNC_METHODS = frozenset({"item", "cpu", "numpy", "tolist"})
_TENSORISH = re.compile(r"loss|acc|correct|pred|logit|output|grad|norm", re.IGNORECASE)


class HostSyncInStep(Rule):
    """Detects `.item()`, `.cpu()`, `.numpy()`, `.tolist()` and `float(tensor)` executed on every
    training step (in the training loop's body or a function it calls, Lightning's
    `training_step` included).

    Why it matters: each one waits for the GPU to finish all queued work and copies the value
    to the host, so the CPU cannot queue the next step ahead: the GPU idles between steps.
    Logging under `if step % N == 0:` is fine and is not reported.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            ...
            running_loss += loss.item()

    Fix: accumulate on the device (`running_loss += loss.detach()`) and read the value every N
    steps or once per epoch (`running_loss.item()` after the loop).
    """

    id = "host-sync-in-step"
    point = 6
    severity = Severity.MEDIUM
    title = "Host-device synchronisation on every training step"
    items: ClassVar[tuple[str, ...]] = ("6.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _SYNC_METHODS | {"float"}

    def __init__(self) -> None:
        self.candidates: list[ast.Call] = []

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if isinstance(func, ast.Attribute):
            if (
                func.attr in _SYNC_METHODS
                and not node.args
                and not node.keywords
                and not (func.attr == "numpy" and _is_cpu_call(func.value))
            ):
                self.candidates.append(node)
        elif isinstance(func, ast.Name) and func.id == "float" and len(node.args) == 1:
            arg = node.args[0]
            if isinstance(
                arg, ast.Name | ast.Attribute | ast.Subscript | ast.Call
            ) and _TENSORISH.search(ast.unparse(arg)[:60]):
                self.candidates.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.candidates or not ctx.loops.training_loops:
            return
        reported: set[int] = set()  # one finding per statement (a print of five losses)
        for call in self.candidates:
            statement = _statement_of(ctx, call)
            if id(statement) in reported or not ctx.loops.in_training_step(call):
                continue
            loop = ctx.loops.loop_containing(call)
            stop = loop.node if loop is not None else ctx.enclosing_function(call)
            if under_periodic_guard(ctx, call, stop):
                continue
            reported.add(id(statement))
            what = call.func.attr if isinstance(call.func, ast.Attribute) else "float"
            ctx.report(
                self,
                call,
                f"`{what}` on every training step forces a GPU->CPU sync: the device idles "
                "until the host catches up",
            )


def _statement_of(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    return next((a for a in ctx.ancestors(node) if isinstance(a, ast.stmt)), node)


def _is_cpu_call(node: ast.expr) -> bool:
    """`t.cpu().numpy()`: the sync already happened at `.cpu()`, report it once."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("cpu", "detach")
    )
