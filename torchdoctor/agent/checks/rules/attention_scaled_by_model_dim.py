"""attention-scaled-by-model-dim: multi-head attention scores scaled by the model's width."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import constant_number, terminal_name
from torchdoctor.agent.models import Severity

_HEADS = frozenset(
    {"n_head", "n_heads", "num_heads", "nhead", "nheads", "heads", "num_attention_heads",
     "head_num", "num_head"}
)  # fmt: skip
_HEAD_DIM = frozenset(
    {"d_k", "d_head", "head_dim", "dim_head", "head_size", "dim_per_head", "per_head_dim",
     "attention_head_size", "d_kv", "d_q", "head_channels", "key_dim"}
)  # fmt: skip
_MODEL_DIM = frozenset(
    {"d_model", "embed_dim", "hidden_size", "n_embd", "n_embed", "model_dim", "d_embed",
     "embedding_dim", "hidden_dim", "dim", "emb_dim", "d_hidden", "dim_model", "n_state"}
)  # fmt: skip
_SCALE_KEYWORDS = frozenset({"temperature", "scale", "scaling", "softmax_scale"})
_SCALE_WORDS = ("scale", "temperature", "norm_fact", "scaling", "temper")
_MATMULS = frozenset({"matmul", "bmm", "einsum", "baddbmm"})


class AttentionScaledByModelDim(Rule):
    """Detects multi-head attention whose scores are scaled by the square root of the model's
    width instead of the head's: `ScaledDotProductAttention(temperature=np.power(d_model,
    0.5))`, `q @ k.transpose(-2, -1) / math.sqrt(self.d_model)`, `self.scale = dim ** -0.5`,
    in a class that splits its width over heads (it has a head count and a per-head size:
    `d_k`, `head_dim`, `dim_head`, or `d_model // n_head`). Also queries and keys each divided
    by the width's fourth root (`queries / (e ** (1/4))`, `keys * e ** -0.25`), where the width
    is any name the class divides by its head count (`s = e // h`, `h = self.heads`).

    Why it matters: each head's dot products are sums over `d_k` terms, so their spread grows
    as `sqrt(d_k)`; dividing by `sqrt(d_model)` (`sqrt(n_head)` times larger) flattens every
    softmax toward uniform attention, and the model learns slowly or not at all.
    jadore801120/attention-is-all-you-need-pytorch fixed exactly this (`e108f0f`, "temperature
    definition fix": `np.power(d_model, 0.5)` -> `np.power(d_k, 0.5)`), and pbloem/former
    in its fourth-root form (`e3125a4`: `queries / (e ** (1/4))` -> `(s ** (1/4))`).

    The scale is reported where it is given to attention: a `temperature=`/`scale=` argument,
    a division or product with a matrix product of the scores, or a `scale`/`temperature`
    attribute that one of those reads. Not reported: single-head attention (no head count, or
    no per-head size distinct from the width), embeddings scaled by `sqrt(d_model)` (no
    matrix product), initialisation and learning-rate formulas (`d_model ** -0.5 * min(...)`).

    Example:
        self.attention = ScaledDotProductAttention(temperature=np.power(d_model, 0.5))

    Fix: scale by the per-head size: `temperature=d_k ** 0.5`, `/ math.sqrt(self.head_dim)`,
    `self.scale = dim_head ** -0.5`.
    """

    id = "attention-scaled-by-model-dim"
    point = 4
    severity = Severity.HIGH
    title = "Attention scores scaled by the model width"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef,)
    triggers = Triggers(tuple(sorted(_HEADS)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.ClassDef)
        names = _class_names(node)
        if not names & _HEADS:
            return
        derived_widths, derived_heads = _split_by_heads(node)
        head_dims = (names & _HEAD_DIM) | derived_heads
        if not head_dims and not _divides_by_heads(node):
            return
        widths = (_MODEL_DIM | derived_widths) - head_dims
        quarter = _has_matmul(node)
        scale_attributes: dict[str, ast.AST] = {}
        for inner in walk_tree(node):
            width = None
            if isinstance(inner, ast.keyword) and inner.arg in _SCALE_KEYWORDS:
                width = _root_of_width(inner.value, widths)
                site: ast.AST = inner.value
            elif isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Div | ast.Mult):
                for scale, other in ((inner.right, inner.left), (inner.left, inner.right)):
                    width = _root_of_width(scale, widths)
                    if width is not None and _has_matmul(other):
                        break
                    width = _fourth_root_of_width(scale, widths) if quarter else None
                    if width is not None:
                        break
                site = inner
            elif isinstance(inner, ast.Assign) and len(inner.targets) == 1:
                target = terminal_name(inner.targets[0])
                if (
                    target
                    and any(word in target.lower() for word in _SCALE_WORDS)
                    and _root_of_width(inner.value, widths) is not None
                ):
                    scale_attributes[target] = inner
            if width is not None:
                self._report(ctx, site, width)
        for target, assign in scale_attributes.items():
            if _scores_read(node, target):
                width = _root_of_width(assign.value, widths)  # type: ignore[attr-defined]
                assert width is not None
                self._report(ctx, assign, width)

    def _report(self, ctx: ModuleContext, site: ast.AST, width: str) -> None:
        ctx.report(
            self,
            site,
            f"The attention scores are scaled by the square root of `{width}`, the model's "
            "width, but each head's dot products sum over the per-head size: the scale is "
            "sqrt(heads) times too large and flattens every softmax. Scale by the head size "
            "(`d_k ** 0.5`, `head_dim ** -0.5`).",
        )


def _class_names(cls: ast.ClassDef) -> set[str]:
    """Parameter names of the class's methods, its `self.x` attributes and local names."""
    names: set[str] = set()
    for inner in walk_tree(cls):
        if isinstance(inner, ast.arg):
            names.add(inner.arg)
        elif isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Store):
            names.add(inner.attr)
        elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
            names.add(inner.id)
    return names


