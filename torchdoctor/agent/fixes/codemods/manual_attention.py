"""manual-attention: one fused scaled_dot_product_attention call for hand-written attention.

Recognises the shapes people write (collected from public GPT, Transformer, ViT and diffusion
code) by what they compute, the products read by attention_products:

    scores = (q @ k.transpose(-2, -1)) * scale      # or / sqrt(d), torch.matmul, torch.bmm,
                                                    #  baddbmm(beta=0), einsum, k.mT, permute,
                                                    #  k.transpose(1, 2) on reshaped 3-D q, k
    scores = scores / math.sqrt(d)                  # the scale in its own statement, optional
    scores = scores.masked_fill(tril[:T, :T] == 0, float("-inf"))   # causal, optional:
    scores.masked_fill_(triu_mask.bool()[:T, :T], -torch.inf)       #  also in place, triu,
    if mask is not None: scores = scores + mask                     #  an additive mask or
    scores = scores - 1e6 * (1 - pad)                               #  bias, a -inf triu buffer
    att = F.softmax(scores, dim=-1)                 # torch.softmax, .softmax(-1), nn.Softmax
                                                    #   module (dim 2 after bmm), .float().type_as
    att = self.attn_dropout(att)                    # optional nn.Dropout or F.dropout, also
                                                    #  bound to a new name, or under `if
                                                    #  self.drop is not None:`
    y = att @ v                                     # any product form, inside an expression,
                                                    #   or torch.matmul(self.dropout(att), v)

and writes `y = F.scaled_dot_product_attention(q, k, v, ...)` with the same scale, mask and
dropout. Same math, different summation order: a precision-class fix. When the shape is
attention but cannot be replaced safely, `explain` says why (weights returned, a padding mask
filled with a finite value, a KV-cache offset, a tensor scale, an einsum in another layout...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import libcst as cst

from torchdoctor.agent.checks import einsum_attention as eq
from torchdoctor.agent.fixes.codemods.attention_products import (
    AttentionRefused,
    Scores,
    ambiguous_key,
    assigned,
    atom,
    code,
    einsum_operands,
    flat,
    flipped,
    matmul_operands,
    reciprocal,
    scale_factor,
    score_product,
    strip,
    times,
    value_product,
)
from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    first_read,
    method_call,
    name_is_read,
    not_parsed,
    scope_of,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_INF = ("inf", "infinity")
_INF_CONSTANTS = ("torch.inf", "math.inf", "np.inf", "numpy.inf", "np.infty", "numpy.infty")
_NEG_INF = frozenset(
    {
        *(f'float("-{word}")' for word in _INF),
        *(f'-float("{sign}{word}")' for word in _INF for sign in ("", "+")),
        *(f"-{constant}" for constant in _INF_CONSTANTS),
        *(f"float(-{constant})" for constant in _INF_CONSTANTS),
        "np.ninf",
        "numpy.ninf",
    }
)
"""Negative infinity as people spell it, lower-cased (`-float('Inf')`, `float("-infinity")`,
`-np.Inf`, `np.NINF`): compare `_neg_inf(text)`, never the text as written."""

_SCORES: ContextVar[str | None] = ContextVar("_SCORES", default=None)
"""The name the scores go by where a mask step is read: `torch.ones_like(scores).triu(1)`
is a triangle over the scores' own (queries, keys) shape."""

_OWNER: ContextVar[cst.ClassDef | None] = ContextVar("_OWNER", default=None)
"""The class whose method holds the attention being matched: its `self.X` are looked up
there (and in its bases in the file), not in whichever class of the file assigns `self.X`
first."""


def _neg_inf(text: str) -> bool:
    """Whether `text` (a `flat` expression) is negative infinity in any of its spellings."""
    return text.lower() in _NEG_INF


def _mentions_neg_inf(text: str) -> bool:
    lowered = text.lower()
    return any(neg in lowered for neg in _NEG_INF)


_LARGE_NEGATIVE = 1e4
"""A finite fill at least this negative is -inf after softmax in every float format."""


@dataclass
class _Mask:
    attn_mask: str | None = None
    causal: bool = False
    causal_flag: str | None = None
    """A bool argument the causal mask is applied under (`if causal_mask:`): is_causal=it."""
    additive: bool = False
    """Added to the scores (a scale applied after it would scale the mask too)."""
    statements: list[cst.BaseStatement] = field(default_factory=list)
    bindings: list[cst.BaseStatement] = field(default_factory=list)
    """Local names the mask was read through (`mask_bool = ...`), dropped when unused."""
    like: str | None = None
    """The scores' name when an additive mask reads only their dtype or device
    (`mask.type_as(x) * x.new_tensor(-1e4)`): the query's, in the fused call."""


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
    transposed: str | None = None
    """How the fused call's output is transposed back (`v @ w^T` gives (b, dim, tokens))."""
    reorder: str = ""
    """`.transpose(1, 2)` / `.permute(...)` for weighted values written in another axis order
    (`einsum("bhij,bhjd->bihd", w, v)`)."""
    rank: int | None = None
    """The scores' rank when the product fixes it (3 for torch.bmm and 3-axis einsums)."""
    retyped: list[tuple[cst.BaseStatement, str]] = field(default_factory=list)
    """Statements between the product and the softmax that read only the scores' dtype or
    device (`wdtype = weight.dtype`), with the scores' name: kept, reading the query's."""
    query_factor: str | None = None
    """A learned temperature multiplied into the query (`q * self.temperature`, scale 1.0)."""


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
            keywords.append(f"is_causal={found.mask.causal_flag or 'True'}")
        keywords.append(f"scale={found.scale}")
        if found.dropout is not None:
            keywords.append(f"dropout_p={found.dropout}")
        query = found.query
        if found.query_factor is not None:
            query = f"{atom(query)} * {found.query_factor}"
        operands, lift = [query, found.key, found.value], ""
        if found.rank == 3 and found.mask.attn_mask is None:
            # the fused kernels take (batch, heads, tokens, dim) with the dim contiguous only:
            # on 3-D tensors (heads folded into the batch) or channels-first ones (a VAE or
            # DDPM block, diffusion QKV attention) the call would run the unfused math path.
            # A copy of q, k and v is small beside the tokens x tokens scores it saves
            operands = [f"{atom(x)}.unsqueeze(1).contiguous()" for x in operands]
            lift = ".squeeze(1)"
        call = cst.parse_expression(
            f"{functional}.scaled_dot_product_attention("
            f"{', '.join(operands)}, {', '.join(keywords)})"
            + lift
            + (f".transpose({found.transposed})" if found.transposed else "")
            + found.reorder
        )
        product = found.product
        removed = sorted(found.statements, key=ctx.line)
        comments = [c for stmt in removed for c in _comments(stmt)]
        gap = _blank_above(ctx, removed, found.output_statement)

        def rewrite(node: cst.CSTNode) -> cst.CSTNode:
            swapped = _swap(node, product, call)
            if not isinstance(swapped, cst.SimpleStatementLine):
                return swapped
            own = list(swapped.leading_lines)
            kept = [cst.EmptyLine(comment=cst.Comment(c)) for c in comments]
            blank = [] if own and own[0].comment is None else gap  # it has a blank line
            # the removed lines' comments came first in the source: they stay above the output
            # statement's own comments (its blank lines stay on top)
            opening = next((i for i, line in enumerate(own) if line.comment is not None), len(own))
            leading = [*blank, *own[:opening], *kept, *own[opening:]]
            return swapped.with_changes(leading_lines=leading)

        ctx.replace(found.output_statement, rewrite)
        for stmt in found.statements:
            ctx.remove(stmt)
        for stmt, scores in found.retyped:
            skip = [stmt, *found.statements]
            if name_is_read(ctx, _assigned_name(stmt), scope_of(ctx, stmt), skip):
                ctx.replace(stmt, functools.partial(_read_on_query, scores, found.query))
            else:
                ctx.remove(stmt)  # only the removed cast read it
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
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
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


def _blank_above(
    ctx: SourceContext, removed: list[cst.BaseStatement], output: cst.BaseStatement
) -> list[cst.EmptyLine]:
    """The blank line that set the removed statements apart from the code above them
    (makemore's attention: `v = ...`, a blank line, then the scores): the fused call keeps it
    when it takes their place, the statements and it being one run of lines in one block."""
    block = ctx.parent(output)
    body = list(getattr(block, "body", ()))
    if not removed or output not in body or not isinstance(removed[0], cst.SimpleStatementLine):
        return []
    at = body.index(output)
    if body[at - len(removed) : at] != removed:
        return []
    return [line for line in removed[0].leading_lines if line.comment is None][:1]


