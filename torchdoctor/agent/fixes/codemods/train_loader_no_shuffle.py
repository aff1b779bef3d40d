"""train-loader-no-shuffle: shuffle the training DataLoader."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TrainLoaderNoShuffleFix(Codemod):
    """Adds `shuffle=True` to the flagged DataLoader call, or turns its literal
    `shuffle=False` on; refused beside a `sampler`/`batch_sampler` (the DataLoader rejects
    `shuffle=True` with either) or a `shuffle` computed elsewhere."""

    rule = "train-loader-no-shuffle"
    kind = FixKind.CORRECTNESS
    summary = "DataLoader(..., shuffle=True) for the training data"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        calls = ctx.find(
            cst.Call,
            within=(target.line, target.line),
            where=lambda c: ctx.line(c) == target.line,
        )
        loaders = [c for c in calls if (ctx.qualname(c.func) or "").endswith("DataLoader")]
        if len(loaders) != 1 or any(keyword(loaders[0], n) for n in ("sampler", "batch_sampler")):
            return False
        if _options_may_name_shuffle(ctx, loaders[0]):
            return ctx.decline(
                "its `**` options set `shuffle` (a second `shuffle=` would be a TypeError): "
                "turn it on where the options are built"
            )
        flag = keyword(loaders[0], "shuffle")
        if flag is not None and not (
            isinstance(flag.value, cst.Name) and flag.value.value == "False"
        ):
            return False
        ctx.set_call_keyword(loaders[0], "shuffle", "True")
        return True


def _options_may_name_shuffle(ctx: SourceContext, call: cst.Call) -> bool:
    """The call takes `**options` and the module writes a `"shuffle"` key somewhere
    (`training_params = {"shuffle": False, ...}`)."""
    starred = any(arg.star == "**" for arg in call.args)
    return starred and ('"shuffle"' in ctx.source or "'shuffle'" in ctx.source)
