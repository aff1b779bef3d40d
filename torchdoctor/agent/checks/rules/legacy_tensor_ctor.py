"""legacy-tensor-ctor: typed tensor constructors (`torch.FloatTensor(...)`)."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import kwarg
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

    A CPU constructor given `device=` (`torch.BoolTensor(mask, device=self.dev)`) is graver:
    the legacy constructors build CPU tensors only and raise `RuntimeError: legacy constructor
    expects device type: cpu` for any other device, so the code fails as soon as it runs on a
    GPU (SASRec.pytorch's attention mask, `5684684`). Not reported as such: `device="cpu"`
    or `torch.device("cpu")`, the `torch.cuda.*` constructors.
    """

    id = "legacy-tensor-ctor"
    point = 1
    severity = Severity.LOW
    severity_note = (
        "high when a CPU constructor is given a `device=` that is not the CPU (it raises on "
        "any other device); low otherwise (a legacy idiom)"
    )
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
        if not _LEGACY.match(qual):
            return
        device = kwarg(node, "device")
        if device is not None and not qual.startswith("torch.cuda.") and not _cpu(device):
            ctx.report(
                self,
                node,
                f"`{qual}(..., device=...)`: a legacy constructor builds CPU tensors only and "
                "raises for any other device (RuntimeError: legacy constructor expects device "
                "type: cpu): use torch.tensor(data, dtype=..., device=...)",
                severity=Severity.HIGH,
                data={"name": qual, "device": True},
            )
            return
        ctx.report(
            self,
            node,
            f"`{qual}` is a legacy constructor: use torch.tensor/torch.empty with dtype= "
            "and device=",
            data={"name": qual},
        )


def _cpu(device: ast.expr) -> bool:
    """`"cpu"` or `torch.device("cpu")`: the one device a legacy constructor accepts."""
    if isinstance(device, ast.Call) and device.args:
        device = device.args[0]
    return isinstance(device, ast.Constant) and device.value == "cpu"
