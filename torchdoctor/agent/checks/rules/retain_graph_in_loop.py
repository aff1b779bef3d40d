"""retain-graph-in-loop: every backward of a loop keeps its graph (`retain_graph=True`)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_AUTOGRAD_FUNCTIONS = frozenset({"torch.autograd.backward", "torch.autograd.grad"})


class RetainGraphInLoop(Rule):
    """Detects `backward(retain_graph=True)` (or `torch.autograd.grad/backward` with it) inside
    a loop or a per-step function, when no other backward in the same loop body frees the
    graph.

    Why it matters: `retain_graph=True` keeps the buffers of the whole graph after backward.
    Called every step, memory stays high or grows (and a graph reused across steps raises or
    silently back-propagates through stale values). Several losses back-propagated through a
    shared graph, the last one without `retain_graph`, are legitimate and not reported, nor
    is `create_graph=True` (a gradient penalty: the graph is kept so the penalty built from
    the gradients can be back-propagated, which frees it; `retain_graph` defaults to it).

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward(retain_graph=True)
            optimizer.step()

    Fix: drop `retain_graph=True`; if two losses share a graph, sum them and call backward
    once, or keep `retain_graph=True` only on all but the last backward.
    """

    id = "retain-graph-in-loop"
    point = 1
    severity = Severity.MEDIUM
    title = "retain_graph=True on every step"
    items: ClassVar[tuple[str, ...]] = ("1.4",)
    triggers = Triggers(("retain_graph", "backward", "autograd"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source or "autograd" in ctx.source  # autograd.grad only

    def finish(self, ctx: ModuleContext) -> None:
        if "retain_graph" not in ctx.source:
            return
        for node in ctx.flow.nodes(ast.Call):
            if not _retains(node):
                continue
            region = _per_step_region(ctx, node)
            if region is None or _some_backward_frees(ctx, region):
                continue
            if _output_built_before_loop(ctx, node):
                continue
            ctx.report(
                self,
                node,
                "backward(retain_graph=True) runs every iteration and no later backward frees "
                "the graph: its buffers stay in memory",
            )


def _is_backward(ctx: ModuleContext, call: ast.Call) -> bool:
    if isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
        return True
    return ctx.flow.qualname_of(call) in _AUTOGRAD_FUNCTIONS


def _retains(call: ast.Call) -> bool:
    """`retain_graph=True` without `create_graph=True` (a double backward needs the graph)."""
    return _true(call, "retain_graph") and not _true(call, "create_graph")


def _true(call: ast.Call, name: str) -> bool:
    value = kwarg(call, name)
    return isinstance(value, ast.Constant) and value.value is True


def _per_step_region(ctx: ModuleContext, node: ast.Call) -> list[ast.stmt] | None:
    """The loop body (or per-step function body) the call runs in, if any."""
    if not _is_backward(ctx, node):
        return None
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            return anc.body
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return anc.body if ctx.loops.in_training_step(node) else None
    return None


def _differentiated(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The tensor a backward starts from: `loss` of `loss.backward()`, the outputs of
    `torch.autograd.grad(loss, ...)`."""
    if isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
        return call.func.value
    first = call.args[0] if call.args else kwarg(call, "outputs") or kwarg(call, "tensors")
    return first


def _output_built_before_loop(ctx: ModuleContext, call: ast.Call) -> bool:
    """The backward's output is a name the innermost loop around it never rebinds: the
    loop differentiates the one graph built before it, several times (once per parameter,
    per input), and each pass needs that graph kept. An element of it counts as the graph
    itself: `autograd.grad(y[:, j], x, ...)` for each `j` builds a Jacobian row by row."""
    output = _differentiated(ctx, call)
    while isinstance(output, ast.Subscript):
        output = output.value
    if not isinstance(output, ast.Name):
        return False
    loop = next(
        (a for a in ctx.ancestors(call) if isinstance(a, ast.For | ast.While | ast.AsyncFor)),
        None,
    )
    if loop is None:
        return False
    rebound = {
        n.id
        for n in walk_scope(loop)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del)
    }
    rebound |= {  # `losses[i] = criterion(...)`: a new graph stored in it every iteration
        n.value.id
        for n in walk_scope(loop)
        if isinstance(n, ast.Subscript)
        and isinstance(n.ctx, ast.Store)
        and isinstance(n.value, ast.Name)
    }
    return output.id not in rebound


def _some_backward_frees(ctx: ModuleContext, body: list[ast.stmt]) -> bool:
    return any(
        isinstance(n, ast.Call)
        and _is_backward(ctx, n)
        and not _true(n, "retain_graph")
        and not _true(n, "create_graph")
        for n in walk_scope(body)
    )
