"""precedence-hidden-by-spacing: `n-1 * t`, written tight around the operator that binds
last and spaced around the one that binds first."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOOSE = {ast.Add: "+", ast.Sub: "-"}
_TIGHT = {ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@"}


class PrecedenceHiddenBySpacing(Rule):
    """Detects a sum or difference written with no space around `+`/`-` next to a product
    or quotient written with spaces around `*`, `/`, `//`, `%` or `@`, on one line and with
    no parentheses: `cdf.shape[-1]-1 * torch.ones_like(inds)` (read as `shape - (1 *
    ones)`), `a * n-1` (read as `(a * n) - 1`). The spacing groups the operands one way,
    Python's precedence the other.

    Why it matters: the expression computes something other than what its writer grouped,
    and nothing fails: nerf-pytorch's `sample_pdf` clamped its upper bin index with
    `cdf.shape[-1]-1 * torch.ones_like(inds)`, a bound one too high for every sample, until
    `581ea38` parenthesised it.

    Not reported: spacing that agrees with precedence (`i*2 + 1`, `x - 1 * y` spaced alike
    on both operators, `a-b*c` tight on both), parenthesised groups, operators split across
    lines, and number literals (`1e-3 * loss` has no operator inside its exponent).

    Example:
        above = torch.min(cdf.shape[-1]-1 * torch.ones_like(inds), inds)

    Fix: parenthesise what belongs together: `(cdf.shape[-1] - 1) * torch.ones_like(inds)`.
    """

    id = "precedence-hidden-by-spacing"
    point = 1
    severity = Severity.MEDIUM
    title = "Operator spacing contradicts precedence"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("+", "-"))

    def finish(self, ctx: ModuleContext) -> None:
        lines = [line.encode() for line in ctx.source.splitlines()]
        for node in ctx.nodes_by_type().get(ast.BinOp, []):
            if not isinstance(node, ast.BinOp) or type(node.op) not in _LOOSE:
                continue
            loose = _LOOSE[type(node.op)]
            for inner, side in ((node.right, "right"), (node.left, "left")):
                if not isinstance(inner, ast.BinOp) or type(inner.op) not in _TIGHT:
                    continue
                tight = _TIGHT[type(inner.op)]
                outer_gap = (
                    _gap(lines, node.left, inner.left)
                    if side == "right"
                    else _gap(lines, inner.right, node.right)
                )
                inner_gap = _gap(lines, inner.left, inner.right)
                if outer_gap != loose or inner_gap != f" {tight} ":
                    continue
                grouped = (
                    f"{_text(lines, node.left)}{loose}{_text(lines, inner.left)}"
                    if side == "right"
                    else f"{_text(lines, inner.right)}{loose}{_text(lines, node.right)}"
                )
                ctx.report(
                    self,
                    node,
                    f"`{_text(lines, node)}` is spaced as if `{grouped}` were computed first, "
                    f"but `{tight}` binds tighter than `{loose}`: parenthesise the intended "
                    f"group (`({grouped})`) or space the expression as Python reads it",
                    data={"operator": loose, "inner": tight},
                )
                break


def _gap(lines: list[bytes], before: ast.expr, after: ast.expr) -> str | None:
    """The source text between two operands on one line (the operator and its spacing);
    offsets count UTF-8 bytes."""
    end_line, end_col = before.end_lineno, before.end_col_offset
    if end_line is None or end_col is None or end_line != after.lineno:
        return None
    if end_line > len(lines):
        return None
    return lines[end_line - 1][end_col : after.col_offset].decode("utf-8", "replace")


def _text(lines: list[bytes], node: ast.expr) -> str:
    if node.lineno == node.end_lineno and node.end_col_offset is not None:
        return lines[node.lineno - 1][node.col_offset : node.end_col_offset].decode(
            "utf-8", "replace"
        )
    return ast.unparse(node)
