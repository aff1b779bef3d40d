"""mean-over-wrong-count: a loop's total divided by something else than its batch count."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import MEAN_REDUCED_LOSSES
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    added_to_in,
    nodes_of,
    summed_names,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class MeanOverWrongCount(Rule):
    """Detects a total accumulated over a loop (`total += loss.item()`) divided, after the
    loop, by the wrong count: the last index of `enumerate` (`total /= i`, where the loop ran
    `i + 1` times), or the length of another data loader than the one the total was summed
    over (`loss_epoch / len(train_loader)` where `loss_epoch` came from a loop, or a function
    given `features_loader`, over another loader), or a count of matching samples summed
    over a loader's batches (`correct += torch.sum(preds == targets)`) divided by `len()` of
    that loader, the number of batches (`correct.double() / len(self.train_data_loader)`),
    or the other way round, a sum of batch means (`loss_epoch += loss.item()`, the loss from
    a criterion averaging over the batch) divided by `len()` of that loader's `.dataset`,
    the number of samples.

    Why it matters: the reported mean is wrong by a factor nobody sees. Dividing by the last
    index inflates it (with a single validation batch it divides by zero); dividing by the
    length of another loader scales it by the ratio of two batch counts (a linear probe's
    loss divided by the image loader's length instead of the feature loader's), so curves
    and checkpoints selected on them compare numbers on different scales.

    Not reported: `enumerate(..., start=1)` (the index is then the count), `i + 1`,
    `len()` of the loader the total was summed over (or of its `.dataset`) for a total of
    per-batch values (losses, batch accuracies), a count divided by `len(loader.dataset)`,
    divisions by a
    loader's length when the total comes from a function the same loader was passed to,
    and names that do not look like loaders (`len(dataset)` where the samples were counted).

    Example:
        for counter, (x, _) in enumerate(valid_loader):
            valid_loss += criterion(model(x), x).item()
        valid_loss /= counter

    Fix: divide by the number of iterations (`counter + 1`, `len(valid_loader)`) of the loop
    that produced the total.
    """

    id = "mean-over-wrong-count"
    point = 3
    severity = Severity.MEDIUM
    title = "Mean divided by the wrong count"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("enumerate(", "len("))

    def applies(self, ctx: ModuleContext) -> bool:
        return "/" in ctx.source and ("enumerate(" in ctx.source or "len(" in ctx.source)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or not _may_report(ctx):
            return
        scopes: list[ast.AST] = [ctx.tree, *ctx.flow.nodes(ast.FunctionDef)]
        for scope in scopes:
            body = scope.body if isinstance(scope, ast.Module | ast.FunctionDef) else []
            if scope is ctx.tree:  # the module's own statements: each function is its own scope
                body = [s for s in body if not isinstance(s, _DEFINITIONS)]
            nodes = list(walk_scope(body))
            loops = [n for n in nodes if isinstance(n, ast.For)]
            for node in nodes:
                message = None
                division = _division(node)
                if division is not None:
                    total, divisor = division
                    message = _last_index(total, divisor, node, loops) or _other_loader(
                        ctx, total, divisor, node, loops
                    )
                cast = _division(node, casts=True)
                if message is None and cast is not None:
                    message = _count_over_batches(ctx, *cast, node, loops) or _count_over_window(
                        ctx, *cast, node
                    )
                if message is None and division is not None:
                    message = _means_over_samples(ctx, *division, node, loops)
                if message is not None:
                    ctx.report(self, node, message)


def _may_report(ctx: ModuleContext) -> bool:
    """Whether some division could be reported: by a name, of a total summed with `+=`
    somewhere in the module, or by `len()` of a loader. Read from the engine's node index, so
    a module without one (most of a library) is not walked scope by scope."""
    summed = summed_names(ctx)
    for node in nodes_of(ctx, ast.BinOp, ast.AugAssign):
        division = _division(node)
        if division is None:
            continue
        total, divisor = division
        if (isinstance(divisor, ast.Name) and total in summed) or _loader_of_len(divisor):
            return True
    for node in nodes_of(ctx, ast.BinOp):
        division = _division(node, casts=True)
        if (
            division is not None
            and division[0] in summed
            and (_batch_count_of(division[1]) or isinstance(division[1], ast.Name | ast.Constant))
        ):
            return True
    return False


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Conversions a count goes through before it is divided (`correct.double() / n`).
_CASTS = frozenset({"double", "float", "item", "cpu"})


def _division(node: ast.AST, casts: bool = False) -> tuple[str, ast.expr] | None:
    """(total, divisor) of `total / divisor` or `total /= divisor`, the total a plain name
    (with `casts`, also one cast on its way: `correct.double() / n`, `float(correct) / n`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = node.left
        while (
            casts
            and isinstance(left, ast.Call)
            and not left.args
            and isinstance(left.func, ast.Attribute)
            and left.func.attr in _CASTS
        ):
            left = left.func.value
        if (
            casts
            and isinstance(left, ast.Call)
            and isinstance(left.func, ast.Name)
            and left.func.id == "float"
            and len(left.args) == 1
        ):
            left = left.args[0]
        if isinstance(left, ast.Name):
            return left.id, node.right
    if (
        isinstance(node, ast.AugAssign)
        and isinstance(node.op, ast.Div)
        and isinstance(node.target, ast.Name)
    ):
        return node.target.id, node.value
    return None


def _after(node: ast.AST, loop: ast.For) -> bool:
    return getattr(node, "lineno", 0) > (loop.end_lineno or loop.lineno)


def _last_index(total: str, divisor: ast.expr, node: ast.AST, loops: list[ast.For]) -> str | None:
    """`total /= i` after `for i, batch in enumerate(loader)` that summed `total`."""
    if not isinstance(divisor, ast.Name):
        return None
    for loop in loops:
        target = loop.target
        if not (
            isinstance(loop.iter, ast.Call)
            and isinstance(loop.iter.func, ast.Name)
            and loop.iter.func.id == "enumerate"
            and len(loop.iter.args) == 1
            and not loop.iter.keywords
            and isinstance(target, ast.Tuple)
            and target.elts
            and isinstance(target.elts[0], ast.Name)
            and target.elts[0].id == divisor.id
        ):
            continue
        if _after(node, loop) and added_to_in(loop.body, total):
            return (
                f"`{total}` is summed over `{ast.unparse(loop.iter)}` and divided by "
                f"`{divisor.id}`, the last index: the loop ran `{divisor.id} + 1` times (and "
                "one batch divides by zero); divide by the number of batches"
            )
    return None


def _loader_like(name: str) -> bool:
    lowered = name.lower()
    return "loader" in lowered or lowered.endswith("_dl")


def _len_argument(divisor: ast.expr) -> ast.expr | None:
    """`x` of `len(x)`."""
    if (
        isinstance(divisor, ast.Call)
        and isinstance(divisor.func, ast.Name)
        and divisor.func.id == "len"
        and len(divisor.args) == 1
    ):
        return divisor.args[0]
    return None


def _loader_of_len(divisor: ast.expr) -> str | None:
    """`L` of `len(L)` / `len(L.dataset)`, when `L` is named like a data loader."""
    arg = _len_argument(divisor)
    if arg is None:
        return None
    if isinstance(arg, ast.Attribute) and arg.attr == "dataset":
        arg = arg.value
    return arg.id if isinstance(arg, ast.Name) and _loader_like(arg.id) else None


def _other_loader(
    ctx: ModuleContext, total: str, divisor: ast.expr, node: ast.AST, loops: list[ast.For]
) -> str | None:
    divided_by = _loader_of_len(divisor)
    if divided_by is None:
        return None
    summed_over: set[str] = set()
    for loop in loops:
        if _after(node, loop) and added_to_in(loop.body, total):
            summed_over |= {
                n.id for n in walk_tree(loop.iter) if isinstance(n, ast.Name) and _loader_like(n.id)
            }
    for value in _bound_values(ctx, node, total):
        if isinstance(value, ast.Call):
            summed_over |= {
                n.id
                for arg in [*value.args, *(k.value for k in value.keywords)]
                for n in walk_tree(arg)
                if isinstance(n, ast.Name) and _loader_like(n.id)
            }
    if not summed_over or divided_by in summed_over:
        return None
    over = ", ".join(f"`{name}`" for name in sorted(summed_over))
    return (
        f"`{total}` is summed over {over} but divided by `len({divided_by})`: the mean "
        "uses the batch count of another loader; divide by the length of the loader the "
        "total was summed over"
    )


def _bound_values(ctx: ModuleContext, node: ast.AST, total: str) -> list[ast.expr]:
    """What `total` is bound to in the scope of `node`: plain assignments and unpackings."""
    fn = ctx.enclosing_function(node)
    body = fn.body if fn is not None else ctx.tree.body
    found: list[ast.expr] = []
    line = getattr(node, "lineno", 0)
    for stmt in walk_scope(body):
        if not isinstance(stmt, ast.Assign) or stmt.lineno > line:
            continue
        for target in stmt.targets:
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            if any(isinstance(n, ast.Name) and n.id == total for n in names):
                found.append(stmt.value)
    return found


def _batch_count_of(divisor: ast.expr) -> str | None:
    """The text of `L` in `len(L)` when `L` is a data loader itself (a name or attribute
    named like one, `self.train_data_loader`), not its dataset: the number of batches."""
    arg = _len_argument(divisor)
    if arg is None:
        return None
    name = ""
    if isinstance(arg, ast.Name):
        name = arg.id
    elif isinstance(arg, ast.Attribute):
        name = arg.attr
    return ast.unparse(arg) if name and _loader_like(name) else None


def _counts_matches(value: ast.expr) -> bool:
    """`torch.sum(pred == y)`, `(pred == y).sum()`, `pred.eq(y).sum().item()`: how many
    samples of the batch match, a count that grows with the batch size."""
    while (
        isinstance(value, ast.Call)
        and not value.args
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _CASTS
    ):
        value = value.func.value
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Attribute) and func.attr == "sum" and not value.args:
        counted = func.value
    elif ast.unparse(func) in ("torch.sum", "sum") and len(value.args) == 1:
        counted = value.args[0]
    else:
        return False
    if isinstance(counted, ast.Compare):
        return len(counted.ops) == 1 and isinstance(counted.ops[0], ast.Eq)
    return (
        isinstance(counted, ast.Call)
        and isinstance(counted.func, ast.Attribute)
        and counted.func.attr == "eq"
    )


