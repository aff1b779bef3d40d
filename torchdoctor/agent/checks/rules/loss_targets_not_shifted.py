"""loss-targets-not-shifted: a loss given unshifted targets where another call shifts them."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.model_facts import LOSS_NAME
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_TARGET_NAME = re.compile(r"target|label|^y$", re.IGNORECASE)
_LOSS_CALLEE = re.compile(r"entropy|nll", re.IGNORECASE)
_WRAPPERS = frozenset({"contiguous", "reshape", "view", "flatten", "long", "to"})


class LossTargetsNotShifted(Rule):
    """Detects a loss call that receives a target sequence as it is (`loss_fn(logits,
    targets)`) where another call of the same loss in the same file, in another function,
    receives that name shifted by one position (`targets[..., 1:]`, `labels[:, 1:]`): a
    next-token loss computed one way in training and another way in evaluation.

    Why it matters: unshifted, each position's logits are scored against the token they
    were given as input instead of the next one; the loss is low or meaningless and the
    validation curve says nothing about the model that trains. litgpt's finetuning
    `validate` computed `chunked_cross_entropy(logits, targets)` while the training step
    shifted both until `22ef3ef`.

    Not reported: calls in the function that shifts (it may shift in two steps), a name the
    unshifting call's function reassigns from a slice of itself (`targets = targets[:, 1:]`
    before the call), names that do not say target or label, and callees that do not say
    loss, entropy or NLL.

    Example:
        loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])  # train step
        ...
        loss = chunked_cross_entropy(logits, targets)  # validate

    Fix: shift the same way everywhere: `loss_fn(logits[..., :-1, :], targets[..., 1:])`.
    """

    id = "loss-targets-not-shifted"
    point = 3
    severity = Severity.HIGH
    title = "Loss given unshifted targets where another call shifts them"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("1:]",))

    def finish(self, ctx: ModuleContext) -> None:
        shifted: dict[tuple[str, int, str], ast.AST | None] = {}
        plain: list[tuple[tuple[str, int, str], ast.Call]] = []
        for call in ctx.flow.nodes(ast.Call):
            callee = ast.unparse(call.func)
            last = callee.rsplit(".", 1)[-1]
            if not (LOSS_NAME.search(last) or _LOSS_CALLEE.search(last)):
                continue
            for position, arg in enumerate(call.args):
                name = _shifted_name(arg)
                if name is not None:
                    shifted.setdefault((callee, position, name), ctx.enclosing_function(call))
                    continue
                name = _plain_name(arg)
                if name is not None and _TARGET_NAME.search(name):
                    plain.append(((callee, position, name), call))
        for key, call in plain:
            if key not in shifted:
                continue
            fn = ctx.enclosing_function(call)
            if fn is None or fn is shifted[key] or _reassigned_from_a_slice(fn, key[2]):
                continue
            callee, _, name = key
            ctx.report(
                self,
                call,
                f"`{name}` reaches `{callee}` unshifted here, but another call of `{callee}` "
                f"in this file takes `{name}[..., 1:]`: each position is scored against its "
                "own input token instead of the next one; shift the logits and targets "
                "the same way in both",
                data={"name": name},
            )


def _strip(arg: ast.expr) -> ast.expr:
    while (
        isinstance(arg, ast.Call)
        and isinstance(arg.func, ast.Attribute)
        and arg.func.attr in _WRAPPERS
    ):
        arg = arg.func.value
    return arg


def _shifted_name(arg: ast.expr) -> str | None:
    """`t` of `t[..., 1:]`, `t[:, 1:]`, `t[1:]` (under reshapes)."""
    arg = _strip(arg)
    if not isinstance(arg, ast.Subscript) or not isinstance(arg.value, ast.Name):
        return None
    parts = arg.slice.elts if isinstance(arg.slice, ast.Tuple) else [arg.slice]
    *before, last = parts
    if not (
        isinstance(last, ast.Slice)
        and isinstance(last.lower, ast.Constant)
        and last.lower.value == 1
        and last.upper is None
        and last.step is None
    ):
        return None
    for part in before:
        whole = isinstance(part, ast.Slice) and part.lower is part.upper is part.step is None
        if not (whole or (isinstance(part, ast.Constant) and part.value is Ellipsis)):
            return None
    return arg.value.id


def _plain_name(arg: ast.expr) -> str | None:
    arg = _strip(arg)
    return arg.id if isinstance(arg, ast.Name) else None


def _reassigned_from_a_slice(fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    """The function binds `name` from an expression that indexes or slices something."""
    for node in walk_scope(fn.body):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = any(
                isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)
            )
            if (
                bound
                and node.value is not None
                and any(isinstance(n, ast.Subscript) for n in ast.walk(node.value))
            ):
                return True
    return False
