"""target-network-not-synced: give the freshly built copy the weights of the network it
follows, right after it is built."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TargetNetworkNotSyncedFix(Codemod):
    """Inserts `<copy>.load_state_dict(<source>.state_dict())` after the statement that builds
    the copy: both share the constructor, so the keys match, and the copy starts equal to the
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
            ctx.insert_after(line, f"{copy}.load_state_dict({source}.state_dict())")
            return True
        return False
