"""scalar-loss-indexed: `loss.data[0]` on a 0-dim loss (the pre-0.4 idiom)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import ClassVar

from torchdoctor.agent.checks.analysis.model_facts import LOSS_TEXT
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity


class ScalarLossIndexed(Rule):
    """Detects indexing a 0-dim value with `[0]`: `loss.data[0]`, or `loss[0]` where `loss`
    comes from a torch loss (`nn.CrossEntropyLoss()(...)`, `F.nll_loss(...)`), from a tensor
    reduced whole (`model(x).sum()`, the accuracy count `(pred == y).sum().data[0]`,
    `torch.mean(t)`), or from arithmetic on such values and numbers (`d_loss = d_loss_real +
    d_loss_fake`).

    Why it matters: since PyTorch 0.4 a mean- or sum-reduced loss is a 0-dim tensor, and
    indexing it raises `IndexError: invalid index of a 0-dim tensor`. Old training scripts die
    at their first log line, or in the evaluation function only, after a full epoch.

    Not reported: losses computed with `reduction='none'` (or `reduce=False`), whose result
    is a vector, a sum with any term that is not such a loss (a penalty tensor), and `[0]`
    on the result of a project loss that is not known to be a torch loss (detection losses
    return tuples: `loss, parts = criterion(...)` style), reductions over one dimension
    (`out.sum(0)[0]`, `output.max(1)[0]`), and a bare `[0]` of a reduction whose receiver is
    not known to be a tensor (a pandas frame's `df.sum()[0]`).

    Example:
        loss = criterion(output, target)
        running += loss.data[0]

    Fix: `loss.item()` (a Python number), or `loss.detach()` to keep a tensor.
    """

    id = "scalar-loss-indexed"
    point = 1
    severity = Severity.HIGH
    title = "0-dim loss indexed"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Subscript,)
    # a report needs a loss callee or a reduction of a whole tensor
    triggers = Triggers(
        words=(*LOSS_TEXT.words, ".sum(", ".mean(", ".norm(", ".max(", ".min(", ".prod("),
        lowered=LOSS_TEXT.lowered,
        for_identifiers=True,
    )

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Subscript)
        index = node.slice
        if not (isinstance(index, ast.Constant) and index.value == 0):
            return
        if not isinstance(node.ctx, ast.Load):
            return
        base = node.value
        through_data = isinstance(base, ast.Attribute) and base.attr == "data"
        if through_data:
            assert isinstance(base, ast.Attribute)
            base = base.value
        if not _zero_dim(base, ctx, through_data):
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` indexes a reduced loss or a tensor reduced whole, a 0-dim "
            "tensor since PyTorch 0.4: this raises IndexError; use .item()",
            data={"indexed": ast.unparse(node)},
        )


def _zero_dim(value: ast.expr, ctx: ModuleContext, through_data: bool, depth: int = 0) -> bool:
    """`value` is a 0-dim tensor: a loss call that reduces (`.data[0]`: any loss callee; a
    bare `[0]`: a torch loss only), a tensor reduced whole (`model(x).sum()`, `(pred ==
    y).sum()`, `torch.mean(t)`), a cast or detached copy of one (`loss.detach().cpu()`),
    arithmetic on such values and numbers (a GAN's `d_loss = d_loss_real + d_loss_fake`, a
    weighted `loss = a + 0.5 * b`), or a name every definition of which is one; the number a
    sum of them starts from does not count (a char-RNN's `loss = 0`, then `loss +=
    criterion(...)` per character: a number has no `.data` to index)."""
    return _memoised(ctx, "zero_dim", value, through_data, depth, _zero_dim_uncached)


def _memoised(
    ctx: ModuleContext,
    question: str,
    value: ast.expr,
    through_data: bool,
    depth: int,
    answer: Callable[[ast.expr, ModuleContext, bool, int], bool],
) -> bool:
    """Each value asked once per module: a name rebound many times (`h = h + block(h)`) is
    reached again through each of its bindings. A value asked while it is being answered
    (a cycle through its own bindings) is not known to be what is asked."""
    if depth > _MAX_DEPTH:
        return False
    memo = ctx.memo_table(f"scalar-loss-indexed.{question}")
    key = (id(value), through_data)
    if key not in memo:
        memo[key] = False
        memo[key] = answer(value, ctx, through_data, depth)
    return bool(memo[key])


def _zero_dim_uncached(value: ast.expr, ctx: ModuleContext, through_data: bool, depth: int) -> bool:
    if isinstance(value, ast.Name):
        definitions = [
            d
            for d in ctx.flow.definitions(value)
            if not (isinstance(d, ast.Constant) and _number(d.value))
        ]
        return bool(definitions) and all(
            _zero_dim(d, ctx, through_data, depth + 1) for d in definitions
        )
    if isinstance(value, ast.Call):
        func = value.func
        if isinstance(func, ast.Attribute) and func.attr in _SHAPE_KEEPING:
            return _zero_dim(func.value, ctx, through_data, depth + 1)
        return _reduced_whole(value, ctx, through_data, depth) or (
            ctx.flow.text_names_a_loss and _reducing_loss_call(value, ctx, through_data)
        )
    if not isinstance(value, ast.BinOp):
        return False
    operands = _operands(value)  # [value] itself for another operator (`a @ b`): unknown
    if operands == [value]:
        return False
    terms = [o for o in operands if not (isinstance(o, ast.Constant) and _number(o.value))]
    return bool(terms) and all(_zero_dim(o, ctx, through_data, depth + 1) for o in terms)


def _reduced_whole(call: ast.Call, ctx: ModuleContext, through_data: bool, depth: int) -> bool:
    """A reduction over every element: `t.sum()`, `t.norm(2)`, `torch.mean(t)`, given no
    dimension. The method's receiver must be a tensor (a pandas frame's `df.sum()` is a
    Series), which `.data` read from the result shows by itself: only a tensor has it."""
    func = call.func
    if any(k.arg in _DIMENSION_KEYWORDS for k in call.keywords) or any(
        isinstance(a, ast.Starred) for a in call.args
    ):
        return False
    qual = ctx.call_qualname(call) or ""
    if qual.startswith("torch."):
        leading = _FULL_REDUCTIONS.get(qual.removeprefix("torch."))
        return leading is not None and len(call.args) == leading + 1
    if not isinstance(func, ast.Attribute) or qual:
        return False
    leading = _FULL_REDUCTIONS.get(func.attr)
    return (
        leading is not None
        and len(call.args) <= leading
        and (through_data or _tensor(func.value, ctx, depth + 1))
    )


def _tensor(value: ast.expr, ctx: ModuleContext, depth: int) -> bool:
    """`value` is known to be a tensor: a model's output, what a torch function returns, an
    element, comparison or arithmetic of tensors, a tensor method's result (`output.max(1)[1]`,
    `pred.eq(y).long()`), or a name every definition of which is one."""
    return _memoised(ctx, "tensor", value, False, depth, _tensor_uncached)


def _tensor_uncached(value: ast.expr, ctx: ModuleContext, _: bool, depth: int) -> bool:
    if isinstance(value, ast.Name):
        definitions = ctx.flow.definitions(value)
        return bool(definitions) and all(_tensor(d, ctx, depth + 1) for d in definitions)
    if isinstance(value, ast.Subscript):
        return _tensor(value.value, ctx, depth + 1)
    if isinstance(value, ast.Attribute):
        return value.attr in _TENSOR_ATTRIBUTES and _tensor(value.value, ctx, depth + 1)
    if isinstance(value, ast.UnaryOp):
        return _tensor(value.operand, ctx, depth + 1)
    if isinstance(value, ast.BinOp):
        operands: list[ast.expr] = [value.left, value.right]
    elif isinstance(value, ast.Compare):
        operands = [value.left, *value.comparators]
    elif isinstance(value, ast.Call):
        func = value.func
        if ctx.flow.is_model_call(value) or (ctx.call_qualname(value) or "").startswith("torch."):
            return True
        if not isinstance(func, ast.Attribute) or func.attr not in _TENSOR_METHODS:
            return False
        operands = [func.value]
    else:
        return False
    return any(_tensor(o, ctx, depth + 1) for o in operands)


# method -> how many leading positional arguments it takes that are not a dimension
# (`t.norm(2)` is the 2-norm of every element, `t.sum(0)` a reduction over one axis)
_FULL_REDUCTIONS = {
    "sum": 0,
    "mean": 0,
    "prod": 0,
    "max": 0,
    "min": 0,
    "amax": 0,
    "amin": 0,
    "median": 0,
    "std": 0,
    "var": 0,
    "all": 0,
    "any": 0,
    "nansum": 0,
    "nanmean": 0,
    "norm": 1,
}
_DIMENSION_KEYWORDS = frozenset({"dim", "axis", "keepdim"})
_SHAPE_KEEPING = frozenset(
    {"detach", "cpu", "cuda", "to", "float", "double", "half", "long", "int", "clone"}
)
# What a tensor's attribute or method gives is a tensor again (or, for max/min/sort/topk
# given a dim, a pair of tensors, whose element is one).
_TENSOR_ATTRIBUTES = frozenset({"data", "grad", "T", "mT", "real", "imag"})
_TENSOR_METHODS = frozenset(
    {
        *_SHAPE_KEEPING,
        *_FULL_REDUCTIONS,
        "view", "reshape", "squeeze", "unsqueeze", "flatten", "permute", "transpose",
        "contiguous", "eq", "ne", "gt", "ge", "lt", "le", "pow", "exp", "log", "abs", "sqrt",
        "neg", "sigmoid", "tanh", "relu", "softmax", "log_softmax", "argmax", "argmin",
        "round", "short", "byte", "bool", "type_as", "masked_select", "sort",
        "topk", "kthvalue", "mode", "mul", "add", "sub", "div", "clamp",
    }
)  # fmt: skip


_MAX_DEPTH = 10
"""Steps followed back from the indexed value (a name, its definition, a sum's term, a
method's receiver): a GAN's weighted sum of summed losses is 6 deep."""


def _operands(value: ast.expr) -> list[ast.expr]:
    """The leaves of a chain of + - * / (`a + b + 0.5 * c` -> a, b, 0.5, c)."""
    if isinstance(value, ast.BinOp) and isinstance(
        value.op, ast.Add | ast.Sub | ast.Mult | ast.Div
    ):
        return [*_operands(value.left), *_operands(value.right)]
    return [value]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reducing_loss_call(call: ast.Call, ctx: ModuleContext, any_loss: bool) -> bool:
    made: list[ast.expr] = (
        [call.func] if isinstance(call.func, ast.Call) else list(ctx.flow.constructors(call.func))
    )
    if any(_unreduced(c) for c in (call, *made)) or not ctx.flow.is_loss_callee(call.func):
        return False
    qual = ctx.call_qualname(call) or ""
    torch_loss = qual.startswith("torch.nn.functional.") or bool(ctx.flow.loss_class(call.func))
    return any_loss or torch_loss


def _unreduced(call: ast.expr) -> bool:
    """`reduction='none'` or the legacy `reduce=False` among the call's arguments."""
    if not isinstance(call, ast.Call):
        return False
    reduction, reduce = kwarg(call, "reduction"), kwarg(call, "reduce")
    return (isinstance(reduction, ast.Constant) and reduction.value == "none") or (
        isinstance(reduce, ast.Constant) and reduce.value is False
    )
