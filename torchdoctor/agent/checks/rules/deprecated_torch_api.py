"""deprecated-torch-api: a call of a torch API deprecated in the targeted release."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.data.torch_api import (
    ApiChange,
    callee_names,
    format_version,
    rows_by_name,
    target_torch,
)
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.models import Severity

_LEADING_NAME = re.compile(r"[A-Za-z_][\w.]*")
_FIRST_ARGUMENTS = re.compile(r"\(([^)]*)\)")
_QUOTED = re.compile(r"'([^']*)'")


class DeprecatedTorchApi(Rule):
    """Detects uses of deprecated PyTorch APIs listed in `checks/data/torch_api.json`:
    `torch.cuda.amp.autocast`/`custom_fwd`/`custom_bwd`, `torch.cpu.amp.autocast`,
    `torch.backends.cuda.sdp_kernel`, `functorch.*` transforms, `torch.cholesky`, `qr`, `lu`,
    `norm`, `range`, `ger`, `chain_matmul`, `nn.utils.weight_norm`, `assert_allclose`, ...
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
    """`node` is on one branch of an `if` (or a conditional expression, or a `try` and its
    handlers) whose other branch calls the API that replaces it: a compatibility check that
    runs the deprecated call only on releases without the replacement."""
    text = row.replacement or ""
    found = _LEADING_NAME.match(text)
    replacement = found.group(0).rstrip(".") if found else ""
    if not replacement.startswith("torch."):
        return False
    # the literals the replacement is called with (`torch.amp.autocast('cpu', ...)`): the other
    # branch's `torch.amp.autocast('cuda')` is a device branch, not the same job
    arguments = _FIRST_ARGUMENTS.match(text[len(replacement) :])
    literals = set(_QUOTED.findall(arguments.group(1))) if arguments else set()
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            return False
        others: list[ast.AST] = []
        if isinstance(anc, ast.If):
            others = list(
                anc.orelse if child in anc.body else anc.body if child in anc.orelse else []
            )
        elif isinstance(anc, ast.IfExp) and child is not anc.test:
            others = [anc.orelse if child is anc.body else anc.body]
        elif isinstance(anc, ast.Try):
            if child in anc.body:
                others = [stmt for handler in anc.handlers for stmt in handler.body]
            elif child in anc.handlers:
                others = list(anc.body)
        if any(
            isinstance(n, ast.Call)
            and ctx.flow.qualname_of(n) == replacement
            and literals <= _string_arguments(n)
            for other in others
            for n in walk_tree(other)
        ):
            return True
        child = anc
    return False


def _string_arguments(call: ast.Call) -> set[str]:
    return {
        a.value
        for a in [*call.args, *(k.value for k in call.keywords)]
        if isinstance(a, ast.Constant) and isinstance(a.value, str)
    }
