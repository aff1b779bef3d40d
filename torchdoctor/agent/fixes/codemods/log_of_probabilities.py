"""log-of-probabilities: `torch.log(F.softmax(x, dim))` -> `F.log_softmax(x, dim)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_FUSED = {"softmax": "log_softmax", "sigmoid": "logsigmoid"}
_REPLACEMENTS = {
    "torch.nn.functional.softmax": "log_softmax",
    "torch.softmax": "log_softmax",
    "torch.nn.functional.sigmoid": "logsigmoid",
    "torch.sigmoid": "nn.functional.logsigmoid",
}


class LogOfProbabilitiesFix(Codemod):
    """Replaces `torch.log(<softmax or sigmoid call>)`, or `<softmax or sigmoid call>.log()`,
    by the fused, stable function with the same arguments, when the activation is written
    directly at the log; values that travel through variables are left to a human."""

    rule = "log-of-probabilities"
    kind = FixKind.PRECISION
    summary = "log_softmax / logsigmoid instead of log(softmax) / log(sigmoid)"
    rtol = 1e-3
    """Same values up to float rounding while no probability underflows."""

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("activation") not in _FUSED:
            return ctx.decline("the probabilities do not come from a softmax or a sigmoid")
        direct = bool(target.data.get("direct"))
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            inner = _logged_activation(ctx, call, direct)
            if inner is None:
                continue
            qual = ctx.qualname(inner.func) or ""
            prefix = (dotted_name(inner.func) or "").rpartition(".")[0]
            if not prefix or qual not in _REPLACEMENTS:
                continue
            fused = cst.parse_expression(f"{prefix}.{_REPLACEMENTS[qual]}")
            ctx.substitute(call, inner.with_changes(func=fused))
            return True
        return ctx.decline(
            "the activation is not written at the log (it reaches it through a variable or "
            "a module): use log_softmax / logsigmoid where the probabilities are made"
        )


def _logged_activation(ctx: SourceContext, call: cst.Call, direct: bool) -> cst.Call | None:
    """The call inside `torch.log(inner)` (when the rule saw the activation there) or
    `inner.log()` (the method form, wavenet_vocoder's `torch.sigmoid(m).log()`)."""
    if direct and ctx.qualname(call.func) == "torch.log" and len(call.args) == 1:
        inner = call.args[0].value
    elif isinstance(call.func, cst.Attribute) and call.func.attr.value == "log" and not call.args:
        inner = call.func.value
    else:
        return None
    return inner if isinstance(inner, cst.Call) else None
