"""manual-attention: one fused scaled_dot_product_attention call for hand-written attention.

Recognises the shapes people write (collected from public GPT, Transformer and ViT code):

    scores = (q @ k.transpose(-2, -1)) * scale      # or / sqrt(d), torch.matmul, k.mT,
                                                    #    k.transpose(2, 3), (q / t) @ k^T
    scores = scores.masked_fill(tril[:T, :T] == 0, float("-inf"))   # causal, optional:
    scores.masked_fill_(triu_mask.bool()[:T, :T], -torch.inf)       #  also in place, triu,
    if mask is not None: scores = scores + mask                     #  or an additive mask
    att = F.softmax(scores, dim=-1)                 # torch.softmax, .softmax(-1), nn.Softmax
                                                    #   module, softmax(scores.float()).type_as
    att = self.attn_dropout(att)                    # optional nn.Dropout module
    y = att @ v                                     # or torch.matmul(att, v), inside an expr

and writes `y = F.scaled_dot_product_attention(q, k, v, ...)` with the same scale, mask and
dropout. Same math, different summation order: a precision-class fix. When the shape is
attention but cannot be replaced safely, `explain` says why (weights returned, a padding mask
filled with a finite value, a KV-cache offset...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    method_call,
    scope_of,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_NEG_INF = frozenset(
    {'float("-inf")', '-float("inf")', "-torch.inf", "-math.inf", "float(-math.inf)"}
)
_LARGE_NEGATIVE = 1e4
"""A finite fill at least this negative is -inf after softmax in every float format."""


class AttentionRefused(Exception):
    """The statements are attention, but no fused call reproduces them: the reason."""


@dataclass
class _Mask:
    attn_mask: str | None = None
    causal: bool = False
    statements: list[cst.BaseStatement] = field(default_factory=list)
    bindings: list[cst.BaseStatement] = field(default_factory=list)
    """Local names the mask was read through (`mask_bool = ...`), dropped when unused."""


@dataclass
class _Attention:
    statements: list[cst.BaseStatement]
    """Removed by the fix (the product's own statement is rewritten instead)."""
    output_statement: cst.BaseStatement
    product: cst.BaseExpression
    query: str
    key: str
    value: str
    scale: str
    mask: _Mask
    dropout: str | None
    softmax: cst.Call


class ManualAttentionFix(Codemod):
    """softmax(q @ k^T * scale [+ mask]) [dropout] @ v -> F.scaled_dot_product_attention."""

    rule = "manual-attention"
    kind = FixKind.PRECISION
    summary = "F.scaled_dot_product_attention instead of hand-written softmax attention"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        try:
            found = _find(ctx, target)
        except AttentionRefused:
            return False
        if found is None:
            return False
        functional = ctx.alias_of("torch.nn.functional")
        if functional is None:
            functional = f"{ctx.require_module('torch')}.nn.functional"
        keywords = []
        if found.mask.attn_mask is not None:
            keywords.append(f"attn_mask={found.mask.attn_mask}")
        if found.mask.causal:
            keywords.append("is_causal=True")
        keywords.append(f"scale={found.scale}")
        if found.dropout is not None:
            keywords.append(f"dropout_p={found.dropout}")
        call = cst.parse_expression(
            f"{functional}.scaled_dot_product_attention("
            f"{found.query}, {found.key}, {found.value}, {', '.join(keywords)})"
        )
        product = found.product
        comments = [c for stmt in sorted(found.statements, key=ctx.line) for c in _comments(stmt)]

        def rewrite(node: cst.CSTNode) -> cst.CSTNode:
            swapped = _swap(node, product, call)
            if comments and isinstance(swapped, cst.SimpleStatementLine):
                kept = [cst.EmptyLine(comment=cst.Comment(c)) for c in comments]
                swapped = swapped.with_changes(leading_lines=[*swapped.leading_lines, *kept])
            return swapped

        ctx.replace(found.output_statement, rewrite)
        for stmt in found.statements:
            ctx.remove(stmt)
        _drop_softmax_module(ctx, found.softmax)
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        """Why hand-written attention at `target` gets no automatic fix (None: it does, or
        the code there is not attention this codemod understands)."""
        try:
            ctx = SourceContext(source)
            _find(ctx, target)
        except AttentionRefused as refused:
            return str(refused)
        except (cst.ParserSyntaxError, RecursionError):
            return None
        return None


def _drop_softmax_module(ctx: SourceContext, softmax: cst.Call) -> None:
    """`self.attend = nn.Softmax(dim=-1)` is dead once the fused call replaces its only use
    (as in lucidrains' ViTs); it holds no parameters, so the state_dict is unchanged. Kept
    when anything else in the file reads an attribute of that name."""
    name = dotted_name(softmax.func)
    if name is None or not name.startswith("self."):
        return
    attribute = name.removeprefix("self.")
    mentions = ctx.find(cst.Attribute, where=lambda a: a.attr.value == attribute)
    builds = ctx.find(
        cst.Assign,
        where=lambda a: len(a.targets) == 1 and dotted_name(a.targets[0].target) == name,
    )
    if len(builds) != 1 or len(mentions) != 2:  # the build's target and the softmax call
        return
    line = ctx.parent(builds[0])
    block = ctx.parent(line) if line is not None else None
    if (
        isinstance(line, cst.SimpleStatementLine)
        and len(line.body) == 1
        and isinstance(block, cst.IndentedBlock)
        and len(block.body) > 1
    ):
        ctx.remove(line)


def _comments(stmt: cst.BaseStatement) -> list[str]:
    """The comments a removed statement carries, kept above the fused call."""
    return [node.value for node in descendants(stmt) if isinstance(node, cst.Comment)]


def _swap(node: cst.CSTNode, old: cst.BaseExpression, new: cst.BaseExpression) -> cst.CSTNode:
    """`node` with the (first) expression equal to `old` replaced by `new`; a call needs no
    parentheses, so the product's own are dropped."""
    done = False

    class _Swap(cst.CSTTransformer):
        def on_leave(  # type: ignore[override]
            self, original_node: cst.CSTNode, updated_node: cst.CSTNode
        ) -> cst.CSTNode:
            nonlocal done
            if not done and original_node.deep_equals(old):
                done = True
                return new
            return updated_node

    swapped = node.visit(_Swap())
    assert isinstance(swapped, cst.CSTNode)
    return swapped


# --- matching ---------------------------------------------------------------------------


def _find(ctx: SourceContext, target: FixTarget) -> _Attention | None:
    """The attention whose softmax is on the target's lines; AttentionRefused when it is
    attention that cannot be replaced."""
    for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
        scores = _softmax_input(ctx, call)
        if scores is None:
            continue
        stmt = _statement(ctx, call)
        block = ctx.parent(stmt) if stmt is not None else None
        if stmt is None or not isinstance(block, cst.IndentedBlock):
            continue
        return _match(ctx, list(block.body), block.body.index(stmt), call, scores)
    return None


def _match(
    ctx: SourceContext,
    body: list[cst.BaseStatement],
    at: int,
    softmax: cst.Call,
    softmax_arg: cst.BaseExpression,
) -> _Attention | None:
    # what the softmax reads: `S`, `S / d`, `S * s`, `S.float()`
    scores_name, late_scale = _scaled_name(ctx, softmax_arg)
    if scores_name is None:
        return None
    head = _assigned(body[at])
    if head is None:
        return None
    weights, weights_expr = head
    dropout = None
    inner = _dropout_of(ctx, weights_expr)
    if inner is not None:
        dropout, weights_expr = inner
    if _unwrap_cast(weights_expr) is not softmax:
        raise AttentionRefused("the softmax's result goes through more than a cast or a dropout")
    # statements before the softmax, walking back to the product
    mask = _Mask()
    index = at - 1
    product: tuple[str, str, str, cst.BaseStatement | None] | None = None
    removed: list[cst.BaseStatement] = [body[at]]
    while index >= 0 and product is None:
        stmt = body[index]
        assigned = _assigned(stmt)
        if assigned is not None and assigned[0] == scores_name:
            product = _product(ctx, assigned[1], body[:index])
            if product is None:
                step = _mask_step(ctx, stmt, scores_name, body[:index])
                if step is None:
                    raise AttentionRefused(
                        f"`{scores_name}` is changed between the product and the softmax in a "
                        "way the fused kernel does not reproduce (softcapping, a bias...)"
                    )
                _merge(mask, step)
            else:
                removed.append(stmt)
        else:
            step = _mask_step(ctx, stmt, scores_name, body[:index])
            if step is None:
                if _reads(stmt, scores_name):
                    raise AttentionRefused(f"`{scores_name}` is used besides the softmax")
            else:
                _merge(mask, step)
        index -= 1
    if product is None:
        return None
    query, key, scale, key_binding = product
    if late_scale is not None:
        if mask.attn_mask is not None:
            raise AttentionRefused(
                "the scores are scaled after an additive mask was added: the fused kernel "
                "scales before masking"
            )
        scale = late_scale if scale == "1.0" else f"({scale}) * ({late_scale})"
    removed += mask.statements
    scope = scope_of(ctx, body[at])
    for binding in (key_binding, *mask.bindings):
        if binding is not None and not _read_elsewhere(
            ctx, _assigned_name(binding), scope, skip=[binding, *removed]
        ):
            removed.append(binding)
    # the weights, after the softmax (and an optional dropout statement)
    index = at + 1
    if dropout is None and index < len(body):
        after = _assigned(body[index])
        if after is not None and after[0] == weights:
            inner = _dropout_of(ctx, after[1])
            if inner is None or dotted_name(inner[1]) != weights:
                raise AttentionRefused(f"`{weights}` is changed after the softmax")
            dropout = inner[0]
            removed.append(body[index])
            index += 1
    output = _value_product(ctx, body[index:], weights)
    if output is None:
        return None
    out_stmt, out_expr, value = output
    between = body[at + 1 : body.index(out_stmt)]
    rebound = {n for stmt in between if (n := _assigned_name(stmt)) in (query, key)}
    if rebound:
        raise AttentionRefused(f"`{rebound.pop()}` is reassigned between the product and `@ v`")
    others = [stmt for stmt in removed if stmt is not out_stmt]
    if _read_elsewhere(ctx, weights, scope, skip=[*others, out_expr]):
        raise AttentionRefused(
            f"the attention weights `{weights}` are returned or reused: the fused kernel "
            "does not produce them"
        )
    return _Attention(
        statements=removed,
        output_statement=out_stmt,
        product=out_expr,
        query=query,
        key=key,
        value=value,
        scale=scale,
        mask=mask,
        dropout=dropout,
        softmax=softmax,
    )


def _reciprocal(factor: str) -> str:
    """`1.0 / d`, parenthesised unless `d` is an atom (a name, attribute, call, subscript)."""
    try:
        atom = isinstance(
            cst.parse_expression(factor),
            cst.Name | cst.Attribute | cst.Call | cst.Subscript | cst.Integer | cst.Float,
        )
    except cst.ParserSyntaxError:
        atom = False
    return f"1.0 / {factor}" if atom else f"1.0 / ({factor})"


def _merge(mask: _Mask, step: _Mask) -> None:
    if mask.causal or mask.attn_mask is not None:
        raise AttentionRefused("two masks are applied: merge them into one attn_mask by hand")
    mask.causal, mask.attn_mask = step.causal, step.attn_mask
    mask.statements += step.statements
    mask.bindings += step.bindings


def _assigned(stmt: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
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


def _assigned_name(stmt: cst.BaseStatement) -> str:
    assigned = _assigned(stmt)
    return assigned[0] if assigned is not None else ""


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _flat(node: cst.CSTNode) -> str:
    return _code(node).replace(" ", "").replace("'", '"')


def _strip(expr: cst.BaseExpression) -> cst.BaseExpression:
    return expr.with_changes(lpar=[], rpar=[]) if getattr(expr, "lpar", None) else expr


def _statement(ctx: SourceContext, node: cst.CSTNode) -> cst.BaseStatement | None:
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            return anc
    return None


def _reads(node: cst.CSTNode, name: str) -> bool:
    return any(
        isinstance(n, cst.Name | cst.Attribute) and dotted_name(n) == name
        for n in descendants(node)
    )


def _read_elsewhere(
    ctx: SourceContext,
    name: str,
    scope: cst.CSTNode,
    skip: Sequence[cst.CSTNode],
) -> bool:
    """Whether `name` is read under `scope` outside the subtrees `skip`."""
    skipped = {id(n) for s in skip for n in descendants(s)}
    for node in ctx.find(cst.Name, inside=scope, where=lambda n: n.value == name):
        if id(node) in skipped:
            continue
        parent = ctx.parent(node)
        if isinstance(parent, cst.AssignTarget) or (
            isinstance(parent, cst.Attribute) and parent.attr is node
        ):
            continue
        return True
    return False


# --- the pieces -----------------------------------------------------------------------


def _softmax_input(ctx: SourceContext, call: cst.Call) -> cst.BaseExpression | None:
    """`F.softmax(z, dim=-1)`, `torch.softmax(z, -1)`, `z.softmax(dim=-1)`, `self.sm(z)` with
    `self.sm = nn.Softmax(dim=-1)` -> z. Only softmax over the last dimension."""
    qual = ctx.qualname(call.func) or ""
    if qual in ("torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"):
        if not call.args or not _last_dim(call.args[1:]):
            return None
        return call.args[0].value
    func = call.func
    receiver = dotted_name(func.value) if isinstance(func, cst.Attribute) else None
    module_call = receiver == "self"  # `self.softmax(x)`: a module, handled below
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax" and not module_call:
        return func.value if not qual and _last_dim(call.args) else None
    name = dotted_name(func)
    if name is not None and name.startswith("self.") and len(call.args) == 1:
        built = _module_built(ctx, name)
        if built is not None and (ctx.qualname(built.func) or "").endswith("nn.Softmax"):
            return call.args[0].value if _last_dim(built.args) else None
    return None


def _last_dim(args: Sequence[cst.Arg]) -> bool:
    for arg in args:
        if arg.keyword is None or arg.keyword.value == "dim":
            return _flat(arg.value) == "-1"
    return False


def _module_built(ctx: SourceContext, attribute: str) -> cst.Call | None:
    """The call that built `self.<attribute>` in the class's methods."""
    for assign in ctx.find(cst.Assign):
        if (
            len(assign.targets) == 1
            and dotted_name(assign.targets[0].target) == attribute
            and isinstance(assign.value, cst.Call)
        ):
            return assign.value
    return None


def _unwrap_cast(expr: cst.BaseExpression) -> cst.BaseExpression:
    """`x.type_as(q)` / `x.to(q.dtype)` / `x.to(dtype=...)` -> x (SDPA returns q's dtype)."""
    for method in ("type_as", "to"):
        call = method_call(expr, method)
        if call is not None and isinstance(call.func, cst.Attribute):
            return call.func.value
    return expr


def _scaled_name(ctx: SourceContext, expr: cst.BaseExpression) -> tuple[str | None, str | None]:
    """`S` -> (S, None); `S / d` -> (S, '1.0 / (d)'); `S * s` -> (S, 's'); `S.float()` -> S."""
    cast = method_call(expr, "float")
    if cast is not None and isinstance(cast.func, cst.Attribute) and not cast.args:
        expr = cast.func.value
    expr = _strip(expr)
    if isinstance(expr, cst.BinaryOperation) and dotted_name(expr.left):
        factor = _code(_strip(expr.right))
        if isinstance(expr.operator, cst.Divide):
            return dotted_name(expr.left), _reciprocal(factor)
        if isinstance(expr.operator, cst.Multiply):
            return dotted_name(expr.left), factor
        return None, None
    return dotted_name(expr), None


def _dropout_of(
    ctx: SourceContext, expr: cst.BaseExpression
) -> tuple[str, cst.BaseExpression] | None:
    """`self.drop(x)` with `self.drop = nn.Dropout(...)` -> ('self.drop.p if ...', x)."""
    if not isinstance(expr, cst.Call) or len(expr.args) != 1:
        return None
    name = dotted_name(expr.func)
    if name is None:
        return None
    if not name.startswith("self."):
        if "drop" in name.lower():
            raise AttentionRefused(
                f"dropout `{name}` is a function argument: its rate is unknown here"
            )
        return None
    built = _module_built(ctx, name)
    if built is None or not (ctx.qualname(built.func) or "").endswith("nn.Dropout"):
        return None
    return f"{name}.p if self.training else 0.0", expr.args[0].value


def _transposed_key(
    expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> tuple[str, cst.BaseStatement | None] | None:
    """`k.transpose(-2, -1)`, `(-1, -2)`, `(2, 3)` (4-D heads), `k.mT`, or a name bound to one
    of those just before -> (k, the binding statement to drop or None)."""
    expr = _strip(expr)
    if isinstance(expr, cst.Attribute) and expr.attr.value == "mT":
        return _code(expr.value), None
    call = method_call(expr, "transpose")
    if call is not None and isinstance(call.func, cst.Attribute) and len(call.args) == 2:
        dims = {_flat(a.value) for a in call.args}
        if dims in ({"-2", "-1"}, {"2", "3"}):
            return _code(call.func.value), None
        return None
    name = dotted_name(expr)
    if name is None:
        return None
    for stmt in reversed(before):
        assigned = _assigned(stmt)
        if assigned is not None and assigned[0] == name:
            inner = _transposed_key(assigned[1], [])
            return (inner[0], stmt) if inner is not None else None
    return None


def _product(
    ctx: SourceContext, expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> tuple[str, str, str, cst.BaseStatement | None] | None:
    """`q @ k^T`, `torch.matmul(q, k^T)`, each optionally `* s` or `/ d`, or with the query
    pre-scaled (`(q / t) @ k^T`) -> (query, key, scale, the statement binding k^T or None)."""
    expr = _strip(expr)
    scale = "1.0"
    if isinstance(expr, cst.BinaryOperation) and isinstance(
        expr.operator, cst.Multiply | cst.Divide
    ):
        factor = _code(_strip(expr.right))
        scale = factor if isinstance(expr.operator, cst.Multiply) else _reciprocal(factor)
        expr = _strip(expr.left)
    operands = _matmul_operands(ctx, expr)
    if operands is None:
        return None
    left, right = operands
    key = _transposed_key(right, before)
    if key is None:
        return None
    left = _strip(left)
    if isinstance(left, cst.BinaryOperation) and isinstance(
        left.operator, cst.Multiply | cst.Divide
    ):
        if scale != "1.0":
            return None
        factor = _code(_strip(left.right))
        scale = factor if isinstance(left.operator, cst.Multiply) else _reciprocal(factor)
        left = _strip(left.left)
    return _code(left), key[0], scale, key[1]


def _matmul_operands(
    ctx: SourceContext, expr: cst.BaseExpression
) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.MatrixMultiply):
        return expr.left, expr.right
    if (
        isinstance(expr, cst.Call)
        and (ctx.qualname(expr.func) or "") == "torch.matmul"
        and len(expr.args) == 2
    ):
        return expr.args[0].value, expr.args[1].value
    return None


def _mask_step(
    ctx: SourceContext,
    stmt: cst.BaseStatement,
    scores: str,
    before: Sequence[cst.BaseStatement],
) -> _Mask | None:
    """One masking statement on `scores` -> its mask; None when `stmt` is not one."""
    if isinstance(stmt, cst.If) and not stmt.orelse:
        guarded = _guarded_name(stmt.test)
        inner = stmt.body.body
        if guarded is None or len(inner) != 1 or not isinstance(inner[0], cst.BaseStatement):
            return None
        step = _mask_step(ctx, inner[0], scores, before)
        if step is None:
            return None
        if step.causal:
            raise AttentionRefused("a causal mask applied only on a condition")
        if step.attn_mask is not None and guarded in step.attn_mask and step.attn_mask != guarded:
            step.attn_mask = f"None if {guarded} is None else {step.attn_mask}"
        return _Mask(attn_mask=step.attn_mask, statements=[stmt])
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    small = stmt.body[0]
    if isinstance(small, cst.AugAssign) and dotted_name(small.target) == scores:
        if isinstance(small.operator, cst.AddAssign):
            return _Mask(attn_mask=_code(_strip(small.value)), statements=[stmt])
        return None
    value: cst.BaseExpression | None = None
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        if dotted_name(small.targets[0].target) != scores:
            return None
        value = small.value
    elif isinstance(small, cst.Expr):
        value = small.value
    if value is None:
        return None
    if (
        isinstance(value, cst.BinaryOperation)
        and isinstance(value.operator, cst.Add)
        and dotted_name(value.left) == scores
        and isinstance(small, cst.Assign)
    ):
        return _Mask(attn_mask=_code(_strip(value.right)), statements=[stmt])
    for method in ("masked_fill", "masked_fill_"):
        call = method_call(value, method)
        if call is None or not isinstance(call.func, cst.Attribute):
            continue
        if dotted_name(call.func.value) != scores or len(call.args) != 2:
            return None
        if method == "masked_fill" and not isinstance(small, cst.Assign):
            return None  # the out-of-place result is thrown away: no mask at all
        return _fill(ctx, call.args[0].value, call.args[1].value, stmt, before)
    return None


def _guarded_name(test: cst.BaseExpression) -> str | None:
    """`if mask is not None:` -> 'mask'."""
    if (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and _flat(test.comparisons[0].comparator) == "None"
    ):
        return dotted_name(test.left)
    return None


def _fill(
    ctx: SourceContext,
    condition: cst.BaseExpression,
    fill: cst.BaseExpression,
    stmt: cst.BaseStatement,
    before: Sequence[cst.BaseStatement],
) -> _Mask:
    infinite = _flat(fill) in _NEG_INF
    large = infinite or _large_negative(fill)
    if not large:
        raise AttentionRefused(
            f"the mask is filled with `{_code(fill)}`, not a value softmax turns into zero"
        )
    resolved, binding = _resolve(condition, before)
    if _is_causal(ctx, resolved):
        return _Mask(causal=True, statements=[stmt], bindings=[binding] if binding else [])
    if not infinite:
        raise AttentionRefused(
            f"a padding mask filled with `{_code(fill)}` gives a fully masked row uniform "
            "weights where the fused kernel gives NaN: not the same result"
        )
    return _Mask(attn_mask=f"~({_code(_strip(condition))})", statements=[stmt])


def _large_negative(fill: cst.BaseExpression) -> bool:
    text = _flat(fill)
    if text.startswith("torch.finfo(") and text.endswith(").min"):
        return True
    try:
        return float(text) <= -_LARGE_NEGATIVE
    except ValueError:
        return False


def _resolve(
    expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> tuple[cst.BaseExpression, cst.BaseStatement | None]:
    """A local name bound just before (`mask_bool = self.mask.bool()[:n, :n]`) -> its value."""
    name = dotted_name(expr)
    if name is None or "." in name:
        return expr, None
    for stmt in reversed(before):
        assigned = _assigned(stmt)
        if assigned is not None and assigned[0] == name:
            return assigned[1], stmt
    return expr, None


def _is_causal(ctx: SourceContext, condition: cst.BaseExpression) -> bool:
    """`tril_buffer[..., :T, :T] == 0` or `triu_buffer(diagonal=1)[:T, :T]` (as bool)."""
    condition = _strip(condition)
    if isinstance(condition, cst.Comparison) and len(condition.comparisons) == 1:
        op = condition.comparisons[0].operator
        value = _flat(condition.comparisons[0].comparator)
        if isinstance(op, cst.Equal) and value == "0":
            return _triangle(ctx, condition.left) == "tril"
        if isinstance(op, cst.Equal) and value in ("1", "True"):
            return _triangle(ctx, condition.left) == "triu"
        return False
    return _triangle(ctx, condition) == "triu"


def _triangle(ctx: SourceContext, expr: cst.BaseExpression) -> str | None:
    """'tril' / 'triu' (strictly upper) when `expr` is a square, top-left slice of a buffer
    built by torch.tril / torch.triu(diagonal=1); None otherwise."""
    expr = _strip(expr)
    while True:
        call = method_call(expr, "bool")
        if call is not None and isinstance(call.func, cst.Attribute):
            expr = _strip(call.func.value)
            continue
        if isinstance(expr, cst.Subscript):
            if not _top_left_square(expr):
                raise AttentionRefused(
                    "the causal mask is sliced at an offset (a KV cache?): is_causal aligns "
                    "queries and keys top-left"
                )
            expr = _strip(expr.value)
            continue
        break
    name = dotted_name(expr)
    if name is None:
        return None
    built = _buffer_value(ctx, name)
    if built is None:
        return None
    text = _flat(built)
    if "tril(" not in text and "triu(" not in text:
        # `mask = torch.tril(...)` then `register_buffer("bias", mask.view(...))`
        for node in descendants(built):
            if isinstance(node, cst.Name) and (local := _buffer_value(ctx, node.value)):
                text += _flat(local)
    if "tril(" in text and "diagonal" not in text:
        return "tril"
    if "triu(" in text and "diagonal=1" in text:
        return "triu"
    return None


def _top_left_square(sub: cst.Subscript) -> bool:
    """`[:T, :T]`, `[:, :, :T, :T]`: full leading dims, then two `:X` slices of one X."""
    parts = [_flat(el.slice) for el in sub.slice if isinstance(el.slice, cst.Index | cst.Slice)]
    if len(parts) != len(sub.slice) or len(parts) < 2:
        return False
    *lead, rows, cols = parts
    return (
        all(p == ":" for p in lead)
        and rows == cols
        and rows.startswith(":")
        and (":" not in rows[1:])
    )


def _buffer_value(ctx: SourceContext, name: str) -> cst.BaseExpression | None:
    """What `self.X` (a registered buffer or attribute) or a module-level name was built from."""
    attribute = name.removeprefix("self.")
    for call in ctx.find(cst.Call):
        if method_call(call, "register_buffer") and len(call.args) >= 2:
            key = call.args[0].value
            if isinstance(key, cst.SimpleString) and key.evaluated_value == attribute:
                return call.args[1].value
    for assign in ctx.find(cst.Assign):
        if len(assign.targets) == 1 and dotted_name(assign.targets[0].target) == name:
            return assign.value
    return None


def _value_product(
    ctx: SourceContext, rest: Sequence[cst.BaseStatement], weights: str
) -> tuple[cst.BaseStatement, cst.BaseExpression, str] | None:
    """The first statement after the softmax holding `weights @ v` / `torch.matmul(weights,
    v)` -> (statement, that product, v)."""
    for stmt in rest:
        if isinstance(stmt, cst.BaseCompoundStatement):
            if _reads(stmt, weights):
                raise AttentionRefused(f"`{weights}` goes through a conditional before `@ v`")
            return None
        for node in descendants(stmt):
            if not isinstance(node, cst.BaseExpression):
                continue
            operands = _matmul_operands(ctx, node)
            if operands is not None and dotted_name(_strip(operands[0])) == weights:
                return stmt, node, _code(_strip(operands[1]))
        if _reads(stmt, weights):
            raise AttentionRefused(f"`{weights}` is used before `@ v`")
    return None
