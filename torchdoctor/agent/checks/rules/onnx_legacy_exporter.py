"""onnx-legacy-exporter: the TorchScript-based ONNX exporter."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import (
    is_false,
    kwarg,
    source_has,
    target_torch,
    terminal_name,
)
from torchdoctor.agent.models import Severity

_EXPORT = "torch.onnx.export"
_DYNAMO_EXPORT = "torch.onnx.dynamo_export"


class OnnxLegacyExporter(Rule):
    """Detects ONNX export through the legacy TorchScript-based exporter, depending on the
    targeted torch version (`target_torch`, else the installed one): from 2.5 to 2.8,
    `torch.onnx.export(...)` without `dynamo=True`; from 2.9 (where `dynamo=True` became the
    default), an explicit `dynamo=False`; and, from 2.6, the deprecated
    `torch.onnx.dynamo_export(...)`.

    Why it matters: the TorchScript-based exporter is deprecated and no longer receives
    operator coverage; the `torch.export`-based path handles dynamic shapes and modern
    operators and is the one maintained.

    Example:
        torch.onnx.export(model, (x,), "model.onnx", dynamic_axes={"x": {0: "batch"}})

    Fix: `torch.onnx.export(model, (x,), "model.onnx", dynamo=True,
    dynamic_shapes=({0: torch.export.Dim("batch")},))` and verify the exported graph with
    onnxruntime; `dynamo_export(m, x)` becomes `export(m, (x,), dynamo=True)`.
    """

    id = "onnx-legacy-exporter"
    point = 7
    severity = Severity.LOW
    title = "Legacy ONNX exporter"
    items: ClassVar[tuple[str, ...]] = ("7.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"export", "dynamo_export"})
    triggers = Triggers(("onnx",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("export", "dynamo_export"):
            return
        if not source_has(ctx, "onnx"):
            return
        qual = ctx.call_qualname(node)
        version = target_torch(ctx) or (0, 0)
        if qual == _DYNAMO_EXPORT and version >= (2, 6):
            ctx.report(
                self,
                node,
                "torch.onnx.dynamo_export is deprecated: use torch.onnx.export(..., dynamo=True)",
            )
        elif qual == _EXPORT and version >= (2, 5):
            dynamo = kwarg(node, "dynamo")
            legacy = is_false(dynamo) if version >= (2, 9) else dynamo is None or is_false(dynamo)
            if legacy:
                ctx.report(
                    self,
                    node,
                    "this export uses the deprecated TorchScript-based ONNX exporter: pass "
                    "dynamo=True",
                )
