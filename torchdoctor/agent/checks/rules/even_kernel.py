"""even-kernel: a convolution with an even kernel size."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import argument, constant_number, terminal_name
from torchdoctor.agent.models import Severity

_CONVS = frozenset({"torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d"})


class EvenKernel(Rule):
    """Detects `nn.Conv1d/2d/3d` with a literal even kernel size (2, 4, ...) and stride 1.
    Opt-in: strided even kernels (patch embeddings, `kernel_size=4, stride=2` downsampling)
    are deliberate and are never reported.

    Why it matters: an even kernel has no centre pixel, so no symmetric padding keeps the
    spatial size: features shift by half a pixel at every layer and the output no longer
    aligns with the input (a problem for segmentation, detection and skip connections).

    Example:
        nn.Conv2d(64, 64, kernel_size=4, padding=2)

    Fix: use an odd kernel (3, 5) with `padding=k // 2`, or `padding="same"` knowingly.
    """

    id = "even-kernel"
    point = 4
    severity = Severity.LOW
    title = "Even convolution kernel size"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    tier = "opt-in"

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("Conv1d", "Conv2d", "Conv3d"):
            return
        if len(node.args) < 3 and not node.keywords:
            return
        if ctx.call_qualname(node) not in _CONVS:
            return
        kernel = argument(node, "kernel_size", 2)
        sizes = kernel.elts if isinstance(kernel, ast.Tuple) else [kernel]
        values = [constant_number(size) for size in sizes]
        stride = argument(node, "stride", 3)
        if stride is not None and constant_number(stride) != 1:
            return
        if (
            values
            and all(v is not None for v in values)
            and any(v is not None and v % 2 == 0 for v in values)
        ):
            ctx.report(
                self,
                node,
                "an even kernel has no centre: outputs shift by half a pixel; use an odd size",
            )
