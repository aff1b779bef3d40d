"""softmax-without-dim: a softmax whose dimension PyTorch guesses from the input's rank."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.tensor_rank import tensor_rank
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import first_argument, identifier, kwarg
from torchdoctor.agent.checks.patterns import has_star_kwargs
from torchdoctor.agent.checks.rules.nll_loss_input import LINEAR_LAYERS, is_nll_loss
from torchdoctor.agent.models import Severity

# factories whose result is 1-D when given one size that is not a sequence
_SIZED = frozenset(f"torch.{name}" for name in ("zeros", "ones", "empty", "rand", "randn"))
_SHAPE_KEEPING = frozenset(
    {"float", "double", "half", "bfloat16", "to", "cuda", "cpu", "detach", "clone", "contiguous"}
)
_ALWAYS_1D = frozenset({"torch.arange", "torch.linspace", "torch.logspace", "torch.randperm"})

# name -> index of `dim` among the positional arguments
_FUNCTIONS = {
    "torch.nn.functional.softmax": 1,
    "torch.nn.functional.log_softmax": 1,
    "torch.nn.functional.softmin": 1,
}
_MODULES = {"torch.nn.Softmax": 0, "torch.nn.LogSoftmax": 0, "torch.nn.Softmin": 0}


class SoftmaxWithoutDim(Rule):
    """Detects `F.softmax(x)`, `F.log_softmax(x)`, `F.softmin(x)` and `nn.Softmax()`,
    `nn.LogSoftmax()`, `nn.Softmin()` given no `dim` (or `dim=None`).

    Why it matters: PyTorch then picks the dimension from the input's rank (dim 0 for 0-, 1-
    and 3-D inputs, dim 1 otherwise) and only warns that the choice is deprecated. For a
    `(batch, classes)` tensor the guess is right by accident; for a sequence `(seq, batch,
    vocab)`, a routing tensor or any 4-D map it normalises over the wrong axis: the
    "probabilities" sum to one across examples or positions, and training still runs.

    Not reported: calls with a `dim` (positional or keyword) or `**kwargs` that may carry one,
    `torch.softmax` / `Tensor.softmax` (they require `dim`), and functions of other libraries
    or of the project named `softmax`. An input that is 1-D by construction (`torch.zeros(n)`,
    `torch.arange(n)`, a name bound only to such) has one axis, so the guess is right: that is
    reported at low severity, for the deprecated implicit choice.

    Example:
        weights = F.softmax(scores.unsqueeze(0))   # 4-D: normalised over dim 1

    Fix: state the dimension the distribution is over, e.g. `F.softmax(scores, dim=-1)` or
    `nn.Softmax(dim=1)`. Where the input's rank is known (a `view(-1, 320)` before the
    model's last `nn.Linear`; a Linear's logits whose log_softmax `nll_loss` reads, classes
    last and at dim 1, so 2-D), the finding says which dim PyTorch picks today, and the
    codemod writes it out (except for a 3-D input, whose dim 0 is rarely the one meant).
    """

    id = "softmax-without-dim"
    point = 3
    severity = Severity.MEDIUM
    title = "Softmax without dim"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    severity_note = (
        "medium; low when the input is 1-D by construction (the guessed dim 0 is its only axis)"
    )

    def applies(self, ctx: ModuleContext) -> bool:
        return "oftm" in ctx.source and ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        read_as_classes = _logits_read_by_nll_loss(ctx)
        for table in (_FUNCTIONS, _MODULES):
            for call in ctx.flow.calls_to(table):
                qual = ctx.flow.qualname_of(call) or ""
                if _dim_given(call, table[qual]):
                    continue
                name = qual.rsplit(".", 1)[-1]
                if table is _FUNCTIONS:
                    rank, loss = _applied_rank(ctx, call, read_as_classes)
                else:
                    rank, loss = _module_rank(ctx, call, read_as_classes)
                if rank == 1 and table is _FUNCTIONS:
                    ctx.report(
                        self,
                        call,
                        f"`{name}` is given no dim; its input is 1-D here, so the guessed dim 0 "
                        "is the right one, but the implicit choice is deprecated: pass `dim=0`",
                        severity=Severity.LOW,
                        data={
                            "function": qual,
                            "input_rank": 1,
                            "implicit_dim": 0,
                            "input": ast.unparse(call.args[0]),
                        },
                    )
                    continue
                data: dict[str, object] = {"function": qual}
                known = ""
                if rank is not None:
                    data |= {"input_rank": rank, "implicit_dim": implicit_softmax_dim(rank)}
                    if table is _FUNCTIONS:
                        data["input"] = ast.unparse(call.args[0])
                    where = "here" if table is _FUNCTIONS else "where it is applied"
                    known = f" (its input is {rank}-D {where}: dim {data['implicit_dim']})"
                if loss is not None:
                    data["rank_from"] = f"a Linear's logits that `{loss}` reads at dim 1"
                    known = (
                        f" (its input, a Linear's logits that `{loss}` reads as classes at "
                        "dim 1, is (batch, classes): dim 1)"
                    )
                ctx.report(
                    self,
                    call,
                    f"`{name}` is given no dim: PyTorch picks dim 0 for 0-, 1- and 3-D inputs "
                    f"and dim 1 otherwise{known}, which is the wrong axis for most sequence "
                    "and higher-rank tensors",
                    data=data,
                )


def implicit_softmax_dim(rank: int) -> int:
    """The dim PyTorch's legacy rule picks for an input of `rank` dimensions
    (`torch.nn.functional._get_softmax_dim`): 0 for 0-, 1- and 3-D inputs, 1 otherwise."""
    return 0 if rank in (0, 1, 3) else 1


def _input_rank(ctx: ModuleContext, call: ast.Call) -> int | None:
    if not call.args:
        return None
    return 1 if _one_dimensional(ctx, call.args[0]) else tensor_rank(ctx, call.args[0])


def _applied_rank(
    ctx: ModuleContext, call: ast.Call, read_as_classes: dict[int, str]
) -> tuple[int | None, str | None]:
    """The rank of what a softmax call (or a softmax module's application) normalises, and
    the NLL loss whose reading fixed it when that is how it is known."""
    rank = _input_rank(ctx, call)
    if rank is None and id(call) in read_as_classes:
        return 2, read_as_classes[id(call)]
    return rank, None


def _module_rank(
    ctx: ModuleContext, built: ast.Call, read_as_classes: dict[int, str]
) -> tuple[int | None, str | None]:
    """For `self.softmax = nn.LogSoftmax()`: the rank every application of the module in
    this file (`self.softmax(self.out(h))`) normalises, when they agree; None when one is
    unknown or there is none here."""
    parent = ctx.parents.get(built)
    if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1):
        return None, None
    name = identifier(parent.targets[0])
    if not name:
        return None, None
    applied = [
        call
        for call in ctx.flow.nodes(ast.Call)
        if call.args
        and identifier(call.func) == name
        and any(made is built for made in ctx.flow.constructors(call.func))
    ]
    known = {_applied_rank(ctx, call, read_as_classes) for call in applied}
    if len(known) != 1:
        return None, None
    return known.pop()


def _logits_read_by_nll_loss(ctx: ModuleContext) -> dict[int, str]:
    """Log-softmaxes given no dim (by id) whose result an NLL loss reads as its input, with
    the classes at dim 1, and whose own input is a Linear's output, the classes last (in this
    function, or through a model's `forward`: `F.nll_loss(model(x), y)`): for both to hold
    the logits are (batch, classes), 2-D. -> the loss's callee, for the message."""
    if "nll_loss" not in ctx.source and "NLLLoss" not in ctx.source:
        return {}
    found: dict[int, str] = {}
    for call in ctx.flow.nodes(ast.Call):
        if not is_nll_loss(ctx, call) or (value := first_argument(call, "input")) is None:
            continue
        for producer in ctx.flow.value_producers(value):
            qual = ctx.flow.qualname_of(producer) or ""
            if qual == "torch.nn.functional.log_softmax":
                implicit = not _dim_given(producer, _FUNCTIONS[qual])
            else:  # an application of `nn.LogSoftmax()`: its dim is checked where it is built
                implicit = not qual and ctx.flow.constructed_as(producer.func) == (
                    "torch.nn.LogSoftmax"
                )
            if implicit and producer.args and _linear_logits(ctx, producer.args[0]):
                found[id(producer)] = ast.unparse(call.func)
    return found


def _linear_logits(ctx: ModuleContext, value: ast.expr) -> bool:
    """`value` is what a Linear layer returns (`self.fc2(x)`, `F.linear(x, w)`), directly or
    as a model's output whose `forward` ends in one."""
    producers = list(ctx.flow.value_producers(value))
    if not producers:
        return False
    if _is_linear(ctx, producers[0]):
        return True
    return ctx.flow.is_model_call(producers[0]) and any(_is_linear(ctx, p) for p in producers[1:])


def _is_linear(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual == "torch.nn.functional.linear"
    return ctx.flow.constructed_as(call.func) in LINEAR_LAYERS


def _dim_given(call: ast.Call, position: int) -> bool:
    """A `dim` passed by position or keyword (not `None`), or `**kwargs` that may hold one."""
    if has_star_kwargs(call) or any(isinstance(a, ast.Starred) for a in call.args):
        return True
    dim = kwarg(call, "dim")
    if dim is None and len(call.args) > position:
        dim = call.args[position]
    return dim is not None and not (isinstance(dim, ast.Constant) and dim.value is None)


def _one_dimensional(ctx: ModuleContext, expr: ast.expr) -> bool:
    """`expr` is a 1-D tensor by construction: a factory given one size (`torch.zeros(n)`),
    `torch.arange(...)` and kin, or a name every binding of which is one of those (an indexed
    write such as `scores[i] = ...` keeps the shape; any other rebinding makes it unknown)."""
    expr = _shape_kept(expr)
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return bool(values) and all(_one_dimensional_factory(ctx, _shape_kept(v)) for v in values)
    return _one_dimensional_factory(ctx, expr)


def _shape_kept(expr: ast.expr) -> ast.expr:
    """What `-x`, `x.float()`, `x.to(device)` and kin are computed from: same shape."""
    while True:
        if isinstance(expr, ast.UnaryOp):
            expr = expr.operand
        elif (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in _SHAPE_KEEPING
        ):
            expr = expr.func.value
        else:
            return expr


def _one_dimensional_factory(ctx: ModuleContext, expr: ast.expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    qual = ctx.flow.qualname_of(expr)
    if qual in _ALWAYS_1D:
        return True
    if qual == "torch.randint":  # (high, size) or (low, high, size): size is a sequence
        return len(expr.args) >= 2 and _one_size(ctx, expr.args[-1], sequence_only=True)
    return qual in _SIZED and len(expr.args) == 1 and _one_size(ctx, expr.args[0])


def _one_size(ctx: ModuleContext, size: ast.expr, *, sequence_only: bool = False) -> bool:
    """A size of one dimension: `(n,)`, `[n]`, or (unless a sequence is required) one number."""
    if isinstance(size, ast.Tuple | ast.List):
        return len(size.elts) == 1 and not isinstance(size.elts[0], ast.Starred)
    return not sequence_only and _scalar(ctx, size)


def _scalar(ctx: ModuleContext, size: ast.expr, depth: int = 0) -> bool:
    """One number: a literal int, `len(...)`, arithmetic of those, or a name bound only to
    those (followed three bindings deep)."""
    if isinstance(size, ast.Constant):
        return isinstance(size.value, int) and not isinstance(size.value, bool)
    if isinstance(size, ast.Call):
        return isinstance(size.func, ast.Name) and size.func.id == "len"
    if isinstance(size, ast.BinOp):
        return _scalar(ctx, size.left, depth) and _scalar(ctx, size.right, depth)
    if isinstance(size, ast.Name) and depth < 3:
        values = ctx.flow.definitions(size)
        return bool(values) and all(_scalar(ctx, v, depth + 1) for v in values)
    return False
