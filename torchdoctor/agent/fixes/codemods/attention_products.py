"""The two products of hand-written attention in the forms people write them.

Scores: `q @ k^T`, `torch.matmul(q, k^T)`, `q.matmul(k^T)`, `torch.bmm(q, k^T)`,
`torch.baddbmm(empty, q, k^T, beta=0, alpha=s)`, `torch.einsum("bhid,bhjd->bhij", q, k)`,
`einops.einsum(q, k, "... i d, ... j d -> ... i j")`, with k^T any of `k.transpose(-2, -1)`,
`k.mT`, `torch.transpose(k, -2, -1)`, `k.permute(0, 1, 3, 2)`, `k.transpose(2, 3)` (4-D) or
`k.transpose(1, 2)` (bmm's 3-D, or q and k a reshape made 3-D), or a name bound to one of
those. Values: `w @ v` in the same
forms. Each is read by what it computes (which operand is contracted over which axis), not by
the names involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst

from torchdoctor.agent.checks import einsum_attention as eq
from torchdoctor.agent.fixes.codemods.base import SourceContext, dotted_name, method_call


class AttentionRefused(Exception):
    """The statements are attention, but no fused call reproduces them: the reason."""


@dataclass
class Scores:
    query: str
    key: str
    scale: str
    rank: int | None
    """The scores' number of dimensions when the product fixes it (bmm: 3), else None."""
    bindings: list[cst.BaseStatement] = field(default_factory=list)
    """Statements binding a name only the product read (`k_t = ...`, baddbmm's input)."""


def code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def flat(node: cst.CSTNode) -> str:
    return code(node).replace(" ", "").replace("'", '"')


def strip(expr: cst.BaseExpression) -> cst.BaseExpression:
    return expr.with_changes(lpar=[], rpar=[]) if getattr(expr, "lpar", None) else expr


def assigned(stmt: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
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


def reciprocal(factor: str) -> str:
    """`1.0 / d`, parenthesised unless `d` is an atom (a name, attribute, call, subscript)."""
    try:
        atom = isinstance(
            cst.parse_expression(factor),
            cst.Name | cst.Attribute | cst.Call | cst.Subscript | cst.Integer | cst.Float,
        )
    except cst.ParserSyntaxError:
        atom = False
    return f"1.0 / {factor}" if atom else f"1.0 / ({factor})"


def atom(text: str) -> str:
    """`text` ready for a method call after it: parenthesised unless it is a name, attribute,
    call or subscript."""
    try:
        plain = isinstance(
            cst.parse_expression(text), cst.Name | cst.Attribute | cst.Call | cst.Subscript
        )
    except cst.ParserSyntaxError:
        plain = False
    return text if plain else f"({text})"


def times(scale: str, factor: str) -> str:
    """Two scale factors as one expression ('1.0' is no factor)."""
    if scale == "1.0":
        return factor
    if factor == "1.0":
        return scale
    return f"{atom(scale)} * {atom(factor)}"


def scale_factor(expr: cst.BaseExpression) -> tuple[cst.BaseExpression, str] | None:
    """`x * s` / `x / d` / `x.mul(s)` / `x.div(d)` -> (x, the factor on the scores)."""
    expr = strip(expr)
    if isinstance(expr, cst.BinaryOperation) and isinstance(
        expr.operator, cst.Multiply | cst.Divide
    ):
        factor = code(strip(expr.right))
        if isinstance(expr.operator, cst.Divide):
            factor = reciprocal(factor)
        return strip(expr.left), factor
    for method, invert in (("mul", False), ("div", True)):
        call = method_call(expr, method)
        if call is not None and isinstance(call.func, cst.Attribute) and len(call.args) == 1:
            factor = code(strip(call.args[0].value))
            return strip(call.func.value), reciprocal(factor) if invert else factor
    return None


def _ints(args: Sequence[cst.Arg]) -> list[str]:
    return [flat(a.value) for a in args if a.keyword is None]


def transposed_key(
    expr: cst.BaseExpression, before: Sequence[cst.BaseStatement], rank: int | None
) -> tuple[str, int | None, cst.BaseStatement | None] | None:
    """k^T in one of its forms, or a name bound to one just before -> (k, the rank the form
    implies or `rank`, the binding statement to drop or None). `rank` is what the product
    already fixes (3 for bmm), which makes `transpose(1, 2)` a key transpose."""
    expr = strip(expr)
    if isinstance(expr, cst.Attribute) and expr.attr.value == "mT":
        return code(expr.value), rank, None
    call = expr if isinstance(expr, cst.Call) else None
    func = call.func if call is not None else None
    if call is not None and isinstance(func, cst.Attribute):
        args = _ints(call.args)
        receiver = code(func.value)
        if func.attr.value == "transpose" and dotted_name(func.value) == "torch" and args:
            receiver, args = code(call.args[0].value), args[1:]  # torch.transpose(k, a, b)
        if func.attr.value == "transpose" and len(args) == 2:
            dims = set(args)
            if dims == {"-2", "-1"}:
                return receiver, rank, None
            if dims == {"2", "3"} and rank in (None, 4):
                return receiver, 4, None
            if dims == {"1", "2"} and rank == 3:
                return receiver, 3, None
            return None
        if func.attr.value == "permute" and args == ["0", "1", "3", "2"]:
            return receiver, 4, None
        if func.attr.value == "permute" and args == ["0", "2", "1"] and rank == 3:
            return receiver, 3, None  # `torch.bmm(q, k.permute(0, 2, 1))`
        return None
    name = dotted_name(expr)
    if name is None:
        return None
    for stmt in reversed(before):
        bound = assigned(stmt)
        if bound is not None and bound[0] == name:
            inner = transposed_key(bound[1], [], rank)
            return (inner[0], inner[1], stmt) if inner is not None else None
    return None


def matmul_operands(
    ctx: SourceContext, expr: cst.BaseExpression
) -> tuple[cst.BaseExpression, cst.BaseExpression, int | None] | None:
    """`a @ b`, `torch.matmul(a, b)`, `a.matmul(b)`, `torch.bmm(a, b)` -> (a, b, rank)."""
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.MatrixMultiply):
        return expr.left, expr.right, None
    if not isinstance(expr, cst.Call):
        return None
    qual = ctx.qualname(expr.func) or ""
    if qual in ("torch.matmul", "torch.bmm") and len(expr.args) == 2:
        rank = 3 if qual == "torch.bmm" else None
        return expr.args[0].value, expr.args[1].value, rank
    call = method_call(expr, "matmul") or method_call(expr, "bmm")
    if call is not None and not qual and len(call.args) == 1:
        assert isinstance(call.func, cst.Attribute)
        rank = 3 if call.func.attr.value == "bmm" else None
        return call.func.value, call.args[0].value, rank
    return None


