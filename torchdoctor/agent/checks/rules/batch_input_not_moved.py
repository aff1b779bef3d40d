"""batch-input-not-moved: a model given some batch tensors moved to the device, one not."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.device_scope import touches_accelerator
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import is_model_expr, terminal_name
from torchdoctor.agent.models import Severity

if TYPE_CHECKING:
    from torchdoctor.agent.checks.dataflow import DataFlow

_MOVES = frozenset({"to", "cuda", "to_device", "move_to_device", "type_as"})
# tensor-making calls: what a name bound through one of them holds is a tensor
_TENSOR_METHODS = frozenset(
    {"squeeze", "unsqueeze", "long", "float", "half", "int", "bool", "view", "reshape",
     "permute", "contiguous", "clone", "transpose", "flatten", "stack", "cat"}
)  # fmt: skip
_LOADER_WORDS = ("loader", "batch", "dl", "data", "iterator")
_DEPTH = 4


class BatchInputNotMoved(Rule):
    """Detects a model call inside a loop over batches where some arguments were moved to
    the device (`images = batch[0].to(device_id)`, `labels = labels.to(device)`) and another
    is a tensor built from the batch that never was (`input_ids =
    torch.stack([x[0] for x in batch[1]]).squeeze(1)` passed as `lang_x=input_ids`).

    Why it matters: the model's weights and the moved inputs are on the accelerator and the
    forgotten one is on the CPU: the first forward fails with "Expected all tensors to be on
    the same device" (or, for an index tensor, an embedding lookup on the wrong device). When
    one data path is added beside another (a second dataset in the same step, a new field of
    the batch) its tensors are where the move is forgotten. mlfoundations/open_flamingo fixed
    exactly this (`a05dcba`: the MMC4 pass moved images and labels but gave the model
    `input_ids` and `attention_mask` from the CPU batch).

    Not reported: arguments moved anywhere in the function (`x = x.to(device)`), derived from
    a moved name, or given `device=`; values not made with a tensor operation (strings,
    lists a model tokenises itself); calls where nothing is moved; modules that never name a
    device.

    Example:
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            input_ids = torch.stack([x[0] for x in batch[1]]).squeeze(1)
            loss = model(vision_x=images, lang_x=input_ids)[0]

    Fix: move it with the others: `lang_x=input_ids.to(device)`.
    """

    id = "batch-input-not-moved"
    point = 1
    severity = Severity.HIGH
    title = "Batch tensor passed to the model without moving it to the device"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(all_of=((".to(", ".cuda("), ("for ",)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        arguments = [*node.args, *(k.value for k in node.keywords)]
        names = [a for a in arguments if isinstance(a, ast.Name)]
        if len(names) < 2 or len(arguments) < 2:
            return
        function = ctx.enclosing_function(node)
        loop = _enclosing_loop(ctx, node, function)
        if loop is None or not touches_accelerator(ctx.source):
            return
        if not is_model_expr(ctx, node.func):
            return
        flow = ctx.flow
        batch_names = {t.id for t in ast.walk(loop.target) if isinstance(t, ast.Name)}
        moved = [n for n in names if _moved(flow, n, _DEPTH)]
        if not moved:
            return
        for name in names:
            if name in moved or not _from_batch(flow, name, batch_names, _DEPTH):
                continue
            value = flow.reaching(name)
            if value is None or not _tensor_made(value):
                continue
            ctx.report(
                self,
                name,
                f"`{name.id}` is built from the batch and given to "
                f"`{ast.unparse(node.func)}` without being moved, while "
                f"`{moved[0].id}` beside it was moved to the device: the forward mixes "
                f"devices and fails. Move it too: `{name.id}.to(device)`.",
            )


def _enclosing_loop(ctx: ModuleContext, node: ast.AST, function: ast.AST | None) -> ast.For | None:
    """The innermost `for` over batches (its iterable names a loader or batch) around `node`,
    inside its function."""
    memo = ctx.memo_table("batch-input-not-moved.loops")
    for ancestor in ctx.ancestors(node):
        if ancestor is function:
            return None
        if isinstance(ancestor, ast.For):
            over_batches = memo.get(id(ancestor))
            if over_batches is None:
                text = ast.unparse(ancestor.iter).lower()
                over_batches = memo[id(ancestor)] = any(w in text for w in _LOADER_WORDS)
            if over_batches:
                return ancestor
    return None


def _moved(flow: DataFlow, name: ast.Name, depth: int) -> bool:
    """The binding of `name` reaching this read moves it (`.to(...)`, `.cuda()`, `device=`),
    or reads a name whose reaching binding is moved."""
    value = flow.reaching(name)
    if depth < 0 or value is None:
        return False
    for inner in ast.walk(value):
        if isinstance(inner, ast.Call) and (
            terminal_name(inner.func) in _MOVES or any(k.arg == "device" for k in inner.keywords)
        ):
            return True
        if isinstance(inner, ast.Name) and _moved(flow, inner, depth - 1):
            return True
    return False


def _from_batch(flow: DataFlow, name: ast.Name, batch: set[str], depth: int) -> bool:
    """The binding of `name` reaching this read reads the loop's batch, directly or through
    other names."""
    value = flow.reaching(name)
    if depth < 0 or value is None:
        return False
    return any(
        isinstance(inner, ast.Name)
        and (inner.id in batch or _from_batch(flow, inner, batch, depth - 1))
        for inner in ast.walk(value)
    )


def _tensor_made(value: ast.expr) -> bool:
    return any(
        isinstance(inner, ast.Call)
        and (
            terminal_name(inner.func) in _TENSOR_METHODS
            or (
                isinstance(inner.func, ast.Attribute)
                and ast.unparse(inner.func).startswith("torch.")
            )
        )
        for inner in ast.walk(value)
    )
