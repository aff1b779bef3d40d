"""channels-flattened-without-permute: `x.view(-1, c)` on an (n, c, h, w) tensor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_RESHAPES = frozenset({"view", "reshape"})
_MOVES_AXES = frozenset({"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims"})
# Calls that keep the layout of their receiver: `x.contiguous().view(-1, c)` still flattens x.
_SAME_LAYOUT = frozenset(
    {"contiguous", "float", "double", "half", "clone", "detach", "cpu", "cuda", "to"}
)


class ChannelsFlattenedWithoutPermute(Rule):
    """Detects a channels-first tensor unpacked as `n, c, h, w = x.size()` (or `x.shape`;
    also `n, c, l` and `n, c, d, h, w`) and then flattened to rows of `c` values with
    `x.view(-1, c)` / `x.reshape(-1, c)` (through `.contiguous()`), with no `permute` /
    `transpose` / `movedim` of `x` in between: the hand-written 2-D cross-entropy of
    segmentation code.

    Why it matters: in memory the channel axis comes before the pixels, so the rows of
    `view(-1, c)` are runs of `c` consecutive values of one channel's map, not the `c`
    channel scores of one pixel. The loss runs, with shapes that match the flattened target,
    and trains the network against scrambled labels: accuracy stays near chance, or the
    model learns the scrambling, and nothing fails.

    Not reported: a permute or transpose first (`x.permute(0, 2, 3, 1).reshape(-1, c)`),
    channels-last unpackings (`n, h, w, c = x.shape`), views that keep the batch and class
    axes (`x.view(n, c, -1)`), and sizes taken from another tensor.

    Example:
        n, c, h, w = logit.size()
        logit = logit.contiguous().view(-1, c)
        loss = F.cross_entropy(logit, target.view(-1))

    Fix: move the channel axis last first: `logit.permute(0, 2, 3, 1).reshape(-1, c)` — or
    pass the (n, c, h, w) logits and (n, h, w) targets to `F.cross_entropy` directly.
    """

    id = "channels-flattened-without-permute"
    point = 3
    severity = Severity.HIGH
    title = "Channels-first tensor flattened to rows without moving the channels last"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(("view(", "reshape("))

    def applies(self, ctx: ModuleContext) -> bool:
        return ("view(" in ctx.source or "reshape(" in ctx.source) and (
            ".size()" in ctx.source or ".shape" in ctx.source
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        if not any(_channels_first_sizes(n) for n in nodes_of(ctx, ast.Assign)):
            return  # no `n, c, h, w = x.size()` anywhere (the engine's node index)
        for fn in ctx.flow.nodes(ast.FunctionDef):
            nodes = list(walk_scope(fn.body))
            for node in nodes:
                sizes = _channels_first_sizes(node)
                if sizes is not None:
                    self._check(ctx, nodes, *sizes)

    def _check(
        self, ctx: ModuleContext, nodes: list[ast.AST], unpack: ast.Assign, name: str,
        channels: str, rank: int,
    ) -> None:  # fmt: skip
        for node in nodes:
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _RESHAPES
                and node.lineno >= unpack.lineno
                and _rows_of(node.args, channels)
            ):
                continue
            root = _chain_root(node.func.value)
            if root != name or _axes_moved(nodes, name, unpack.lineno, node):
                continue
            order = ", ".join(["0", *(str(d) for d in range(2, rank)), "1"])
            ctx.report(
                self,
                node,
                f"`{ast.unparse(node)}` flattens the channels-first `{name}` "
                f"({', '.join(_names(unpack))}) without moving `{channels}` last: each row "
                f"holds {channels} values of one channel's map, not one position's "
                f"{channels} scores; use `{name}.permute({order}).reshape(-1, {channels})`",
                data={"name": name, "channels": channels, "rank": rank},
            )


def _channels_first_sizes(node: ast.AST) -> tuple[ast.Assign, str, str, int] | None:
    """(statement, tensor, channel name, rank) of `n, c, h, w = x.size()` / `x.shape`."""
    if not (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Tuple)
        and 3 <= len(node.targets[0].elts) <= 5
        and all(isinstance(e, ast.Name) for e in node.targets[0].elts)
    ):
        return None
    value = node.value
    if isinstance(value, ast.Call) and not value.args and isinstance(value.func, ast.Attribute):
        value = value.func if value.func.attr == "size" else value
    if not (
        isinstance(value, ast.Attribute)
        and value.attr in ("size", "shape")
        and isinstance(value.value, ast.Name)
    ):
        return None
    elts = node.targets[0].elts
    channel = elts[1]
    assert isinstance(channel, ast.Name)
    if not channel.id.lower().startswith(("c", "k", "num_c", "n_c")):
        return None  # `b, t, d`: a sequence's features, not channels
    return node, value.value.id, channel.id, len(elts)


def _names(unpack: ast.Assign) -> list[str]:
    target = unpack.targets[0]
    assert isinstance(target, ast.Tuple)
    return [e.id for e in target.elts if isinstance(e, ast.Name)]


def _rows_of(args: list[ast.expr], channels: str) -> bool:
    """`(-1, c)`: rows of `c` values."""
    return (
        len(args) == 2
        and isinstance(args[0], ast.UnaryOp)
        and isinstance(args[0].op, ast.USub)
        and isinstance(args[0].operand, ast.Constant)
        and args[0].operand.value == 1
        and isinstance(args[1], ast.Name)
        and args[1].id == channels
    )


def _chain_root(expr: ast.expr) -> str | None:
    """`x` of `x.contiguous()` / `x.float()`: the name a chain of layout-keeping calls starts
    from; None when a call on the way moves axes or changes the shape (`x.mean((2, 3))`)."""
    while isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        if expr.func.attr not in _SAME_LAYOUT:
            return None
        expr = expr.func.value
    return expr.id if isinstance(expr, ast.Name) else None


def _axes_moved(nodes: list[ast.AST], name: str, start: int, view: ast.Call) -> bool:
    """A rebinding of `name` between the unpacking and the view that moves axes."""
    for node in nodes:
        if (
            isinstance(node, ast.Assign)
            and start < node.lineno < view.lineno
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and any(
                isinstance(n, ast.Attribute) and n.attr in _MOVES_AXES
                for n in walk_tree(node.value)
            )
        ):
            return True
    return False
