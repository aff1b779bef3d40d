"""type-cast-legacy: `x.type(torch.FloatTensor)` style casts."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_LEGACY_TYPE = re.compile(
    r"^torch\.(cuda\.)?(Float|Double|Half|BFloat16|Long|Int|Short|Char|"
    r"Byte|Bool)Tensor$"
)


class TypeCastLegacy(Rule):
    """Detects casts through the legacy tensor-type classes: `x.type(torch.FloatTensor)`,
    `x.type(torch.cuda.LongTensor)`, `x.type("torch.FloatTensor")`.

    Why it matters: the type classes mix dtype and device in one name, so
    `x.type(torch.FloatTensor)` silently moves a CUDA tensor back to the CPU (a synchronising
    copy) and `torch.cuda.*Tensor` hard-codes the device; the idiom is legacy API kept only for
    backward compatibility.

    Example:
        x = x.type(torch.FloatTensor)

    Fix: cast the dtype only: `x.float()` or `x.to(torch.float32)` (and move devices
    explicitly with `.to(device)` where intended).
    """

    id = "type-cast-legacy"
    point = 10
    severity = Severity.LOW
    title = "Legacy .type(torch.XTensor) cast"
    items: ClassVar[tuple[str, ...]] = ("10.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"type"})

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Attribute) or node.func.attr != "type":
            return
        if len(node.args) != 1:
            return
        arg = node.args[0]
        name = arg.value if isinstance(arg, ast.Constant) else ctx.qualname(arg)
        if isinstance(name, str) and _LEGACY_TYPE.match(name):
            ctx.report(
                self,
                node,
                f".type({name.rsplit('.', 1)[-1]}) mixes dtype and device: use .float()/.to("
                "dtype) and move devices explicitly",
            )
