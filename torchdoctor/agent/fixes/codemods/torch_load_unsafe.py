"""torch-load-unsafe: load checkpoints with weights_only=True when that is known to work."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TorchLoadUnsafeFix(Codemod):
    """Adds `weights_only=True` to the flagged `torch.load`, only when the rule's data says
    `fix_safe` (the file was written from a state_dict or tensors, no `pickle_module`):
    `weights_only=True` refuses pickled modules, so applying it blindly can break loading."""

    rule = "torch-load-unsafe"
    kind = FixKind.REFACTOR
    summary = "torch.load(..., weights_only=True)"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("fix_safe") is not True:
            return ctx.decline(_UNSAFE_TO_ADD.get(str(target.data.get("provenance")), _UNKNOWN))
        spans = [(target.line, target.end_line)] + [
            (int(place["line"]), int(place["end_line"]))
            for place in target.data.get("related", [])
            if isinstance(place, dict)
        ]  # the same file loaded in another branch: one finding, every load fixed
        for span in spans:
            for call in ctx.find(cst.Call, within=span):
                if ctx.qualname(call.func) != "torch.load" or keyword(call, "pickle_module"):
                    continue
                current = keyword(call, "weights_only")
                if (
                    current is not None
                    and isinstance(current.value, cst.Name)
                    and current.value.value == "True"
                ):
                    continue
                ctx.set_call_keyword(call, "weights_only", "True")
        return True


_UNKNOWN = (
    "nothing in this module shows that the file holds only tensors or a state_dict, and "
    "weights_only=True refuses any other pickled object: add it by hand where the file is "
    "known to hold weights, otherwise load only files you trust"
)
_UNSAFE_TO_ADD = {
    "module": (
        "the file holds a whole pickled module (`torch.save(model, ...)`), which "
        "weights_only=True refuses: save `model.state_dict()` and load that instead"
    ),
}
