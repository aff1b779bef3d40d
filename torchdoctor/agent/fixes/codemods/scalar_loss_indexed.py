"""scalar-loss-indexed: `loss.data[0]` / `loss[0]` on a 0-dim loss -> `loss.item()`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.codemods.common import indexes_first
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ScalarLossIndexedFix(Codemod):
    """Reads the reduced loss as the Python number the pre-0.4 idiom meant: `.data[0]` and
    `[0]` on a 0-dim tensor raise IndexError today, `.item()` gives the value."""

    rule = "scalar-loss-indexed"
    kind = FixKind.CORRECTNESS
    summary = "read the 0-dim loss with .item()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        # the indexing the rule reported, not any `[0]` of its line (`d_loss.data[0],
        # g_loss.data[0]` in one print: each is a finding of its own)
        indexed = target.data.get("indexed")
        for index in ctx.find(cst.Subscript, within=(target.line, target.end_line)):
            if not indexes_first(index):
                continue
            if isinstance(indexed, str) and _spaceless(ctx.code(index)) != _spaceless(indexed):
                continue
            value = index.value
            if isinstance(value, cst.Attribute) and value.attr.value == "data":
                value = value.value
            ctx.substitute(index, cst.Call(func=cst.Attribute(value=value, attr=cst.Name("item"))))
            return True
        return False


def _spaceless(code: str) -> str:
    return "".join(code.split())
