"""no-grad-not-inference-mode: pure inference under `no_grad` instead of `inference_mode`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.patterns import INFERENCE_FUNCTION
from torchdoctor.agent.models import Severity

_NO_GRAD = frozenset({"torch.no_grad", "torch.autograd.no_grad"})


class NoGradNotInferenceMode(Rule):
    """Detects `torch.no_grad()` (as a `with` block or decorator) in a pure inference function
    (named like `predict`, `infer`, `serve`).

    Why it matters: `torch.inference_mode()` also skips version-counter and view tracking,
    so inference is measurably faster and lighter; its only restriction, that the outputs
    cannot later enter autograd, does not matter in a serving path.

    Example:
        @torch.no_grad()
        def predict(model, x):
            return model(x).softmax(-1)

    Fix: `@torch.inference_mode()` / `with torch.inference_mode():` (keep `no_grad` if the
    outputs are later used in a computation that needs gradients).
    """

    id = "no-grad-not-inference-mode"
    point = 7
    severity = Severity.LOW
    title = "no_grad() where inference_mode() applies"
    items: ClassVar[tuple[str, ...]] = ("7.4",)

    def finish(self, ctx: ModuleContext) -> None:
        if "no_grad" not in ctx.source:
            return
        for defs in ctx.loops.functions.values():
            for fn in defs:
                if not INFERENCE_FUNCTION.search(fn.name) or fn.name.startswith("test_"):
                    continue
                for decorator in fn.decorator_list:
                    self._check(ctx, decorator)
                for node in walk_tree(fn):
                    if isinstance(node, ast.With):
                        for item in node.items:
                            self._check(ctx, item.context_expr)

    def _check(self, ctx: ModuleContext, expr: ast.expr) -> None:
        target = expr.func if isinstance(expr, ast.Call) else expr
        if ctx.qualname(target) in _NO_GRAD:
            ctx.report(
                self,
                expr,
                "pure inference under no_grad(): inference_mode() is faster and uses less memory",
            )
