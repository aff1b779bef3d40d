"""metric-batch-mean-bias: a dataset metric averaged over per-batch means."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.accumulation import Accumulation
from torchdoctor.agent.checks.analysis.batch_outputs import in_loader_loop
from torchdoctor.agent.checks.analysis.project import imported_classes, project_symbol
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_MEANS = frozenset({"mean", "average"})
# Per-batch scores that are themselves means over the batch's examples.
_SKLEARN_MEAN_METRICS = frozenset(
    {"accuracy_score", "balanced_accuracy_score", "f1_score", "precision_score",
     "recall_score", "jaccard_score", "mean_squared_error", "mean_absolute_error", "r2_score"}
)  # fmt: skip
_METRIC_HELPER = re.compile(
    r"^(compute_|calc_|calculate_|get_)?(acc|accuracy|iou|miou|dice|metric|metrics)$"
)


class MetricBatchMeanBias(Rule):
    """Detects a metric accumulated as the mean of per-batch means inside a loop:
    `acc += (pred == y).float().mean()`, `accs.append((pred == y).float().mean())`, or a
    per-batch score from `sklearn.metrics` (`accuracy_score`, `f1_score`, ...) or a local
    helper named like one (`accuracy(output, target)`, `compute_iou(...)`), later divided by
    a count or averaged (a forecasting `metric(pred, true)` helper's tuple of means, collected
    per batch and averaged with `.mean(axis=0)`, counts too; so does a count of hits divided
    by the batch's size, `torch.eq(pred, labels).sum().item() / labels.size(0)`). Not
    reported: loops over a loader built with `drop_last=True` (every batch is full),
    per-batch values scaled back by the batch's size (`loss.item() * x.size(0)`), training
    losses (a progress figure, not a reported metric).

    Why it matters: the last batch is usually smaller, yet weighs as much as a full one, so
    the reported accuracy is not the dataset accuracy; with a batch of 1 at the end the bias
    can reach several points on small validation sets.

    Also reported: an average meter that weighs values by a count (its class's `update(self,
    val, n=1)`, or a meter of its class given `input.size(0)` in the loop or elsewhere in the
    module) handed a per-batch mean with no count in a loop over a loader
    (`top1.update(prec1.item())`; a meter of the project's own `AverageMeter` class imported
    from another file, pytorch/examples' `update(val, n=1)`, counts too), a batch's mean loss
    included when the loop does not
    back-propagate and the meter's average is read after it (a validation loss reported:
    semseg's `validate` returning `loss_meter.avg`), and, likewise, a batch's mean loss
    summed or collected over an evaluation loop that does not back-propagate and averaged
    over the batches, the result compared there to select the model (`val_loss +=
    loss.item()`, then `val_loss /= total_batch` and `if best_val_loss > val_loss:`); one only
    returned or printed is a progress figure, not reported.

    Example:
        for x, y in val_loader:
            acc += (model(x).argmax(1) == y).float().mean().item()
        acc /= len(val_loader)

    Fix: accumulate counts: `correct += (pred == y).sum().item(); total += y.numel()` and
    report `correct / total`.
    """

    id = "metric-batch-mean-bias"
    point = 3
    severity = Severity.LOW
    title = "Metric averaged over batch means"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(  # scores, or a meter updated with a loss
        ("==", "_score", "acc", "iou", "dice", "mean("),
        all_of=((".update(",), ("loss", "criterion")),
    )

    def applies(self, ctx: ModuleContext) -> bool:
        return self.triggers.found_in(ctx.source) and (
            bool(ctx.flow.accumulations) or ".update(" in ctx.source
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        if ".update(" in ctx.source:
            self._meters_given_no_count(ctx)
        flow = ctx.flow
        for acc in flow.accumulations:
            if _weighted_by_batch_size(acc.value):
                continue  # `loss.item() * x.size(0)`, `np.array(metric(p, t)) * batch_size`
            if not (
                _per_batch_mean(ctx, acc.value)
                or _batch_data_mean(ctx, acc)
                or _reported_validation_loss(ctx, acc)
            ):
                continue
            if not flow.carried_across_iterations(acc):
                continue
            if _drops_last_batch(ctx, acc.loop.iter if isinstance(acc.loop, ast.For) else None):
                continue
            scope = ctx.enclosing_function(acc.node)
            body = scope.body if scope is not None else ctx.tree.body
            if not _averaged_later(ast.unparse(acc.target), body):
                continue
            ctx.report(
                self,
                acc.node,
                f"`{ast.unparse(acc.target)}` averages per-batch means: a smaller last batch "
                "weighs like a full one; sum per-example counts and divide by the sample count",
            )

    def _meters_given_no_count(self, ctx: ModuleContext) -> None:
        """`top1.update(prec1.item())` in a loop over a loader: an average meter that weighs
        each value by the count it is given (`def update(self, val, n=1)`, or a meter given
        `input.size(0)` beside it in the same loop) handed a per-batch mean with no count."""
        for call in ctx.flow.nodes(ast.Call):
            func = call.func
            if not (
                isinstance(func, ast.Attribute)
                and func.attr == "update"
                and len(call.args) == 1
                and not call.keywords
            ):
                continue
            loop = next((a for a in ctx.ancestors(call) if isinstance(a, ast.For)), None)
            if loop is None or not in_loader_loop(ctx, call):
                continue
            if _drops_last_batch(ctx, loop.iter):
                continue
            if not _per_batch_mean(ctx, call.args[0]) and not (
                _evaluation_loss(ctx, call.args[0], loop) and _average_read(ctx, func.value, loop)
            ):
                continue
            if not _counts_weigh(ctx, func.value, loop):
                continue
            meter = ast.unparse(func.value)
            ctx.report(
                self,
                call,
                f"`{meter}` is given a per-batch mean with no count: each batch weighs 1, so "
                "the smaller last batch counts like a full one; pass the batch size "
                f"(`{meter}.update(value, n=batch_size)`)",
            )


def _counts_weigh(ctx: ModuleContext, meter: ast.expr, loop: ast.For) -> bool:
    """The meter weighs values by a count: its local class's `update` takes one with a
    default (`def update(self, val, n=1)`), or another meter in the same loop is given one
    (`losses.update(loss.item(), input.size(0))`)."""
    cls = ctx.flow.local_class(meter)
    update = (
        next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "update"), None)
        if cls is not None
        else None
    )
    if update is not None:
        params = update.args.args
        return len(params) >= 3 and len(update.args.defaults) >= 1
    if any(symbol.rsplit(".", 1)[-1] == "AverageMeter" for symbol in imported_classes(ctx, meter)):
        return True  # the project's own `AverageMeter` (pytorch/examples' `update(val, n=1)`)
    text = ast.unparse(meter)
    if any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update"
        and len(node.args) == 2
        and ast.unparse(node.func.value) != text
        for node in walk_scope(loop.body)
    ):
        return True
    # a meter of the same class given a count elsewhere in the module (semseg's training loop
    # `main_loss_meter.update(main_loss.item(), n)` beside its validation loop)
    made = {identifier(c.func) for c in ctx.flow.constructors(meter)} - {""}
    return bool(made) and any(
        isinstance(node.func, ast.Attribute)
        and len(node.args) == 2
        and {identifier(c.func) for c in ctx.flow.constructors(node.func.value)} & made
        for node in ctx.flow.calls_named(("update",))
    )


_SCALAR_CUTS = frozenset({"item", "float", "detach", "cpu"})


def _average_read(ctx: ModuleContext, meter: ast.expr, loop: ast.For) -> bool:
    """Something after the loop reads what the meter gathered (`return loss_meter.avg`):
    the figure is reported, not a by-product."""
    scope = ctx.enclosing_function(loop)
    text, end = ast.unparse(meter), loop.end_lineno or loop.lineno
    return any(
        isinstance(node, ast.Attribute)
        and node.attr != "update"
        and node.lineno > end
        and ast.unparse(node.value) == text
        for node in walk_tree(scope if scope is not None else ctx.tree)
    )


def _evaluation_loss(ctx: ModuleContext, value: ast.expr, loop: ast.For) -> bool:
    """A batch's mean loss (`loss.item()` of a criterion with its default mean reduction) in
    a loop that does not back-propagate: an evaluation figure (semseg's `validate` reports
    `loss_meter.avg` as the validation loss), not a training progress one."""
    if ctx.loops.backpropagates(loop.body):
        return False
    while isinstance(value, ast.Call) and identifier(value.func) in _SCALAR_CUTS:
        func = value.func
        if isinstance(func, ast.Attribute):
            value = func.value
        elif value.args:
            value = value.args[0]
        else:
            return False
    flow = ctx.flow
    return flow.graph_origin(value) == "loss" or flow.derives_from(
        value, lambda n: isinstance(n, ast.Call) and flow.is_loss_callee(n.func)
    )


def _batch_data_mean(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A mean of the batch itself over its batch dimension (`channels_sum +=
    torch.mean(data, dim=[0, 2, 3])` in a loop over a loader): a dataset statistic averaged
    over batches, which the smaller last batch biases as it does a metric."""
    loop = acc.loop
    if not isinstance(loop, ast.For) or not in_loader_loop(ctx, acc.node):
        return False
    batch = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
    for node in ast.walk(acc.value):
        if not isinstance(node, ast.Call) or identifier(node.func) != "mean":
            continue
        if isinstance(node.func, ast.Attribute) and not ctx.flow.qualname_of(node):
            reduced: ast.expr | None = node.func.value  # `data.mean(dim=...)`
            dims = node.args[0] if node.args else None
        else:
            reduced = node.args[0] if node.args else None  # `torch.mean(data, dim=...)`
            dims = node.args[1] if len(node.args) > 1 else None
        dims = next((k.value for k in node.keywords if k.arg == "dim"), dims)
        reads = {n.id for n in ast.walk(reduced) if isinstance(n, ast.Name)} if reduced else set()
        if reads & batch and _includes_batch_dim(dims):
            return True
    return False


def _includes_batch_dim(dims: ast.expr | None) -> bool:
    """No dim (every element), or a dim list that holds 0."""
    if dims is None:
        return True
    values = dims.elts if isinstance(dims, ast.List | ast.Tuple) else [dims]
    return any(isinstance(v, ast.Constant) and v.value == 0 for v in values)


def _per_batch_mean(ctx: ModuleContext, value: ast.expr, hops: int = 2) -> bool:
    """A comparison averaged over the batch, or a per-batch metric score, in `value` or in
    the binding that reaches a name it reads (`acc = calculate_accuracy(y_pred, y)`, then
    `epoch_acc += acc.item()`). Memoised per value and hops: the bindings a module's running
    totals read are reached from many of them (and many times over torch's sources)."""
    memo = ctx.memo_table("metric_batch_mean_bias.per_batch_mean")
    key = (id(value), hops)
    found = memo.get(key)
    if found is None:
        found = memo[key] = _finds_per_batch_mean(ctx, value, hops)
    return bool(found)


def _finds_per_batch_mean(ctx: ModuleContext, value: ast.expr, hops: int) -> bool:
    if _batch_mean_of_comparison(value) or any(
        isinstance(node, ast.Call) and _metric_score(ctx, node) for node in walk_tree(value)
    ):
        return True
    if _hits_over_batch_size(ctx, value):
        return True
    if hops == 0:
        return False
    reads = [n for n in walk_tree(value) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return any(
        (bound := ctx.flow.reaching(name)) is not None and _per_batch_mean(ctx, bound, hops - 1)
        for name in reads
    )


def _hits_over_batch_size(ctx: ModuleContext, value: ast.expr) -> bool:
    """A count of hits divided by the batch's size (`correct_predictions / labels.size(0)`
    with `correct_predictions = torch.eq(predictions, labels).sum().item()`, `(pred ==
    y).sum() / len(y)`): the batch's accuracy, a mean over its examples."""
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Div)):
        return False
    if not _batch_size_of(value.right):
        return False
    hits: ast.expr | None = value.left
    if isinstance(hits, ast.Name):
        hits = ctx.flow.reaching(hits)
    return hits is not None and any(_equality(node) for node in walk_tree(hits))


def _batch_size_of(size: ast.expr) -> bool:
    """`labels.size(0)`, `len(y)`, `x.shape[0]`, `batch_size`: the number of a batch's rows."""
    if isinstance(size, ast.Call) and identifier(size.func) == "size":
        return (
            len(size.args) == 1
            and isinstance(size.args[0], ast.Constant)
            and size.args[0].value == 0
        )
    if isinstance(size, ast.Call) and identifier(size.func) == "len":
        return len(size.args) == 1
    if isinstance(size, ast.Subscript) and isinstance(size.value, ast.Attribute):
        return (
            size.value.attr == "shape"
            and isinstance(size.slice, ast.Constant)
            and size.slice.value == 0
        )
    return isinstance(size, ast.Name | ast.Attribute) and bool(
        re.search(r"(^|_)(batch_size|bs|bsz)$", identifier(size), re.IGNORECASE)
    )


_SIZE_WORDS = re.compile(r"size|count|num|len|(^|_)n$|^n_|bs$|batch", re.IGNORECASE)


def _weighted_by_batch_size(value: ast.expr) -> bool:
    """`loss_this_iter * batch_size_this_iter`, `acc * x.size(0)`, `np.array(metric(p, t)) *
    batch_size`: a per-batch mean scaled back to a per-batch sum."""
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult)):
        return False
    for factor in (value.left, value.right):
        text = ast.unparse(factor)
        if isinstance(factor, ast.Call) and identifier(factor.func) in ("size", "len"):
            return True
        if isinstance(factor, ast.Subscript) and ".shape" in text:
            return True
        if isinstance(factor, ast.Name | ast.Attribute) and _SIZE_WORDS.search(identifier(factor)):
            return True
    return False


_LOSS_FUNCTIONS = re.compile(r"loss|criterion|cross_entropy", re.IGNORECASE)
_PEELED = frozenset({"item", "detach", "cpu", "float", "numpy", "mean"})


def _reported_validation_loss(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A batch's mean loss added up over the batches of an evaluation loop (one that does
    not back-propagate) and turned into the split's loss by a count of batches: yolo's
    `val_loss += loss.item()` ... `val_loss /= total_batch`, Informer-style `vali` appending
    `loss.item()`), when the function then selects the model on it (compares it)."""
    loop = acc.loop
    if not isinstance(loop, ast.For) or ctx.loops.backpropagates(loop.body):
        return False
    if not in_loader_loop(ctx, acc.node):
        return False
    value: ast.expr = acc.value
    for _ in range(4):
        while isinstance(value, ast.Call) and (
            (
                isinstance(value.func, ast.Attribute)
                and value.func.attr in _PEELED
                and not value.args
            )
            or (identifier(value.func) == "float" and len(value.args) == 1)
        ):
            value = value.func.value if isinstance(value.func, ast.Attribute) else value.args[0]
        if isinstance(value, ast.Name) and (bound := ctx.flow.reaching(value)) is not None:
            value = bound
            continue
        break
    if not isinstance(value, ast.Call) or any(k.arg == "reduction" for k in value.keywords):
        return False
    name = identifier(value.func) or ""
    qual = ctx.flow.qualname_of(value) or ""
    if not (_LOSS_FUNCTIONS.search(name) or _LOSS_FUNCTIONS.search(qual.rsplit(".", 1)[-1])):
        return False
    return _selected_by(ctx, ast.unparse(acc.target), acc.node)


def _selected_by(ctx: ModuleContext, target: str, node: ast.AST) -> bool:
    """The total is compared after the loop (`if best_val_loss > val_loss:`): the model is
    selected on it, so it is a reported figure, not the progress line a returned or printed
    average is."""
    scope = ctx.enclosing_function(node)
    body = scope.body if scope is not None else ctx.tree.body
    return any(
        isinstance(stmt, ast.Compare)
        and stmt.lineno > getattr(node, "lineno", 0)
        and any(ast.unparse(part) == target for part in [stmt.left, *stmt.comparators])
        for stmt in walk_scope(body)
    )


def _metric_score(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call) or ""
    if qual.startswith("sklearn.metrics."):
        return qual.rsplit(".", 1)[-1] in _SKLEARN_MEAN_METRICS
    if qual and project_symbol(ctx, call.func) == qual:  # the project's own helper, imported
        return bool(_METRIC_HELPER.match(qual.rsplit(".", 1)[-1].lower()))
    if qual or not isinstance(call.func, ast.Name | ast.Attribute):
        return False
    if not _METRIC_HELPER.match(identifier(call.func).lower()):
        return False
    helpers = ctx.calls.resolve(call)
    return not helpers or any(_averages(helper) for helper in helpers)


def _averages(helper: ast.AST) -> bool:
    """A local metric helper whose body averages over the batch (`.mean()`, or a division:
    `correct.float() / y.shape[0]`), not one that counts (`correct[:k].sum()`, CLIP's
    `accuracy` divided by the sample count by its caller)."""
    return any(
        (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div))
        or (isinstance(node, ast.Call) and identifier(node.func) in _MEANS)
        for node in walk_tree(helper)
    )


def _drops_last_batch(ctx: ModuleContext, iterable: ast.expr | None) -> bool:
    """The loop runs over a loader built with `drop_last=True` (through `enumerate`/`tqdm`)."""
    while (
        isinstance(iterable, ast.Call)
        and iterable.args
        and identifier(iterable.func) in ("enumerate", "tqdm", "iter")
    ):
        iterable = iterable.args[0]
    values: list[ast.expr] = []
    if isinstance(iterable, ast.Call):
        values = [iterable]
    elif isinstance(iterable, ast.Name | ast.Attribute):
        values = ctx.flow.definitions(iterable)
    return any(
        isinstance(v, ast.Call)
        and any(k.arg == "drop_last" and _is_true(k.value) for k in v.keywords)
        for v in values
    )


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _batch_mean_of_comparison(value: ast.expr) -> bool:
    for node in walk_tree(value):
        if (
            isinstance(node, ast.Call)
            and identifier(node.func) in _MEANS
            and any(_equality(c) for c in walk_tree(node))
        ):
            return True
    return False


def _equality(node: ast.AST) -> bool:
    """`pred == y` or `pred.eq(y)`."""
    if isinstance(node, ast.Compare):
        return isinstance(node.ops[0], ast.Eq)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and (node.func.attr == "eq")
    )


def _averaged_later(target: str, body: list[ast.stmt]) -> bool:
    for node in walk_scope(body):
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            left = node.left if isinstance(node, ast.BinOp) else node.target
            if any(ast.unparse(part) == target for part in _scaled_parts(left)):
                return True  # `acc / n`, `100 * acc / n`
        if (
            isinstance(node, ast.Call)
            and identifier(node.func) in _MEANS | {"sum"}
            and any(ast.unparse(a) == target for a in node.args)
        ):
            return True
        if (  # `metrics_all.mean(axis=0)`
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MEANS
            and ast.unparse(node.func.value) == target
        ):
            return True
    return False


def _scaled_parts(expr: ast.expr) -> list[ast.expr]:
    """`expr` and, through products with constants (`100 * acc`), the value it scales."""
    parts = [expr]
    while isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        if isinstance(expr.left, ast.Constant):
            expr = expr.right
        elif isinstance(expr.right, ast.Constant):
            expr = expr.left
        else:
            break
        parts.append(expr)
    return parts
