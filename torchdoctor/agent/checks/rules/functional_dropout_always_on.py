"""functional-dropout-always-on: `F.dropout` in a module ignores the module's mode."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument
from torchdoctor.agent.models import Severity

_FUNCTIONAL = frozenset(
    {
        "torch.nn.functional.dropout",
        "torch.nn.functional.dropout1d",
        "torch.nn.functional.dropout2d",
        "torch.nn.functional.dropout3d",
        "torch.nn.functional.alpha_dropout",
        "torch.nn.functional.feature_alpha_dropout",
    }
)


class FunctionalDropoutAlwaysOn(Rule):
    """Detects a functional dropout (`F.dropout`, `F.dropout2d`, `F.alpha_dropout`, ...) in a
    method of a module (a class with a `forward`) that does not pass the module's mode: no
    `training` argument (whose default is True), or a literal `training=True`.

    Why it matters: unlike `nn.Dropout`, the functional form does not follow `model.eval()`.
    Without `training=self.training` it keeps dropping units at evaluation and inference, so
    validation scores are noisy and pessimistic and predictions change from call to call.

    Not reported: a call under a test of the mode (`if self.training:`), a `training` argument
    that is not a literal (`training=self.training`, a flag passed in), functions outside
    a module's class, and methods decorated with `torch.no_grad()` or
    `torch.inference_mode()`: no gradient flows there, so the dropout regularises no
    training; it perturbs a sampler on purpose (latent-diffusion's `p_sample` drops out its
    noise when a caller asks for `noise_dropout > 0`).

    Example:
        def forward(self, x):
            return F.dropout(self.fc(x), p=0.5)

    Fix: `F.dropout(h, p=0.5, training=self.training)`, or an `nn.Dropout` layer built in
    `__init__`. Keep `training=True` only for deliberate Monte-Carlo dropout.
    """

    id = "functional-dropout-always-on"
    point = 3
    severity = Severity.HIGH
    title = "Functional dropout active in eval mode"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset(q.rsplit(".", 1)[-1] for q in _FUNCTIONAL)
    triggers = Triggers(("dropout",))
    severity_note = (
        "medium for an explicit training=True, which is sometimes deliberate (Monte-Carlo "
        "dropout, Tacotron 2's prenet); high when the argument is missing"
    )

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if ctx.call_qualname(node) not in _FUNCTIONAL or not _in_module_method(node, ctx):
            return
        if _in_gradient_free_method(node, ctx):
            return
        training = argument(node, "training", 2)
        explicit = isinstance(training, ast.Constant) and training.value is True
        if (training is not None and not explicit) or _mode_tested(node, ctx):
            return
        said = "training=True" if explicit else "no training= argument (default True)"
        ctx.report(
            self,
            node,
            f"this functional dropout has {said}: it keeps dropping units after model.eval(), "
            "so evaluation and inference are randomised; pass training=self.training",
            severity=Severity.MEDIUM if explicit else None,
        )


def _in_module_method(node: ast.AST, ctx: ModuleContext) -> bool:
    """Inside a method of a class that defines `forward` (an nn.Module, whatever its base)."""
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.ClassDef):
            return any(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == "forward"
                for item in ancestor.body
            )
    return False


_GRADIENT_FREE = frozenset({"no_grad", "inference_mode"})


def _in_gradient_free_method(node: ast.AST, ctx: ModuleContext) -> bool:
    """The enclosing function is decorated `@torch.no_grad()` / `@torch.inference_mode()`."""
    fn = ctx.enclosing_function(node)
    if fn is None:
        return False
    for decorator in fn.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in _GRADIENT_FREE:
            return True
    return False


def _mode_tested(node: ast.AST, ctx: ModuleContext) -> bool:
    """Under an `if`/conditional expression whose test reads a `training` flag."""
    child = node
    for ancestor in ctx.ancestors(node):
        if (
            isinstance(ancestor, ast.If | ast.IfExp)
            and child is not ancestor.test
            and any(
                isinstance(n, ast.Attribute | ast.Name)
                and "training" in (n.attr if isinstance(n, ast.Attribute) else n.id)
                for n in ast.walk(ancestor.test)
            )
        ):
            return True
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        child = ancestor
    return False
