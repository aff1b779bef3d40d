"""divide-by-std-no-eps: keep the divisor away from zero."""

from __future__ import annotations

import ast

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

EPSILON = "1e-8"
"""The epsilon of the reference PPO and normalisation code: below any real spread of float32
data, far above the smallest normal float32."""


class DivideByStdNoEpsFix(Codemod):
    """Adds `+ 1e-8` to the flagged divisor (`x / x.std()` -> `x / (x.std() + 1e-8)`,
    `x /= norm` -> `x /= norm + 1e-8`): a zero spread then gives zeros, not NaN, and any
    real spread is left unchanged to float32 precision."""

    rule = "divide-by-std-no-eps"
    kind = FixKind.CORRECTNESS
    summary = "add an epsilon to the std/norm divisor"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        divisor = target.data.get("divisor")
        wanted = _normalised(divisor) if isinstance(divisor, str) else None
        if wanted is None:
            return ctx.decline("the rule did not name the divisor")
        span = (target.line, target.end_line)
        divisions: list[cst.BinaryOperation | cst.AugAssign] = [
            *ctx.find(cst.BinaryOperation, within=span),
            *ctx.find(cst.AugAssign, within=span),
        ]
        found = [
            node
            for node in divisions
            if isinstance(node.operator, cst.Divide | cst.DivideAssign)
            and _normalised(ctx.code(_right(node))) == wanted
        ]
        if len(found) != 1:
            return ctx.decline(f"no single division by `{divisor}` at the finding")
        right = _right(found[0])
        guarded = cst.parse_expression(f"{ctx.code(right)} + {EPSILON}")
        if isinstance(found[0], cst.BinaryOperation):
            guarded = guarded.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        ctx.substitute(right, guarded)
        return True


def _normalised(code: str) -> str | None:
    """The expression as `ast.unparse` writes it: the rule names the divisor that way
    (`torch.norm(y_mag, p='fro')` for denoiser's `p="fro"`), whatever the source's quotes,
    spacing or line breaks."""
    try:
        return ast.unparse(ast.parse(code.strip(), mode="eval"))
    except SyntaxError:
        return None


def _right(node: cst.BinaryOperation | cst.AugAssign) -> cst.BaseExpression:
    return node.right if isinstance(node, cst.BinaryOperation) else node.value
