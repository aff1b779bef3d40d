"""A model's output over a batch, and where a prediction made from it goes: shared by the
rules that judge reductions over that output (`argmax` without dim, over the batch dim)."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.loops import walk_tree

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

# Tensor methods that keep a model output's shape (and meaning) intact.
_KEEPS_SHAPE = frozenset({"detach", "cpu", "float", "to", "cuda", "contiguous"})
_MAX_HOPS = 6
_COMPARISONS = frozenset({"eq", "ne"})


def is_whole_model_output(
    ctx: ModuleContext, value: ast.expr, hops: int = 0, *, heads: bool = False
) -> bool:
    """A model's whole output (through names, `.detach()`, `.cpu()`, `.float()`, `.data`),
    not a slice of it (`logits[0, -1]` is one example's row); with `heads`, also what a
    model's own submodule returns (`model.mlpfory(reps)`, a classifier head run apart)."""
    if hops > _MAX_HOPS:
        return False
    if isinstance(value, ast.Attribute) and value.attr == "data":
        return is_whole_model_output(ctx, value.value, hops + 1, heads=heads)
    if isinstance(value, ast.Name):
        values = ctx.flow.definitions(value)  # every binding (a train and a test loop's)
        return bool(values) and all(
            is_whole_model_output(ctx, v, hops + 1, heads=heads) for v in values
        )
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Attribute) and func.attr in _KEEPS_SHAPE:
        return is_whole_model_output(ctx, func.value, hops + 1, heads=heads)
    if ctx.flow.is_model_call(value):
        return True
    return (
        heads
        and isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and ctx.flow.is_module_value(func.value)
    )


def output_before(ctx: ModuleContext, call: ast.Call, value: ast.expr) -> bool:
    """`value` is what a model returned, or a name one of whose other bindings is (`preds =
    model(x)` before `preds = preds.log_softmax(0)` rebinds it through `call`)."""
    if not isinstance(value, ast.Name):
        return is_whole_model_output(ctx, value)
    return any(
        is_whole_model_output(ctx, bound)
        for bound in ctx.flow.definitions(value)
        if not any(sub is call for sub in ast.walk(bound))
    )


