"""anomaly-mode-left-on: autograd anomaly detection enabled unconditionally."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_SET = frozenset(
    {"torch.autograd.set_detect_anomaly", "torch.autograd.anomaly_mode.set_detect_anomaly"}
)
_CONTEXT = frozenset(
    {"torch.autograd.detect_anomaly", "torch.autograd.anomaly_mode.detect_anomaly"}
)


class AnomalyModeLeftOn(Rule):
    """Detects `torch.autograd.set_detect_anomaly(True)` and `with
    torch.autograd.detect_anomaly():` that are not under an `if` (a debug flag), i.e. that run
    on every training run.

    Why it matters: anomaly mode records a Python traceback for every autograd node and
    checks every backward result for NaN; training becomes several times slower. The
    PyTorch performance guide lists it among the debugging APIs to disable.

    Example:
        torch.autograd.set_detect_anomaly(True)
        train(model, loader)

    Fix: remove it, or guard it: `torch.autograd.set_detect_anomaly(args.debug)`.
    """

    id = "anomaly-mode-left-on"
    point = 2
    severity = Severity.MEDIUM
    title = "Autograd anomaly detection left on"
    items: ClassVar[tuple[str, ...]] = ("2.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if "anomaly" not in ctx.source:
            return
        for call in ctx.flow.calls_to(_SET | _CONTEXT):
            qual = ctx.flow.qualname_of(call)
            if qual in _SET:
                enabled = (
                    call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value
                )
                if not enabled:
                    continue
            elif qual not in _CONTEXT:
                continue
            if any(isinstance(a, ast.If | ast.IfExp) for a in ctx.ancestors(call)):
                continue
            ctx.report(
                self,
                call,
                "autograd anomaly detection is always on: it slows every step several-fold; "
                "enable it only behind a debug flag",
            )
