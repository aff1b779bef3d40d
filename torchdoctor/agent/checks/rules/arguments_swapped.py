"""arguments-swapped: positional arguments named after each other's parameters."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity


class ArgumentsSwapped(Rule):
    """Detects a call to a function of the same module whose positional arguments carry the
    names of each other's parameters: `cal_loss(pred, gold, smoothing, trg_pad_idx)` against
    `def cal_loss(pred, gold, trg_pad_idx, smoothing=False)`.

    Why it matters: Python binds positional arguments by position, not by name, so the two
    values trade places without an error; here the padding index became the smoothing flag
    and the flag the padding index, and the loss ignored the wrong token.
    jadore801120/attention-is-all-you-need-pytorch fixed exactly this (`13501ef`, "fix
    misplaced parameters"). The same slip swaps `(pred, target)`, `(height, width)` or
    `(in_channels, out_channels)`.

    An argument's name is its variable's name or the last attribute (`opt.smoothing`,
    `self.pad_idx`). Reported when two arguments (by position, or by keyword:
    `f(pred=target, target=pred)`) each carry the other one's parameter name. Not reported:
    a function calling itself (recursion often swaps on purpose: `gcd(b, a % b)`), functions
    with `*args`, calls that resolve to more than one local definition, and `in`/`out` pairs
    (`Conv(out_channels, in_channels)`, a layer mapping back). kimiyoung/transformer-xl's
    `self._update_mems(hids, mems, mlen, qlen)` against `def _update_mems(self, hids, mems,
    qlen, mlen)` is one such swap, reported in its issues #59, #96 and #118.

    Example:
        def cal_loss(pred, gold, trg_pad_idx, smoothing=False): ...
        loss = cal_loss(pred, gold, smoothing, trg_pad_idx)

    Fix: pass them in the parameters' order, or by keyword
    (`cal_loss(pred, gold, trg_pad_idx, smoothing=smoothing)`).
    """

    id = "arguments-swapped"
    point = 1
    severity = Severity.HIGH
    title = "Arguments passed in each other's places"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def finish(self, ctx: ModuleContext) -> None:
        calls = ctx.calls
        local = _local_names(ctx)
        if not local:
            return
        for node in ctx.nodes_by_type().get(ast.Call, ()):
            assert isinstance(node, ast.Call)
            if len(node.args) + len(node.keywords) < 2 or _callee_name(node) not in local:
                continue
            targets = calls.resolve(node)
            if len(targets) != 1 or targets[0].args.vararg is not None:
                continue
            fn = targets[0]
            if ctx.enclosing_function(node) is fn:
                continue
            swapped = _swapped(list(calls.bind(node, fn).items()))
            if swapped is not None:
                first, second = swapped
                ctx.report(
                    self,
                    node,
                    f"`{fn.name}` takes `{first}` before `{second}`, but this call passes "
                    f"`{second}` as `{first}` and `{first}` as `{second}`: arguments bind by "
                    "position (or by the keyword given), not by the variable's name, so the "
                    "two values trade places silently. Pass each under its own parameter.",
                )


def _local_names(ctx: ModuleContext) -> frozenset[str]:
    """Names of the functions and methods this module defines (what a call may resolve to)."""
    by_type = ctx.nodes_by_type()
    return frozenset(
        fn.name  # type: ignore[attr-defined]
        for kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        for fn in by_type.get(kind, ())
    )


def _callee_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _argument_name(arg: ast.expr) -> str | None:
    if isinstance(arg, ast.Name):
        return arg.id
    if isinstance(arg, ast.Attribute):
        return arg.attr
    return None


def _swapped(bound: list[tuple[str, ast.expr]]) -> tuple[str, str] | None:
    """The first pair of parameters whose arguments carry each other's names."""
    names = [(param, _argument_name(arg)) for param, arg in bound]
    for i, (first, first_arg) in enumerate(names):
        if first_arg is None or first_arg == first:
            continue
        for second, second_arg in names[i + 1 :]:
            if first_arg == second and second_arg == first and not _mirrored(first, second):
                return first, second
    return None


_IN_OUT = {"in": "out", "input": "output", "inp": "out", "inputs": "outputs"}
_MIRROR = {**_IN_OUT, **{out: inp for inp, out in _IN_OUT.items()}}


def _mirrored(first: str, second: str) -> bool:
    """`in_channels` / `out_channels`: a layer that maps back (a bottleneck's expansion, a
    decoder mirroring its encoder) passes them the other way round on purpose."""
    a, b = first.lower().split("_"), second.lower().split("_")
    if len(a) != len(b):
        return False
    return all(x == y or _MIRROR.get(x) == y for x, y in zip(a, b, strict=True))