def _comments(stmt: cst.BaseStatement) -> list[str]:
    """The comment lines above a removed statement, kept above the fused call. A comment at the
    end of a removed line annotates that line's expression (`# (B, T, T)`): kept, it would
    describe code that is gone."""
    trailing = {
        id(node.comment) for node in descendants(stmt) if isinstance(node, cst.TrailingWhitespace)
    }
    return [
        node.value
        for node in descendants(stmt)
        if isinstance(node, cst.Comment) and id(node) not in trailing
    ]


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
        softmax = _softmax_input(ctx, call)
        if softmax is None:
            continue
        stmt = _statement(ctx, call)
        block = ctx.parent(stmt) if stmt is not None else None
        if stmt is None or not isinstance(block, cst.IndentedBlock):
            continue
        owner = next((a for a in ctx.ancestors(call) if isinstance(a, cst.ClassDef)), None)
        token = _OWNER.set(owner)
        try:
            found = _match(ctx, list(block.body), block.body.index(stmt), call, *softmax)
        finally:
            _OWNER.reset(token)
        if found is None and isinstance(ctx.parent(block), cst.If | cst.Else):
            raise AttentionRefused(
                "the softmax sits in one branch of an if/else and the scores come from "
                "outside it: compute one mask (zero in the other branch) and one softmax first"
            )
        return found
    return None


def _match(
    ctx: SourceContext,
    body: list[cst.BaseStatement],
    at: int,
    softmax: cst.Call,
    softmax_arg: cst.BaseExpression,
    dim: str,
) -> _Attention | None:
    # what the softmax reads: `S`, `S / d`, `S * s`, `S.float()`
    scores_name, late_scale = _scaled_name(ctx, softmax_arg, body[:at])
    product: Scores | None = None
    if scores_name is None:
        # `self.softmax(torch.bmm(q, k))` (DANet): the scores' product is the softmax's input
        product = score_product(ctx, softmax_arg, body[:at])
        if product is None:
            return None
    inline = _inline_value_product(ctx, body[at], softmax)
    weights, dropout = "", None
    if inline is None:
        head = assigned(body[at])
        if head is None:
            return None
        weights, weights_expr = head
        inner = _dropout_of(ctx, weights_expr)
        if inner is not None:
            dropout, weights_expr = inner
        if _unwrap_cast(weights_expr) is not softmax:
            raise AttentionRefused(
                "the softmax's result goes through more than a cast or a dropout"
            )
    # statements before the softmax, walking back to the product; a rescaling statement
    # (`S = S / d`) seen before any mask is applied after it
    mask = _Mask()
    late = [late_scale] if late_scale is not None else []
    early: list[str] = []
    index = at - 1
    removed: list[cst.BaseStatement] = [body[at]] if inline is None else []
    retyped: list[tuple[cst.BaseStatement, str]] = []
    while scores_name is not None and index >= 0 and product is None:
        stmt = body[index]
        before = body[:index]
        bound = assigned(stmt)
        if bound is not None and bound[0] == scores_name:
            product = score_product(ctx, bound[1], before)
            if product is not None and _reads(cst.parse_expression(product.key), scores_name):
                product = None  # `s = s @ w`: a change of the scores, not their product
            if product is None and (
                biased := _biased_product(ctx, stmt, bound[1], scores_name, before)
            ):
                if late:
                    raise AttentionRefused(
                        "the scores are scaled after an additive mask was added: the fused "
                        "kernel scales before masking"
                    )
                product, bias = biased
                _merge(mask, bias)
            if product is not None:
                removed.append(stmt)
                break
        factor = _rescaling(stmt, scores_name)
        renamed = _renaming_rescale(stmt, scores_name) if factor is None else None
        if renamed is not None:
            # `scaled = scores / math.sqrt(d)`: the scale, and the scores by their first name
            (late if mask.attn_mask is None and not mask.causal else early).append(renamed[1])
            removed.append(stmt)
            scores_name = renamed[0]
        elif _row_max_shift(stmt, scores_name):
            removed.append(stmt)  # softmax is shift-invariant along the row
        elif factor is not None:
            (late if mask.attn_mask is None and not mask.causal else early).append(factor)
            removed.append(stmt)
        elif (step := _scores_mask_step(ctx, stmt, scores_name, before)) is not None:
            if step.additive and late:
                raise AttentionRefused(
                    "the scores are scaled after an additive mask was added: the fused "
                    "kernel scales before masking"
                )
            _merge(mask, step)
        elif bound is not None and bound[0] == scores_name:
            flip = _ambiguous_flip(ctx, bound[1])
            if flip is not None:
                raise AttentionRefused(
                    f"`{flip}` flips the key only if it is 3-D (heads folded into the batch), "
                    "which no reshape here shows: on 4-D tensors it swaps heads and tokens; "
                    "write the flip as transpose(-2, -1) if it is the key's"
                )
            reshaped = _reshaped_scores(bound[1], scores_name)
            if reshaped is not None:
                raise AttentionRefused(
                    f"`{scores_name}` is reshaped between the product and the softmax "
                    f"(`{code(reshaped)}`), as when a mask is added per window (Swin's shifted "
                    "windows): build that mask as one (batch, heads, queries, keys) attn_mask "
                    "first, then one fused call"
                )
            raise AttentionRefused(
                f"`{scores_name}` is changed between the product and the softmax in a "
                "way the fused kernel does not reproduce (softcapping, a bias...)"
            )
        elif isinstance(stmt, cst.If) and _assigns(stmt, scores_name):
            other = _other_reader(stmt, scores_name)
            if other is not None:
                raise AttentionRefused(
                    f"`{scores_name}` is also read by `{code(other).strip()}` in the masking "
                    "branch: the fused call never builds the scores it checks"
                )
            raise AttentionRefused(
                f"`{scores_name}` is masked under `if {code(stmt.test)}:`, a condition "
                "the fused call's arguments do not express: build the mask first"
            )
        elif _assigns(stmt, scores_name):
            raise AttentionRefused(
                f"`{scores_name}` is changed in place by `{code(stmt).strip()}` between the "
                "product and the softmax: the fused call cannot do what it does"
            )
        elif _shape_assert(ctx, stmt, scores_name):
            removed.append(stmt)  # `assert list(w.shape) == [B, HW, HW]`: no scores to check
        elif _metadata_binding(ctx, stmt, scores_name):
            retyped.append((stmt, scores_name))  # `wdtype = weight.dtype` (GLIDE)
        elif stmt in mask.bindings and _shaped_like(ctx, stmt, scores_name):
            # `mask = torch.ones_like(weight, dtype=torch.bool).triu(1)`: built from the
            # scores' shape only, it goes with them (with the mask's bindings, below), and
            # nothing else may read it
            name = _assigned_name(stmt)
            skip = [stmt, *removed, *mask.statements]
            if name_is_read(ctx, name, scope_of(ctx, stmt), skip=skip):
                raise AttentionRefused(
                    f"`{name}` is built from the scores' shape and read again after the "
                    "masking: the fused call never builds the scores it is shaped like"
                )
        elif _reads(stmt, scores_name):
            helper = _passed_to(stmt, scores_name)
            if helper is not None:
                raise AttentionRefused(
                    f"`{scores_name}` is handed to `{helper}(...)`, which may change it in "
                    "place (a mask helper?): the fused call cannot do what it does"
                )
            raise AttentionRefused(f"`{scores_name}` is used besides the softmax")
        index -= 1
    if product is None or not _over_last_dim(dim, product.rank):
        return None
    scale = product.scale
    for factor in (*reversed(early), *reversed(late)):
        scale = times(scale, factor)
    query_factor = _per_head_temperature(ctx, scale)
    if query_factor is not None:
        scale = "1.0"
    else:
        _refuse_tensor_scale(ctx, scale)
    if mask.like is not None and mask.attn_mask is not None:
        mask.attn_mask = _like_query(mask.attn_mask, mask.like, product.query)
    if scores_name is not None and _reads(cst.parse_expression(scale), scores_name):
        raise AttentionRefused(f"the scale reads the scores `{scores_name}` themselves")
    removed += mask.statements
    scope = scope_of(ctx, body[at])
    for binding in (*product.bindings, *mask.bindings):
        name = _assigned_name(binding)
        if binding in product.bindings and _rebinds_itself(binding):
            # `k = k.transpose(-2, -1)`: the fused call takes k as it was before, so the
            # statement must go, and nothing after it may read the transposed k
            if name_is_read(ctx, name, scope, [binding, *removed], after=ctx.line(binding)):
                raise AttentionRefused(
                    f"`{name}` is transposed in place (`{code(binding).strip()}`) and read "
                    "again after the product: the fused call needs it untransposed"
                )
            removed.append(binding)
        elif not name_is_read(ctx, name, scope, skip=[binding, *removed]):
            removed.append(binding)
    if inline is not None:  # `return F.softmax(s, dim=-1) @ v`: the product is right here
        out_expr, value, dropout = inline
        _refuse_scores_kept(ctx, removed, body[at], out_expr, scope, [s for s, _ in retyped])
        return _Attention(
            statements=removed,
            output_statement=body[at],
            product=out_expr,
            query=product.query,
            key=product.key,
            value=value,
            scale=scale,
            mask=mask,
            dropout=dropout,
            softmax=softmax,
            rank=product.rank,
            retyped=retyped,
            query_factor=query_factor,
        )
    # the weights, after the softmax (and an optional dropout statement, maybe after lines
    # that do not touch them: `assert k.shape[-1] == self.head_dim`)
    rest = body[at + 1 :]
    undropped: str | None = None
    if dropout is None:
        touching = next((i for i, stmt in enumerate(rest) if not _untouched(stmt, weights)), None)
        after = assigned(rest[touching]) if touching is not None else None
        guarded = _guarded_dropout(ctx, rest[touching], weights) if touching is not None else None
        if touching is not None and guarded is not None:
            # `if self.dropout is not None: w = self.dropout(w)` (a module built only for p > 0)
            dropout = guarded
            removed.append(rest[touching])
            rest = [*rest[:touching], *rest[touching + 1 :]]
        elif touching is not None and after is not None and after[0] == weights:
            index = touching
            inner = _dropout_of(ctx, after[1])
            if inner is not None and dotted_name(inner[1]) == weights:
                dropout = inner[0]
                removed.append(rest[index])
                rest = [*rest[:index], *rest[index + 1 :]]
            elif index == 0 and flipped(after[1], product.rank) != weights:
                raise AttentionRefused(f"`{weights}` is changed after the softmax")
        elif (
            touching is not None
            and after is not None
            and "." not in after[0]
            and (inner := _dropout_of(ctx, after[1])) is not None
            and dotted_name(inner[1]) == weights
        ):
            # `dropped = self.dropout(w)`, then `dropped @ v`: the weights renamed by their dropout
            dropout = inner[0]
            removed.append(rest[touching])
            rest = [*rest[:touching], *rest[touching + 1 :]]
            undropped, weights = weights, after[0]
    output = _value_product(ctx, rest, weights, product.rank)
    if output is None:
        return None
    out_stmt, out_expr, value = output.statement, output.product, output.value
    removed += output.flips
    if output.dropout is not None:
        if dropout is not None:
            raise AttentionRefused(f"`{weights}` goes through two dropouts")
        dropout = output.dropout
    between = body[at + 1 : body.index(out_stmt)]
    rebound = {n for stmt in between if (n := _assigned_name(stmt)) in (product.query, product.key)}
    if rebound:
        raise AttentionRefused(f"`{rebound.pop()}` is reassigned between the product and `@ v`")
    others = [stmt for stmt in removed if stmt is not out_stmt]
    kept = [stmt for stmt, _ in retyped]  # rewritten to read the query
    for read in (weights, undropped):
        if read is not None and name_is_read(ctx, read, scope, skip=[*others, *kept, out_expr]):
            raise AttentionRefused(
                f"the attention weights `{read}` are returned or reused: the fused kernel "
                "does not produce them"
            )
    _refuse_scores_kept(ctx, others, out_stmt, out_expr, scope, kept)
    return _Attention(
        statements=removed,
        output_statement=out_stmt,
        product=out_expr,
        query=product.query,
        key=product.key,
        value=value,
        scale=scale,
        mask=mask,
        dropout=dropout,
        softmax=softmax,
        transposed=output.transposed,
        reorder=output.reorder,
        rank=product.rank,
        retyped=retyped,
        query_factor=query_factor,
    )


