"""persistent-workers-off: keep DataLoader workers alive across epochs."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.codemods.common import is_dataloader, target_spans
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class PersistentWorkersOffFix(Codemod):
    """Adds `persistent_workers=True` to a DataLoader with `num_workers` > 0 (or
    `persistent_workers=<num_workers> > 0` when the count is an expression)."""

    rule = "persistent-workers-off"
    kind = FixKind.PERFORMANCE
    summary = "DataLoader(persistent_workers=True)"
    rtol = EXACT_RTOL
    per_epoch = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        loaders = [c for span in target_spans(target) for c in ctx.find(cst.Call, within=span)]
        for loader in loaders:
            if not is_dataloader(ctx, loader) or keyword(loader, "persistent_workers"):
                continue
            workers = keyword(loader, "num_workers")
            if workers is None:
                continue
            if isinstance(workers.value, cst.Integer):
                if int(workers.value.value) == 0:
                    continue
                value = "True"
            else:
                count = ctx.code(workers.value)
                if (
                    isinstance(
                        workers.value, cst.IfExp | cst.BooleanOperation | cst.Lambda | cst.NamedExpr
                    )
                    and not workers.value.lpar
                ):
                    # `0 if os.name == "nt" else 4 > 0` would compare the else branch alone
                    count = f"({count})"
                value = f"{count} > 0"
            ctx.set_call_keyword(loader, "persistent_workers", value)
        return True
