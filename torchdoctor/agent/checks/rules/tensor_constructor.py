"""tensor-constructor: `torch.Tensor(...)` used to build tensors."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity


class TensorConstructor(Rule):
    """Detects the `torch.Tensor(...)` class constructor used to create a tensor.

    Why it matters: its meaning depends on the argument: `torch.Tensor([2, 3])` copies data as
    float32 but `torch.Tensor(2, 3)` allocates an uninitialised 2x3 tensor of garbage values;
    it ignores `dtype`/`device` arguments and always uses the default dtype, so integer labels
    silently become floats.

    Example:
        labels = torch.Tensor(label_list)
        buffer = torch.Tensor(batch, dim)

    Fix: `torch.tensor(data, dtype=..., device=...)` to copy data, and
    `torch.empty/zeros(shape, dtype=..., device=...)` to allocate.
    """

    id = "tensor-constructor"
    point = 10
    severity = Severity.LOW
    title = "torch.Tensor() constructor"
    items: ClassVar[tuple[str, ...]] = ("10.1", "10.3")
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"Tensor"})
    triggers = Triggers(("Tensor",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if terminal_name(func) != "Tensor":
            return
        if ctx.call_qualname(node) != "torch.Tensor" or not node.args:
            return
        ctx.report(
            self,
            node,
            "torch.Tensor(...) copies data as float32 or allocates uninitialised memory "
            "depending on its arguments: use torch.tensor(...) or torch.empty/zeros(...)",
        )
