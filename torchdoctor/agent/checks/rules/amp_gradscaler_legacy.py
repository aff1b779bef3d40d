"""amp-gradscaler-legacy: `torch.cuda.amp.GradScaler` instead of `torch.amp.GradScaler`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.data.torch_api import format_version, rows_by_name, target_torch
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class AmpGradscalerLegacy(Rule):
    """Detects `torch.cuda.amp.GradScaler(...)` (however imported) when the targeted torch
    deprecates it (2.4 and later, per `torchdoctor/agent/checks/data/torch_api.json`).

    Why it matters: since torch 2.4 the device-specific spelling emits a FutureWarning on
    every construction and is slated for removal; the device-generic `torch.amp` API is the
    one that keeps working (and also serves other devices).

    Example:
        scaler = torch.cuda.amp.GradScaler()

    Fix: `scaler = torch.amp.GradScaler("cuda")` (same keyword arguments).
    """

    id = "amp-gradscaler-legacy"
    point = 1
    severity = Severity.LOW
    title = "Legacy torch.cuda.amp.GradScaler"
    items: ClassVar[tuple[str, ...]] = ("1.6",)
    triggers = Triggers(("GradScaler",))  # in every spelling of a renamed row

    def applies(self, ctx: ModuleContext) -> bool:
        return "GradScaler" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        for node in ctx.flow.calls_to(rows_by_name("renamed")):
            self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        qual = ctx.flow.qualname_of(node)
        row = rows_by_name("renamed").get(qual or "")
        if row is None:
            return
        target = target_torch(ctx.config)
        if target is not None and row.deprecated is not None and target < row.deprecated:
            return
        since = format_version(row.deprecated) if row.deprecated else "2.4"
        ctx.report(
            self,
            node,
            f"`{qual}` is deprecated since torch {since}: use {row.replacement}",
            data={"name": qual, "replacement": row.replacement},
        )
