"""lambda-lr-absolute-rate: a LambdaLR whose lambda returns a learning rate, not a factor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_LAMBDA_LR = frozenset({"torch.optim.lr_scheduler.LambdaLR"})


def _argument(call: ast.Call, keyword: str, position: int) -> ast.expr | None:
    found = kwarg(call, keyword)
    if found is None and len(call.args) > position:
        found = call.args[position]
    return found


def _divides_by(body: ast.AST, wanted: str) -> bool:
    """The schedule divides by the base rate somewhere: what it returns is a factor."""
    return any(
        isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Div) and ast.dump(sub.right) == wanted
        for sub in ast.walk(body)
    )


class LambdaLrAbsoluteRate(Rule):
    """Detects `LambdaLR(optimizer, lr_lambda=...)` whose lambda (or local function) is
    computed from the very expression the optimizer took as its learning rate
    (`SGD(params, args.lr)` then `LambdaLR(optimizer, lambda s: cosine(s, total, args.lr,
    1e-3))`), without dividing by it.

    Why it matters: LambdaLR sets each group's rate to its initial rate times what the lambda
    returns. A lambda that returns a rate (a cosine from `args.lr` down to a floor) squares
    the rate: 0.6 becomes 0.36, 0.1 becomes 0.01, and the floor is scaled too. Training runs
    far from the stated schedule with no error.

    Not reported: a lambda divided by the base rate (`cosine(...) / args.lr`), a lambda that
    does not read the rate, an optimizer built with a literal rate (`lr=1.0` with the lambda
    returning the rate is the intended idiom).

    Example:
        optimizer = SGD(model.parameters(), args.learning_rate, momentum=0.9)
        scheduler = LambdaLR(optimizer, lambda step: get_lr(step, total, args.learning_rate, 1e-3))

    Fix: return a factor (`get_lr(...) / args.learning_rate`), or build the optimizer with
    `lr=1.0` so the lambda's value is the rate.
    """

    id = "lambda-lr-absolute-rate"
    point = 4
    severity = Severity.HIGH
    title = "LambdaLR lambda returns a learning rate, not a factor"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"LambdaLR"})
    triggers = Triggers(("LambdaLR",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if ctx.flow.qualname_of(node) not in _LAMBDA_LR:
            return
        optimizer = _argument(node, "optimizer", 0)
        schedule = _argument(node, "lr_lambda", 1)
        if not isinstance(optimizer, ast.Name) or schedule is None:
            return
        body = self._schedule_body(schedule, ctx)
        rate = self._optimizer_rate(optimizer.id, node, ctx)
        if body is None or rate is None:
            return
        wanted = ast.dump(rate)
        if _divides_by(body, wanted):
            return
        for sub in ast.walk(body):
            if ast.dump(sub) == wanted:
                shown = ast.unparse(rate)
                ctx.report(
                    self,
                    schedule,
                    f"LambdaLR multiplies the optimizer's initial rate (`{shown}`) by what "
                    f"`lr_lambda` returns, and the lambda computes a rate from `{shown}` "
                    "itself: the rate applied is its square (0.6 runs at 0.36, and the floor "
                    f"is scaled too); return a factor (divide by `{shown}`) or build the "
                    "optimizer with lr=1.0",
                    data={"rate": shown},
                )
                return

    @staticmethod
    def _schedule_body(schedule: ast.expr, ctx: ModuleContext) -> ast.AST | None:
        """The lambda's body, or the body of the module's function of that name."""
        if isinstance(schedule, ast.Lambda):
            return schedule.body
        if isinstance(schedule, ast.Name):
            for function in ctx.nodes_by_type().get(ast.FunctionDef, []):
                assert isinstance(function, ast.FunctionDef)
                if function.name == schedule.id:
                    return function
        return None

    @staticmethod
    def _optimizer_rate(name: str, call: ast.Call, ctx: ModuleContext) -> ast.expr | None:
        """The non-literal learning rate of the `torch.optim` optimizer bound to `name` in
        the scheduler's function (or the module)."""
        scope: ast.AST = ctx.enclosing_function(call) or ctx.tree
        for sub in ast.walk(scope):
            if not (
                isinstance(sub, ast.Assign)
                and len(sub.targets) == 1
                and isinstance(sub.targets[0], ast.Name)
                and sub.targets[0].id == name
                and isinstance(sub.value, ast.Call)
            ):
                continue
            qualname = ctx.flow.qualname_of(sub.value) or ""
            if not qualname.startswith("torch.optim.") or "lr_scheduler" in qualname:
                continue
            rate = _argument(sub.value, "lr", 1)
            if isinstance(rate, ast.Name | ast.Attribute):
                return rate
        return None
