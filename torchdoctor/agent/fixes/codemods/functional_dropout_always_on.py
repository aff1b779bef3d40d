"""functional-dropout-always-on: `F.dropout(h, p)` in a module -> `training=self.training`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_FUNCTIONAL = frozenset(
    f"torch.nn.functional.{name}"
    for name in (
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
    )
)


class FunctionalDropoutAlwaysOnFix(Codemod):
    """Ties the dropout to the module's mode, as `nn.Dropout` is: unchanged in training, off
    after `model.eval()`. An explicit `training=True` may be deliberate (Monte-Carlo
    dropout) and is left to a human; so is a method whose instance is not named `self`, and a
    module's own dropout helper (a layer drop), which has no `training` to pass."""

    rule = "functional-dropout-always-on"
    kind = FixKind.CORRECTNESS
    summary = "pass training=self.training to the functional dropout"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        helper = None
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) not in _FUNCTIONAL:
                helper = helper or _local_helper(ctx, call)
                continue
            if any(arg.star for arg in call.args):
                return ctx.decline("the arguments are unpacked: where training goes is unclear")
            positional = [arg for arg in call.args if arg.keyword is None]
            if keyword(call, "training") is not None or len(positional) > 2:
                return ctx.decline(
                    "training=True is written out: it may be deliberate (Monte-Carlo dropout)"
                )
            method = next((a for a in ctx.ancestors(call) if isinstance(a, cst.FunctionDef)), None)
            params = method.params.params if method is not None else ()
            if not params or params[0].name.value != "self":
                return ctx.decline("the method's instance is not named `self`")
            ctx.set_call_keyword(call, "training", "self.training")
            return True
        if helper is not None:
            return ctx.decline(
                f"`{helper}` is the module's own dropout helper and takes no mode flag: what "
                "it returns in evaluation (all layers, an unmasked input) is its author's "
                "call; skip it or give it a rate of 0 when not self.training, by hand"
            )
        return False


def _local_helper(ctx: SourceContext, call: cst.Call) -> str | None:
    """The name of a module-level function `call` runs (`dropout_layers(...)`)."""
    if not isinstance(call.func, cst.Name):
        return None
    name = call.func.value
    defined = any(
        isinstance(stmt, cst.FunctionDef) and stmt.name.value == name for stmt in ctx.module.body
    )
    return name if defined else None
