"""norm-momentum-inverted: a normalisation layer given a TensorFlow/Keras-style momentum."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import constant_number, kwarg
from torchdoctor.agent.models import Severity

_LAYERS = frozenset(
    f"torch.nn.{name}"
    for name in (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LazyBatchNorm1d",
        "LazyBatchNorm2d",
        "LazyBatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
    )
)
_SMALLEST_DECAY = 0.5
"""From here up, a literal momentum is a decay rate (Keras and Darknet use 0.9-0.999), not
PyTorch's weight of the new batch (0.1 by default, 0.01-0.03 in TensorFlow ports)."""


class NormMomentumInverted(Rule):
    """Detects a BatchNorm or InstanceNorm layer built with `momentum=` a literal of 0.5 or
    more (`nn.BatchNorm2d(c, momentum=0.9)`, `momentum=0.99`): the value of a TensorFlow,
    Keras or Darknet decay copied into PyTorch's argument.

    Why it matters: the conventions are opposite. TensorFlow keeps `decay * running + (1 -
    decay) * batch`; PyTorch computes `(1 - momentum) * running + momentum * batch`. A
    momentum of 0.9 makes the running mean and variance follow the last batch almost
    entirely, so evaluation (which uses them) normalises with the statistics of one noisy
    batch, and accuracy in eval() falls below what training shows. Nothing fails.

    Not reported: momentum below 0.5 (`0.1`, `0.01`, `1 - 0.99`), `momentum=None` (a
    cumulative average), a momentum passed by name (a configuration may hold either
    convention), and a momentum given positionally (norm-positional-eps reports that one).

    Example:
        nn.BatchNorm2d(filters, momentum=0.9, eps=1e-5)

    Fix: use one minus the decay: `momentum=0.1` for a decay of 0.9, `momentum=0.01` for
    0.99.
    """

    id = "norm-momentum-inverted"
    point = 1
    severity = Severity.HIGH
    title = "Normalisation momentum in the TensorFlow convention"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset(n.rsplit(".", 1)[-1] for n in _LAYERS)
    triggers = Triggers(("momentum",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if (ctx.call_qualname(node) or "") not in _LAYERS:
            return
        momentum = constant_number(kwarg(node, "momentum"))
        if momentum is None or not _SMALLEST_DECAY <= momentum < 1:
            return
        layer = ast.unparse(node.func).rsplit(".", 1)[-1]
        ctx.report(
            self,
            node,
            f"{layer}(momentum={momentum:g}) follows the TensorFlow/Keras convention (a decay "
            f"of the running statistics); in PyTorch momentum weighs the new batch, so the "
            f"running mean and variance track the last batch almost entirely and eval() "
            f"normalises with them; use momentum={1 - momentum:.2g}",
            data={"momentum": momentum},
        )