def _count_over_batches(
    ctx: ModuleContext, total: str, divisor: ast.expr, node: ast.AST, loops: list[ast.For]
) -> str | None:
    """`correct / len(loader)` after a loop over `loader` whose every `correct += ...` adds a
    count of matching samples (`torch.sum(preds == targets)`): a per-sample count divided by
    the number of batches, an accuracy scaled by the batch size. Not when the quotient is
    divided again (`correct / len(loader) / batch_size`: the samples, counted the long
    way)."""
    divided_by = _batch_count_of(divisor)
    if divided_by is None:
        return None
    parent = ctx.parents.get(node)
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div) and parent.left is node:
        return None
    for added in _additions_in_loops_over(loops, node, divided_by, total):
        if added and all(_counts_matches(value) for value in added):
            return (
                f"`{total}` counts the matching samples of each batch of `{divided_by}` but "
                f"is divided by `len({divided_by})`, the number of batches: the accuracy is "
                "scaled by the batch size; divide by the number of samples "
                f"(`len({divided_by}.dataset)`)"
            )
    return None


def _count_over_window(
    ctx: ModuleContext, total: str, divisor: ast.expr, node: ast.AST
) -> str | None:
    """`correct / 100` under `if (i + 1) % 100 == 0:` in a loop whose every `correct += ...`
    adds a count of matching samples (`(predicted == labels).sum().item()`): the samples
    matched over a window of batches divided by the window's length, the number of batches,
    so the logged running accuracy is scaled by the batch size. Not when the quotient is
    divided again (`correct / 100 / batch_size`)."""
    parent = ctx.parents.get(node)
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div) and parent.left is node:
        return None
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.For, ast.AsyncFor, ast.While, *_DEFINITIONS)):
            return None  # the window is the period of a guard in the loop that counts
        if not isinstance(anc, ast.If) or (period := _period(anc.test)) is None:
            continue
        if ast.dump(period) != ast.dump(divisor):
            return None
        loop = next((a for a in ctx.ancestors(anc) if isinstance(a, ast.For | ast.While)), None)
        added = [] if loop is None else _added_in(loop.body, total)
        if added and all(_counts_matches(value) for value in added):
            return (
                f"`{total}` counts the matching samples of each batch but is divided by "
                f"`{ast.unparse(divisor)}`, the number of batches between two reports (`if "
                f"{ast.unparse(anc.test)}:`): the accuracy is scaled by the batch size; divide "
                "by the number of samples counted in the window"
            )
        return None
    return None