def _divides_by_heads(cls: ast.ClassDef) -> bool:
    """`d_model // n_head`: the class derives a per-head size from the width."""
    return any(
        isinstance(inner, ast.BinOp)
        and isinstance(inner.op, ast.FloorDiv | ast.Div)
        and terminal_name(inner.right) in _HEADS
        for inner in walk_tree(cls)
    )


def _split_by_heads(cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """Widths and head sizes the class derives: in `s = e // h` with `h` a head count (or a
    local bound to one, `h = self.heads`), `e` is a width and `s` a head size."""
    head_counts = set(_HEADS)
    assigns = [
        inner
        for inner in walk_tree(cls)
        if isinstance(inner, ast.Assign) and len(inner.targets) == 1
    ]
    for assign in assigns:
        target = assign.targets[0]
        if isinstance(target, ast.Name) and terminal_name(assign.value) in _HEADS:
            head_counts.add(target.id)
    widths: set[str] = set()
    head_sizes: set[str] = set()
    for assign in assigns:
        value = assign.value
        if (
            isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.FloorDiv | ast.Div)
            and terminal_name(value.right) in head_counts
        ):
            width, size = terminal_name(value.left), terminal_name(assign.targets[0])
            if width and size and width != size:
                widths.add(width)
                head_sizes.add(size)
    return widths, head_sizes


def _width_name(node: ast.expr, widths: set[str] | frozenset[str]) -> str | None:
    """The name when `node` names the model's width (not one of the class's head sizes)."""
    name = terminal_name(node)
    return name if name in widths else None


def _root_of_width(node: ast.AST, widths: set[str] | frozenset[str]) -> str | None:
    """The width's name when `node` is its square root or inverse square root:
    `math.sqrt(d)`, `np.sqrt(d)`, `d ** 0.5`, `d ** -0.5`, `np.power(d, 0.5)`, `1 / sqrt(d)`."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow) and _is_power(node.right, 0.5):
            return _width_name(node.left, widths)
        if isinstance(node.op, ast.Div) and isinstance(node.left, ast.Constant):
            return _root_of_width(node.right, widths)
        return None
    if isinstance(node, ast.Call) and node.args:
        func = terminal_name(node.func)
        if func == "sqrt" and len(node.args) == 1:
            return _width_name(node.args[0], widths)
        if func in ("power", "pow") and len(node.args) == 2 and _is_power(node.args[1], 0.5):
            return _width_name(node.args[0], widths)
    return None


def _fourth_root_of_width(node: ast.AST, widths: set[str] | frozenset[str]) -> str | None:
    """The width's name when `node` is its fourth root (`e ** (1/4)`, `e ** 0.25`): queries
    and keys each divided by it scale their product by the width's square root."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _is_power(node.right, 0.25):
        return _width_name(node.left, widths)
    return None


def _is_power(node: ast.expr, exponent: float) -> bool:
    """`node` is the constant `exponent` (or its negation), spelled `0.25` or `1/4`."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        top, bottom = constant_number(node.left), constant_number(node.right)
        return top is not None and bottom is not None and bottom != 0 and top / bottom == exponent
    return constant_number(node) == exponent


def _has_matmul(node: ast.AST) -> bool:
    for inner in walk_tree(node):
        if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.MatMult):
            return True
        if isinstance(inner, ast.Call) and terminal_name(inner.func) in _MATMULS:
            return True
    return False


def _scores_read(cls: ast.ClassDef, attribute: str) -> bool:
    """Whether `self.<attribute>` scales a matrix product or is given as a scale argument."""
    for inner in walk_tree(cls):
        if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Div | ast.Mult):
            for scale, other in ((inner.right, inner.left), (inner.left, inner.right)):
                if terminal_name(scale) == attribute and _has_matmul(other):
                    return True
        if (
            isinstance(inner, ast.keyword)
            and inner.arg in _SCALE_KEYWORDS
            and terminal_name(inner.value) == attribute
        ):
            return True
    return False
