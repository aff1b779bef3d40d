"""softmax-without-dim: a softmax whose dimension PyTorch guesses from the input's rank."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.patterns import has_star_kwargs
from torchdoctor.agent.models import Severity

# name -> index of `dim` among the positional arguments
_FUNCTIONS = {
    "torch.nn.functional.softmax": 1,
    "torch.nn.functional.log_softmax": 1,
    "torch.nn.functional.softmin": 1,
}
_MODULES = {"torch.nn.Softmax": 0, "torch.nn.LogSoftmax": 0, "torch.nn.Softmin": 0}


class SoftmaxWithoutDim(Rule):
    """Detects `F.softmax(x)`, `F.log_softmax(x)`, `F.softmin(x)` and `nn.Softmax()`,
    `nn.LogSoftmax()`, `nn.Softmin()` given no `dim` (or `dim=None`).

    Why it matters: PyTorch then picks the dimension from the input's rank (dim 0 for 0-, 1-
    and 3-D inputs, dim 1 otherwise) and only warns that the choice is deprecated. For a
    `(batch, classes)` tensor the guess is right by accident; for a sequence `(seq, batch,
    vocab)`, a routing tensor or any 4-D map it normalises over the wrong axis: the
    "probabilities" sum to one across examples or positions, and training still runs.

    Not reported: calls with a `dim` (positional or keyword) or `**kwargs` that may carry one,
    `torch.softmax` / `Tensor.softmax` (they require `dim`), and functions of other libraries
    or of the project named `softmax`.

    Example:
        weights = F.softmax(scores.unsqueeze(0))   # 4-D: normalised over dim 1

    Fix: state the dimension the distribution is over, e.g. `F.softmax(scores, dim=-1)` or
    `nn.Softmax(dim=1)`.
    """

    id = "softmax-without-dim"
    point = 3
    severity = Severity.MEDIUM
    title = "Softmax without dim"
    items: ClassVar[tuple[str, ...]] = ("3.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "oftm" in ctx.source and ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for table in (_FUNCTIONS, _MODULES):
            for call in ctx.flow.calls_to(table):
                qual = ctx.flow.qualname_of(call) or ""
                if _dim_given(call, table[qual]):
                    continue
                name = qual.rsplit(".", 1)[-1]
                ctx.report(
                    self,
                    call,
                    f"`{name}` is given no dim: PyTorch picks dim 0 for 0-, 1- and 3-D inputs "
                    "and dim 1 otherwise, which is the wrong axis for most sequence and "
                    "higher-rank tensors",
                    data={"function": qual},
                )


def _dim_given(call: ast.Call, position: int) -> bool:
    """A `dim` passed by position or keyword (not `None`), or `**kwargs` that may hold one."""
    if has_star_kwargs(call) or any(isinstance(a, ast.Starred) for a in call.args):
        return True
    dim = kwarg(call, "dim")
    if dim is None and len(call.args) > position:
        dim = call.args[position]
    return dim is not None and not (isinstance(dim, ast.Constant) and dim.value is None)
