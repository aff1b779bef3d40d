"""Where leaked data is used: the sink a leakage finding is reported at.

A leak starts where test statistics enter the data (a scaler fitted before the split, a mean
over all rows); the harm happens where that data trains, selects or evaluates a model. A
reviewer looks at the `.fit(...)` line, the DataLoader that feeds the training loop, or the
metric: the finding sits there, with the source as a related location.

Sinks, in order of preference: training (`model.fit`, `partial_fit`, `fit_generator`,
`train_on_batch`, a DataLoader/TensorDataset feeding a loop), then selection and evaluation
(`cross_val_score` and friends, `.score`/`.evaluate`, sklearn metrics), then prediction on the
contaminated rows (`predict`: test rows rescaled with their own statistics are scored there).
Another transformer's `fit` is no sink: it passes the leak on. A call is a sink of a leak when
one of its arguments is computed, through assignments, splits and local returns, from what the
source produced (`flow.root_names`), and it comes after the source; a frame whose columns are
overwritten with contaminated values (`train[col] = full.iloc[:n][col]`) carries it too.
"""

from __future__ import annotations

import ast
from typing import Any

from torchdoctor.agent.checks.base import ModuleContext, numbered_excerpt
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_tree

_TRAIN_METHODS = frozenset({"fit", "partial_fit", "fit_generator", "train_on_batch"})
_TRAIN_CALLS = frozenset({"DataLoader", "TensorDataset"})
_SELECT_CALLS = frozenset(
    {
        "cross_val_score",
        "cross_validate",
        "cross_val_predict",
        "learning_curve",
        "validation_curve",
        "permutation_test_score",
    }
)
_EVAL_METHODS = frozenset({"score", "evaluate"})
_PREDICT_METHODS = frozenset({"predict", "predict_proba", "predict_log_proba", "decision_function"})
TRANSFORMER_MODULES = (
    "sklearn.preprocessing.",
    "sklearn.feature_selection.",
    "sklearn.decomposition.",
    "sklearn.impute.",
    "sklearn.feature_extraction.",
    "sklearn.manifold.",
)
_METRICS = frozenset(
    {
        "accuracy_score",
        "balanced_accuracy_score",
        "f1_score",
        "precision_score",
        "recall_score",
        "roc_auc_score",
        "average_precision_score",
        "log_loss",
        "mean_squared_error",
        "mean_absolute_error",
        "r2_score",
        "classification_report",
        "confusion_matrix",
    }
)