_METADATA = frozenset({"shape", "ndim", "dtype", "device"})


def _shape_assert(ctx: SourceContext, stmt: cst.BaseStatement, scores: str) -> bool:
    """`assert list(w.shape) == [B, H * W, H * W]`: an assert that reads the scores only for
    their shape (`.shape`, `.size()`, `.dim()`), which the fused call's output fixes; it goes
    with the scores it checked."""
    if not (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Assert)
    ):
        return False
    calls = [n for n in descendants(stmt) if isinstance(n, cst.Call)]
    if any(  # a check of shapes only: nothing else the assert tests goes with it
        dotted_name(c.func) not in ("list", "tuple", "len")
        and not (isinstance(c.func, cst.Attribute) and c.func.attr.value in ("size", "dim"))
        for c in calls
    ):
        return False
    reads = [n for n in descendants(stmt) if isinstance(n, cst.Name) and n.value == scores]
    for name in reads:
        parent = ctx.parent(name)
        if not (isinstance(parent, cst.Attribute) and parent.value is name):
            return False
        if parent.attr.value in _METADATA:
            continue
        call = ctx.parent(parent)
        if not (
            parent.attr.value in ("size", "dim")
            and isinstance(call, cst.Call)
            and call.func is parent
        ):
            return False
    return bool(reads)


def _renaming_rescale(stmt: cst.BaseStatement, scores: str) -> tuple[str, str] | None:
    """`scaled = scores / math.sqrt(d)` (or `* s`, `.div(d)`), bound to `scores` from another
    local name -> (that name, the factor); the factor may not read either name."""
    bound = assigned(stmt)
    if bound is None or bound[0] != scores:
        return None
    scaled = scale_factor(bound[1])
    if scaled is None or not isinstance(scaled[0], cst.Name) or scaled[0].value == scores:
        return None
    source, factor = scaled[0].value, cst.parse_expression(scaled[1])
    if _reads(factor, source) or _reads(factor, scores):
        return None
    return source, scaled[1]


def _rebinds_itself(stmt: cst.BaseStatement) -> bool:
    """`k = k.permute(0, 1, 3, 2)`: a statement binding a name from its own old value."""
    bound = assigned(stmt)
    return bound is not None and "." not in bound[0] and _reads(bound[1], bound[0])


def _refuse_scores_kept(
    ctx: SourceContext,
    removed: Sequence[cst.BaseStatement],
    out_stmt: cst.BaseStatement,
    out_expr: cst.BaseExpression,
    scope: cst.CSTNode,
    kept: Sequence[cst.BaseStatement] = (),
) -> None:
    """The names the removed statements bound (the scores, under each name they had) must
    not be read after them: `return out, logits` would name a variable the fix deleted.
    Reads after the output statement rebinds the name (`att = att @ v`) are of its new value;
    `kept` statements read the query instead once fixed."""
    rebound = _assigned_name(out_stmt)
    for stmt in removed:
        name = _assigned_name(stmt)
        if not name or "." in name:
            continue
        until = ctx.end_line(out_stmt) if name == rebound else None
        skip = [*removed, *kept, out_expr]
        read = first_read(ctx, name, scope, skip, after=ctx.line(stmt), until=until)
        if read is not None:
            line = ctx.source.splitlines()[ctx.line(read) - 1].strip()
            raise AttentionRefused(
                f"`{name}` is read again after the attention (line {ctx.line(read)}: "
                f"`{line}`): the fused call never builds it"
            )


def _other_reader(stmt: cst.If, scores: str) -> cst.BaseStatement | None:
    """A statement in a masking branch that reads the scores without rebinding them
    (`assert mask.shape == scores.shape[2:]`)."""
    for inner in stmt.body.body:
        if (
            isinstance(inner, cst.SimpleStatementLine)
            and all(isinstance(small, cst.Assert | cst.Expr) for small in inner.body)
            and _reads(inner, scores)
            and not _assigns(inner, scores)
        ):
            return inner
    return None


def _passed_to(stmt: cst.BaseStatement, scores: str) -> str | None:
    """The function a call made for its effect hands the scores to (`mask_(dot, ...)`, its
    result unused)."""
    for node in descendants(stmt):
        call = node.value if isinstance(node, cst.Expr) else None
        if isinstance(call, cst.Call) and any(
            dotted_name(arg.value) == scores for arg in call.args
        ):
            return dotted_name(call.func) or code(call.func)
    return None


def _handed_to(stmt: cst.BaseStatement, weights: str) -> str | None:
    """The function a statement hands the weights to, maybe reshaped on the way
    (`_ = self.probs_handler(probs.reshape(b, h, n, n))`, rtdl): not a method of the weights."""
    for node in descendants(stmt):
        if not isinstance(node, cst.Call) or (
            isinstance(node.func, cst.Attribute) and _reads(node.func.value, weights)
        ):
            continue
        if any(_reads(arg.value, weights) for arg in node.args):
            return dotted_name(node.func) or code(node.func)
    return None


def _untouched(stmt: cst.BaseStatement, weights: str) -> bool:
    """A simple statement that neither reads nor rebinds the weights."""
    return isinstance(stmt, cst.SimpleStatementLine) and not _reads(stmt, weights)


