"""kl-div-mean-reduction: a KL divergence averaged over every entry, not over the batch."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_KL_DIV = frozenset(
    {
        "torch.nn.KLDivLoss",
        "torch.nn.modules.loss.KLDivLoss",
        "torch.nn.functional.kl_div",
    }
)
_LEGACY = ("size_average", "reduce")
_INPUTS = {"KLDivLoss": 0, "kl_div": 2}
"""Positional arguments before `size_average`: one more is a legacy choice of reduction."""


class KlDivMeanReduction(Rule):
    """Detects `nn.KLDivLoss()` / `F.kl_div(...)` left at the default reduction, or given
    `reduction='mean'`: the sum over every entry divided by batch × classes (× positions).

    Why it matters: the KL divergence of a batch is the sum over the classes of each row,
    averaged over the rows; 'mean' also divides by the number of classes, so a distillation
    term comes out C times too small (10 for MNIST, 1000 for ImageNet) and its weight against
    the cross-entropy (`alpha`, the `T*T` factor) is not what the formula says. PyTorch warns
    that 'mean' "doesn't return the true KL divergence value" and that 'batchmean' will be
    its meaning in the next major release.

    Not reported: `reduction='batchmean'`, `'sum'` or `'none'`; a reduction passed by a
    name (its value is not known here); the legacy `size_average=` / `reduce=` keywords, which
    pick another reduction (and warn of their own).

    Example:
        loss = nn.KLDivLoss()(F.log_softmax(y / T, dim=1), F.softmax(teacher / T, dim=1))

    Fix: `reduction='batchmean'` (and re-tune a weight that was fitted to the smaller value),
    or `'sum'` divided by what the paper's formula divides by.
    """

    id = "kl-div-mean-reduction"
    point = 3
    severity = Severity.MEDIUM
    title = "KL divergence averaged over classes too"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("KLDivLoss", "kl_div"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        qualname = ctx.flow.qualname_of(node) or ""
        if qualname not in _KL_DIV:
            return
        if any(kwarg(node, name) is not None for name in _LEGACY):
            return
        short = qualname.rsplit(".", 1)[-1]
        if len(node.args) > _INPUTS[short]:
            return  # size_average/reduce given by position
        reduction = kwarg(node, "reduction")
        if reduction is not None and not (
            isinstance(reduction, ast.Constant) and reduction.value == "mean"
        ):
            return
        how = "is given reduction='mean'" if reduction is not None else "keeps the default 'mean'"
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node.func)}` {how}: it divides the summed divergence by every "
            "entry (batch × classes), not by the batch, so the KL term is the number of classes "
            "times too small; use reduction='batchmean' (the true KL divergence per example)",
            data={"reduction": "mean", "call": short},
        )
