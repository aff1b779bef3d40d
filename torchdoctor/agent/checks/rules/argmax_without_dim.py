"""argmax-without-dim: predictions taken with argmax over the whole batch tensor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.batch_outputs import (
    bound_names,
    compared,
    in_loop,
    is_whole_model_output,
    output_before,
)
from torchdoctor.agent.checks.analysis.vocabulary import LOG_SOFTMAX, SIGMOID, SOFTMAX
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_REDUCTIONS = frozenset({"argmax", "argmin"})
# casts and moves: the same values, another dtype or device
_SAME_VALUE = frozenset({"long", "int", "float", "to", "cuda", "cpu", "type_as", "type"})
# activations that keep each class's rank: argmax(softmax(x)) is argmax(x)
_RANK_KEEPING = SOFTMAX | LOG_SOFTMAX | SIGMOID
# what turns a prediction tensor into host values, under the same name (`pred = pred.cpu()`)
_TO_HOST = frozenset({"detach", "cpu", "numpy", "tolist", "to", "long", "int"})


class ArgmaxWithoutDim(Rule):
    """Detects `output.argmax()` / `torch.argmax(output)` with no `dim`, where `output` is a
    model's output computed in a loop over batches and the result is compared with something
    (`pred == target`).

    Why it matters: without `dim`, argmax flattens the tensor and returns a single index into
    `batch x classes`; compared with a batch of labels it broadcasts, and accuracy is
    computed from nonsense (often near zero, or near chance), with no error.

    The predictions may be collected batch by batch and compared after the loop (`y_pred =
    torch.cat([y_pred, torch.argmax(out)])`, `preds.append(...)` then `torch.cat(preds) ==
    labels`), and the output may be a model's own head run apart (`model.mlpfory(reps)`).

    Also reported wherever it runs: a dim-less argmax compared with an index vector built by
    `torch.arange` (contrastive accuracy: `argmax(logits) == torch.arange(n)`).

    Also when the result becomes one-hot classes (`F.one_hot(pred.argmax(), n)`, a Dice
    score's predicted masks): one class per example was meant.

    And a dim-less argmax that picks one entry per row (`q[range(n), q.argmax()]`, directly or
    through a variable): a per-row index was meant, the flat one points past the rows.

    And one whose result (after a move to the host: `pred = pred.detach().cpu().numpy()`) is
    read by a subscript (`pred[i][j]`, a label per token): predictions per example were
    meant, and a flat index has no rows; an activation that keeps each class's rank
    (`torch.argmax(F.log_softmax(logits, dim=2))`) is seen through.

    And one whose result is walked by a `for` or a comprehension (`[vocab.itos[i] for i in
    pred]` after `pred = torch.argmax(log_probs).cpu().numpy()`, greedy decoding's next token
    per sentence), the tensor a model's output or its own method's (`model.decode(...)`):
    an index per example was meant; the flat index is 0-d and cannot be walked.

    And one that is the index of a `gather` (`q.gather(1, q_net(s).argmax().unsqueeze(-1))`,
    `torch.gather(q, 1, best)`, directly, through `unsqueeze`/`view`/casts, or through the
    name it is bound to): gather picks one entry per row, so one index per row was meant
    (Double DQN's greedy next action); the flat index points past the rows.

    And one whose result is reshaped to a grid of examples (`y_pred = torch.softmax(
    model(grid), dim=1).argmax()`, then `y_pred.reshape(xx.shape)`, a decision-boundary
    plot): a prediction per point was meant; the flat index is one value, and the reshape
    fails.

    Not reported: argmax with `dim` (positional or keyword), argmax of values that are not a
    model's output (unless compared with such an index vector), single forwards outside a
    loop (one example, `model(x[None]).argmax()`), results that are not compared, a dim-less
    argmax that picks one action for one state (`q_net(state).argmax().item()`) or a `gather`
    whose index has a `dim`.

    Example:
        for x, y in test_loader:
            pred = model(x).argmax()
            correct += (pred == y).sum().item()

    Fix: `model(x).argmax(dim=1)` (the class dimension).
    """

    id = "argmax-without-dim"
    point = 3
    severity = Severity.HIGH
    title = "argmax without dim over a batch"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("argm",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "argm" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        for call in flow.calls_named(_REDUCTIONS):
            value = _reduced(ctx, call)
            if value is None:
                continue
            batch_prediction = (
                (
                    in_loop(ctx, call)
                    and compared(ctx, call)
                    and is_whole_model_output(ctx, value, heads=True)
                )
                or (
                    in_loop(ctx, call)
                    and _one_hot_classes(ctx, call)
                    and output_before(ctx, call, value)
                )
                or (
                    in_loop(ctx, call)
                    and _indexed_per_example(ctx, call)
                    and output_before(ctx, call, _through_activation(ctx, value))
                )
                or (
                    _reshaped_to_examples(ctx, call)
                    and output_before(ctx, call, _through_activation(ctx, value))
                )
                or (_iterated_per_example(ctx, call) and _model_rows(ctx, call, value))
            )
            if (
                not batch_prediction
                and not _compared_with_index_vector(ctx, call)
                and not _indexes_rows(ctx, call)
                and not _gather_index(ctx, call)
            ):
                continue
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` has no dim: it returns one index into the flattened "
                "batch, not a prediction per example",
            )


def _through_activation(ctx: ModuleContext, value: ast.expr) -> ast.expr:
    """The logits under a softmax/log_softmax/sigmoid (`F.log_softmax(logits, dim=2)`)."""
    if isinstance(value, ast.Call) and value.args and ctx.flow.qualname_of(value) in _RANK_KEEPING:
        return value.args[0]
    return value


def _indexed_per_example(ctx: ModuleContext, call: ast.Call) -> bool:
    """The result, under the name it is bound to (also after `pred = pred.detach().cpu()
    .numpy()`), is read later in its function by a subscript (`pred[i][j]`, BERT-NER's
    per-token labels): predictions per example were meant, a flat index has none to read."""
    scope = ctx.enclosing_function(call)
    names = {name.id for name in bound_names(ctx, call)}
    for name in list(names):
        for read in ctx.flow.reads_of(name):
            rebind = _host_rebinding(ctx, read)
            if rebind is not None and ctx.enclosing_function(read) is scope:
                names.add(rebind)
    for name in names:
        for read in ctx.flow.reads_of(name):
            if ctx.enclosing_function(read) is not scope or read.lineno <= call.lineno:
                continue
            parent = ctx.parents.get(read)
            if isinstance(parent, ast.Subscript) and parent.value is read:
                return True
    return False


def _iterated_per_example(ctx: ModuleContext, call: ast.Call) -> bool:
    """The result (through host moves, `torch.argmax(x).cpu().numpy()`), under the name it
    is bound to, is walked later in its function by a `for` or a comprehension (`[vocab[i]
    for i in pred]`, greedy decoding's next token per sentence): one index per example was
    meant, and a flat index is a 0-d value that cannot be walked."""
    scope = ctx.enclosing_function(call)
    for name in bound_names(ctx, call):
        for read in ctx.flow.reads_of(name.id):
            if ctx.enclosing_function(read) is not scope or read.lineno < call.lineno:
                continue
            walker = ctx.parents.get(read)
            if isinstance(walker, ast.For | ast.AsyncFor | ast.comprehension) and (
                walker.iter is read
            ):
                return True
    return False


def _model_rows(ctx: ModuleContext, call: ast.Call, value: ast.expr) -> bool:
    """`value` is a model's output or its own method's (`model.decode(...)`), also under a
    name one of whose bindings is (then rows picked from it: `logp = logp[t - 1 :: t]`)."""
    value = _through_activation(ctx, value)
    if not isinstance(value, ast.Name):
        return is_whole_model_output(ctx, value, heads=True)
    return any(
        is_whole_model_output(ctx, bound, heads=True)
        for bound in ctx.flow.definitions(value)
        if not any(sub is call for sub in ast.walk(bound))
    )


_RESHAPES = frozenset({"reshape", "view"})


def _reshaped_to_examples(ctx: ModuleContext, call: ast.Call) -> bool:
    """The result, directly or under the name it is bound to later in its function, is
    reshaped (`.reshape(xx.shape)`, `.view(h, w)`) to anything but one element (`-1`, `1`,
    `()`): a shape with room for a prediction per example."""
    scope = ctx.enclosing_function(call)
    receivers: list[ast.expr] = [call]
    for name in bound_names(ctx, call):
        receivers += [
            r
            for r in ctx.flow.reads_of(name.id)
            if ctx.enclosing_function(r) is scope and r.lineno > call.lineno
        ]
    for receiver in receivers:
        method = ctx.parents.get(receiver)
        reshape = ctx.parents.get(method) if method is not None else None
        if (
            isinstance(method, ast.Attribute)
            and method.attr in _RESHAPES
            and isinstance(reshape, ast.Call)
            and reshape.func is method
            and reshape.args
            and not all(_one_element(a) for a in reshape.args)
        ):
            return True
    return False


def _one_element(shape: ast.expr) -> bool:
    """`-1`, `1`, `()`, `(1, 1)`: a shape that a single value fills."""
    if isinstance(shape, ast.Tuple | ast.List):
        return all(_one_element(e) for e in shape.elts)
    if isinstance(shape, ast.UnaryOp) and isinstance(shape.op, ast.USub):
        shape = shape.operand
    return isinstance(shape, ast.Constant) and shape.value == 1


def _host_rebinding(ctx: ModuleContext, read: ast.Name) -> str | None:
    """`x = x.detach().cpu().numpy()` (or another name): the name bound to `read` moved to the
    host through `_TO_HOST` methods only."""
    node: ast.AST = read
    parent = ctx.parents.get(node)
    moved = False
    while isinstance(parent, ast.Attribute) and parent.attr in _TO_HOST:
        call = ctx.parents.get(parent)
        if not (isinstance(call, ast.Call) and call.func is parent):
            return None
        node, parent, moved = call, ctx.parents.get(call), True
    if not moved or not (isinstance(parent, ast.Assign) and len(parent.targets) == 1):
        return None
    target = parent.targets[0]
    return target.id if isinstance(target, ast.Name) else None


def _through_casts(ctx: ModuleContext, call: ast.Call) -> tuple[ast.AST, ast.AST | None] | None:
    """(the outermost call of `call`'s same-value methods (`.long()`, `.float()`), its
    parent); None when such a method is read but not called."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Attribute) and parent.attr in _SAME_VALUE:
        grand = ctx.parents.get(parent)
        if not isinstance(grand, ast.Call) or grand.func is not parent:
            return None
        node, parent = grand, ctx.parents.get(grand)
    return node, parent


def _compared_with_index_vector(ctx: ModuleContext, call: ast.Call) -> bool:
    """`argmax(sim) == torch.arange(n)` (contrastive accuracy, a step with no loop of its
    own): the other side holds one index per example, so a single flat index is wrong."""
    through = _through_casts(ctx, call)
    if through is None:
        return False
    node, parent = through
    if not isinstance(parent, ast.Compare):
        return False
    others = [e for e in [parent.left, *parent.comparators] if e is not node]
    return any(_index_vector(ctx, other) for other in others)


_ONE_HOT = frozenset({"torch.nn.functional.one_hot"})


def _one_hot_classes(ctx: ModuleContext, call: ast.Call) -> bool:
    """The argmax (through casts) is the class tensor `one_hot` expands."""
    through = _through_casts(ctx, call)
    if through is None:
        return False
    node, parent = through
    return (
        isinstance(parent, ast.Call)
        and bool(parent.args)
        and parent.args[0] is node
        and ctx.flow.qualname_of(parent) in _ONE_HOT
    )


def _indexes_rows(ctx: ModuleContext, call: ast.Call) -> bool:
    """The argmax (or the name it is assigned to) is an index of a subscript whose other
    index is `range(n)` / `torch.arange(n)`: one pick per row."""
    uses: list[ast.AST] = [call]
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            scope = ctx.enclosing_function(call)
            uses += [r for r in ctx.flow.reads_of(target.id) if ctx.enclosing_function(r) is scope]
    for use in uses:
        tup = ctx.parents.get(use)
        if not isinstance(tup, ast.Tuple) or not isinstance(ctx.parents.get(tup), ast.Subscript):
            continue
        if any(other is not use and _row_range(ctx, other) for other in tup.elts):
            return True
    return False


# what keeps one index per row in shape for `gather` (`.unsqueeze(-1)`, `.view(-1, 1)`)
_INDEX_SHAPING = _SAME_VALUE | frozenset({"unsqueeze", "view", "reshape", "expand", "expand_as"})


def _gather_index(ctx: ModuleContext, call: ast.Call) -> bool:
    """The argmax (through `.unsqueeze(-1)`, `.view(-1, 1)`, casts), or a name it is bound
    to in its function, is the index of a `gather` (`t.gather(dim, index)`,
    `torch.gather(t, dim, index)`, or `index=`): one pick per row."""
    uses: list[ast.AST] = [_shaped_index(ctx, call)]
    parent = ctx.parents.get(uses[0])
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            scope = ctx.enclosing_function(call)
            uses += [
                _shaped_index(ctx, r)
                for r in ctx.flow.reads_of(target.id)
                if ctx.enclosing_function(r) is scope and r.lineno >= call.lineno
            ]
    return any(_is_gather_index(ctx, use) for use in uses)


def _shaped_index(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    """The outermost call of `node`'s index-shaping methods (`.unsqueeze(-1).long()`)."""
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Attribute) and parent.attr in _INDEX_SHAPING:
        grand = ctx.parents.get(parent)
        if not isinstance(grand, ast.Call) or grand.func is not parent:
            break
        node, parent = grand, ctx.parents.get(grand)
    return node


def _is_gather_index(ctx: ModuleContext, node: ast.AST) -> bool:
    gather = ctx.parents.get(node)
    if isinstance(gather, ast.keyword):
        call = ctx.parents.get(gather)
        return (
            gather.arg == "index"
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute | ast.Name)
            and _called_name(call) == "gather"
        )
    if not isinstance(gather, ast.Call) or _called_name(gather) != "gather":
        return False
    if ctx.flow.qualname_of(gather) == "torch.gather":
        return len(gather.args) > 2 and gather.args[2] is node
    return (
        isinstance(gather.func, ast.Attribute) and len(gather.args) > 1 and gather.args[1] is node
    )


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _row_range(ctx: ModuleContext, expr: ast.expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    if isinstance(expr.func, ast.Name) and expr.func.id == "range":
        return True
    return ctx.flow.qualname_of(expr) == "torch.arange"


def _index_vector(ctx: ModuleContext, expr: ast.expr) -> bool:
    for source in ctx.flow.sources(_uncast(expr)):
        source = _uncast(source)
        if isinstance(source, ast.Call) and ctx.flow.qualname_of(source) == "torch.arange":
            return True
    return False


def _uncast(expr: ast.expr) -> ast.expr:
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in _SAME_VALUE
    ):
        expr = expr.func.value
    return expr


def _reduced(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The tensor a dim-less argmax/argmin reduces, else None."""
    if kwarg(call, "dim") is not None or kwarg(call, "axis") is not None:
        return None
    func = call.func
    qual = ctx.flow.qualname_of(call)
    if qual in ("torch.argmax", "torch.argmin"):
        return call.args[0] if len(call.args) == 1 else None
    if qual is None and isinstance(func, ast.Attribute) and not call.args:
        return func.value
    return None