def in_loop(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside a `for` loop or a comprehension of its own function (batches, not one call)."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.AsyncFor | ast.comprehension):
            return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
    return False


def bound_names(ctx: ModuleContext, call: ast.Call) -> list[ast.Name]:
    """The names a call's result is bound to: `pred = ...`, `_, pred = ...` (every element
    of an unpacking, as `values, indices = out.max(0)` binds both), `pred = out.max(0)[1]`
    (one element of it)."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Call | ast.Attribute) or (
        isinstance(parent, ast.Subscript) and parent.value is node
    ):
        node, parent = parent, ctx.parents.get(parent)
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return []
    target = parent.targets[0]
    if isinstance(target, ast.Name):
        return [target]
    if isinstance(target, ast.Tuple):
        return [e for e in target.elts if isinstance(e, ast.Name)]
    return []


def compared(ctx: ModuleContext, call: ast.Call) -> bool:
    """The result takes part in `==`/`!=` or `.eq()`/`.ne()`, directly, through the name it
    is bound to, or through the predictions it is collected into (`y_pred = torch.cat([y_pred,
    pred])`, `preds.append(pred)`, `predict_all = np.append(predict_all, predic)`) and
    compared after the loop (SAINT's metric helpers), or scored there by a scikit-learn
    classification metric (`metrics.accuracy_score(labels_all, predict_all)`)."""
    if _compared_read(ctx, call):
        return True
    scope = ctx.enclosing_function(call)
    bound = [name.id for name in bound_names(ctx, call)]
    names = list(bound)
    collector = _collector(ctx, call)
    if collector is not None:
        names.append(collector)
    for name in bound:  # `predict_all = np.append(predict_all, predic)` after `predic = ...`
        for read in ctx.flow.reads_of(name):
            if ctx.enclosing_function(read) is scope and read.lineno >= call.lineno:
                gathered = _numpy_collector(ctx, read)
                if gathered is not None and gathered not in names:
                    names.append(gathered)
    for name in names:
        reads = [r for r in ctx.flow.reads_of(name) if ctx.enclosing_function(r) is scope]
        if any(_compared_read(ctx, r) for r in reads):
            return True
        if name not in bound and any(_scored_by_a_metric(ctx, r) for r in reads):
            return True  # `metrics.accuracy_score(labels_all, predict_all)` after the loop
    if collector is not None:  # `torch.cat(preds) == torch.cat(labels)`
        reads = [r for r in ctx.flow.reads_of(collector) if ctx.enclosing_function(r) is scope]
        return any(_compared_join(ctx, r) for r in reads)
    return False


_NUMPY_COLLECTS = frozenset({"numpy.append", "numpy.concatenate", "numpy.hstack"})
# scikit-learn's classification metrics: each compares predicted classes with the labels
_CLASSIFICATION_METRICS = frozenset(
    f"sklearn.metrics.{name}"
    for name in (
        "accuracy_score", "balanced_accuracy_score", "f1_score", "precision_score",
        "recall_score", "confusion_matrix", "classification_report", "matthews_corrcoef",
        "cohen_kappa_score", "jaccard_score", "precision_recall_fscore_support",
    )
)  # fmt: skip


def _numpy_collector(ctx: ModuleContext, read: ast.expr) -> str | None:
    """The array a name is gathered into by numpy: `preds = np.append(preds, read)` (also
    `np.concatenate([preds, read])`), the target being the array it extends."""
    node: ast.AST = read
    parent = ctx.parents.get(node)
    if isinstance(parent, ast.List | ast.Tuple):
        node, parent = parent, ctx.parents.get(parent)
    if not (isinstance(parent, ast.Call) and node in parent.args):
        return None
    if ctx.flow.qualname_of(parent) not in _NUMPY_COLLECTS:
        return None
    assign = ctx.parents.get(parent)
    if not (isinstance(assign, ast.Assign) and len(assign.targets) == 1):
        return None
    target = assign.targets[0]
    if not isinstance(target, ast.Name):
        return None
    extended = {n.id for n in walk_tree(parent) if isinstance(n, ast.Name)}
    return target.id if target.id in extended else None


def _scored_by_a_metric(ctx: ModuleContext, read: ast.expr) -> bool:
    """`read` is given to a scikit-learn classification metric (`accuracy_score(y, read)`),
    which compares it with labels element by element."""
    parent = ctx.parents.get(read)
    if isinstance(parent, ast.keyword):
        parent = ctx.parents.get(parent)
    return isinstance(parent, ast.Call) and ctx.flow.qualname_of(parent) in _CLASSIFICATION_METRICS


def _compared_join(ctx: ModuleContext, read: ast.expr) -> bool:
    """`read` is what a join concatenates (`torch.cat(preds)`), and the joined tensor is
    compared, directly or through the name it is bound to."""
    join = ctx.parents.get(read)
    if not (isinstance(join, ast.Call) and join.args and join.args[0] is read):
        return False
    if ctx.flow.qualname_of(join) not in _JOINS:
        return False
    if _compared_read(ctx, join):
        return True
    scope = ctx.enclosing_function(join)
    return any(
        _compared_read(ctx, r)
        for name in bound_names(ctx, join)
        for r in ctx.flow.reads_of(name.id)
        if ctx.enclosing_function(r) is scope
    )


_JOINS = frozenset({"torch.cat", "torch.stack", "torch.concat", "torch.vstack", "torch.hstack"})


def _collector(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The name a prediction (through casts and moves) is collected into: the target of
    `name = torch.cat([name, <call>])` or the list of `name.append(<call>)`."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while (
        isinstance(parent, ast.Attribute)
        and parent.attr in _KEEPS_SHAPE | {"long", "int", "view", "reshape", "squeeze"}
        and isinstance(ctx.parents.get(parent), ast.Call)
    ):
        node = ctx.parents[parent]
        parent = ctx.parents.get(node)
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        if isinstance(func, ast.Attribute) and func.attr == "append":
            return identifier(func.value) or None
        return None
    if not isinstance(parent, ast.List | ast.Tuple):
        return None
    join = ctx.parents.get(parent)
    if not (isinstance(join, ast.Call) and join.args and join.args[0] is parent):
        return None
    if ctx.flow.qualname_of(join) not in _JOINS:
        return None
    assign = ctx.parents.get(join)
    if not (isinstance(assign, ast.Assign) and len(assign.targets) == 1):
        return None
    target = assign.targets[0]
    return target.id if isinstance(target, ast.Name) else None


def scored_with_labels(ctx: ModuleContext, call: ast.Call, model_call: ast.Call | None) -> bool:
    """The prediction, through the name it is bound to, is given to one call together with
    the batch's labels (`metrics.update(targets, preds)`, `f1_score(y, pred)`): a name the
    loop over the loader binds, or one derived from it, that is not the model's input."""
    loop = next((a for a in ctx.ancestors(call) if isinstance(a, ast.For | ast.AsyncFor)), None)
    if loop is None:
        return False
    inputs = {
        n.id
        for arg in (model_call.args if model_call is not None else [])
        for n in walk_tree(arg)
        if isinstance(n, ast.Name)
    }
    labels = {
        n.id
        for n in walk_tree(_batch_target(loop))
        if isinstance(n, ast.Name) and n.id not in inputs
    }
    if not labels:
        return False
    scope = ctx.enclosing_function(call)
    for name in bound_names(ctx, call):
        for read in ctx.flow.reads_of(name.id):
            if ctx.enclosing_function(read) is not scope or read.lineno < call.lineno:
                continue
            parent = ctx.parents.get(read)
            if not isinstance(parent, ast.Call) or read not in parent.args:
                continue
            others = [a for a in parent.args if a is not read]
            if any(_from_labels(ctx, other, labels) for other in others):
                return True
    return False


def _batch_target(loop: ast.For | ast.AsyncFor) -> ast.expr:
    """What a loop binds to the batch: `(x, y)` of `for i, (x, y) in enumerate(loader)`,
    not the counter."""
    iterable = loop.iter
    while isinstance(iterable, ast.Call) and identifier(iterable.func) in ("tqdm", "iter"):
        if not iterable.args:
            break
        iterable = iterable.args[0]
    counted = isinstance(iterable, ast.Call) and identifier(iterable.func) == "enumerate"
    if counted and isinstance(loop.target, ast.Tuple) and len(loop.target.elts) == 2:
        return loop.target.elts[1]
    return loop.target


def _from_labels(ctx: ModuleContext, value: ast.expr, labels: set[str]) -> bool:
    return ctx.flow.derives_from(
        value, lambda node: isinstance(node, ast.Name) and node.id in labels
    )


_COMPARING_FUNCTIONS = frozenset(
    {"torch.eq", "torch.ne", "torch.equal", "numpy.equal", "numpy.not_equal"}
)


def _compared_read(ctx: ModuleContext, value: ast.expr) -> bool:
    """`value == y`, `value.view_as(y) == y`, `value.eq(y)`, `torch.eq(value, y)`,
    `torch.max(out, 1)[1] == y` (the
    indices of a `(values, indices)` pair): compared, not passed on."""
    node: ast.AST = value
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Call | ast.Attribute | ast.Subscript):
        if isinstance(parent, ast.Attribute) and parent.attr in _COMPARISONS:
            return True
        if isinstance(parent, ast.Call) and parent.func is not node:
            # `torch.eq(pred, y)`: the function form compares; any other call passes it on
            return ctx.flow.qualname_of(parent) in _COMPARING_FUNCTIONS and node in parent.args
        if isinstance(parent, ast.Subscript) and parent.value is not node:
            return False  # used as an index: `labels[pred]`
        node, parent = parent, ctx.parents.get(parent)
    return isinstance(parent, ast.Compare)


_ITERATOR_NAME = re.compile(r"(^|_)(data_?)?iter(ator)?$", re.IGNORECASE)


def _unwrapped(iterable: ast.expr) -> ast.expr:
    """`enumerate(it)`, `tqdm(it)` -> `it`: the iterable a progress or counting wrapper walks."""
    while (
        isinstance(iterable, ast.Call)
        and identifier(iterable.func) in ("enumerate", "tqdm", "iter")
        and iterable.args
    ):
        iterable = iterable.args[0]
    return iterable


def in_loader_loop(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside a `for` over a data loader (`for x, y in loader`, `enumerate(train_loader)`,
    `tqdm(loader)`), where tensors carry a batch dimension first; not a loop over single
    examples (`for x, y in zip(X, Y)`, `for img, label in dataset`)."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if isinstance(anc, ast.For | ast.AsyncFor):
            return _iterates_loader(ctx, anc.iter)
    return False


def _iterates_loader(ctx: ModuleContext, iterable: ast.expr) -> bool:
    if _ITERATOR_NAME.search(identifier(_unwrapped(iterable)) or ""):
        return True  # `for batch in dev_iter`: a torchtext-style batch iterator
    for sub in walk_tree(iterable):
        if isinstance(sub, ast.Name | ast.Attribute):
            name = sub.id if isinstance(sub, ast.Name) else sub.attr
            if "loader" in name.lower():
                return True
            if isinstance(sub, ast.Name) and any(
                isinstance(v, ast.Call) and (ctx.flow.qualname_of(v) or "").endswith("DataLoader")
                for v in ctx.flow.definitions(sub)
            ):
                return True
        if isinstance(sub, ast.Call) and (ctx.flow.qualname_of(sub) or "").endswith("DataLoader"):
            return True
    return False
