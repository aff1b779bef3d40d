"""magic-numbers: literal shapes in `forward()` reshapes."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.patterns import class_methods, constant_number, module_class_defs
from torchdoctor.agent.models import Severity

_RESHAPES = frozenset({"view", "reshape", "expand", "repeat", "unflatten"})


class MagicNumbers(Rule):
    """Detects literal sizes in reshapes inside `forward()`: `x.view(-1, 16 * 5 * 5)`,
    `x.reshape(b, 3, 32, 32)`. Opt-in: many fixed-architecture models are written this way.

    Why it matters: the number silently encodes the input resolution and the layers before it;
    changing the image size, a kernel or a channel count breaks the model with a shape error
    far from the cause (or, worse, reshapes into the wrong layout without error).

    Example:
        x = x.view(-1, 16 * 5 * 5)

    Fix: derive sizes from the tensor or name them: `x.flatten(1)`,
    `x.view(x.size(0), -1)`, or a constant/constructor argument such as `self.feature_dim`.
    """

    id = "magic-numbers"
    point = 10
    severity = Severity.INFO
    title = "Magic numbers in reshapes"
    items: ClassVar[tuple[str, ...]] = ("10.3",)
    tier = "opt-in"

    def finish(self, ctx: ModuleContext) -> None:
        if "forward" not in ctx.source:
            return
        for cls in module_class_defs(ctx):
            forward = class_methods(cls).get("forward")
            if forward is None:
                continue
            for node in walk_tree(forward):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _RESHAPES
                    and any(_magic(arg) for arg in node.args)
                ):
                    ctx.report(
                        self,
                        node,
                        "a literal size in a reshape hard-codes the input shape: derive it "
                        "from the tensor or name it",
                    )


def _magic(expr: ast.expr) -> bool:
    """A literal greater than 1, or arithmetic made only of literals (`16 * 5 * 5`)."""
    if isinstance(expr, ast.BinOp):
        parts = [expr.left, expr.right]
        return all(isinstance(p, ast.Constant | ast.BinOp) for p in parts) and all(
            _magic(p) or constant_number(p) is not None for p in parts
        )
    value = constant_number(expr)
    return value is not None and value > 1