def _period(test: ast.expr) -> ast.expr | None:
    """`n` of a periodic guard `a % n == 0`."""
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == 0
        and isinstance(test.left, ast.BinOp)
        and isinstance(test.left.op, ast.Mod)
    ):
        return test.left.right
    return None


def _added_in(body: list[ast.stmt], total: str) -> list[ast.expr]:
    """What `body` adds to `total` with `+=`."""
    return [
        n.value
        for n in walk_scope(body)
        if isinstance(n, ast.AugAssign)
        and isinstance(n.op, ast.Add)
        and isinstance(n.target, ast.Name)
        and n.target.id == total
    ]


def _means_over_samples(
    ctx: ModuleContext, total: str, divisor: ast.expr, node: ast.AST, loops: list[ast.For]
) -> str | None:
    """`total / len(loader.dataset)` after a loop over `loader` whose every `total += ...`
    adds a batch's mean loss as it is (`loss.item()`, `loss.data.item()`, `float(loss)`), the
    loss made by a criterion that averages over the batch (`F.nll_loss(...)`,
    `nn.CrossEntropyLoss()`, alone or weighted with other terms none of which is known to
    sum): the mean is shrunk by the batch size. Not when a term sums (`reduction="sum"`,
    `size_average=False`, `.sum()`) or an addition scales by the batch (`* x.size(0)`)."""
    arg = _len_argument(divisor)
    if not (isinstance(arg, ast.Attribute) and arg.attr == "dataset"):
        return None
    loader = ast.unparse(arg.value)
    for added in _additions_in_loops_over(loops, node, loader, total):
        if added and all(_batch_mean(ctx, value, node) for value in added):
            return (
                f"`{total}` sums each batch's mean loss over `{loader}` but is divided by "
                f"`len({loader}.dataset)`, the number of samples: the mean is shrunk by the "
                f"batch size; divide by the number of batches (`len({loader})`), or add each "
                "batch's loss times its size"
            )
    return None


