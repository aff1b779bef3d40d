"""removed-torch-api: a call of a torch function removed in the targeted release."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.data.torch_api import format_version, rows_by_name, target_torch
from torchdoctor.agent.models import Severity


class RemovedTorchApi(Rule):
    """Detects calls of torch functions removed from PyTorch (`torch.solve`, `torch.symeig`,
    `torch.matrix_rank`, `torch.lstsq`, `torch.eig`), resolved through imports and aliases.
    The table lives in `checks/data/torch_api.json`. On a targeted torch older than the
    removal the call still works and is reported as deprecated, at lower severity.

    Why it matters: the call raises `RuntimeError` at run time on current PyTorch, typically
    deep inside training or evaluation, after minutes or hours of work.

    Example:
        x, _ = torch.solve(b, A)

    Fix: use the `torch.linalg` replacement the message names; mind the argument order
    (`torch.linalg.solve(A, b)`) and the changed return values.
    """

    id = "removed-torch-api"
    point = 1
    severity = Severity.HIGH
    severity_note = (
        "high when the target torch has removed the API (the call raises); medium when it "
        "is only deprecated in the target version"
    )
    title = "Removed PyTorch function"
    items: ClassVar[tuple[str, ...]] = ("1.6",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        for node in ctx.flow.calls_to(rows_by_name("removed")):
            self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        qual = ctx.flow.qualname_of(node)
        row = rows_by_name("removed").get(qual or "")
        if row is None or row.removed is None:
            return
        target = target_torch(ctx.config)
        removed = format_version(row.removed)
        if target is not None and target < row.removed:
            message = (
                f"`{qual}` is deprecated and removed in torch {removed}: use {row.replacement}"
            )
            severity = Severity.MEDIUM
        else:
            message = f"`{qual}` was removed in torch {removed} and raises: use {row.replacement}"
            severity = Severity.HIGH
        ctx.report(self, node, message, severity=severity, data={"name": qual, "removed": removed})