def produced_names(ctx: ModuleContext, source: ast.Call, data: ast.expr) -> set[str]:
    """What carries the leak onwards: the names the source's statement assigns, the frame an
    in-place call fills (`df["x"].fillna(df["x"].mean(), inplace=True)`), or, for a bare
    `transformer.fit(X)`, the fitted object itself."""
    statement: ast.AST | None = source
    while statement is not None and not isinstance(statement, ast.stmt):
        statement = ctx.parents.get(statement)
    names: set[str] = set()
    if isinstance(statement, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            names |= {n.id for n in walk_tree(target) if isinstance(n, ast.Name)}
    elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        outer = statement.value
        if outer is source and isinstance(source.func, ast.Attribute):
            names |= {n.id for n in walk_tree(source.func.value) if isinstance(n, ast.Name)}
        elif _in_place(outer) and isinstance(outer.func, ast.Attribute):
            names |= {identifier(_base(outer.func.value))} - {""}
    return names - {"self"}


def _in_place(call: ast.Call) -> bool:
    return any(
        k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def _base(node: ast.expr) -> ast.expr:
    """`df` for `df["x"]`, `df.loc[:, "x"]`, `df.x`."""
    while isinstance(node, ast.Subscript | ast.Attribute):
        node = node.value
    return node


def spread(ctx: ModuleContext, source: ast.expr, carriers: set[str]) -> set[str]:
    """`carriers` and the frames that receive their values column by column after the source
    (`train[col] = full.iloc[:n][col]`, `X.loc[:, c] = ...`): an item assignment binds no name,
    so `flow.root_names` alone would lose the leak there."""
    found = set(carriers)
    stores = [
        node
        for node in ctx.flow.nodes(ast.Assign)
        if node.lineno > source.lineno
        and any(isinstance(t, ast.Subscript | ast.Attribute) for t in node.targets)
    ]
    changed = True
    while changed and stores:
        changed = False
        for store in stores:
            if not found & ctx.flow.root_names(store.value):
                continue
            for target in store.targets:
                name = identifier(_base(target)) if not isinstance(target, ast.Name) else ""
                if name and name != "self" and name not in found:
                    found.add(name)
                    changed = True
    return found


def _kind(ctx: ModuleContext, call: ast.Call, fitted_receivers: set[str]) -> int | None:
    """0 training, 1 selection or evaluation, 2 prediction, None not a sink."""
    func = call.func
    name = identifier(func)
    if isinstance(func, ast.Attribute) and func.attr in _TRAIN_METHODS:
        receiver = identifier(func.value)
        if (receiver and receiver in fitted_receivers) or _transformer(ctx, func.value):
            return None
        return 0
    if name in _TRAIN_CALLS:
        return 0
    if name in _SELECT_CALLS or name in _METRICS:
        return 1
    if isinstance(func, ast.Attribute) and func.attr in _EVAL_METHODS:
        return 1
    if isinstance(func, ast.Attribute) and func.attr in _PREDICT_METHODS:
        return 2
    return None


def _transformer(ctx: ModuleContext, receiver: ast.expr) -> bool:
    """`TfidfTransformer().fit(X)`, `pca.fit(X)`: a preprocessing step, not a model."""
    built = receiver if isinstance(receiver, ast.Call) else None
    qual = (ctx.flow.qualname_of(built) if built else ctx.flow.constructed_as(receiver)) or ""
    return qual.startswith(TRANSFORMER_MODULES)


def find_sink(
    ctx: ModuleContext,
    source: ast.expr,
    carriers: set[str],
    fitted_receivers: set[str],
    within: set[int] | None = None,
) -> ast.Call | None:
    """The first training use of the leaked data after the source, else the first selection
    or evaluation use; None when the module never uses it that way. `within`: ids of the
    functions the sink may sit in (a split's locals mean nothing outside them)."""
    if not carriers:
        return None
    carriers = spread(ctx, source, carriers)
    after = (source.end_lineno or source.lineno, source.end_col_offset or 0)
    best: tuple[int, int, int, ast.Call] | None = None
    for call in ctx.flow.nodes(ast.Call):
        if within is not None and id(ctx.enclosing_function(call)) not in within:
            continue
        kind = _kind(ctx, call, fitted_receivers)  # by name, first: most calls are no sink
        if kind is None or not _runs_after(ctx, call, after):
            continue
        arguments = [*call.args, *(k.value for k in call.keywords)]
        if not any(carriers & _roots(ctx, call, arg) for arg in arguments):
            continue
        candidate = (kind, call.lineno, call.col_offset, call)
        if best is None or candidate[:3] < best[:3]:
            best = candidate
    return best[3] if best else None


def _roots(ctx: ModuleContext, call: ast.Call, arg: ast.expr, depth: int = 2) -> set[str]:
    """`flow.root_names(arg)`, and, for the parameters of the function around `call`, the
    root names of what its call sites pass: `def report(part): clf.fit(part)` then
    `report(a)` with `a` from the contaminated split."""
    names = ctx.flow.root_names(arg)
    fn = ctx.enclosing_function(call)
    if fn is None or depth == 0:
        return names
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    if not params & names:
        return names
    for site in ctx.calls.call_sites(fn):
        for param, value in ctx.calls.bind(site, fn).items():
            if param in names:
                names = names | _roots(ctx, site, value, depth - 1)
    return names


def _runs_after(ctx: ModuleContext, call: ast.Call, after: tuple[int, int], depth: int = 2) -> bool:
    """The call comes after `after`, or sits in a local function (defined earlier, as
    notebooks do) that a call after it runs: `def report(train): model.fit(train)`."""
    if (call.lineno, call.col_offset) > after:
        return True
    fn = ctx.enclosing_function(call)
    if fn is None or depth == 0:
        return False
    return any(_runs_after(ctx, site, after, depth - 1) for site in ctx.calls.call_sites(fn))


def related_location(ctx: ModuleContext, node: ast.AST, message: str) -> dict[str, Any]:
    """A related location (the leak's source) in the shape findings carry in `data`."""
    line = getattr(node, "lineno", 1)
    end = getattr(node, "end_lineno", line) or line
    return {
        "file": ctx.path,
        "line": line,
        "end_line": end,
        "message": message,
        "excerpt": numbered_excerpt(ctx.lines, line, end),
    }
