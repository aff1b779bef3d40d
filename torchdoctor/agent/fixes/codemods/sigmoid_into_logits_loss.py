"""sigmoid-into-logits-loss: BCEWithLogitsLoss fed a sigmoid output (applied twice)."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.codemods.common import drop_sigmoid, sigmoid_input
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_LOGITS_FUNCTION = "torch.nn.functional.binary_cross_entropy_with_logits"


class SigmoidIntoLogitsLossFix(Codemod):
    """A sigmoid written in the loss call is dropped, so the loss gets the logits it applies
    the sigmoid to; `F.binary_cross_entropy_with_logits` given probabilities made elsewhere
    becomes `F.binary_cross_entropy` (the loss those probabilities are for), unless it uses
    `pos_weight`, which only the logits form has. A criterion fed probabilities computed
    elsewhere is left to a human: what that code returns has other users."""

    rule = "sigmoid-into-logits-loss"
    kind = FixKind.CORRECTNESS
    summary = "give the logits loss logits (the sigmoid was applied twice)"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if not call.args:
                continue
            if sigmoid_input(ctx, call.args[0].value) is not None:
                drop_sigmoid(ctx, call)
                return True
            if ctx.qualname(call.func) != _LOGITS_FUNCTION:
                continue
            if keyword(call, "pos_weight") is not None:
                return ctx.decline("pos_weight exists only in the logits form: pass the logits")
            if not isinstance(call.func, cst.Attribute):
                return ctx.decline("the logits loss is imported by name: change it by hand")
            ctx.substitute(call.func.attr, cst.Name("binary_cross_entropy"))
            return True
        where = target.data.get("sigmoid_line")
        return ctx.decline(
            "the sigmoid is applied elsewhere"
            + (f" (line {where})" if isinstance(where, int) else "")
            + ": return the logits there, or use BCELoss on the probabilities"
        )