def einsum_operands(
    ctx: SourceContext, expr: cst.BaseExpression
) -> tuple[list[eq.Axes], eq.Axes, list[cst.BaseExpression]] | None:
    """torch.einsum(equation, a, b) / (equation, (a, b)) / einops.einsum(a, b, equation)
    -> (input axes, output axes, operands)."""
    if not isinstance(expr, cst.Call):
        return None
    qual = ctx.qualname(expr.func) or ""
    args = [a.value for a in expr.args if a.keyword is None]
    if qual == "torch.einsum" and args:
        equation, operands, words = args[0], args[1:], False
    elif qual == "einops.einsum" and args:
        equation, operands, words = args[-1], args[:-1], True
    else:
        return None
    if len(operands) == 1 and isinstance(operands[0], cst.Tuple | cst.List):
        operands = [e.value for e in operands[0].elements]
    if not isinstance(equation, cst.SimpleString) or not isinstance(equation.evaluated_value, str):
        return None
    parsed = eq.parse(equation.evaluated_value, words)
    if parsed is None or len(operands) != len(parsed[0]):
        return None
    return parsed[0], parsed[1], operands


def score_product(
    ctx: SourceContext, expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> Scores | None:
    """The scores' product, optionally `* s` / `/ d` around it or on the query."""
    scale = "1.0"
    scaled = scale_factor(expr)
    found = None
    if scaled is not None:
        found = _raw_scores(ctx, strip(scaled[0]), before)
        scale = scaled[1]
        stripped = strip(expr)
        if (
            found is None
            and isinstance(stripped, cst.BinaryOperation)
            and isinstance(stripped.operator, cst.Multiply)
        ):  # `self.scale * (q @ k^T)`: the factor on the left
            found = _raw_scores(ctx, strip(stripped.right), before)
            scale = code(strip(stripped.left))
    else:
        found = _raw_scores(ctx, strip(expr), before)
    if found is None:
        return None
    query = strip(cst.parse_expression(found.query))
    prescaled = scale_factor(query)
    if prescaled is not None:
        if scale != "1.0":
            return None
        query, scale = prescaled
    found.query = code(query)
    found.scale = times(scale, found.scale)
    return found


def _raw_scores(
    ctx: SourceContext, expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> Scores | None:
    matmul = matmul_operands(ctx, expr)
    if matmul is not None:
        left, right, rank = matmul
        key = transposed_key(right, before, rank)
        if key is None and rank is None and (known := _operands_rank(ctx, left, right, before)):
            # `q @ k.transpose(1, 2)` on tensors a reshape just made 3-D (heads in the batch)
            rank = known
            key = transposed_key(right, before, rank)
        if key is None and rank == 3:
            # bmm(q, K) with K laid out (b, dim, tokens), as channels-first blocks keep it:
            # the key is K transposed, whatever K is
            return Scores(code(strip(left)), f"{code(strip(right))}.transpose(1, 2)", "1.0", 3)
        if key is None:
            return None
        return Scores(code(strip(left)), key[0], "1.0", key[1], [key[2]] if key[2] else [])
    if isinstance(expr, cst.Call) and (ctx.qualname(expr.func) or "") == "torch.baddbmm":
        return _baddbmm(expr, before)
    einsum = einsum_operands(ctx, expr)
    if einsum is None:
        return None
    terms, output, operands = einsum
    channels_first = eq.channels_first_scores_rank(terms, output)
    if channels_first is not None:
        # `einsum("bct,bcs->bts", q * s, k * s)`: q^T k, each operand maybe scaled
        (query_code, q_scale), (key_code, k_scale) = map(_unscaled, operands[:2])
        return Scores(
            f"{atom(query_code)}.transpose(-2, -1)",
            f"{atom(key_code)}.transpose(-2, -1)",
            times(q_scale, k_scale),
            None if "*" in output else channels_first,
        )
    einsum_rank = eq.scores_rank(terms, output)
    if einsum_rank is None:
        if eq.contracts_dim(terms, output) and len(terms[0]) > len(terms[1]):
            raise AttentionRefused(
                "the keys and values have no heads axis (multi-query attention): expand them "
                "to the query's heads (k.unsqueeze(1)) or use enable_gqa before one fused call"
            )
        if eq.contracts_dim(terms, output):
            raise AttentionRefused(
                "the einsum's layout is not (..., tokens, dim) for both q and k: transpose "
                "q, k and v to (batch, heads, tokens, dim) before one fused call"
            )
        return None
    query, key_operand = operands
    return Scores(
        code(strip(query)),
        code(strip(key_operand)),
        "1.0",
        None if "*" in output else einsum_rank,
    )


_RANK_KEEPING = frozenset(
    {"contiguous", "transpose", "float", "half", "bfloat16", "to", "type_as", "clone", "detach"}
)


def _operands_rank(
    ctx: SourceContext,
    left: cst.BaseExpression,
    right: cst.BaseExpression,
    before: Sequence[cst.BaseStatement],
) -> int | None:
    """3 when `left @ right` reads two names each last bound to a 3-D tensor and `right` is the
    key flipped by `transpose(1, 2)` / `permute(0, 2, 1)`, the key transpose of 3-D tensors
    only (on 4-D ones the same call swaps heads and tokens)."""
    key = ambiguous_key(right)
    query = dotted_name(strip(left))
    if key is None or query is None or "." in key or "." in query:
        return None
    ranks = {bound_rank(ctx, name, before) for name in (query, key)}
    return 3 if ranks == {3} else None


def ambiguous_key(expr: cst.BaseExpression) -> str | None:
    """`k` of `k.transpose(1, 2)` / `k.permute(0, 2, 1)`: a key transpose for 3-D tensors only."""
    expr = strip(expr)
    call = method_call(expr, "transpose") or method_call(expr, "permute")
    if call is None or not isinstance(call.func, cst.Attribute):
        return None
    if _ints(call.args) in (["1", "2"], ["2", "1"], ["0", "2", "1"]):
        return dotted_name(call.func.value)
    return None


def bound_rank(
    ctx: SourceContext, name: str, before: Sequence[cst.BaseStatement], follow: bool = True
) -> int | None:
    """The number of axes the last binding of `name` in `before` gives it, when a reshape says
    (`q = x.view(b * h, n, d)`, `q = self._reshape(q)` with a method that returns one, which
    `follow` allows)."""
    for stmt in reversed(before):
        bound = assigned(stmt)
        if bound is not None and bound[0] == name:
            return _expression_rank(ctx, bound[1], stmt, follow)
    return None


def _expression_rank(
    ctx: SourceContext, expr: cst.BaseExpression, anchor: cst.CSTNode, follow: bool = True
) -> int | None:
    expr = strip(expr)
    while (
        isinstance(expr, cst.Call)
        and isinstance(expr.func, cst.Attribute)
        and expr.func.attr.value in _RANK_KEEPING
    ):
        expr = strip(expr.func.value)  # `.reshape(b, n, d).contiguous()`
    if not isinstance(expr, cst.Call) or not isinstance(expr.func, cst.Attribute):
        return None
    method = expr.func.attr.value
    args = list(expr.args)
    if any(a.keyword is not None or a.star for a in args):
        return None
    if method in ("view", "reshape", "permute"):
        if len(args) == 1 and isinstance(args[0].value, cst.Tuple | cst.List):
            elements = args[0].value.elements
            return len(elements) if all(type(e) is cst.Element for e in elements) else None
        return len(args) if len(args) > 1 else None
    if follow and dotted_name(expr.func.value) == "self":
        return _method_rank(ctx, method, anchor)
    return None


def _method_rank(ctx: SourceContext, method: str, anchor: cst.CSTNode) -> int | None:
    """The rank a method of the class around `anchor` returns: its body's last statement is
    `return <reshape>` (rtdl's `_reshape`, a `split_heads` helper)."""
    owner = next((a for a in ctx.ancestors(anchor) if isinstance(a, cst.ClassDef)), None)
    if owner is None:
        return None
    for stmt in owner.body.body:
        if not isinstance(stmt, cst.FunctionDef) or stmt.name.value != method:
            continue
        body = stmt.body.body if isinstance(stmt.body, cst.IndentedBlock) else []
        last = body[-1] if body else None
        if (
            isinstance(last, cst.SimpleStatementLine)
            and isinstance(last.body[0], cst.Return)
            and last.body[0].value is not None
        ):
            returned = last.body[0].value
            name = dotted_name(strip(returned))
            if name is not None and "." not in name:
                return bound_rank(ctx, name, list(body[:-1]), follow=False)
            return _expression_rank(ctx, returned, last, follow=False)
    return None


def _unscaled(expr: cst.BaseExpression) -> tuple[str, str]:
    """An operand and the factor it was multiplied by: `q * s` -> ('q', 's'), also under a
    view of the product, which becomes a reshape: the product was a fresh contiguous
    tensor, q may be a chunk no view can regroup (`(q * s).view(b, c, t)` ->
    ('q.reshape(b, c, t)', 's'))."""
    expr = strip(expr)
    scaled = scale_factor(expr)
    if scaled is not None:
        return code(scaled[0]), scaled[1]
    reshaped = method_call(expr, "view") or method_call(expr, "reshape")
    if reshaped is not None and isinstance(reshaped.func, cst.Attribute):
        inner = scale_factor(reshaped.func.value)
        if inner is not None:
            receiver = cst.parse_expression(atom(code(inner[0])))
            unscaled = reshaped.with_changes(
                func=reshaped.func.with_changes(value=receiver, attr=cst.Name("reshape"))
            )
            return code(unscaled), inner[1]
    return code(expr), "1.0"


def _baddbmm(call: cst.Call, before: Sequence[cst.BaseStatement]) -> Scores | None:
    """`torch.baddbmm(input, q, k^T, beta=0, alpha=s)`: with beta 0 the input is ignored."""
    positional = [a.value for a in call.args if a.keyword is None]
    named = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    if len(positional) != 3:
        return None
    key = transposed_key(positional[2], before, 3)
    if key is None:
        return None
    beta = flat(named["beta"]) if "beta" in named else "1"
    if beta not in ("0", "0.0"):
        raise AttentionRefused(
            f"torch.baddbmm adds `{code(positional[0])}` to the scores (beta={beta}): pass "
            "it as attn_mask by hand"
        )
    scale = code(strip(named["alpha"])) if "alpha" in named else "1.0"
    bindings = [key[2]] if key[2] else []
    name = dotted_name(positional[0])
    for stmt in reversed(before):
        bound = assigned(stmt)
        if name is not None and bound is not None and bound[0] == name:
            bindings.append(stmt)
            break
    return Scores(code(strip(positional[1])), key[0], scale, 3, bindings)


def flipped(expr: cst.BaseExpression, rank: int | None) -> str | None:
    """`w.permute(0, 2, 1)` / `w.transpose(1, 2)` (3-D), `w.transpose(-2, -1)`, `w.mT` -> 'w'."""
    expr = strip(expr)
    if isinstance(expr, cst.Attribute) and expr.attr.value == "mT":
        return dotted_name(expr.value)
    call = method_call(expr, "transpose") or method_call(expr, "permute")
    if call is None or not isinstance(call.func, cst.Attribute):
        return None
    args = _ints(call.args)
    last_two = args in (["-2", "-1"], ["-1", "-2"]) or (
        rank == 3 and args in (["1", "2"], ["2", "1"], ["0", "2", "1"])
    )
    return dotted_name(call.func.value) if last_two else None


def value_product(
    ctx: SourceContext, node: cst.BaseExpression
) -> tuple[cst.BaseExpression, cst.BaseExpression, int | None] | None:
    """`w @ v` in any of the score product's forms -> (left operand, right operand, rank);
    an einsum only in the (..., i, j) x (..., j, d) order."""
    operands = matmul_operands(ctx, node)
    if operands is not None:
        return strip(operands[0]), strip(operands[1]), operands[2]
    einsum = einsum_operands(ctx, node)
    if einsum is None:
        return None
    rank = eq.values_rank(einsum[0], einsum[1])
    if rank is None:
        return None
    weights, value = einsum[2][:2]
    return strip(weights), strip(value), None if "*" in einsum[1] else rank