def _reordered_values(
    ctx: SourceContext, node: cst.BaseExpression, weights: str
) -> tuple[str, str] | None:
    """`torch.einsum("bhij,bhjd->bihd", weights, v)`: the weighted values with the output's
    axes in another order -> (v, the `.transpose`/`.permute` turning the fused call's
    (..., tokens, dim) output into that order)."""
    einsum = einsum_operands(ctx, node)
    if einsum is None or dotted_name(strip(einsum[2][0])) != weights:
        return None
    ordered = eq.values_order(einsum[0], einsum[1])
    if ordered is None:
        if eq.contracts_keys(einsum[0], einsum[1]):
            equation = ",".join("".join(t) for t in einsum[0]) + "->" + "".join(einsum[1])
            raise AttentionRefused(
                f"the einsum of `{weights}` with the values (`{equation}`) does more than "
                "weight them (it sums or drops an axis the fused call keeps)"
            )
        return None
    order, channels_first = ordered
    value = code(strip(einsum[2][1]))
    if channels_first:  # (..., d, tokens): the fused call takes (..., tokens, d)
        value = f"{atom(value)}.transpose(-2, -1)"
    moved = [axis for axis, source in enumerate(order) if axis != source]
    if not moved:
        return value, ""
    if len(moved) == 2:
        return value, f".transpose({moved[0]}, {moved[1]})"
    return value, f".permute({', '.join(map(str, order))})"


def _inline_value_product(
    ctx: SourceContext, stmt: cst.BaseStatement, softmax: cst.Call
) -> tuple[cst.BaseExpression, str, str | None] | None:
    """`softmax(...) @ v` (the softmax, optionally cast or dropped out, the product's weights
    operand) in the softmax's own statement -> (the product, v, the dropout rate or None)."""
    for node in descendants(stmt):
        if not isinstance(node, cst.BaseExpression):
            continue
        product = value_product(ctx, node)
        if product is None:
            continue
        operand, value_operand, _ = product
        value = code(value_operand)
        dropped = _dropout_of(ctx, operand)
        rate = dropped[0] if dropped is not None else None
        inner = strip(dropped[1]) if dropped is not None else operand
        if _unwrap_cast(inner) is softmax:
            return node, value, rate
    return None


def _over_last_dim(dim: str, rank: int | None) -> bool:
    """The softmax normalises over the keys: dim -1, or the last dim by number when the
    product fixes the rank (`nn.Softmax(dim=2)` after torch.bmm)."""
    return dim == "-1" or (rank is not None and dim == str(rank - 1))


