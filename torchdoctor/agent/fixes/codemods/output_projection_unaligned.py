"""output-projection-unaligned: run the vocabulary projection on a weight padded to 64 rows."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.models import FixKind, FixTarget

HELPER = "_linear_on_whole_tiles"


def _helper(functional: str) -> str:
    return f'''

def {HELPER}(layer, x):
    """`layer(x)` for an nn.Linear, its weight (and bias) padded with zero rows to a multiple
    of 64 outputs and the result sliced back (added by torchdoctor): the same values, computed
    on whole tensor-core tiles instead of unaligned kernels; the parameters keep their shape."""
    rows = layer.weight.size(0)
    pad = -rows % 64
    if pad == 0:
        return layer(x)
    weight = {functional}.pad(layer.weight, (0, 0, 0, pad))
    bias = None if layer.bias is None else {functional}.pad(layer.bias, (0, pad))
    return {functional}.linear(x, weight, bias)[..., :rows]
'''


class OutputProjectionUnalignedFix(Codemod):
    """Rewrites the flagged `self.NAME(x)` into `_linear_on_whole_tiles(self.NAME, x)`, a helper
    added once at module level. Zero rows add nothing to any output, and the gradient of the
    slice is zero on them, so values and gradients are those of the unpadded layer up to the
    order kernels sum in (a bf16-level tolerance); a row count already aligned at run time
    calls the layer unchanged."""

    rule = "output-projection-unaligned"
    kind = FixKind.PERFORMANCE
    summary = "vocabulary projection on a weight padded to a multiple of 64 rows"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        layer = target.data.get("layer")
        if not isinstance(layer, str):
            return False
        calls = ctx.find(
            cst.Call,
            within=(target.line, target.end_line),
            where=lambda c: dotted_name(c.func) == layer and len(c.args) == 1,
        )
        if not calls:
            return False
        call = calls[0]
        if call.args[0].star or call.args[0].keyword:
            return ctx.decline(f"{layer} is called with a keyword or unpacked arguments")
        functional = ctx.require_module("torch.nn.functional")
        if not ctx.find(cst.FunctionDef, where=lambda f: f.name.value == HELPER):
            ctx.insert_module_level(_helper(functional))
        padded = cst.parse_expression(f"{HELPER}({layer}, x)")
        assert isinstance(padded, cst.Call)
        new = padded.with_changes(args=[padded.args[0], call.args[0]])
        ctx.substitute(call, new)
        return True
