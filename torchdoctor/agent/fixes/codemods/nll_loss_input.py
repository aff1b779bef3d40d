"""nll-loss-input: hand NLLLoss log-probabilities."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_SIMPLE = (cst.Name, cst.Attribute, cst.Call, cst.Subscript)


class NllLossInputFix(Codemod):
    """At the flagged NLL call, turns its input into log-probabilities over the class
    dimension, which NLLLoss reads as dim 1 whatever the input's rank: raw logits become
    `logits.log_softmax(dim=1)`; the softmax that produced the probabilities (in the call,
    a variable's binding, or the model's `forward`: `return F.softmax(x, dim=1)`, as in the
    MNIST example's classic slip) becomes the same call's `log_softmax`, so the model then
    returns log-probabilities (their argmax is the same class); a `log_softmax` over dim 0,
    the batch, is taken over dim 1. Declines when the softmax is not a call this file makes
    under that name."""

    rule = "nll-loss-input"
    kind = FixKind.CORRECTNESS
    summary = "feed NLLLoss log_softmax instead of probabilities or logits"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("over_batch"):
            return _over_the_classes(ctx, target)
        received, text = target.data.get("received"), target.data.get("input")
        if received not in ("logits", "softmax") or not isinstance(text, str):
            return ctx.decline("the rule did not say what the loss receives")
        argument = _flagged_input(ctx, target.line, text)
        if argument is None:
            return ctx.decline("the loss's input is not an argument on the finding's line")
        value = argument.value
        if received == "logits":
            inner = value if isinstance(value, _SIMPLE) else cst.parse_expression(f"({text})")
            fixed = cst.parse_expression(f"{ctx.code(inner)}.log_softmax(dim=1)")
            ctx.substitute(value, fixed)
            return True
        if _softmax_name(value) is not None:
            softmaxes = [value]
        else:  # the model's `return F.softmax(x, dim=1)`, or `probs = x.softmax(1)`
            lines = target.data.get("softmax_lines")
            wanted = set(lines) if isinstance(lines, list) else set()
            softmaxes = ctx.find(
                cst.Call, where=lambda c: ctx.line(c) in wanted and _softmax_name(c) is not None
            )
        if not softmaxes or len(softmaxes) != len(target.data.get("softmax_lines") or [0]):
            return ctx.decline(
                f"`{text}` holds probabilities this file does not compute with a softmax call "
                "it can rename: compute log_softmax there, or pass logits to CrossEntropyLoss"
            )
        for softmax in softmaxes:
            name = _softmax_name(softmax)
            assert name is not None
            ctx.substitute(name, name.with_changes(attr=cst.Name("log_softmax")))
        return True


def _over_the_classes(ctx: SourceContext, target: FixTarget) -> bool:
    """The flagged `log_softmax` over dim 0 (the batch) taken over dim 1, the classes:
    `F.log_softmax(x, dim=0)`, `F.log_softmax(x, 0)`, `x.log_softmax(0)`."""
    calls = [
        c
        for c in ctx.find(cst.Call, within=(target.line, target.end_line))
        if isinstance(c.func, cst.Attribute) and c.func.attr.value == "log_softmax"
    ]
    if len(calls) != 1:
        return ctx.decline("no single log_softmax at the finding")
    call = calls[0]
    named = [a for a in call.args if a.keyword is not None and a.keyword.value == "dim"]
    position = 1 if ctx.qualname(call.func) else 0  # the function form takes the input first
    positional = [a for a in call.args if a.keyword is None and a.star == ""]
    dims = named or positional[position : position + 1]
    if len(dims) != 1 or ctx.code(dims[0].value).strip() != "0":
        return ctx.decline("the log_softmax no longer takes dim 0")
    ctx.substitute(dims[0].value, cst.Integer("1"))
    return True


def _softmax_name(node: cst.CSTNode) -> cst.Attribute | None:
    """The `.softmax` of `F.softmax(...)`, `torch.softmax(...)` or `x.softmax(...)`."""
    func = node.func if isinstance(node, cst.Call) else None
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax":
        return func
    return None


def _flagged_input(ctx: SourceContext, line: int, text: str) -> cst.Arg | None:
    """The first argument, spelled `text`, of a call starting on `line`."""
    compact = "".join(text.split())
    for call in ctx.find(cst.Call, where=lambda c: ctx.line(c) == line):
        if call.args and "".join(ctx.code(call.args[0].value).split()) == compact:
            return call.args[0]
    return None
