"""bce-on-sigmoid: sigmoid output fed to BCELoss instead of logits to BCEWithLogitsLoss."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import first_argument
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_SIGMOID_FUNCTIONS = frozenset(
    {"torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit"}
)
_SIGMOID_MODULE = "torch.nn.Sigmoid"


class BceOnSigmoid(Rule):
    """Detects a sigmoid output passed to `nn.BCELoss` or `F.binary_cross_entropy`:
    `torch.sigmoid(...)`, `x.sigmoid()`, an `nn.Sigmoid` module, or a model whose last layer
    or `forward` return is a sigmoid, followed through variables and local functions.

    Why it matters: computing `log(sigmoid(x))` separately loses precision for large |x|
    (BCELoss clamps the log at -100, so saturated outputs get wrong gradients), and
    `binary_cross_entropy` is refused inside `torch.autocast` because it is unsafe in float16.
    `BCEWithLogitsLoss` fuses both with the log-sum-exp trick.

    Example:
        criterion = nn.BCELoss()
        loss = criterion(torch.sigmoid(model(x)), y)

    Fix: drop the sigmoid and use `nn.BCEWithLogitsLoss()` /
    `F.binary_cross_entropy_with_logits` on the logits; apply `sigmoid` only for predictions.
    """

    id = "bce-on-sigmoid"
    point = 3
    severity = Severity.HIGH
    title = "Sigmoid followed by BCELoss"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(("binary_cross_entropy", "BCELoss"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "binary_cross_entropy" in ctx.source or "BCELoss" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if ("igmoid" not in ctx.source and "expit" not in ctx.source) or not self.applies(ctx):
            return
        flow = ctx.flow
        for node in flow.nodes(ast.Call):
            if not _is_bce(ctx, node):
                continue
            probs = first_argument(node, "input")
            if probs is None:
                continue
            sigmoid = next((p for p in flow.value_producers(probs) if is_sigmoid(ctx, p)), None)
            if sigmoid is None:
                continue
            ctx.report(
                self,
                node,
                f"binary cross-entropy receives `{ast.unparse(probs)}`, a sigmoid output "
                f"(line {sigmoid.lineno}): use BCEWithLogitsLoss on the logits",
                data={"sigmoid_line": sigmoid.lineno},
            )


def _is_bce(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual == "torch.nn.functional.binary_cross_entropy"
    return ctx.flow.loss_class(call.func) == "BCELoss"


def is_sigmoid(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call)
    if qual in _SIGMOID_FUNCTIONS or qual == _SIGMOID_MODULE:
        return True
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "sigmoid" and qual is None:
        return not ctx.flow.is_module_value(func.value)
    return qual is None and ctx.flow.constructed_as(func) == _SIGMOID_MODULE
