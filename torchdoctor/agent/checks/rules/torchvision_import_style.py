"""torchvision-import-style: `import torchvision.models as models`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity


class TorchvisionImportStyle(Rule):
    """Detects `import torchvision.X as X` (TorchFix TOR203), e.g.
    `import torchvision.models as models`.

    Why it matters: it is a roundabout spelling of `from torchvision import X` that linters
    and readers trip over (it looks like an alias but is not one), and the recommended
    spelling is the one used throughout the torchvision documentation.

    Example:
        import torchvision.transforms as transforms

    Fix: `from torchvision import transforms`.
    """

    id = "torchvision-import-style"
    point = 10
    severity = Severity.INFO
    title = "import torchvision.X as X"
    tier = "opt-in"  # pure style: 0 of 10 labelled
    # findings on benchmarks/precision.py's corpus were worth acting on
    items: ClassVar[tuple[str, ...]] = ("10.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Import,)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Import)
        for alias in node.names:
            parts = alias.name.split(".")
            if len(parts) == 2 and parts[0] == "torchvision" and alias.asname == parts[1]:
                ctx.report(
                    self,
                    node,
                    f"`import {alias.name} as {alias.asname}` is "
                    f"`from torchvision import {parts[1]}`",
                )
