"""legacy-tensor-ctor: typed tensor constructors (`torch.FloatTensor(...)`)."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_LEGACY = re.compile(
    r"^torch\.(cuda\.)?(Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool)Tensor$"
)


class LegacyTensorCtor(Rule):
    """Detects the legacy typed constructors `torch.FloatTensor(...)`, `torch.LongTensor`,
    `torch.cuda.FloatTensor(...)`, ... (casts like `x.type(torch.FloatTensor)` are
    `type-cast-legacy`'s).

    Why it matters: `torch.FloatTensor(3, 4)` allocates uninitialised memory while
    `torch.FloatTensor([3, 4])` copies data, a classic source of garbage values; the CUDA
    variants hard-code the device; all of them ignore the default dtype and device settings
    and are discouraged in the PyTorch docs.

    Example:
        weights = torch.FloatTensor(num_classes)

    Fix: `torch.tensor(data, dtype=torch.float32)` for data, `torch.empty/zeros(shape,
    dtype=..., device=...)` for shapes.
    """

    id = "legacy-tensor-ctor"
    point = 1
    severity = Severity.LOW
    title = "Legacy typed tensor constructor"
    items: ClassVar[tuple[str, ...]] = ("1.6",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if "Tensor(" in ctx.source:
            for node in ctx.flow.nodes(ast.Call):
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        qual = ctx.flow.qualname_of(node) or ""
        if _LEGACY.match(qual):
            ctx.report(
                self,
                node,
                f"`{qual}` is a legacy constructor: use torch.tensor/torch.empty with dtype= "
                "and device=",
                data={"name": qual},
            )
