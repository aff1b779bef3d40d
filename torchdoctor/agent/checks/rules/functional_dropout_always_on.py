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

    Also reported: a call in such a method of a dropout helper of the module's own (a
    module-level function named for dropping that draws a random mask: RecBole's
    `sparse_dropout(adj, rate, nnz)`, CaiT's `dropout_layers(layers, p)`) that takes no mode
    flag, or whose `training` parameter defaults to True and is not given, with no test of
    `self.training` around the call or in its arguments (`dropout=p if self.training else 0`).

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
    triggers = Triggers(("dropout", "def drop"))
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

    def finish(self, ctx: ModuleContext) -> None:
        helpers = _local_dropouts(ctx)
        if not helpers:
            return
        calls = sorted(ctx.flow.calls_named(helpers), key=lambda c: (c.lineno, c.col_offset))
        for node in calls:
            if not isinstance(node.func, ast.Name) or not _in_module_method(node, ctx):
                continue
            helper, position = helpers[node.func.id]
            if _in_gradient_free_method(node, ctx) or _mode_tested(node, ctx):
                continue
            if position is None:
                if any(_reads_training(a) for a in [*node.args, *node.keywords]):
                    continue  # `embedded_dropout(..., dropout=p if self.training else 0)`
                said = "takes no training flag"
            elif argument(node, "training", position) is not None:
                continue
            else:
                said = "is given no training= argument (its default is True)"
            ctx.report(
                self,
                node,
                f"`{helper.name}` (line {helper.lineno}) drops at random and {said}: called "
                "here with no test of self.training, it keeps dropping after model.eval(), "
                "so evaluation and inference are randomised; call it only when "
                "self.training",
            )


_DRAWS = frozenset({"torch.rand", "torch.rand_like", "torch.bernoulli"})
_DRAW_METHODS = frozenset({"bernoulli_", "uniform_"})
_TRAINING_WORDS = ("train", "determin", "eval")


def _local_dropouts(ctx: ModuleContext) -> dict[str, tuple[ast.FunctionDef, int | None]]:
    """Module-level functions named for dropping (`sparse_dropout`, `drop_edges`, CaiT's
    `dropout_layers`) that draw a random mask (`torch.rand`, `torch.bernoulli`, `.uniform_()`,
    a functional dropout) -> the position of
    their `training` parameter when it defaults to True, None when they take no parameter
    about the mode (they always drop). A helper whose mode flag defaults to off, or is
    required, follows its callers."""
    found: dict[str, tuple[ast.FunctionDef, int | None]] = {}
    for fn in ctx.tree.body:
        if not isinstance(fn, ast.FunctionDef) or "drop" not in fn.name.lower():
            continue
        draws = any(
            isinstance(n, ast.Call)
            and (
                ctx.flow.qualname_of(n) in _DRAWS | _FUNCTIONAL
                or (isinstance(n.func, ast.Attribute) and n.func.attr in _DRAW_METHODS)
            )
            for n in ast.walk(fn)
        )
        if not draws:
            continue
        params = [*fn.args.posonlyargs, *fn.args.args]
        names = [a.arg for a in params] + [a.arg for a in fn.args.kwonlyargs]
        flags = [n for n in names if any(w in n.lower() for w in _TRAINING_WORDS)]
        if not flags:
            found[fn.name] = (fn, None)
            continue
        if flags != ["training"] or "training" not in [a.arg for a in params]:
            continue
        position = [a.arg for a in params].index("training")
        defaults = fn.args.defaults
        first_default = len(params) - len(defaults)
        default = defaults[position - first_default] if position >= first_default else None
        if isinstance(default, ast.Constant) and default.value is True:
            found[fn.name] = (fn, position)
    return found


def _reads_training(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute | ast.Name)
        and "training" in (n.attr if isinstance(n, ast.Attribute) else n.id)
        for n in ast.walk(node)
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
