"""missing-nonlinearity: two linear layers in a row collapse into one."""

from __future__ import annotations

import ast
from itertools import pairwise
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import sequential_layers, terminal_name
from torchdoctor.agent.models import Severity

_LINEAR = frozenset({"Linear", "LazyLinear"})
_TRANSPARENT = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Identity", "Flatten"})


class MissingNonlinearity(Rule):
    """Detects, inside `nn.Sequential(...)`, two `Linear` layers with no activation between
    them (dropout, flatten and identity layers do not count as activations). Convolutions are
    left alone: depthwise-then-pointwise factorisations are deliberate.

    Why it matters: the composition of two affine maps is one affine map, so the extra layer
    adds parameters and compute but no expressive power; it usually means an activation was
    forgotten.

    Example:
        nn.Sequential(nn.Linear(784, 256), nn.Linear(256, 10))

    Not reported: a first layer without bias (`nn.Linear(d, d // 4, False)`, then the
    output layer): a low-rank projection, written so on purpose (an adaptive softmax's tail
    clusters, a factorised embedding).

    Fix: insert an activation (`nn.ReLU()`, `nn.GELU()`) between the layers, or merge them
    into one layer if a low-rank factorisation was intended and document it.
    """

    id = "missing-nonlinearity"
    point = 4
    severity = Severity.MEDIUM
    title = "Consecutive linear layers without activation"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"Sequential"})
    triggers = Triggers(("Sequential",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if len(node.args) < 2 or terminal_name(node.func) != "Sequential":
            return
        layers = [(n, a) for n, a in sequential_layers(ctx, node) if n not in _TRANSPARENT]
        for (first, node_one), (second, node_two) in pairwise(layers):
            if first in _LINEAR and second in _LINEAR and not _projection(node_one):
                ctx.report(
                    self,
                    node_two,
                    f"{first} followed directly by {second}: without an activation between "
                    "them the two layers are one linear map",
                )


def _projection(layer: ast.AST) -> bool:
    """`nn.Linear(d_in, d_out, False)` or `bias=False`: a pure projection."""
    if not isinstance(layer, ast.Call):
        return False
    bias = next((k.value for k in layer.keywords if k.arg == "bias"), None)
    if bias is None and len(layer.args) >= 3:
        bias = layer.args[2]
    return isinstance(bias, ast.Constant) and bias.value is False
