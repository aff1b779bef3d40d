"""per-sample-inference: a CUDA inference loop runs an uncompiled model one sample at a time."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope
from torchdoctor.agent.checks.patterns import model_calls, uses_cuda
from torchdoctor.agent.models import Severity

_COMPILED = ("compile(", "torch._dynamo", "jit.script", "jit.trace", "CUDAGraph")


def single_sample(node: ast.AST) -> bool:
    """`x.unsqueeze(0)`, `x[None]`, `x[i:i + 1]`: a batch of one made from one sample."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "unsqueeze"
        and node.args
    ):
        first = node.args[0]
        return isinstance(first, ast.Constant) and first.value == 0
    if isinstance(node, ast.Subscript):
        index = node.slice
        head = index.elts[0] if isinstance(index, ast.Tuple) and index.elts else index
        if isinstance(head, ast.Constant) and head.value is None:
            return True
        if isinstance(head, ast.Slice) and isinstance(head.upper, ast.BinOp):
            upper = head.upper
            return (
                isinstance(upper.op, ast.Add)
                and isinstance(upper.right, ast.Constant)
                and upper.right.value == 1
                and ast.dump(upper.left) == ast.dump(head.lower or ast.Constant(0))
            )
    return False


class PerSampleInference(Rule):
    """Detects a loop outside training, in a module that runs on CUDA and never compiles,
    that calls the model on a batch of one built inside the loop (`x.unsqueeze(0)`,
    `x[None]`, `x[i:i+1]`).

    Why it matters: a one-sample forward is bound by kernel launches and Python, not by the
    GPU: dozens of tiny kernels each pay launch latency. CUDA graphs replay the whole forward
    as one launch; batching the samples (when the loop's logic allows) does more still.

    Example:
        for image in images:
            logits = model(image.unsqueeze(0).cuda())

    Fix: batch the samples when the loop allows it (needs a human: the per-sample logic
    moves); otherwise `model.compile(mode="reduce-overhead")` (CUDA graphs) before the loop,
    cloning outputs kept across iterations.
    """

    id = "per-sample-inference"
    point = 8
    severity = Severity.LOW
    title = "Inference one sample at a time without CUDA graphs"
    items: ClassVar[tuple[str, ...]] = ("8.2",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx)

    def finish(self, ctx: ModuleContext) -> None:
        if any(marker in ctx.source for marker in _COMPILED) or not self.applies(ctx):
            return
        training = {id(loop.node) for loop in ctx.loops.training_loops}
        reported_until = 0  # a loop inside a reported one is the same finding
        for loop in nodes_of(ctx, ast.For):
            if id(loop) in training or not isinstance(loop, ast.For):
                continue
            if loop.lineno <= reported_until:
                continue
            if ctx.flow.module_method(ctx.enclosing_function(loop)):
                continue  # a model's own loop (a char LSTM over letters in forward)
            calls = list(model_calls(ctx, loop.body))
            if not calls or not any(single_sample(n) for n in walk_scope(loop.body)):
                continue
            ctx.report(
                self,
                loop,
                "the model runs one sample per iteration: launch-bound on a GPU; batch the "
                "samples, or replay the forward as a CUDA graph",
                data={"model": _callee(calls[0])},
                header_only=True,
            )
            reported_until = loop.end_lineno or loop.lineno


def _callee(call: ast.Call) -> str:
    """`model(x)` -> 'model'; `self.net.forward(x)` -> 'self.net'."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        func = func.value
    return ast.unparse(func)
