"""validation-with-grad: run evaluation without building an autograd graph."""

from __future__ import annotations

import libcst as cst

from agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, method_call
from agent.fixes.codemods.common import under_no_grad
from agent.fixes.models import FixKind, FixTarget


class ValidationWithGradFix(Codemod):
    """Wraps the flagged evaluation loop in `torch.no_grad()` (or decorates the flagged
    evaluation function). `no_grad` rather than `inference_mode`: its tensors stay usable by
    later autograd code, so the change cannot break a caller."""

    rule = "validation-with-grad"
    kind = FixKind.REFACTOR
    summary = "wrap evaluation in torch.no_grad()"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        span = (target.line, target.line)
        nodes: list[cst.CSTNode] = [
            *ctx.find(cst.FunctionDef, within=span),
            *ctx.find(cst.For, within=span),
            *ctx.find(cst.While, within=span),
        ]
        starting = [n for n in nodes if ctx.line(n) == target.line]
        if not starting:
            return False
        node = starting[0]
        if under_no_grad(ctx, node) or any(
            method_call(c, "backward") for c in ctx.find(cst.Call, inside=node)
        ):
            return False
        torch = ctx.require_module("torch")
        if isinstance(node, cst.FunctionDef):
            decorator = cst.Decorator(decorator=cst.parse_expression(f"{torch}.no_grad()"))
            ctx.substitute(node, node.with_changes(decorators=[*node.decorators, decorator]))
            return True
        ctx.replace(node, lambda n: _wrap_in_no_grad(n, torch))
        return True


def _wrap_in_no_grad(node: cst.CSTNode, torch: str) -> cst.CSTNode:
    if not isinstance(node, cst.For | cst.While):
        return node
    return cst.With(
        items=[cst.WithItem(item=cst.parse_expression(f"{torch}.no_grad()"))],
        body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[])]),
        leading_lines=node.leading_lines,
    )
