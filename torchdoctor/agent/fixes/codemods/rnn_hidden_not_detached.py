"""rnn-hidden-not-detached: cut the recurrent state from the previous batch's graph."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    enclosing_body,
    line_statement,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

HELPER = "detach_state"
HELPER_CODE = f'''

def {HELPER}(state):
    """The recurrent state without the previous batch's graph (a tensor, or tuples of them)."""
    if state is None:
        return None  # no state yet: the model starts from zeros
    if hasattr(state, "detach"):
        return state.detach()
    return tuple({HELPER}(part) for part in state)
'''


class RnnHiddenNotDetachedFix(Codemod):
    """Before the flagged model call, rebinds each carried state (`hidden`, `h, c`,
    `self.hidden`) to a detached copy through a small module-level helper that handles a
    GRU's tensor and an LSTM's `(h, c)` tuple alike (the word-language-model example's
    `repackage_hidden`): each batch back-propagates through its own steps only. The first
    batch's initial state has no graph, so detaching it changes nothing."""

    rule = "rnn-hidden-not-detached"
    kind = FixKind.CORRECTNESS
    summary = "detach the recurrent state before each batch"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        state = target.data.get("state")
        if not isinstance(state, list) or not all(isinstance(k, str) for k in state) or not state:
            return ctx.decline("the rule did not name the state carried between batches")
        call = line_statement(ctx, target.line)
        if call is None or not isinstance(call.body[0], cst.Assign):
            return ctx.decline("the model call shares its line with other code")
        body = list(enclosing_body(ctx, call) or [])
        rebinds = [f"{key} = {HELPER}({key})" for key in state]
        before = body[: body.index(call)] if call in body else []
        if before and ctx.code(before[-1]).strip() in rebinds:
            return False  # already detached right before the call
        ctx.insert_before(call, "".join(f"{line}\n" for line in rebinds))
        if not ctx.find(cst.FunctionDef, where=lambda f: f.name.value == HELPER):
            ctx.insert_module_level(HELPER_CODE)
        return True