def _rescaling(stmt: cst.BaseStatement, scores: str) -> str | None:
    """`S = S / d`, `S = S * s`, `S /= d`, `S *= s`, `S = S.div(d)` -> the factor on S."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    small = stmt.body[0]
    if isinstance(small, cst.AugAssign) and dotted_name(small.target) == scores:
        factor = code(strip(small.value))
        if isinstance(small.operator, cst.MultiplyAssign):
            return factor
        return reciprocal(factor) if isinstance(small.operator, cst.DivideAssign) else None
    bound = assigned(stmt)
    if bound is None or bound[0] != scores:
        return None
    value = strip(bound[1])
    if (
        isinstance(value, cst.BinaryOperation)
        and isinstance(value.operator, cst.Multiply)
        and dotted_name(value.right) == scores
        and not _reads(value.left, scores)
    ):  # `S = (1.0 / math.sqrt(d)) * S`
        return code(strip(value.left))
    scaled = scale_factor(bound[1])
    if scaled is None or dotted_name(scaled[0]) != scores:
        return None
    return scaled[1]


def _row_max_shift(stmt: cst.BaseStatement, scores: str) -> bool:
    """`S = S - S.amax(dim=-1, keepdim=True).detach()` (or `.max(-1, keepdim=True)[0]`,
    `.values`): the numerical-stability shift softmax does itself."""
    bound = assigned(stmt)
    if bound is None or bound[0] != scores:
        return False
    value = strip(bound[1])
    if not (
        isinstance(value, cst.BinaryOperation)
        and isinstance(value.operator, cst.Subtract)
        and dotted_name(value.left) == scores
    ):
        return False
    shift = strip(value.right)
    detached = method_call(shift, "detach")
    if detached is not None and isinstance(detached.func, cst.Attribute):
        shift = strip(detached.func.value)
    if isinstance(shift, cst.Subscript) and flat(shift.slice[0].slice) == "0":
        shift = strip(shift.value)  # `.max(...)[0]`
    elif isinstance(shift, cst.Attribute) and shift.attr.value == "values":
        shift = strip(shift.value)
    call = method_call(shift, "amax") or method_call(shift, "max")
    if call is None or not isinstance(call.func, cst.Attribute):
        return False
    positional = [flat(a.value) for a in call.args if a.keyword is None]
    named = {a.keyword.value: flat(a.value) for a in call.args if a.keyword is not None}
    dim = named.get("dim", positional[0] if positional else None)
    keepdim = named.get("keepdim", positional[1] if len(positional) > 1 else None)
    return dotted_name(call.func.value) == scores and dim == "-1" and keepdim == "True"


def _reshaped_scores(value: cst.BaseExpression, scores: str) -> cst.Call | None:
    """`scores.view(...)` / `scores.reshape(...)` inside what the scores are rebound to
    (`attn = attn.view(B_ // nW, nW, H, N, N) + mask.unsqueeze(1).unsqueeze(0)`)."""
    for node in descendants(value):
        call = method_call(node, "view") or method_call(node, "reshape")
        if (
            call is not None
            and isinstance(call.func, cst.Attribute)
            and dotted_name(call.func.value) == scores
        ):
            return call
    return None


def _assigns(stmt: cst.CSTNode, name: str) -> bool:
    """Whether `stmt` rebinds `name` or changes it in place (`name.masked_fill_(...)`,
    `name[:, :, -w:] += mask`)."""
    for node in descendants(stmt):
        if isinstance(node, cst.AssignTarget | cst.AugAssign):
            written: cst.BaseExpression = node.target
            if isinstance(written, cst.Subscript):
                written = written.value
            if dotted_name(written) == name:
                return True
        if (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value.endswith("_")
            and dotted_name(node.func.value) == name
        ):
            return True
    return False


def _refuse_tensor_scale(ctx: SourceContext, scale: str) -> None:
    """The fused call's `scale` is a Python float: a factor computed by a torch call, here
    (`/ torch.sqrt(torch.tensor(d))`) or where the name it reads was built
    (`self.scale = torch.sqrt(torch.FloatTensor([d]))`, an nn.Parameter), is a tensor (a
    per-head parameter is multiplied into q before this is asked: _per_head_temperature)."""
    expr = cst.parse_expression(scale)
    for node in (expr, *descendants(expr)):
        name = dotted_name(node) if isinstance(node, cst.Name | cst.Attribute) else None
        built = _buffer_value(ctx, name) if name and name != "self" else None
        source = built if built is not None else node
        if not isinstance(node, cst.Call) and built is None:
            continue
        outer = method_call(source, "item") or method_call(source, "float")
        if (
            outer is None
            and not _constant_scalar(ctx, source)
            and any(
                (ctx.qualname(n.func) or "").startswith("torch.")
                for n in (source, *descendants(source))
                if isinstance(n, cst.Call)
            )
        ):
            if isinstance(source, cst.Call) and ctx.qualname(source.func) == "torch.nn.Parameter":
                raise AttentionRefused(
                    f"the scale `{name or code(node)}` is a learned tensor (an nn.Parameter) "
                    "whose shape shows no one factor per head (last two dims 1) to multiply "
                    "into q: the fused call's scale is a Python float"
                )
            raise AttentionRefused(
                f"the scale `{name or code(node)}` is a tensor: the fused call takes a Python "
                "float (build it with math.sqrt)"
            )


_FILLED = frozenset({"torch.ones", "torch.zeros", "torch.rand", "torch.randn", "torch.empty"})


def _per_head_temperature(ctx: SourceContext, scale: str) -> str | None:
    """`self.temperature`, a learned nn.Parameter whose last two dims are 1 (`torch.ones(
    num_heads, 1, 1)`, swz30/Restormer's transposed attention): one factor per head, the
    same for every query and key, so `(q @ k^T) * t` is `(q * t) @ k^T` and the fused call
    takes `q * t` with scale 1.0 (the gradient reaching t is the same). A parameter of any
    other shape, or a tensor that is not a parameter, is no such factor: None."""
    if dotted_name(cst.parse_expression(scale)) != scale or not scale.startswith("self."):
        return None
    built = _buffer_value(ctx, scale)
    if not (isinstance(built, cst.Call) and ctx.qualname(built.func) == "torch.nn.Parameter"):
        return None
    made = built.args[0].value if built.args else None
    if not (isinstance(made, cst.Call) and ctx.qualname(made.func) in _FILLED):
        return None
    sizes = [a.value for a in made.args if a.keyword is None]
    if len(sizes) == 1 and isinstance(sizes[0], cst.Tuple | cst.List):
        sizes = [e.value for e in sizes[0].elements]
    tail = [s.value for s in sizes[-2:] if isinstance(s, cst.Integer)]
    return scale if len(sizes) >= 3 and tail == ["1", "1"] else None


_SCALAR_MATH = frozenset({"torch.sqrt", "torch.rsqrt", "torch.exp", "torch.log", "torch.pow"})


def _constant_scalar(ctx: SourceContext, expr: cst.CSTNode) -> bool:
    """`torch.sqrt(torch.tensor(d_k, dtype=...))`: a 0-d CPU tensor made from a number, which
    the fused call reads as that float (a 1-element list, a Parameter or anything with a
    gradient is not one)."""
    calls = [n for n in (expr, *descendants(expr)) if isinstance(n, cst.Call)]
    made = False
    for call in calls:
        qual = ctx.qualname(call.func) or ""
        if not qual.startswith("torch."):
            continue
        if qual in ("torch.tensor", "torch.as_tensor"):
            first = call.args[0].value if call.args else None
            named = {a.keyword.value for a in call.args if a.keyword is not None}
            if first is None or isinstance(first, cst.List | cst.Tuple) or named - {"dtype"}:
                return False
            made = True
        elif qual not in _SCALAR_MATH:
            return False
    return made


def _merge(mask: _Mask, step: _Mask) -> None:
    if mask.causal or mask.attn_mask is not None:
        raise AttentionRefused("two masks are applied: merge them into one attn_mask by hand")
    mask.causal, mask.attn_mask, mask.like = step.causal, step.attn_mask, step.like
    mask.causal_flag = step.causal_flag
    mask.statements += step.statements
    mask.bindings += step.bindings


def _assigned_name(stmt: cst.BaseStatement) -> str:
    bound = assigned(stmt)
    return bound[0] if bound is not None else ""


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


# --- the pieces -----------------------------------------------------------------------


def _softmax_input(ctx: SourceContext, call: cst.Call) -> tuple[cst.BaseExpression, str] | None:
    """`F.softmax(z, dim=-1)`, `torch.softmax(z, -1)`, `z.softmax(dim=-1)`, `self.sm(z)` with
    `self.sm = nn.Softmax(dim=-1)` -> (z, the dim); _match checks the dim is the last."""
    qual = ctx.qualname(call.func) or ""
    if qual in ("torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"):
        named = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
        positional = [a for a in call.args if a.keyword is None]
        if "input" in named:  # `F.softmax(input=w, dim=-1)`
            dim = flat(named["dim"]) if "dim" in named else None
            return (named["input"], dim) if dim else None
        dim = _dim(call.args[1:])
        return (positional[0].value, dim) if positional and dim else None
    func = call.func
    receiver = dotted_name(func.value) if isinstance(func, cst.Attribute) else None
    module_call = receiver == "self"  # `self.softmax(x)`: a module, handled below
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax" and not module_call:
        dim = _dim(call.args)
        return (func.value, dim) if not qual and dim else None
    if (
        isinstance(func, cst.Call)
        and (ctx.qualname(func.func) or "").endswith("nn.Softmax")
        and len(call.args) == 1
    ):  # `nn.Softmax(dim=-1)(w)`, built where it is applied
        dim = _dim(func.args)
        return (call.args[0].value, dim) if dim else None
    name = dotted_name(func)
    if name is not None and name.startswith("self.") and len(call.args) == 1:
        built = _module_built(ctx, name)
        if built is not None and (ctx.qualname(built.func) or "").endswith("nn.Softmax"):
            dim = _dim(built.args)
            return (call.args[0].value, dim) if dim else None
    return None


def _dim(args: Sequence[cst.Arg]) -> str | None:
    for arg in args:
        if arg.keyword is None or arg.keyword.value == "dim":
            return flat(arg.value)
    return None


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
    """`x.type_as(q)` / `x.to(q.dtype)` / `x.to(dtype=...)` / `x.type(w.dtype)` -> x (SDPA
    returns q's dtype; `x.type()` with no argument is a string, not a cast)."""
    for method in ("type_as", "to", "type"):
        call = method_call(expr, method)
        if call is not None and isinstance(call.func, cst.Attribute) and call.args:
            return call.func.value
    return expr


def _scaled_name(
    ctx: SourceContext, expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> tuple[str | None, str | None]:
    """`S` -> (S, None); `S / d` -> (S, '1.0 / (d)'); `S * s` -> (S, 's'); `S.float()` -> S;
    `s * S` -> (S, 's') when `S` is the product bound above and `s` is not (fast-transformers'
    `torch.softmax(softmax_temp * QK, dim=-1)`)."""
    cast = method_call(expr, "float")
    if cast is not None and isinstance(cast.func, cst.Attribute) and not cast.args:
        expr = cast.func.value
    expr = strip(expr)
    if isinstance(expr, cst.BinaryOperation) and dotted_name(expr.left):
        factor = code(strip(expr.right))
        if isinstance(expr.operator, cst.Divide):
            return dotted_name(expr.left), reciprocal(factor)
        if isinstance(expr.operator, cst.Multiply):
            left, right = dotted_name(expr.left), dotted_name(strip(expr.right))
            if (
                right is not None
                and _bound_to_scores(ctx, right, before)
                and not _bound_to_scores(ctx, left, before)
            ):
                return right, code(strip(expr.left))
            return left, factor
        return None, None
    return dotted_name(expr), None


def _shaped_like(ctx: SourceContext, stmt: cst.BaseStatement, scores: str) -> bool:
    """`name = torch.ones_like(scores, ...)...`: every read of the scores is the first
    argument of a `*_like` factory, which takes only their shape, dtype and device."""
    bound = assigned(stmt)
    if bound is None or "." in bound[0]:
        return False
    reads = [n for n in descendants(bound[1]) if isinstance(n, cst.Name) and n.value == scores]
    for node in reads:
        arg = ctx.parent(node)
        call = ctx.parent(arg) if isinstance(arg, cst.Arg) else None
        if not (
            isinstance(call, cst.Call)
            and isinstance(arg, cst.Arg)
            and call.args
            and call.args[0] is arg
            and (dotted_name(call.func) or "").endswith("_like")
        ):
            return False
    return bool(reads)


def _metadata_binding(ctx: SourceContext, stmt: cst.BaseStatement, scores: str) -> bool:
    """`name = <the scores' dtype or device>` (GLIDE's `wdtype = weight.dtype`, for the cast
    back after a float32 softmax)."""
    bound = assigned(stmt)
    return (
        bound is not None
        and "." not in bound[0]
        and _reads(bound[1], scores)
        and _reads_only_metadata(ctx, bound[1], scores)
    )


def _read_on_query(scores: str, query: str, node: cst.CSTNode) -> cst.CSTNode:
    """A kept metadata binding reading the query's dtype or device (the product's are the
    query's) rather than the scores the fused call no longer makes."""
    if not isinstance(node, cst.SimpleStatementLine) or not isinstance(node.body[0], cst.Assign):
        return node
    assign = node.body[0]
    value = cst.parse_expression(_like_query(code(assign.value), scores, query))
    return node.with_changes(body=[assign.with_changes(value=value)])


def _biased_product(
    ctx: SourceContext,
    stmt: cst.BaseStatement,
    expr: cst.BaseExpression,
    scores: str,
    before: Sequence[cst.BaseStatement],
) -> tuple[Scores, _Mask] | None:
    """`(q @ k^T) * s + bias` in one expression (LeViT's attention biases, picked by mode):
    the product, and the bias as a float mask (not one computed from q or k)."""
    expr = strip(expr)
    if not (isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Add)):
        return None
    product = score_product(ctx, expr.left, before)
    if product is None:
        return None
    step = _additive(ctx, expr.right, True, scores, stmt)
    if (
        step is None
        or step.causal
        or any(_reads(expr.right, name) for name in (product.query, product.key))
    ):
        return None
    step.statements = []  # the bias goes with the product's own statement
    return product, step


def _bound_to_scores(
    ctx: SourceContext, name: str | None, before: Sequence[cst.BaseStatement]
) -> bool:
    """`name` is bound to a query-key product among `before`, possibly changed since
    (`QK = QK + mask`)."""
    for index in range(len(before) - 1, -1, -1):
        bound = assigned(before[index])
        if bound is None or bound[0] != name:
            continue
        if score_product(ctx, bound[1], before[:index]) is not None:
            return True
        if not _reads(bound[1], name):
            return False
    return False


def _dropout_of(
    ctx: SourceContext, expr: cst.BaseExpression
) -> tuple[str, cst.BaseExpression] | None:
    """`self.drop(x)` with `self.drop = nn.Dropout(...)` -> ('self.drop.p if ...', x);
    `F.dropout(x, p, training)` / `torch.dropout(x, p, train)` -> ('p if training else 0.0', x)."""
    if not isinstance(expr, cst.Call) or not expr.args:
        return None
    qual = ctx.qualname(expr.func) or ""
    if qual in ("torch.nn.functional.dropout", "torch.dropout"):
        return _functional_dropout(expr)
    if len(expr.args) != 1:
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


def _guarded_dropout(ctx: SourceContext, stmt: cst.BaseStatement, weights: str) -> str | None:
    """`if self.drop is not None: w = self.drop(w)`, with `self.drop` built as an nn.Dropout or
    None (`nn.Dropout(p) if p else None`) -> the rate the fused call takes."""
    if not isinstance(stmt, cst.If) or stmt.orelse or not isinstance(stmt.body, cst.IndentedBlock):
        return None
    guarded = _guarded_name(stmt.test, ctx)
    inner = list(stmt.body.body)
    if guarded is None or not guarded.startswith("self.") or len(inner) != 1:
        return None
    bound = assigned(inner[0])
    if bound is None or bound[0] != weights or not isinstance(bound[1], cst.Call):
        return None
    call = bound[1]
    if (
        dotted_name(call.func) != guarded
        or len(call.args) != 1
        or dotted_name(call.args[0].value) != weights
    ):
        return None
    built = [
        assign.value
        for assign in ctx.find(cst.Assign)
        if len(assign.targets) == 1 and dotted_name(assign.targets[0].target) == guarded
    ]
    values: list[cst.BaseExpression] = []
    for value in built:
        value = strip(value)
        values.extend([value.body, value.orelse] if isinstance(value, cst.IfExp) else [value])
    dropouts = [
        v
        for v in values
        if isinstance(v, cst.Call) and (ctx.qualname(v.func) or "").endswith("nn.Dropout")
    ]
    if not dropouts or any(v not in dropouts and flat(v) != "None" for v in values):
        return None
    return f"{guarded}.p if {guarded} is not None and self.training else 0.0"


def _functional_dropout(call: cst.Call) -> tuple[str, cst.BaseExpression] | None:
    """The rate F.dropout applies: `p` (default 0.5) while `training` (default True)."""
    positional = [a.value for a in call.args if a.keyword is None]
    named = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    if "inplace" in named or not positional:
        return None
    p = named.get("p", positional[1] if len(positional) > 1 else None)
    training = named.get("training", named.get("train"))
    if training is None and len(positional) > 2:
        training = positional[2]
    rate = code(p) if p is not None else "0.5"
    if training is None or flat(training) == "True":
        return rate, positional[0]
    return f"{rate} if {code(training)} else 0.0", positional[0]


def _mask_step(
    ctx: SourceContext,
    stmt: cst.BaseStatement,
    scores: str,
    before: Sequence[cst.BaseStatement],
) -> _Mask | None:
    """One masking statement on `scores` -> its mask; None when `stmt` is not one."""
    if isinstance(stmt, cst.If) and not stmt.orelse and (flag := _bool_flag(ctx, stmt)):
        inner = [s for s in stmt.body.body if isinstance(s, cst.BaseStatement)]
        locals_first = all(
            (b := assigned(s)) is not None and "." not in b[0] and b[0] != scores
            for s in inner[:-1]
        )
        if inner and len(inner) == len(stmt.body.body) and locals_first:
            step = _mask_step(ctx, inner[-1], scores, [*before, *inner[:-1]])
            if step is not None and step.causal:
                # `if causal_mask: S.masked_fill_(ones_like(S).triu(1), -inf)`: applied as
                # the flag says, which is what is_causal=flag does
                return _Mask(causal=True, causal_flag=flag, statements=[stmt])
        return None
    if isinstance(stmt, cst.If) and not stmt.orelse:
        guarded = _guarded_name(stmt.test, ctx)
        inner = [s for s in stmt.body.body if isinstance(s, cst.BaseStatement)]
        locals_first = all(
            (b := assigned(s)) is not None and "." not in b[0] and b[0] != scores
            for s in inner[:-1]
        )
        if guarded is None or not inner or len(inner) != len(stmt.body.body) or not locals_first:
            return None
        step = _mask_step(ctx, inner[-1], scores, [*before, *inner[:-1]])
        if step is None:
            return None
        if step.causal:
            raise AttentionRefused("a causal mask applied only on a condition")
        if step.attn_mask is not None and guarded in step.attn_mask and step.attn_mask != guarded:
            step.attn_mask = f"None if {guarded} is None else {step.attn_mask}"
        return _Mask(
            attn_mask=step.attn_mask, additive=step.additive, statements=[stmt], like=step.like
        )
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    small = stmt.body[0]
    if isinstance(small, cst.AugAssign) and dotted_name(small.target) == scores:
        if isinstance(small.operator, cst.AddAssign | cst.SubtractAssign):
            added = isinstance(small.operator, cst.AddAssign)
            return _additive(ctx, small.value, added, scores, stmt)
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
        and isinstance(value.operator, cst.Add | cst.Subtract)
        and dotted_name(value.left) == scores
        and isinstance(small, cst.Assign)
    ):
        return _additive(ctx, value.right, isinstance(value.operator, cst.Add), scores, stmt)
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


def _scores_mask_step(
    ctx: SourceContext,
    stmt: cst.BaseStatement,
    scores: str,
    before: Sequence[cst.BaseStatement],
) -> _Mask | None:
    """`_mask_step` with the scores' name known to the triangles it reads."""
    token = _SCORES.set(scores)
    try:
        return _mask_step(ctx, stmt, scores, before)
    finally:
        _SCORES.reset(token)


def _bool_flag(ctx: SourceContext, stmt: cst.If) -> str | None:
    """`if causal:` on an argument of the enclosing function that is a bool (a `: bool`
    annotation or a True/False default) and is not rebound there: its name; else None."""
    if not isinstance(stmt.test, cst.Name):
        return None
    name = stmt.test.value
    function = next((a for a in ctx.ancestors(stmt) if isinstance(a, cst.FunctionDef)), None)
    if function is None:
        return None
    params = [*function.params.params, *function.params.kwonly_params]
    param = next((p for p in params if p.name.value == name), None)
    if param is None:
        return None
    annotated = param.annotation is not None and flat(param.annotation.annotation) == "bool"
    defaulted = param.default is not None and flat(param.default) in ("True", "False")
    rebound = any(_assigns(s, name) for s in function.body.body if isinstance(s, cst.BaseStatement))
    return name if (annotated or defaulted) and not rebound else None


def _additive(
    ctx: SourceContext,
    bias: cst.BaseExpression,
    added: bool,
    scores: str,
    stmt: cst.BaseStatement,
) -> _Mask | None:
    """`S + bias` / `S - bias`: a float attn_mask, or is_causal when the bias is a -inf
    upper triangle (`torch.triu(torch.full(..., -inf), diagonal=1)[:, :, :T, :T]`). None
    when the bias reads the scores themselves (a row statistic is no mask)."""
    like = None
    if _reads(bias, scores):
        if not _reads_only_metadata(ctx, bias, scores):
            return None
        like = scores
    if added and like is None and _triangle_or_none(ctx, bias, additive=True) == "triu":
        return _Mask(causal=True, statements=[stmt])
    text = code(strip(bias))
    mask = text if added else f"-({text})"
    return _Mask(attn_mask=mask, additive=True, statements=[stmt], like=like)


_LIKE_METHODS = frozenset({"new_tensor", "new_full", "new_zeros", "new_ones", "new_empty"})


def _reads_only_metadata(ctx: SourceContext, expr: cst.BaseExpression, scores: str) -> bool:
    """Whether `expr` reads the scores only for their dtype and device: `S.dtype`,
    `S.device`, `S.new_tensor(-1e4)`, `m.type_as(S)`, `m.to(S)`. The fused call's float mask
    must have the query's dtype and device, which are the scores' (q @ k^T is q's dtype)."""
    for node in descendants(expr):
        if not (isinstance(node, cst.Name) and node.value == scores):
            continue
        parent = ctx.parent(node)
        if isinstance(parent, cst.Attribute) and parent.value is node:
            if parent.attr.value in ("dtype", "device"):
                continue
            call = ctx.parent(parent)
            if (
                parent.attr.value in _LIKE_METHODS
                and isinstance(call, cst.Call)
                and call.func is parent
            ):
                continue
            return False
        arg = parent
        call = ctx.parent(arg) if isinstance(arg, cst.Arg) else None
        if not (
            isinstance(arg, cst.Arg)
            and isinstance(call, cst.Call)
            and len(call.args) == 1
            and isinstance(call.func, cst.Attribute)
            and call.func.attr.value in ("type_as", "to")
        ):
            return False
    return True


def _like_query(mask: str, scores: str, query: str) -> str:
    """The mask's reads of the scores' dtype and device, made on the query."""

    class _Rename(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
            if updated_node.value != scores:
                return updated_node
            return cst.parse_expression(atom(query))

    renamed = cst.parse_expression(mask).visit(_Rename())
    assert isinstance(renamed, cst.BaseExpression)
    return code(renamed)


def _guarded_name(test: cst.BaseExpression, ctx: SourceContext | None = None) -> str | None:
    """`if mask is not None:` -> 'mask'; also `if exists(mask):` with a module function
    `exists(val)` that returns `val is not None` (lucidrains' helper)."""
    if (
        ctx is not None
        and isinstance(test, cst.Call)
        and isinstance(test.func, cst.Name)
        and len(test.args) == 1
        and test.args[0].keyword is None
        and not test.args[0].star
        and _is_not_none_helper(ctx, test.func.value)
    ):
        return dotted_name(test.args[0].value)
    if (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and flat(test.comparisons[0].comparator) == "None"
    ):
        return dotted_name(test.left)
    return None


def _ambiguous_flip(ctx: SourceContext, expr: cst.BaseExpression) -> str | None:
    """`k.transpose(1, 2)` as the right operand of a product of unknown rank in `expr`."""
    for node in [expr, *descendants(expr)]:
        if not isinstance(node, cst.BaseExpression):
            continue
        operands = matmul_operands(ctx, node)
        if operands is not None and operands[2] is None and ambiguous_key(operands[1]):
            return code(strip(operands[1]))
    return None


def _is_not_none_helper(ctx: SourceContext, name: str) -> bool:
    """A module-level `def name(val): return val is not None` (and nothing else)."""
    for stmt in ctx.module.body:
        if not isinstance(stmt, cst.FunctionDef) or stmt.name.value != name:
            continue
        params = stmt.params
        starred = isinstance(params.star_arg, cst.Param | cst.ParamStar) or params.star_kwarg
        if len(params.params) != 1 or starred or params.kwonly_params or stmt.decorators:
            return False
        if isinstance(stmt.body, cst.IndentedBlock):
            lines = [s for s in stmt.body.body if not _docstring(s)]
            if len(lines) != 1 or not isinstance(lines[0], cst.SimpleStatementLine):
                return False
            smalls = list(lines[0].body)
        elif isinstance(stmt.body, cst.SimpleStatementSuite):  # `def f(v): return v is not None`
            smalls = list(stmt.body.body)
        else:
            return False
        if len(smalls) != 1:
            return False
        returned = smalls[0]
        return (
            isinstance(returned, cst.Return)
            and returned.value is not None
            and _guarded_name(returned.value) == params.params[0].name.value
        )
    return False


def _docstring(stmt: cst.BaseStatement) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


def _fill(
    ctx: SourceContext,
    condition: cst.BaseExpression,
    fill: cst.BaseExpression,
    stmt: cst.BaseStatement,
    before: Sequence[cst.BaseStatement],
) -> _Mask:
    fill = _resolve(fill, before)[0]  # `max_neg_value = -torch.finfo(x.dtype).max`
    infinite = _neg_inf(flat(fill))
    large = infinite or _large_negative(fill)
    if not large:
        raise AttentionRefused(
            f"the mask is filled with `{code(fill)}`, not a value softmax turns into zero"
        )
    resolved, binding = _resolve(condition, before)
    try:
        causal = _is_causal(ctx, resolved)
    except AttentionRefused:
        if not infinite:
            raise
        causal = False  # sliced at the cache position: the mask itself is exact as attn_mask
    if causal:
        bindings = [binding] if binding else _bindings_read(condition, before)
        return _Mask(causal=True, statements=[stmt], bindings=bindings)
    if not infinite:
        raise AttentionRefused(
            f"a mask (not causal) filled with `{code(fill)}` gives a fully masked row uniform "
            "weights (the mean of the values) where the fused kernel gives zeros (NaN on older "
            "PyTorch releases): not the same result"
        )
    condition = strip(condition)
    if isinstance(condition, cst.UnaryOperation) and isinstance(condition.operator, cst.BitInvert):
        return _Mask(attn_mask=code(strip(condition.expression)), statements=[stmt])  # `~keep`
    return _Mask(attn_mask=f"~({code(condition)})", statements=[stmt])


def _bindings_read(
    expr: cst.BaseExpression, before: Sequence[cst.BaseStatement]
) -> list[cst.BaseStatement]:
    """The statements binding the local names `expr` reads (`causal_mask` in
    `causal_mask.view(1, 1, T, T)`), dropped with the mask when nothing else reads them."""
    names = {n.value for n in descendants(expr) if isinstance(n, cst.Name)}
    found = []
    for name in sorted(names):
        bound = _resolve(cst.Name(name), before)[1]
        if bound is not None:
            found.append(bound)
    return found


def _large_negative(fill: cst.BaseExpression) -> bool:
    text = flat(fill)
    if (text.startswith("torch.finfo(") and text.endswith(").min")) or (
        text.startswith("-torch.finfo(") and text.endswith(").max")
    ):
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
        bound = assigned(stmt)
        if bound is not None and bound[0] == name:
            return bound[1], stmt
    return expr, None


def _is_causal(ctx: SourceContext, condition: cst.BaseExpression) -> bool:
    """`tril_buffer[..., :T, :T] == 0` or `triu_buffer(diagonal=1)[:T, :T]` (as bool)."""
    condition = strip(condition)
    if isinstance(condition, cst.Comparison) and len(condition.comparisons) == 1:
        op = condition.comparisons[0].operator
        value = flat(condition.comparisons[0].comparator)
        if isinstance(op, cst.Equal) and value == "0":
            return _triangle(ctx, condition.left) == "tril"
        if isinstance(op, cst.Equal) and value in ("1", "True"):
            return _triangle(ctx, condition.left) == "triu"
        return False
    return _triangle(ctx, condition) == "triu"


def _triangle_or_none(
    ctx: SourceContext, expr: cst.BaseExpression, additive: bool = False
) -> str | None:
    """`_triangle`, None for a triangle sliced at the cache position: a bias added to the
    scores is exact as the fused call's float attn_mask wherever it was sliced."""
    try:
        return _triangle(ctx, expr, additive)
    except AttentionRefused:
        return None


def _triangle(ctx: SourceContext, expr: cst.BaseExpression, additive: bool = False) -> str | None:
    """'tril' / 'triu' (strictly upper) when `expr` is a square, top-left slice of a buffer
    built by torch.tril / torch.triu(diagonal=1); None otherwise. `additive`: the buffer is
    added to the scores, so only a strictly upper triangle of -inf is causal."""
    peeled = _peel(expr)
    if peeled is None:
        return None
    expr = peeled
    if isinstance(expr, cst.Call):
        return _square_triangle(expr, additive)
    name = dotted_name(expr)
    if name is None:
        return None
    built = _buffer_value(ctx, name)
    if built is None:
        return None
    kind = _built_triangle(ctx, built, additive)
    if kind is not None:
        # is_causal is claimed: no binding of the mask may be sliced at the cache position
        # (a mask handed in as an argument, built in branches: `mask = triu(...)[s:e, :e]`)
        for value in [built, *(_local_values(ctx, name) if "." not in name else [])]:
            _peel(value)
    return kind


def _built_triangle(ctx: SourceContext, built: cst.BaseExpression, additive: bool) -> str | None:
    """'tril' / 'triu' for what a mask buffer or name was built from."""
    local = _peel(built, strict=False)
    if local is None:
        return None
    if isinstance(local, cst.Call) and (square := _square_triangle(local, additive)):
        return square  # `causal_mask = torch.ones(T, T).triu(1).bool()`, used viewed
    text = flat(built)
    if "tril(" not in text and "triu(" not in text:
        # `mask = torch.tril(...)` then `register_buffer("bias", mask.view(...))`, or
        # `mask = torch.full(..., -inf)`, `mask = torch.triu(mask, diagonal=1)`, then the buffer
        for node in descendants(built):
            if isinstance(node, cst.Name):
                text += "".join(flat(value) for value in _local_values(ctx, node.value))
    if additive:
        upper = "triu(" in text and ("diagonal=1" in text or ".triu(1)" in text)
        return "triu" if upper and _mentions_neg_inf(text) else None
    if "tril(" in text and "diagonal" not in text:
        return "tril"
    if "triu(" in text and "diagonal=1" in text:
        return "triu"
    return None


def _peel(expr: cst.BaseExpression, strict: bool = True) -> cst.BaseExpression | None:
    """The mask under `.bool()`, `.view(1, 1, T, T)`, a top-left square slice `[:T, :T]` and
    new axes `[None, None, :, :]`; None for a view to another shape. A slice at an offset
    raises AttentionRefused (is_causal would align queries and keys top-left), or, not
    `strict`, is where the peeling stops."""
    expr = strip(expr)
    while True:
        call = method_call(expr, "bool")
        if call is not None and isinstance(call.func, cst.Attribute):
            expr = strip(call.func.value)
            continue
        reshaped = method_call(expr, "view") or method_call(expr, "reshape")
        if reshaped is not None and isinstance(reshaped.func, cst.Attribute):
            dims = [flat(a.value) for a in reshaped.args]
            if len(dims) < 2 or dims[-1] != dims[-2] or any(d != "1" for d in dims[:-2]):
                return None
            expr = strip(reshaped.func.value)  # `.view(1, 1, T, T)`: leading unit dims
            continue
        if isinstance(expr, cst.Subscript):
            if not (_top_left_square(expr) or _new_axes(expr)):
                if not strict:
                    return expr
                raise AttentionRefused(
                    "the causal mask is sliced at an offset (a KV cache?): is_causal aligns "
                    "queries and keys top-left"
                )
            expr = strip(expr.value)
            continue
        return expr


def _new_axes(sub: cst.Subscript) -> bool:
    """`[None, None, :, :]`, `[None, ...]`: axes added, nothing sliced."""
    parts = [flat(el.slice) for el in sub.slice if isinstance(el.slice, cst.Index | cst.Slice)]
    return (
        len(parts) == len(sub.slice)
        and "None" in parts
        and all(p in (":", "None", "...") for p in parts)
    )


def _square_triangle(call: cst.Call, additive: bool) -> str | None:
    """A triangle built in place over a square: `torch.triu(torch.ones(T, T), diagonal=1)`,
    `torch.ones(T, T).tril()`, `torch.full((T, T), -inf).triu(1)` (when `additive`)."""
    func = call.func
    if not isinstance(func, cst.Attribute) or func.attr.value not in ("triu", "tril"):
        return None
    args = list(call.args)
    if dotted_name(func.value) == "torch" and args and args[0].keyword is None:
        base, args = args[0].value, args[1:]
    else:
        base = func.value
    diagonal = next(
        (flat(a.value) for a in args if a.keyword is None or a.keyword.value == "diagonal"), "0"
    )
    if not _square(base, additive):
        return None
    if func.attr.value == "triu" and diagonal == "1":
        return "triu"
    return "tril" if func.attr.value == "tril" and diagonal == "0" and not additive else None


def _square(base: cst.BaseExpression, additive: bool) -> bool:
    """`torch.ones(T, T, ...)` / `torch.ones((T, T))`, or for an additive mask
    `torch.full((T, T), -inf)`: a square the mask's broadcast makes queries x keys. Also
    `torch.ones_like(scores, dtype=torch.bool)`, the scores' own (queries, keys) shape: its
    strict upper triangle masks key j > query i, the fused call's top-left is_causal, square
    or not (hkproj/pytorch-stable-diffusion)."""
    base = strip(base)
    if not isinstance(base, cst.Call):
        return False
    name = (dotted_name(base.func) or "").rsplit(".", 1)[-1]
    if name == "ones_like" and not additive:
        first = base.args[0].value if base.args and base.args[0].keyword is None else None
        scores = _SCORES.get()
        return scores is not None and first is not None and dotted_name(first) == scores
    sizes = [a.value for a in base.args if a.keyword is None]
    fill = None
    if name == "full" and len(sizes) == 2:
        sizes, fill = sizes[:1], flat(sizes[1])
    if len(sizes) == 1 and isinstance(sizes[0], cst.Tuple | cst.List):
        sizes = [e.value for e in sizes[0].elements]
    square = len(sizes) == 2 and flat(sizes[0]) == flat(sizes[1])
    if additive:
        return square and name == "full" and fill is not None and _neg_inf(fill)
    return square and name == "ones"


def _local_values(ctx: SourceContext, name: str) -> list[cst.BaseExpression]:
    """Every value a plain name is assigned in the module (a buffer built in steps)."""
    return [
        assign.value
        for assign in ctx.find(cst.Assign)
        if len(assign.targets) == 1 and dotted_name(assign.targets[0].target) == name
    ]


def _top_left_square(sub: cst.Subscript) -> bool:
    """`[:T, :T]`, `[:, :, :T, :T]`: full leading dims, then two `:X` slices of one X."""
    parts = [flat(el.slice) for el in sub.slice if isinstance(el.slice, cst.Index | cst.Slice)]
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
    """What `self.X` (a registered buffer or attribute) or a module-level name was built from.
    `self.X` is looked up in the class that holds the attention and its bases in the file:
    a `Scale` module's `self.scale = nn.Parameter(...)` or another block's causal `self.mask`
    says nothing about the attention class's own (metaformer's Attention and Scale)."""
    owner = _OWNER.get()
    if name.startswith("self.") and owner is not None:
        for cls in _class_and_bases(ctx, owner):
            built = _built_in(ctx, name, cls)
            if built is not None:
                return built
        return None
    return _built_in(ctx, name, None)


def _class_and_bases(ctx: SourceContext, owner: cst.ClassDef) -> list[cst.ClassDef]:
    """`owner`, then the classes of this file it derives from (nearest first)."""
    classes = {c.name.value: c for c in ctx.find(cst.ClassDef)}
    order, pending = [owner], [owner]
    while pending:
        for base in pending.pop(0).bases:
            found = classes.get(dotted_name(base.value) or "")
            if found is not None and found not in order:
                order.append(found)
                pending.append(found)
    return order


def _built_in(
    ctx: SourceContext, name: str, inside: cst.CSTNode | None
) -> cst.BaseExpression | None:
    attribute = name.removeprefix("self.")
    for call in ctx.find(cst.Call, inside=inside):
        if method_call(call, "register_buffer") and len(call.args) >= 2:
            key = call.args[0].value
            if isinstance(key, cst.SimpleString) and key.evaluated_value == attribute:
                return call.args[1].value
    for assign in ctx.find(cst.Assign, inside=inside):
        if len(assign.targets) == 1 and dotted_name(assign.targets[0].target) == name:
            return assign.value
    return None


@dataclass
class _Output:
    statement: cst.BaseStatement
    product: cst.BaseExpression
    value: str
    dropout: str | None = None
    transposed: str | None = None
    flips: list[cst.BaseStatement] = field(default_factory=list)
    """`w = w.permute(0, 2, 1)` statements, removed with the weights."""
    reorder: str = ""


def _value_product(
    ctx: SourceContext, rest: Sequence[cst.BaseStatement], weights: str, rank: int | None
) -> _Output | None:
    """The first statement after the softmax holding `weights @ v` (any product form, the
    weights optionally through a dropout there: `torch.matmul(self.dropout(w), v)`), or
    `v @ weights^T` (channels-first blocks: `w_ = w_.permute(0, 2, 1)`, `torch.bmm(v, w_)`),
    which is the fused call on v^T, transposed back."""
    flips: list[cst.BaseStatement] = []
    for stmt in rest:
        bound = assigned(stmt)
        if bound is not None and bound[0] == weights and flipped(bound[1], rank) == weights:
            flips.append(stmt)
            continue
        if isinstance(stmt, cst.BaseCompoundStatement):
            if _reads(stmt, weights):
                lines = ctx.source.splitlines()
                inner = next(
                    n
                    for n in descendants(stmt)
                    if isinstance(n, cst.SimpleStatementLine) and _reads(n, weights)
                )
                raise AttentionRefused(
                    f"`{weights}` is read under `{lines[ctx.line(stmt) - 1].strip()}` before "
                    f"`@ v` (`{lines[ctx.line(inner) - 1].strip()}`), which the fused call "
                    "cannot do: it never builds the weights"
                )
            return None
        for node in descendants(stmt):
            if not isinstance(node, cst.BaseExpression):
                continue
            product = value_product(ctx, node)
            if product is None:
                reordered = _reordered_values(ctx, node, weights)
                if reordered is not None and not flips:
                    return _Output(stmt, node, reordered[0], flips=flips, reorder=reordered[1])
                continue
            left, right, _ = product
            turned = len(flips) % 2 == 1
            if (dotted_name(right) if turned else flipped(right, rank)) == weights:
                dims = "1, 2" if rank == 3 else "-2, -1"
                value = f"{code(left)}.transpose({dims})"
                return _Output(stmt, node, value, transposed=dims, flips=flips)
            if turned:
                continue
            dropped = _dropout_of(ctx, left)
            if dropped is not None and dotted_name(strip(dropped[1])) == weights:
                return _Output(stmt, node, code(right), dropped[0], flips=flips)
            if dotted_name(left) == weights:
                return _Output(stmt, node, code(right), flips=flips)
        if _reads(stmt, weights):
            handed = _handed_to(stmt, weights)
            if handed is not None:
                raise AttentionRefused(
                    f"`{weights}` is handed to `{handed}(...)` before `@ v` (a hook, a log, "
                    "a statistic): the fused call never builds the weights"
                )
            raise AttentionRefused(f"`{weights}` is used before `@ v`")
    return None
