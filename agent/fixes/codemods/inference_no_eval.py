"""inference-no-eval: put the model in eval mode before a predict/serve path uses it."""

from __future__ import annotations

import libcst as cst

from agent.fixes.codemods.base import Codemod, SourceContext, dotted_name, scope_of
from agent.fixes.codemods.common import model_called_in
from agent.fixes.models import FixKind, FixTarget


class InferenceNoEvalFix(Codemod):
    rule = "inference-no-eval"
    kind = FixKind.CORRECTNESS
    summary = "call model.eval() before the first forward of the inference path"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        flagged = ctx.find(cst.FunctionDef, within=(target.line, target.line))
        if flagged:
            scope: cst.CSTNode = flagged[-1]
        else:
            calls = ctx.find(cst.Call, within=(target.line, target.end_line))
            if not calls:
                return False
            scope = scope_of(ctx, calls[0])
        model = model_called_in(ctx, scope, target.data.get("model"))
        if model is None or ctx.calls_method(scope, model, "eval"):
            return False
        calls = ctx.find(cst.Call, inside=scope, where=lambda c: dotted_name(c.func) == model)
        if isinstance(scope, cst.FunctionDef) and isinstance(scope.body, cst.IndentedBlock):
            body = scope.body.body
        elif isinstance(scope, cst.Module):
            body = scope.body
        else:
            return False
        holder = next((s for s in body if any(a is s for a in ctx.ancestors(calls[0]))), None)
        if holder is None or isinstance(holder, cst.FunctionDef | cst.ClassDef):
            return False
        ctx.insert_before(holder, f"{model}.eval()\n")
        return True
