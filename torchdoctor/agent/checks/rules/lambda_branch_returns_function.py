"""lambda-branch-returns-function: one branch of a lambda's conditional returns the function
the other branch calls, uncalled."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


def _calls_of(branch: ast.expr, wanted: str, params: set[str]) -> ast.Call | None:
    """A call in `branch` of the function `wanted` names that receives the lambda's own
    parameters (`torch.zeros(*x)` in `torch.zeros(*x).cuda()`)."""
    for node in ast.walk(branch):
        if (
            isinstance(node, ast.Call)
            and ast.dump(node.func) == wanted
            and any(
                isinstance(n, ast.Name) and n.id in params
                for arg in [*node.args, *(k.value for k in node.keywords)]
                for n in ast.walk(arg)
            )
        ):
            return node
    return None


class LambdaBranchReturnsFunction(Rule):
    """Detects a lambda whose body is a conditional expression where one branch calls a
    function with the lambda's arguments and the other branch names that same function
    without calling it: `zeros = lambda *x: torch.zeros(*x).cuda() if CUDA else torch.zeros`.

    Why it matters: the conditional expression binds looser than the call, so on the other
    path the lambda returns the function object itself, not a tensor. The code works on the
    machine that takes the calling branch (a GPU box) and fails elsewhere, far from the
    helper: a CPU run hands `torch.zeros` to an RNN as its hidden state and dies in
    PyTorch's own code (`'builtin_function_or_method' object has no attribute 'size'`).

    Not reported: both branches called, a branch that names another function, a lambda that
    returns a function on purpose with no call of it in the other branch.

    Example:
        zeros = lambda *x: torch.zeros(*x).cuda() if CUDA else torch.zeros

    Fix: call it on both paths: `lambda *x: torch.zeros(*x).cuda() if CUDA else
    torch.zeros(*x)` (better, `torch.zeros(*x, device=device)`).
    """

    id = "lambda-branch-returns-function"
    point = 1
    severity = Severity.HIGH
    title = "Lambda returns the function uncalled on one branch"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Lambda,)
    triggers = Triggers(("lambda",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Lambda)
        body = node.body
        if not isinstance(body, ast.IfExp):
            return
        arguments = node.args
        params = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
        params |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        if not params:
            return
        for bare, other, path in ((body.orelse, body.body, "else"), (body.body, body.orelse, "if")):
            if not isinstance(bare, ast.Name | ast.Attribute):
                continue
            call = _calls_of(other, ast.dump(bare), params)
            if call is None:
                continue
            name = ast.unparse(bare)
            ctx.report(
                self,
                bare,
                f"on the `{path}` path this lambda returns `{name}` itself, not "
                f"`{ast.unparse(call)}`: the conditional binds looser than the call, so that "
                "path hands the function object to whatever expects a tensor; call it on both "
                f"paths (`... else {ast.unparse(call)}`)",
                data={"function": name},
            )
            return
