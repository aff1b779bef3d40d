"""norm-layer-shared: one normalisation layer applied after two sub-layers of `forward`."""

from __future__ import annotations

import ast
from itertools import pairwise
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import FunctionNode
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import class_methods, module_class_defs, nn_layer
from torchdoctor.agent.models import Severity

_NORMS = frozenset(
    {
        "LayerNorm",
        "RMSNorm",
        "GroupNorm",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
    }
)
_REPEATS = (
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.Lambda,
)


class NormLayerShared(Rule):
    """Detects one normalisation layer of an `nn.Module` (`self.layer_norm =
    nn.LayerNorm(d)` in `__init__`) called twice in `forward` in sequence: the second call
    normalises what the first one's output became after another sub-layer
    (`src = self.layer_norm(src + attn)` ... `src = self.layer_norm(src + ff)`).

    Why it matters: a transformer block (or a residual stack) has one normalisation per
    sub-layer, each with its own scale and shift; shared, one pair of parameters has to fit
    two differently distributed activations, and a shared batch norm mixes both into one set
    of running statistics, so evaluation normalises with neither. bentrevett/pytorch-seq2seq's
    Transformer shared one `LayerNorm` between attention and feed-forward until `0f7a00a`
    ("use separate LayerNorm layers for attention and feedforward blocks").

    Not reported: calls on separate paths of the data (`x = self.norm(x)` and
    `context = self.norm(context)`: one layer for two inputs on purpose, as in Siamese and
    cross-attention models), calls in branches of different configurations (`if
    self.pre_norm:` / `if not self.pre_norm:`, `if self.layer_norm:` / `if self.batch_norm:`),
    and calls in a loop (a recurrent step normalised the same way at every position).

    Example:
        src = self.layer_norm(src + self.dropout(self.self_attention(src, src, src, mask)))
        src = self.layer_norm(src + self.dropout(self.positionwise_feedforward(src)))

    Fix: one norm layer per sub-layer (`self.self_attn_layer_norm`, `self.ff_layer_norm`).
    """

    id = "norm-layer-shared"
    point = 4
    severity = Severity.MEDIUM
    title = "One normalisation layer shared by two sub-layers"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    triggers = Triggers(all_of=(("forward",), tuple(sorted(_NORMS))))

    def finish(self, ctx: ModuleContext) -> None:
        for cls in module_class_defs(ctx):
            methods = class_methods(cls)
            forward, init = methods.get("forward"), methods.get("__init__")
            if forward is None or init is None:
                continue
            norms = _norm_attributes(ctx, init)
            if not norms:
                continue
            calls: dict[str, list[ast.Call]] = {}
            for node in ast.walk(forward):
                name = _self_call(node)
                if name in norms and not _repeated(ctx, node, forward):
                    calls.setdefault(name, []).append(node)  # type: ignore[arg-type]
            for name, sites in calls.items():
                sites.sort(key=lambda c: (c.lineno, c.col_offset))
                for first, second in pairwise(sites):
                    if _conditions(ctx, first, forward) != _conditions(ctx, second, forward):
                        continue
                    if not _feeds(ctx, first, second):
                        continue
                    ctx.report(
                        self,
                        second,
                        f"`self.{name}` normalises two sub-layers of `forward` (lines "
                        f"{first.lineno} and {second.lineno}): one {norms[name]} holds one "
                        "scale and shift (and a batch norm one set of running statistics) for "
                        "both, where each sub-layer needs its own; build one norm layer per "
                        "sub-layer",
                        data={"layer": name, "first": first.lineno},
                    )
                    break


def _norm_attributes(ctx: ModuleContext, init: FunctionNode) -> dict[str, str]:
    """`self.NAME = nn.LayerNorm(...)` in `__init__` -> {NAME: 'LayerNorm'}."""
    found: dict[str, str] = {}
    for node in ast.walk(init):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, layer = node.targets[0], nn_layer(ctx, node.value)
        if layer in _NORMS and isinstance(target, ast.Attribute) and _is_self(target.value):
            found[target.attr] = layer
    return found


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _self_call(node: ast.AST) -> str:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr if _is_self(node.func.value) else ""
    return ""


def _repeated(ctx: ModuleContext, node: ast.AST, function: FunctionNode) -> bool:
    return any(isinstance(a, _REPEATS) for a in _up_to(ctx, node, function))


def _up_to(ctx: ModuleContext, node: ast.AST, scope: ast.AST) -> list[ast.AST]:
    chain = []
    current = ctx.parents.get(node)
    while current is not None and current is not scope:
        chain.append(current)
        current = ctx.parents.get(current)
    return chain


def _conditions(
    ctx: ModuleContext, node: ast.AST, function: FunctionNode
) -> list[tuple[int, bool]]:
    """The conditionals around `node`, each with the branch it is in (body or else)."""
    found = []
    child: ast.AST = node
    for ancestor in _up_to(ctx, node, function):
        if isinstance(ancestor, ast.If | ast.IfExp):
            in_body = child in (ancestor.body if isinstance(ancestor, ast.If) else [ancestor.body])
            found.append((id(ancestor), in_body))
        child = ancestor
    return found[::-1]


def _feeds(ctx: ModuleContext, first: ast.Call, second: ast.Call) -> bool:
    """The first call's result is assigned to a name that the second call's argument reads."""
    statement: ast.AST | None = ctx.parents.get(first)
    while statement is not None and not isinstance(statement, ast.stmt):
        statement = ctx.parents.get(statement)
    if not isinstance(statement, ast.Assign | ast.AugAssign | ast.AnnAssign):
        return False
    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
    bound = {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
    read = {
        n.id
        for arg in [*second.args, *(k.value for k in second.keywords)]
        for n in ast.walk(arg)
        if isinstance(n, ast.Name)
    }
    return bool(bound & read)
