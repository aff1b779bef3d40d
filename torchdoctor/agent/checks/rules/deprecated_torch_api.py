"""deprecated-torch-api: a call of a torch API deprecated in the targeted release."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.compat_fallback import (
    on_fallback_branch,
    replacement_of,
    string_arguments,
)
from torchdoctor.agent.checks.data.torch_api import (
    ApiChange,
    callee_names,
    format_version,
    rows_by_name,
    target_torch,
)
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.models import Severity


class DeprecatedTorchApi(Rule):
    """Detects uses of deprecated PyTorch APIs listed in `checks/data/torch_api.json`:
    `torch.cuda.amp.autocast`/`custom_fwd`/`custom_bwd`, `torch.cpu.amp.autocast`,
    `torch.backends.cuda.sdp_kernel`, `functorch.*` transforms, `torch.cholesky`, `qr`, `lu`,
    `norm`, `range`, `ger`, `chain_matmul`, `nn.utils.weight_norm`, `assert_allclose`, the
    pre-0.4 names of in-place functions (`nn.utils.clip_grad_norm`, `nn.init.xavier_uniform`), ...
    as calls, `with` items or decorators, resolved through imports. A use is reported only
    when the targeted torch (`target_torch`, else the installed one) already deprecates it,
    and not on the fallback branch of a compatibility check whose other branch calls the
    replacement (`if TORCH_GE_1_8_0: torch.linalg.qr(...) else: torch.qr(...)`, the
    orthogonal random features of performer-pytorch and the code that copies them): the
    deprecated call runs only where the replacement is missing.

    Why it matters: deprecated APIs emit warnings, have different defaults than their
    replacements and are removed in a later release, which then breaks the code.

    Example:
        with torch.cuda.amp.autocast():
            out = model(x)

    Fix: use the replacement the message names, e.g. `torch.amp.autocast("cuda")`,
    `torch.linalg.cholesky`, `torch.func.vmap`, `torch.arange(start, end + 1)`.
    """

    id = "deprecated-torch-api"
    point = 1
    severity = Severity.LOW
    title = "Deprecated PyTorch API"
    items: ClassVar[tuple[str, ...]] = ("1.6",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch", "functorch")

    def finish(self, ctx: ModuleContext) -> None:
        names = callee_names("deprecated", ctx.imports.aliases)
        flow = ctx.flow
        for call in flow.calls_to(rows_by_name("deprecated")):
            self._check(ctx, call, flow.qualname_of(call))
        functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = [
            *flow.nodes(ast.FunctionDef),
            *flow.nodes(ast.AsyncFunctionDef),
        ]
        for fn in functions:
            for decorator in fn.decorator_list:
                if (
                    isinstance(decorator, ast.Name | ast.Attribute)
                    and identifier(decorator) in names
                ):
                    self._check(ctx, decorator, ctx.qualname(decorator))

    def _check(self, ctx: ModuleContext, node: ast.AST, qual: str | None) -> None:
        row = rows_by_name("deprecated").get(qual or "")
        if row is None or not _deprecated_for(ctx, row):
            return
        if _fallback_beside_the_replacement(ctx, node, row):
            return
        since = format_version(row.deprecated) if row.deprecated else "an earlier release"
        ctx.report(
            self,
            node,
            f"`{qual}` is deprecated (since torch {since}): use {row.replacement}",
            data={"name": qual, "replacement": row.replacement},
        )


def _deprecated_for(ctx: ModuleContext, row: ApiChange) -> bool:
    target = target_torch(ctx.config)
    return target is None or row.deprecated is None or target >= row.deprecated


def _fallback_beside_the_replacement(ctx: ModuleContext, node: ast.AST, row: ApiChange) -> bool:
    replacement = replacement_of(row)
    if replacement is None:
        return False
    name, literals = replacement
    return on_fallback_branch(
        node,
        ctx.parents.get,
        lambda call: ctx.flow.qualname_of(call) == name and literals <= string_arguments(call),
    )
