"""validation-with-grad: run evaluation without building an autograd graph."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.codemods.common import under_no_grad
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ValidationWithGradFix(Codemod):
    """Wraps the flagged evaluation loop in `torch.no_grad()` (or decorates the flagged
    evaluation function). `no_grad` rather than `inference_mode`: its tensors stay usable by
    later autograd code, so the change cannot break a caller."""

    rule = "validation-with-grad"
    kind = FixKind.REFACTOR
    summary = "wrap evaluation in torch.no_grad()"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        calls = ctx.find(cst.Call, within=(target.line, target.line))
        if not calls or under_no_grad(ctx, calls[0]):
            return False
        node = _evaluation_scope(ctx, calls[0])
        if node is None:
            return False
        torch = ctx.require_module("torch")
        if isinstance(node, cst.FunctionDef):
            decorator = cst.Decorator(decorator=cst.parse_expression(f"{torch}.no_grad()"))
            ctx.substitute(node, node.with_changes(decorators=[*node.decorators, decorator]))
        else:
            ctx.replace(node, lambda n: _wrap_in_no_grad(n, torch))
        return True


def _evaluation_scope(ctx: SourceContext, call: cst.Call) -> cst.CSTNode | None:
    """The enclosing function when it never calls backward(), else the innermost such loop."""
    for anc in ctx.ancestors(call):
        if isinstance(anc, cst.For | cst.While | cst.FunctionDef) and not any(
            method_call(c, "backward") for c in ctx.find(cst.Call, inside=anc)
        ):
            if isinstance(anc, cst.FunctionDef):
                return anc
            outer = next((a for a in ctx.ancestors(anc) if isinstance(a, cst.FunctionDef)), None)
            if outer is None or any(
                method_call(c, "backward") for c in ctx.find(cst.Call, inside=outer)
            ):
                return anc
    return None


def _wrap_in_no_grad(node: cst.CSTNode, torch: str) -> cst.CSTNode:
    if not isinstance(node, cst.For | cst.While):
        return node
    return cst.With(
        items=[cst.WithItem(item=cst.parse_expression(f"{torch}.no_grad()"))],
        body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[])]),
        leading_lines=node.leading_lines,
    )
