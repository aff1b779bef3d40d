"""bias-before-norm: a biased Conv/Linear feeds straight into BatchNorm."""

from __future__ import annotations

import ast
from itertools import pairwise
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg, sequential_layers, terminal_name
from torchdoctor.agent.models import Severity

_BIASED = frozenset({"Conv1d", "Conv2d", "Conv3d", "Linear", "LazyConv2d", "LazyLinear"})
_BATCH_NORMS = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


class BiasBeforeNorm(Rule):
    """Detects, inside `nn.Sequential(...)`, a `Conv*d`/`Linear` layer with its bias on (the
    default) immediately followed by a BatchNorm layer.

    Why it matters: BatchNorm subtracts the per-channel mean, which cancels any per-channel
    bias exactly; the bias is dead weight that still costs memory, optimizer state and an
    extra kernel per step (the PyTorch tuning guide calls this out).

    Example:
        nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU())

    Fix: `nn.Conv2d(3, 64, 3, bias=False)`. This changes the state_dict keys, so convert
    existing checkpoints or drop their bias entries.
    """

    id = "bias-before-norm"
    point = 4
    severity = Severity.LOW
    title = "Bias before BatchNorm"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"Sequential"})
    triggers = Triggers(("Sequential",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if not node.args or terminal_name(node.func) != "Sequential":
            return
        layers = sequential_layers(ctx, node)
        for (layer, first), (following, _) in pairwise(layers):
            if layer in _BIASED and following in _BATCH_NORMS and isinstance(first, ast.Call):
                bias = kwarg(first, "bias")
                if bias is None or (isinstance(bias, ast.Constant) and bias.value is True):
                    ctx.report(
                        self,
                        first,
                        f"{layer} has a bias but feeds {following}, which cancels it: "
                        "use bias=False",
                    )
