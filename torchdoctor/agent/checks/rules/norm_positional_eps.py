"""norm-positional-eps: a normalisation layer's second positional argument is its eps."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import constant_number
from torchdoctor.agent.models import Severity

# Layer -> position of `eps` among its positional parameters.
_EPS_POSITION = {
    **{
        f"torch.nn.{name}": 1
        for name in (
            "BatchNorm1d",
            "BatchNorm2d",
            "BatchNorm3d",
            "SyncBatchNorm",
            "InstanceNorm1d",
            "InstanceNorm2d",
            "InstanceNorm3d",
            "LayerNorm",
        )
    },
    "torch.nn.GroupNorm": 2,
}
_LARGEST_EPS = 0.01
"""Above this, a literal eps is a momentum or a size put in eps's place (torch's default is
1e-5, TensorFlow ports use 1e-3)."""


class NormPositionalEps(Rule):
    """Detects a normalisation layer whose `eps` is given positionally a value that cannot be
    an epsilon: a channel count or other name (`nn.BatchNorm2d(c, c)`), an integer, or a
    literal of 0.01 or more (`nn.BatchNorm2d(c, 0.9)`, a momentum meant for TensorFlow's
    argument order). `eps` is the second parameter of BatchNorm, InstanceNorm and LayerNorm
    and the third of GroupNorm.

    Why it matters: the layer divides by `sqrt(var + eps)`; an eps of 32 or 0.9 swamps the
    variance, so the layer barely normalises and the activations keep their scale. Nothing
    fails: the model trains, worse.

    Not reported: eps passed by keyword, a small literal (1e-3, 1e-5), and a name that says it
    is one (`bn_eps`, `epsilon`).

    Example:
        nn.BatchNorm2d(channels, channels)

    Fix: `nn.BatchNorm2d(channels)`; pass other settings by keyword (`momentum=0.01`,
    `eps=1e-3`).
    """

    id = "norm-positional-eps"
    point = 1
    severity = Severity.HIGH
    title = "Normalisation layer with a non-epsilon eps"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset(
        name.rsplit(".", 1)[-1] for name in _EPS_POSITION
    )
    triggers = Triggers(("Norm",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        position = _EPS_POSITION.get(ctx.call_qualname(node) or "")
        if position is None or len(node.args) <= position:
            return
        eps = node.args[position]
        if any(isinstance(a, ast.Starred) for a in node.args[: position + 1]):
            return
        if not _not_an_epsilon(eps):
            return
        layer = ast.unparse(node.func).rsplit(".", 1)[-1]
        ctx.report(
            self,
            node,
            f"`{ast.unparse(eps)}` is passed as {layer}'s eps (its {_ordinal(position)} "
            "positional argument): the layer divides by sqrt(var + eps), so it barely "
            "normalises; pass other settings by keyword",
        )


def _not_an_epsilon(eps: ast.expr) -> bool:
    value = constant_number(eps)
    if value is not None:
        integer = isinstance(eps, ast.Constant) and isinstance(eps.value, int)
        return integer or value >= _LARGEST_EPS
    name = identifier(eps).lower()
    return bool(name) and "eps" not in name


def _ordinal(position: int) -> str:
    return ("first", "second", "third")[position]
