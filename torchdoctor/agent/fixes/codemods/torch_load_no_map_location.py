"""torch-load-no-map-location: load checkpoints onto the CPU before load_state_dict."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TorchLoadNoMapLocationFix(Codemod):
    """Adds `map_location="cpu"` to the flagged `torch.load` when the rule found that the
    loaded object only feeds `load_state_dict` (`into_state_dict`): the state is then copied
    onto the model's (or optimizer's) own device, so nothing else changes."""

    rule = "torch-load-no-map-location"
    kind = FixKind.REFACTOR
    summary = 'torch.load(..., map_location="cpu") before load_state_dict'
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if not target.data.get("into_state_dict"):
            return ctx.decline(
                "the loaded object is not only handed to load_state_dict, so where its "
                'tensors land matters to the code: pass map_location (e.g. "cpu" or the '
                "run's device) by hand"
            )
        calls = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.line))
            if ctx.line(c) == target.line and ctx.qualname(c.func) == "torch.load"
        ]
        if len(calls) != 1 or keyword(calls[0], "map_location") is not None:
            return False
        ctx.set_call_keyword(calls[0], "map_location", '"cpu"')
        return True
