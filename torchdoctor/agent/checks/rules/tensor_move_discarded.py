"""tensor-move-discarded: `x.to(device)` on a tensor whose result nothing keeps."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Tensor methods that return the moved or cast copy and leave the receiver as it was.
_MOVES = frozenset(
    {"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "long", "int", "bool", "type"}
)
# Last names of calls that build tensors, qualified or through a project alias
# (`zeros = torch.zeros` in a utils module, then `x = zeros(n)`).
_FACTORY_NAMES = frozenset(
    {"zeros", "ones", "empty", "full", "rand", "randn", "randint", "arange", "eye", "linspace",
     "tensor", "as_tensor", "from_numpy", "Tensor", "FloatTensor", "DoubleTensor", "LongTensor",
     "zeros_like", "ones_like", "randn_like", "rand_like", "empty_like", "full_like", "cat",
     "stack"}
)  # fmt: skip
# Methods that only tensors have (numpy arrays, lists and modules have none of them): a name
# bound to their result (`spect = spect.view(1, 1, h, w)`) holds a tensor.
_TENSOR_METHODS = frozenset(
    {"contiguous", "unsqueeze", "permute", "view", "view_as", "expand", "expand_as", "narrow",
     "masked_fill", "index_select", "new_zeros", "new_ones", "new_full", "new_empty",
     "new_tensor"}
)  # fmt: skip
# Containers of modules (torchmetrics metrics and losses are modules too) or optimizers, whose
# elements `.to()` moves in place.
_MODULE_WORDS = re.compile(
    r"model|net|module|layer|encoder|decoder|optim|critic|actor|policy|metric|loss|criteri"
)


class TensorMoveDiscarded(Rule):
    """Detects a tensor move or cast whose result is dropped: `x.to(device)` / `x.cuda()` /
    `x.float()` written as a statement on its own, where `x` is a tensor (built by a torch
    function or a tensor factory in that function, or the result of a method only tensors
    have: `x = x.contiguous()`, `x.view(1, -1)`, `x.unsqueeze(0)`), and `v = v.to(device)`
    on the loop variable of a loop over a dict's values or items, with `v` not read again in
    the loop (the dict keeps the old tensors).

    Why it matters: unlike `Module.to()`, which moves a module in place, `Tensor.to()` and
    the casts return a new tensor and leave the receiver where it was. The code reads as if
    the tensor moved; it did not, and the next operation that mixes it with GPU tensors fails
    ("Expected all tensors to be on the same device"), or a batch silently stays on the CPU.

    Not reported: modules (`model.cuda()` moves the module), receivers not known to be
    tensors, loops over containers of models, metrics, losses or optimizers (named so, or a
    parameter annotated with another type than tensors: `Dict[str, MetricCollection]`), loop
    variables read after the move (`batch[k] = v`), and test modules.

    Example:
        x = torch.zeros(b.size())
        if b.is_cuda:
            x.to(b.device)

    Fix: keep the result (`x = x.to(b.device)`, `batch[k] = v.to(device)`), or create the
    tensor where it belongs (`torch.zeros(b.size(), device=b.device)`).
    """

    id = "tensor-move-discarded"
    point = 1
    severity = Severity.HIGH
    title = "Tensor moved or cast, result discarded"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(tuple(f".{m}(" for m in ("to", "cuda", "float", "half", "double", "long")))

    def applies(self, ctx: ModuleContext) -> bool:
        return not ctx.test_module and self.triggers.found_in(ctx.source)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or not _may_report(ctx):
            return
        for fn in ctx.flow.nodes(ast.FunctionDef):
            for node in walk_scope(fn.body):
                if isinstance(node, ast.Expr):
                    self._check_statement(ctx, node, fn)
                elif isinstance(node, ast.For) and not _annotated_otherwise(fn, node):
                    self._check_loop(ctx, node)

    def _check_statement(self, ctx: ModuleContext, stmt: ast.Expr, fn: ast.FunctionDef) -> None:
        call = stmt.value
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _MOVES
            and isinstance(call.func.value, ast.Name)
        ):
            return
        receiver = call.func.value
        if not _built_as_tensor(ctx, receiver, fn) or ctx.flow.is_module_value(receiver):
            return
        ctx.report(
            self,
            call,
            f"`{ast.unparse(call)}` returns a moved copy that nothing keeps: `{receiver.id}` "
            f"stays where it was (Tensor.{call.func.attr}() is not in place, unlike "
            f"Module.to()); write `{receiver.id} = {ast.unparse(call)}`",
            data={"name": receiver.id, "statement": True},
        )

    def _check_loop(self, ctx: ModuleContext, loop: ast.For) -> None:
        iterated = loop.iter
        if not (
            isinstance(iterated, ast.Call)
            and isinstance(iterated.func, ast.Attribute)
            and iterated.func.attr in ("items", "values")
            and not _MODULE_WORDS.search(ast.unparse(iterated.func.value).lower())
        ):
            return
        target = loop.target
        names = target.elts if isinstance(target, ast.Tuple) else [target]
        value = names[-1]
        if not isinstance(value, ast.Name) or _MODULE_WORDS.search(value.id.lower()):
            return
        for stmt in loop.body:
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == value.id
                and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Attribute)
                and stmt.value.func.attr in _MOVES
                and _chain_root(stmt.value) == value.id
            ):
                continue
            later = loop.body[loop.body.index(stmt) + 1 :]
            if any(
                isinstance(n, ast.Name) and n.id == value.id for s in later for n in walk_tree(s)
            ):
                return
            ctx.report(
                self,
                stmt,
                f"`{value.id} = {ast.unparse(stmt.value)}` rebinds the loop variable only: "
                f"`{ast.unparse(iterated.func.value)}` keeps the tensors where they were; "
                "store the moved tensor back into the container",
                data={"name": value.id, "statement": False},
            )
            return


def _annotated_otherwise(fn: ast.FunctionDef, loop: ast.For) -> bool:
    """The loop iterates a parameter annotated with a type that is not a tensor container
    (`metrics: Dict[str, MetricCollection]`): its elements are what the annotation says."""
    iterated = loop.iter
    if isinstance(iterated, ast.Call) and isinstance(iterated.func, ast.Attribute):
        iterated = iterated.func.value
    if not isinstance(iterated, ast.Name):
        return False
    for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
        if arg.arg == iterated.id and arg.annotation is not None:
            return "Tensor" not in ast.unparse(arg.annotation)
    return False


def _chain_root(call: ast.Call) -> str | None:
    """`v` of `v.float().to(device)`: the name a chain of tensor method calls starts from."""
    node: ast.expr = call
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        node = node.func.value
    return node.id if isinstance(node, ast.Name) else None


def _built_as_tensor(ctx: ModuleContext, name: ast.Name, fn: ast.FunctionDef) -> bool:
    """`name` is bound in `fn` to a tensor factory or a torch function's result, or to a
    comparison (`mask = row_vector < matrix`): a comparison whose result has a tensor's
    `.type()`/`.float()`/`.to()` is a tensor (Python bools, NumPy and pandas have none)."""
    for node in walk_scope(fn.body):
        if not (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name.id for t in node.targets)
        ):
            continue
        if _comparison(node.value):
            return True
        if not isinstance(node.value, ast.Call):
            continue
        func = node.value.func
        qual = ctx.flow.qualname_of(node.value) or ""
        last = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if last in _FACTORY_NAMES and not qual.startswith(("numpy.", "pandas.")):
            return True
        if isinstance(func, ast.Attribute) and last in _TENSOR_METHODS and not qual:
            return True
    return False


def _comparison(value: ast.expr) -> bool:
    """`a < b`, or comparisons joined elementwise (`(a < b) & (c > d)`)."""
    if isinstance(value, ast.Compare):
        return True
    return (
        isinstance(value, ast.BinOp)
        and isinstance(value.op, ast.BitAnd | ast.BitOr)
        and _comparison(value.left)
        and _comparison(value.right)
    )


def _may_report(ctx: ModuleContext) -> bool:
    """Whether the module holds what a report needs, from the engine's node index (a module
    without either is not walked function by function): a move called as a statement on a
    name, or a loop over a mapping's `.items()` / `.values()` that moves what it iterates."""
    for node in nodes_of(ctx, ast.Expr):
        call = node.value if isinstance(node, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _MOVES
            and isinstance(call.func.value, ast.Name)
        ):
            return True
    return any(
        isinstance(loop, ast.For)
        and isinstance(loop.iter, ast.Call)
        and isinstance(loop.iter.func, ast.Attribute)
        and loop.iter.func.attr in ("items", "values")
        and any(_moved_in_place_of_itself(stmt) for stmt in loop.body)
        for loop in nodes_of(ctx, ast.For)
    )


def _moved_in_place_of_itself(stmt: ast.stmt) -> bool:
    """`value = <...>.to(...)`: the only statement shape `_check_loop` reports on."""
    return (
        isinstance(stmt, ast.Assign)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr in _MOVES
    )
