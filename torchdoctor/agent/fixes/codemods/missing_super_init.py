"""missing-super-init: call nn.Module's __init__ first."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_MODULE_BASES = frozenset({"torch.nn.Module", "torch.nn.modules.module.Module"})


class MissingSuperInitFix(Codemod):
    """Makes `super().__init__()` the first statement of the flagged `__init__` (after its
    docstring), for a class whose bases are all `nn.Module`: its `__init__` takes no
    argument. Declines for a class built on another base, whose `__init__` may need
    arguments only the author knows."""

    rule = "missing-super-init"
    kind = FixKind.CORRECTNESS
    summary = "call super().__init__() first in __init__"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        inits = ctx.find(
            cst.FunctionDef,
            where=lambda f: f.name.value == "__init__" and ctx.line(f) <= target.line,
        )
        init = next((f for f in reversed(inits) if ctx.end_line(f) >= target.line), None)
        if init is None or not isinstance(init.body, cst.IndentedBlock):
            return ctx.decline("no __init__ at the finding")
        owner = next((a for a in ctx.ancestors(init) if isinstance(a, cst.ClassDef)), None)
        if owner is None:
            return ctx.decline("the __init__ at the finding is not a class's")
        bases = [ctx.qualname(base.value) for base in owner.bases]
        if not bases or not all(base in _MODULE_BASES for base in bases):
            named = ", ".join(ctx.code(base.value) for base in owner.bases)
            return ctx.decline(
                f"`{owner.name.value}` is built on {named}: call its __init__ with the "
                "arguments it needs"
            )
        body = list(init.body.body)
        if any("super(" in ctx.code(s) and "__init__" in ctx.code(s) for s in body):
            return False
        first = body[1] if len(body) > 1 and _is_docstring(body[0]) else body[0]
        ctx.insert_before(first, "super().__init__()\n")
        return True


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )
