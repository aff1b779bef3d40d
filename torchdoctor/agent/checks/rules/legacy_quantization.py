"""legacy-quantization: eager/FX quantization from `torch.ao.quantization`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import source_has, target_torch, terminal_name
from torchdoctor.agent.models import Severity

_PREFIXES = ("torch.ao.quantization.", "torch.quantization.")
_ENTRY_POINTS = frozenset(
    {
        "quantize_dynamic",
        "quantize",
        "prepare",
        "prepare_qat",
        "convert",
        "prepare_fx",
        "prepare_qat_fx",
        "convert_fx",
        "quantize_qat",
        "fuse_modules",
    }
)


class LegacyQuantization(Rule):
    """Detects the eager-mode / FX quantization entry points of `torch.ao.quantization` (and
    the older `torch.quantization` alias): `quantize_dynamic`, `prepare`, `convert`,
    `prepare_fx`, `convert_fx`... Severity depends on the targeted torch version: medium from
    2.10 (where its removal was planned), low before.

    Why it matters: these APIs are deprecated in favour of torchao (`quantize_`) and the PT2E
    flow (`torch.export` + `prepare_pt2e`/`convert_pt2e`); they get no new backends or fixes
    and are scheduled for removal, so a quantized deployment built on them has no upgrade path.

    Example:
        qmodel = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)

    Fix: `from torchao.quantization import quantize_, Int8DynamicActivationInt8WeightConfig`;
    `quantize_(model, Int8DynamicActivationInt8WeightConfig())`, or the PT2E flow.
    """

    id = "legacy-quantization"
    point = 7
    severity = Severity.LOW
    severity_note = (
        "medium when the target torch is 2.10 or later (the flow is on its way out); low before"
    )
    title = "Deprecated torch.ao.quantization flow"
    items: ClassVar[tuple[str, ...]] = ("7.2",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _ENTRY_POINTS
    triggers = Triggers(("quantiz",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in _ENTRY_POINTS:
            return
        if not source_has(ctx, "quantiz"):
            return
        qual = ctx.call_qualname(node) or ""
        if not qual.startswith(_PREFIXES) or qual.rsplit(".", 1)[-1] not in _ENTRY_POINTS:
            return
        late = (target_torch(ctx) or (0, 0)) >= (2, 10)
        ctx.report(
            self,
            node,
            f"{qual.rsplit('.', 1)[-1]} belongs to the deprecated torch.ao.quantization flow: "
            "migrate to torchao or PT2E quantization",
            severity=Severity.MEDIUM if late else Severity.LOW,
        )
