"""sequence-batch-axis: a recurrent or transformer output pooled or indexed over its batch axis."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import kwarg
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Modules whose output layout `batch_first` decides (default False: time, batch, features),
# and whether their call returns a tuple whose element 0 is the output.
_SEQUENCE_MODULES = {
    "torch.nn.LSTM": True, "torch.nn.GRU": True, "torch.nn.RNN": True,
    "torch.nn.MultiheadAttention": True, "torch.nn.Transformer": False,
    "torch.nn.TransformerEncoder": False, "torch.nn.TransformerDecoder": False,
    "torch.nn.TransformerEncoderLayer": False, "torch.nn.TransformerDecoderLayer": False,
}  # fmt: skip
# Stacks whose layout is their layer's (`nn.TransformerEncoder(layer, num_layers)`).
_STACKS = frozenset({"torch.nn.TransformerEncoder", "torch.nn.TransformerDecoder"})
# Pooling over an axis: the method form takes `dim` first, the function form second.
_POOLING = frozenset(
    {"mean", "sum", "max", "min", "amax", "amin", "logsumexp", "nansum", "nanmean"}
)
_NAMES = frozenset(q.rsplit(".", 1)[-1] for q in _SEQUENCE_MODULES)
_PACK = "torch.nn.utils.rnn.pack_padded_sequence"
_UNPACK = "torch.nn.utils.rnn.pad_packed_sequence"
_PACKING = frozenset({_PACK, _UNPACK})
# A tensor made by these is laid out by its author, not by the data's order: not judged.
_REORDERS = frozenset({"transpose", "permute", "t", "swapaxes", "movedim"})


class SequenceBatchAxis(Rule):
    """Detects the output of an `nn.LSTM`/`GRU`/`RNN`, `nn.MultiheadAttention` or an
    `nn.Transformer*` module pooled (`mean`, `sum`, `max`, ... over a constant `dim`) or
    indexed for its last step (`out[-1]`, `out[:, -1]`) over the axis that its `batch_first`
    setting makes the batch: dim 0 with `batch_first=True`, dim 1 without it (the default
    layout is time, batch, features).

    Why it matters: `out[-1]` of a `batch_first=True` LSTM is the last example of the batch,
    not the last time step of every example; `out.mean(0)` averages the examples together
    instead of the steps. Shapes still line up when the batch and sequence lengths agree or
    the next layer only reads the feature axis, so the model trains on mixed-up examples
    with no error, and results change with the batch size.

    The padded output of `pad_packed_sequence` (element 0 of what it returns) is judged the
    same way, its layout read from its own `batch_first`: `att, _ = pad_packed_sequence(...,
    batch_first=True)`, then `att / torch.sum(att, dim=0, keepdim=True)` normalises across the
    documents of the batch instead of over each document's sentences.

    Also reported: `pack_padded_sequence(x, lengths)` without `batch_first=True` when `x` is
    batch first by its own code's account: the packed value goes into a recurrent module
    built with `batch_first=True`, or another `pack_padded_sequence` of the same function
    passes `batch_first=True`. Packing reads dim 0 as time, so every
    example is cut at the lengths of the wrong axis and steps of different examples are mixed.

    Not reported: modules whose `batch_first` is not a constant, outputs bound anywhere else
    in the same function (a `permute`/`transpose` back, a module output re-padded by
    `pad_packed_sequence`, judged by that call's own flag), the hidden
    state `h_n` (its layout does not depend on `batch_first`), the whole tuple a recurrent
    call returns, non-constant dims; a pack without `batch_first` of a tensor transposed or
    permuted first, or fed to a time-major (default layout) module with no batch-first
    sibling call (word_language_model's time-major packing).

    Example:
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        ...
        out, _ = self.lstm(x)
        return self.fc(out[-1])

    Fix: take the time axis: `out[:, -1]` / `out.mean(dim=1)` with `batch_first=True`,
    `out[-1]` / `out.mean(dim=0)` without it.
    """

    id = "sequence-batch-axis"
    point = 1
    severity = Severity.HIGH
    title = "Sequence output pooled or indexed over its batch axis"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers((*sorted(_NAMES), "pack_padded_sequence", "pad_packed_sequence"))

    def applies(self, ctx: ModuleContext) -> bool:
        return any(name in ctx.source for name in _NAMES) or "pad_packed_sequence" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "pack_padded_sequence" in ctx.source:
            self._packs_read_as_time_major(ctx)
        if not self.applies(ctx):
            return
        for name in ctx.flow.nodes(ast.Name):
            if not isinstance(name.ctx, ast.Load):
                continue
            use = _batch_axis_use(ctx, name)
            if use is None:
                continue
            batch = _batch_axis(ctx, name)
            if batch is None or batch != use[1]:
                continue
            node, _, what = use
            layout = "batch_first=True" if batch == 0 else "the default batch_first=False"
            ctx.report(
                self,
                node,
                f"`{ast.unparse(node)}` {what} dim {batch} of `{name.id}`, the batch axis "
                f"with {layout}: take the time axis (dim {1 - batch})",
            )

    def _packs_read_as_time_major(self, ctx: ModuleContext) -> None:
        packs: list[ast.Call] = []
        batch_first_functions: set[ast.AST | None] = set()
        for call in ctx.flow.nodes(ast.Call):
            qual = ctx.flow.qualname_of(call)
            if qual not in _PACKING:
                continue
            flag = kwarg(call, "batch_first")
            if isinstance(flag, ast.Constant) and flag.value is True:
                if qual == _PACK:  # an unpack may turn time-major steps batch first on purpose
                    batch_first_functions.add(ctx.enclosing_function(call))
            elif qual == _PACK and (
                flag is None or (isinstance(flag, ast.Constant) and flag.value is False)
            ):
                packs.append(call)
        for pack in packs:
            if not pack.args or _reordered(ctx, pack.args[0]):
                continue
            sibling = ctx.enclosing_function(pack) in batch_first_functions
            if sibling or _feeds_batch_first_module(ctx, pack):
                why = (
                    "another pack_padded_sequence of this function passes batch_first=True"
                    if sibling
                    else "the packed value goes into a module built with batch_first=True"
                )
                ctx.report(
                    self,
                    pack,
                    f"`{ast.unparse(pack.func)}` reads dim 0 of `{ast.unparse(pack.args[0])}` "
                    f"as time, but {why}: pass `batch_first=True`",
                )


def _reordered(ctx: ModuleContext, tensor: ast.expr) -> bool:
    """Whether the packed tensor is (bound to) a transpose/permute: its author chose its layout."""
    value: ast.expr | None = tensor
    if isinstance(tensor, ast.Name):
        value = ctx.flow.reaching(tensor)
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _REORDERS
    )


def _feeds_batch_first_module(ctx: ModuleContext, pack: ast.Call) -> bool:
    """Whether the pack (directly, or through the one name bound to it) is the first argument
    of a call of a sequence module built with `batch_first=True`."""
    for call in ctx.flow.nodes(ast.Call):
        if not call.args:
            continue
        first = call.args[0]
        if first is not pack and not (
            isinstance(first, ast.Name) and ctx.flow.reaching(first) is pack
        ):
            continue
        module = _sequence_module(ctx, call.func)
        if module is not None and module[1] == 0:
            return True
    return False


def _batch_axis_use(ctx: ModuleContext, name: ast.Name) -> tuple[ast.expr, int, str] | None:
    """(the expression, the dim it reads, what it does) when `name` is pooled over a constant
    dim 0 or 1, or indexed for its last step on one of them."""
    parent = ctx.parents.get(name)
    if isinstance(parent, ast.Subscript) and parent.value is name:
        index = parent.slice
        parts = index.elts if isinstance(index, ast.Tuple) else [index]
        for axis, part in enumerate(parts[:2]):
            if _is_minus_one(part):
                return parent, axis, "takes the last element of"
            if not _is_full_slice(part):
                return None
        return None
    if isinstance(parent, ast.Attribute) and parent.attr in _POOLING:
        call = ctx.parents.get(parent)
        if isinstance(call, ast.Call) and call.func is parent:
            dim = _dim(call, 0)
            return (call, dim, f"pools ({parent.attr}) over") if dim is not None else None
        return None
    if isinstance(parent, ast.Call) and parent.args and parent.args[0] is name:
        qual = ctx.flow.qualname_of(parent)
        if qual is not None and qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _POOLING:
            dim = _dim(parent, 1)
            if dim is not None:
                return parent, dim, f"pools ({qual.rsplit('.', 1)[-1]}) over"
    return None


def _dim(call: ast.Call, position: int) -> int | None:
    dim = kwarg(call, "dim")
    if dim is None and len(call.args) > position:
        dim = call.args[position]
    if (
        isinstance(dim, ast.Constant)
        and isinstance(dim.value, int)
        and not isinstance(dim.value, bool)
        and dim.value in (0, 1)
    ):
        return dim.value
    return None


def _is_minus_one(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and node.operand.value == 1
    )


def _is_full_slice(node: ast.expr) -> bool:
    return isinstance(node, ast.Slice) and node.lower is None and node.upper is None


def _batch_axis(ctx: ModuleContext, name: ast.Name) -> int | None:
    """0 or 1 when the binding of `name` that reaches this read is the output of a sequence
    module of one known layout; None otherwise."""
    value = ctx.flow.reaching(name)
    if value is None:
        return None
    positions = [p for v, p, _ in ctx.flow.unpackings(name) if v is value]
    element = positions[0] if len(positions) == 1 else None
    call: ast.expr = value
    if isinstance(value, ast.Subscript) and _is_zero(value.slice):
        call, element = value.value, 0
    if not isinstance(call, ast.Call):
        return None
    if ctx.flow.qualname_of(call) == _UNPACK:
        flag = kwarg(call, "batch_first")
        if element != 0:
            return None
        if flag is None:
            return 1
        return (0 if flag.value else 1) if isinstance(flag, ast.Constant) else None
    module = _sequence_module(ctx, call.func)
    if module is None:
        return None
    returns_tuple, axis = module
    if returns_tuple != (element is not None) or element not in (None, 0):
        return None
    return axis


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0 and not isinstance(node.value, bool)


def _sequence_module(ctx: ModuleContext, callee: ast.expr) -> tuple[bool, int] | None:
    """(returns a tuple, batch axis) of the sequence module `callee` holds, when every value
    it is assigned is one constructor call of a known, constant layout."""
    values = ctx.flow.definitions(callee)
    found = {_layout(ctx, v) for v in values}
    if not values or None in found or len(found) != 1:
        return None
    return found.pop()


def _layout(ctx: ModuleContext, value: ast.expr) -> tuple[bool, int] | None:
    if not isinstance(value, ast.Call):
        return None
    qual = ctx.flow.qualname_of(value)
    if qual not in _SEQUENCE_MODULES:
        return None
    source = value
    if qual in _STACKS:
        layer = value.args[0] if value.args else kwarg(value, "encoder_layer")
        layer = layer if layer is not None else kwarg(value, "decoder_layer")
        if isinstance(layer, ast.Name | ast.Attribute):
            definitions = ctx.flow.definitions(layer)
            layer = definitions[0] if len(definitions) == 1 else None
        if not isinstance(layer, ast.Call) or ctx.flow.qualname_of(layer) not in _SEQUENCE_MODULES:
            return None
        source = layer
    flag = kwarg(source, "batch_first")
    if flag is None:
        return _SEQUENCE_MODULES[qual], 1
    if isinstance(flag, ast.Constant) and isinstance(flag.value, bool):
        return _SEQUENCE_MODULES[qual], 0 if flag.value else 1
    return None
