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
    """Replaces `torch.log(<softmax or sigmoid call>)` by the fused, stable function with the
    same arguments, when the rule found the activation written directly inside the log
    (`direct`); values that travel through variables are left to a human."""

    rule = "log-of-probabilities"
    kind = FixKind.PRECISION
    summary = "log_softmax / logsigmoid instead of log(softmax) / log(sigmoid)"
    rtol = 1e-3
    """Same values up to float rounding while no probability underflows."""

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        kind = target.data.get("activation")
        if not target.data.get("direct") or kind not in _FUSED:
            return False
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) != "torch.log" or len(call.args) != 1:
                continue
            inner = call.args[0].value
            if not isinstance(inner, cst.Call):
                continue
            qual = ctx.qualname(inner.func) or ""
            prefix = (dotted_name(inner.func) or "").rpartition(".")[0]
            if not prefix or qual not in _REPLACEMENTS:
                continue
            fused = cst.parse_expression(f"{prefix}.{_REPLACEMENTS[qual]}")
            ctx.substitute(call, inner.with_changes(func=fused))
            return True
        return False