_SCALAR_OF = frozenset({"item", "detach", "cpu"})


def _batch_mean(ctx: ModuleContext, value: ast.expr, at: ast.AST) -> bool:
    """`value` is a batch's mean loss taken as a number: `loss.item()`, `loss.data.item()`,
    `loss.data[0]`, `float(loss)`, with `loss` (or the call itself) averaged over the batch."""
    while True:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if value.func.attr not in _SCALAR_OF or value.args:
                break
            value = value.func.value
        elif (isinstance(value, ast.Attribute) and value.attr == "data") or (
            isinstance(value, ast.Subscript) and ast.unparse(value.slice) == "0"
        ):
            value = value.value
        elif (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "float"
            and len(value.args) == 1
        ):
            value = value.args[0]
        else:
            break
    if not isinstance(value, ast.Name | ast.Call):
        return False  # scaled or combined on the way (`loss.item() * x.size(0)`)
    return _reduction(ctx, value, at, depth=0) == "mean"


def _reduction(ctx: ModuleContext, expr: ast.expr, at: ast.AST, depth: int) -> str | None:
    """'mean' when `expr` is a loss averaged over the batch (some term is, no term sums),
    'sum' when a term is known to sum, None when nothing is known."""
    if depth > 3:
        return None
    found: set[str] = set()
    for node in walk_tree(expr):
        kind = None
        if isinstance(node, ast.Call):
            kind = _call_reduction(ctx, node)
        elif isinstance(node, ast.Name):
            kinds = {
                _reduction(ctx, bound, at, depth + 1) for bound in _bound_values(ctx, at, node.id)
            }
            kind = "sum" if "sum" in kinds else ("mean" if "mean" in kinds else None)
        if kind is not None:
            found.add(kind)
    if "sum" in found:
        return "sum"
    return "mean" if "mean" in found else None


def _call_reduction(ctx: ModuleContext, call: ast.Call) -> str | None:
    """How a call reduces over the batch: a mean-reducing loss given no other reduction, a
    criterion object built from one, `.mean()`/`.sum()` and `torch.sum`."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("sum", "mean") and not call.keywords:
        return func.attr
    qual = ctx.call_qualname(call)
    if qual in ("torch.sum", "torch.mean"):
        return qual.rsplit(".", 1)[-1]
    built = [call] if qual in MEAN_REDUCED_LOSSES else []
    if not built and isinstance(func, ast.Name | ast.Attribute):
        built = [
            c for c in ctx.flow.constructors(func) if ctx.call_qualname(c) in MEAN_REDUCED_LOSSES
        ]
    if not built:
        return None
    return "mean" if all(_averages(c) for c in built) else "sum"


def _averages(call: ast.Call) -> bool:
    """No keyword turns the average off: `reduction` other than 'mean', `size_average=False`,
    `reduce=False`."""
    for keyword in call.keywords:
        value = keyword.value
        if keyword.arg == "reduction" and not (
            isinstance(value, ast.Constant) and value.value in ("mean", "elementwise_mean")
        ):
            return False
        if keyword.arg in ("size_average", "reduce") and not (
            isinstance(value, ast.Constant) and value.value is True
        ):
            return False
    return True


def _additions_in_loops_over(
    loops: list[ast.For], node: ast.AST, source: str, total: str
) -> list[list[ast.expr]]:
    """For each loop before `node` that iterates `source`, what its body adds to `total`
    with `+=` (empty when it adds nothing)."""
    found = []
    for loop in loops:
        iterated = {
            ast.unparse(n) for n in walk_tree(loop.iter) if isinstance(n, ast.Name | ast.Attribute)
        }
        if not _after(node, loop) or source not in iterated:
            continue
        found.append(_added_in(loop.body, total))
    return found
