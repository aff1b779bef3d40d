"""Where leaked data is used: the sink a leakage finding is reported at.

A leak starts where test statistics enter the data (a scaler fitted before the split, a mean
over all rows); the harm happens where that data trains, selects or evaluates a model. A
reviewer looks at the `.fit(...)` line, the DataLoader that feeds the training loop, or the
metric: the finding sits there, with the source as a related location.

Sinks, in order of preference: training (`model.fit`, `partial_fit`, `fit_generator`,
`train_on_batch`, a DataLoader/TensorDataset feeding a loop), then selection and evaluation
(`cross_val_score` and friends, `.score`/`.evaluate`, sklearn metrics). A call is a sink of a
leak when one of its arguments is computed, through assignments, splits and local returns,
from what the source produced (`flow.root_names`), and it comes after the source.
"""

from __future__ import annotations

import ast
from typing import Any

from torchdoctor.agent.checks.base import ModuleContext, numbered_excerpt
from torchdoctor.agent.checks.dataflow import identifier

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
    """What carries the leak onwards: the names the source's statement assigns, or, for a
    bare `transformer.fit(X)`, the fitted object itself."""
    statement: ast.AST | None = source
    while statement is not None and not isinstance(statement, ast.stmt):
        statement = ctx.parents.get(statement)
    names: set[str] = set()
    if isinstance(statement, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    if not names and isinstance(source.func, ast.Attribute):
        names |= {n.id for n in ast.walk(source.func.value) if isinstance(n, ast.Name)}
    return names - {"self"}


def _kind(call: ast.Call, fitted_receivers: set[str]) -> int | None:
    """0 training, 1 selection or evaluation, None not a sink."""
    func = call.func
    name = identifier(func)
    if isinstance(func, ast.Attribute) and func.attr in _TRAIN_METHODS:
        receiver = identifier(func.value)
        return None if receiver and receiver in fitted_receivers else 0
    if name in _TRAIN_CALLS:
        return 0
    if name in _SELECT_CALLS or name in _METRICS:
        return 1
    if isinstance(func, ast.Attribute) and func.attr in _EVAL_METHODS:
        return 1
    return None


def find_sink(
    ctx: ModuleContext, source: ast.expr, carriers: set[str], fitted_receivers: set[str]
) -> ast.Call | None:
    """The first training use of the leaked data after the source, else the first selection
    or evaluation use; None when the module never uses it that way."""
    if not carriers:
        return None
    after = (source.end_lineno or source.lineno, source.end_col_offset or 0)
    best: tuple[int, int, int, ast.Call] | None = None
    for call in ctx.flow.nodes(ast.Call):
        if (call.lineno, call.col_offset) <= after:
            continue
        kind = _kind(call, fitted_receivers)
        if kind is None:
            continue
        arguments = [*call.args, *(k.value for k in call.keywords)]
        if not any(carriers & ctx.flow.root_names(arg) for arg in arguments):
            continue
        candidate = (kind, call.lineno, call.col_offset, call)
        if best is None or candidate[:3] < best[:3]:
            best = candidate
    return best[3] if best else None


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
