"""softmax-without-dim: write out the dim PyTorch's legacy rule picks today, where the input's
rank is known."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class SoftmaxWithoutDimFix(Codemod):
    """Passes the dim a softmax, log_softmax or softmin given none uses today, where the rule
    knows its input's rank (`implicit_dim`): `F.log_softmax(x)` after `x = x.view(-1, 320)`
    and the model's last `nn.Linear` becomes `F.log_softmax(x, dim=1)`; so does a
    log_softmax of a Linear's logits that `nll_loss` reads (classes last and at dim 1: the
    logits are (batch, classes), or the script could not run as it does). What runs does not
    change (verified as a refactor: the same losses) and the deprecated guess is gone.

    A module built without a dim (`self.softmax = nn.LogSoftmax()`, the char-RNN tutorial's)
    gets the dim at its construction when every application of it in the file has the same
    known rank. Refused, with the reason: a module applied to inputs of unknown or differing
    rank, or elsewhere; an input of unknown rank (a function's parameter, another file's model), for
    which no written dim is sure to keep what runs; a 3-D input, for which PyTorch picks dim
    0 (a sequence's steps or the batch), rarely the axis meant: writing it out would keep the
    likely bug and silence the warning."""

    rule = "softmax-without-dim"
    kind = FixKind.REFACTOR
    rtol = EXACT_RTOL
    summary = "pass the dim the softmax uses today"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        function = str(target.data.get("function", ""))
        rank, dim = target.data.get("input_rank"), target.data.get("implicit_dim")
        module = not function.startswith("torch.nn.functional.")
        if module and not isinstance(rank, int):
            return ctx.decline(
                "a softmax module built without a dim, applied here to inputs of unknown or "
                "differing rank (or applied in another file): no one dim surely keeps what "
                "runs today; pass the class axis to it by hand (usually `dim=-1`)"
            )
        if not isinstance(rank, int) or not isinstance(dim, int):
            return ctx.decline(
                "the input's rank is not known here (a parameter, a batch from a loader, "
                "another file's model): the dim PyTorch picks depends on it, so no dim can be "
                "written that surely keeps what runs today; pass the class axis by hand "
                "(usually `dim=-1`)"
            )
        if rank == 3:
            return ctx.decline(
                "the input is 3-D: PyTorch normalises it over dim 0 (a sequence's steps or "
                "the batch), rarely the axis meant; writing `dim=0` would keep that and "
                "silence the warning: choose the axis by hand (usually `dim=-1`)"
            )
        source = target.data.get("input")
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) != function or not (call.args or module):
                continue
            if (
                not module
                and isinstance(source, str)
                and "".join(ctx.code(call.args[0].value).split()) != "".join(source.split())
            ):
                continue  # another softmax of the same line (`log_softmax(softmax(x))`)
            if len([a for a in call.args if a.keyword is None]) > (0 if module else 1):
                return ctx.decline("the dim slot is filled by position (`softmax(x, None)`)")
            ctx.set_call_keyword(call, "dim", str(dim))
            return True
        return False
