"""autograd-variable-legacy: `torch.autograd.Variable`, a no-op wrapper since PyTorch 0.4."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_VARIABLE = frozenset({"torch.autograd.Variable", "torch.autograd.variable.Variable"})


class AutogradVariableLegacy(Rule):
    """Detects `Variable(...)` from `torch.autograd` (however imported), including the
    `volatile=True` flag.

    Why it matters: since 0.4 `Variable(x)` just returns a tensor; `volatile=True` is ignored
    (with a warning), so code relying on it to disable autograd during evaluation builds
    graphs and uses far more memory than intended. It also marks code written for a PyTorch
    that is years old, whose other assumptions deserve a look.

    Example:
        x = Variable(images.cuda(), volatile=True)

    Fix: use the tensor directly (`x = images.cuda()`); `requires_grad=True` becomes
    `x.requires_grad_()`; `volatile=True` becomes a `with torch.no_grad():` block.
    """

    id = "autograd-variable-legacy"
    point = 1
    severity = Severity.LOW
    severity_note = (
        "medium when `volatile=True` is passed (it is ignored, so autograd stays on); low "
        "otherwise (a no-op wrapper)"
    )
    title = "Legacy autograd.Variable"
    items: ClassVar[tuple[str, ...]] = ("1.6",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if "Variable" in ctx.source:
            for node in ctx.flow.calls_to(_VARIABLE):
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        if ctx.flow.qualname_of(node) not in _VARIABLE:
            return
        volatile = kwarg(node, "volatile") is not None
        message = "`Variable` is a no-op since PyTorch 0.4: use the tensor directly"
        if volatile:
            message += "; `volatile=True` is ignored, so autograd stays on (use torch.no_grad())"
        ctx.report(
            self,
            node,
            message,
            severity=Severity.MEDIUM if volatile else None,
            data={"volatile": volatile},
        )
