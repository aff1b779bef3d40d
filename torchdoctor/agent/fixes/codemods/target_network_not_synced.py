"""target-network-not-synced: give the freshly built copy the weights of the network it
follows, right after it is built."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TargetNetworkNotSyncedFix(Codemod):
    """Inserts `<copy>.load_state_dict(<source>.state_dict())` after the statement that builds
    the copy, or after the one that builds the source when that comes later in the same
    block: both share the constructor, so the keys match, and the copy starts equal to the
    network it follows (later syncs stay as they are)."""

    rule = "target-network-not-synced"
    kind = FixKind.CORRECTNESS
    summary = "load the followed network's weights into the copy when it is built"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        copy, source = target.data.get("copy"), target.data.get("source")
        if not isinstance(copy, str) or not isinstance(source, str):
            return False
        for line in ctx.find(cst.SimpleStatementLine, within=(target.line, target.end_line)):
            assign = line.body[0] if len(line.body) == 1 else None
            if not (
                isinstance(assign, cst.Assign)
                and len(assign.targets) == 1
                and ctx.code(assign.targets[0].target) == copy
            ):
                continue
            scope = next(
                (a for a in ctx.ancestors(line) if isinstance(a, cst.FunctionDef)), ctx.module
            )
            if any(
                ctx.code(call).startswith(f"{copy}.load_state_dict(")
                and ctx.line(call) > target.line
                for call in ctx.find(cst.Call, inside=scope)
            ):
                return False  # already synced where it is built
            after = _built_later(ctx, line, source)
            if after is None:
                return ctx.decline(
                    f"`{source}` is built after `{copy}` in another block: add the sync by "
                    "hand where both exist"
                )
            ctx.insert_after(after, f"{copy}.load_state_dict({source}.state_dict())")
            return True
        return False


def _built_later(
    ctx: SourceContext, line: cst.SimpleStatementLine, source: str
) -> cst.SimpleStatementLine | None:
    """The statement after which both networks exist: `line` (the copy's), or the source's
    own construction when it follows in the same block; None when it follows elsewhere."""
    parent = ctx.parent(line)
    siblings = list(getattr(parent, "body", ()))
    scope = next((a for a in ctx.ancestors(line) if isinstance(a, cst.FunctionDef)), ctx.module)
    for other in ctx.find(cst.SimpleStatementLine, inside=scope):
        assign = other.body[0] if len(other.body) == 1 else None
        if (
            isinstance(assign, cst.Assign)
            and any(ctx.code(t.target) == source for t in assign.targets)
            and ctx.line(other) > ctx.line(line)
        ):
            return other if any(other is s for s in siblings) else None
    return line
