"""manual-attention: fused scaled_dot_product_attention instead of a hand-written causal softmax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    dotted_name,
    method_call,
    name_is_read,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.double_softmax import softmax_input
from torchdoctor.agent.fixes.models import FixKind, FixTarget


@dataclass
class _Attention:
    first: int
    last: int
    query: cst.BaseExpression
    key: cst.BaseExpression
    value: cst.BaseExpression
    scale: str
    dropout: str | None
    output: str
    scores: str


class ManualAttentionFix(Codemod):
    """Replaces the textbook causal attention

        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)        # optional
        y = att @ v

    by `y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=..., dropout_p=...)`
    (flash / memory-efficient kernels; no T x T matrix in memory). Applied only when the mask
    comes from `torch.tril` (causal), the scale is passed through unchanged, and the attention
    matrix is not used elsewhere. Same math, different summation order: a precision-class fix.
    """

    rule = "manual-attention"
    kind = FixKind.PRECISION
    summary = "F.scaled_dot_product_attention(is_causal=True) instead of masked softmax attention"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if "tril" not in ctx.source:
            return False
        for block in ctx.find(cst.IndentedBlock):
            if not (ctx.line(block) <= target.end_line and ctx.end_line(block) >= target.line):
                continue
            found = _match(ctx, block.body)
            if found is None:
                continue
            stmts = block.body
            if name_is_read(
                ctx, found.scores, scope_of(ctx, block), skip=stmts[found.first : found.last + 1]
            ):
                return False
            functional = ctx.alias_of("torch.nn.functional")
            if functional is None:
                functional = f"{ctx.require_module('torch')}.nn.functional"
            args = [ctx.module.code_for_node(e) for e in (found.query, found.key, found.value)]
            extra = f", dropout_p={found.dropout}" if found.dropout else ""
            call = (
                f"{found.output} = {functional}.scaled_dot_product_attention("
                f"{', '.join(args)}, is_causal=True, scale={found.scale}{extra})\n"
            )
            replacement = cst.parse_statement(call)
            head = stmts[found.first]
            if not isinstance(head, cst.SimpleStatementLine):
                return False
            ctx.substitute(head, replacement.with_changes(leading_lines=head.leading_lines))
            for stmt in stmts[found.first + 1 : found.last + 1]:
                ctx.remove(stmt)
            return True
        return False


def _assign(stmt: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
    if (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Assign)
        and len(stmt.body[0].targets) == 1
    ):
        name = dotted_name(stmt.body[0].targets[0].target)
        if name is not None:
            return name, stmt.body[0].value
    return None


def _scores(expr: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression, str] | None:
    """`(q @ k.transpose(-2, -1)) * s` or `... / d` -> (q, k, scale source)."""
    if not isinstance(expr, cst.BinaryOperation):
        return None
    product, factor = expr.left, expr.right
    if not isinstance(product, cst.BinaryOperation) or not isinstance(
        product.operator, cst.MatrixMultiply
    ):
        return None
    transpose = method_call(product.right, "transpose")
    if transpose is None or not isinstance(transpose.func, cst.Attribute):
        return None
    dims = [cst.Module([]).code_for_node(a.value).replace(" ", "") for a in transpose.args]
    if dims not in (["-2", "-1"], ["-1", "-2"]):
        return None
    factor_code = cst.Module([]).code_for_node(factor.with_changes(lpar=[], rpar=[]))
    if isinstance(expr.operator, cst.Multiply):
        scale = factor_code
    elif isinstance(expr.operator, cst.Divide):
        scale = f"1.0 / ({factor_code})"
    else:
        return None
    return product.left, transpose.func.value, scale


def _match(ctx: SourceContext, stmts: Sequence[cst.BaseStatement]) -> _Attention | None:
    for first in range(len(stmts)):
        head = _assign(stmts[first])
        if head is None:
            continue
        scores_name, scores_expr = head
        parts = _scores(scores_expr)
        if parts is None:
            continue
        index = first + 1
        step = _assign(stmts[index]) if index < len(stmts) else None
        if step is None or step[0] != scores_name or not _is_causal_fill(step[1], scores_name):
            continue
        index += 1
        step = _assign(stmts[index]) if index < len(stmts) else None
        if step is None or step[0] != scores_name:
            continue
        inner = softmax_input(ctx, step[1])
        if inner is None or dotted_name(inner) != scores_name:
            continue
        index += 1
        dropout = None
        step = _assign(stmts[index]) if index < len(stmts) else None
        if step and step[0] == scores_name and isinstance(step[1], cst.Call):
            module = dotted_name(step[1].func)
            if module is None or len(step[1].args) != 1:
                continue
            dropout = (
                f"{module}.p if self.training else 0.0" if module.startswith("self.") else None
            )
            if dropout is None:
                continue
            index += 1
            step = _assign(stmts[index]) if index < len(stmts) else None
        if step is None:
            continue
        out = step[1]
        if not (
            isinstance(out, cst.BinaryOperation)
            and isinstance(out.operator, cst.MatrixMultiply)
            and dotted_name(out.left) == scores_name
        ):
            continue
        query, key, scale = parts
        return _Attention(first, index, query, key, out.right, scale, dropout, step[0], scores_name)
    return None


def _is_causal_fill(expr: cst.BaseExpression, scores: str) -> bool:
    """`att.masked_fill(<mask> == 0, float("-inf"))` (or `-inf` spelled as a large negative)."""
    call = method_call(expr, "masked_fill")
    if call is None or not isinstance(call.func, cst.Attribute) or len(call.args) != 2:
        return False
    if dotted_name(call.func.value) != scores:
        return False
    condition = call.args[0].value
    fill = cst.Module([]).code_for_node(call.args[1].value).replace(" ", "").replace("'", '"')
    return (
        isinstance(condition, cst.Comparison)
        and len(condition.comparisons) == 1
        and isinstance(condition.comparisons[0].operator, cst.Equal)
        and cst.Module([]).code_for_node(condition.comparisons[0].comparator).strip() == "0"
        and fill in ('float("-inf")', '-float("inf")', "-torch.inf", "-math.inf")
    )
