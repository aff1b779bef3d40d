"""leak-preprocessing: a scaler, vocabulary or statistic is fitted on data with test rows."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from agent.checks.base import ModuleContext, Rule
from agent.checks.dataflow import identifier
from agent.models import Severity

_FIT_METHODS = frozenset({"fit", "fit_transform", "partial_fit", "fit_on_texts", "adapt"})
_TRANSFORMER_MODULES = (
    "sklearn.preprocessing.",
    "sklearn.feature_selection.",
    "sklearn.decomposition.",
    "sklearn.impute.",
    "sklearn.feature_extraction.",
    "sklearn.manifold.",
)
_TRANSFORMER_NAME = re.compile(
    r"scaler|normali[sz]er|standardi[sz]er|encoder|imputer|vectori[sz]er|selector|pca|svd|"
    r"tokenizer|vocab|transformer|discreti[sz]er|binarizer",
    re.IGNORECASE,
)
_VOCAB_BUILDERS = re.compile(r"build_vocab|vocab_from|Vocab$", re.IGNORECASE)
_STAT_METHODS = frozenset({"mean", "std", "var", "min", "max"})
_STAT_NAME = re.compile(r"mean|std|mu|sigma|avg|var|stat|min|max|norm", re.IGNORECASE)


class LeakPreprocessing(Rule):
    """Detects preprocessing fitted on data that includes the held-out split: a scaler,
    encoder, imputer, vectorizer, feature selector or tokenizer whose `fit`/`fit_transform`
    receives test/validation data (or a concatenation with it), or the whole dataset before
    `train_test_split`/`random_split` divides it; the same for normalisation statistics
    (`mean = X.mean(0)`) and vocabularies built from such data. The data-flow analysis
    follows names, tuple unpacking of splits and local functions across the module.

    Why it matters: statistics of the test rows leak into the features the model trains on,
    so the reported test score is optimistic and does not measure generalisation (Yang et
    al., "Data leakage in notebooks", ASE'22).

    Example:
        X = scaler.fit_transform(X)
        X_train, X_test, y_train, y_test = train_test_split(X, y)

    Fix: split first, then fit on the training part only and `transform` the others (an
    sklearn `Pipeline` does this for you).
    """

    id = "leak-preprocessing"
    point = 3
    severity = Severity.HIGH
    title = "Preprocessing fitted on test data"
    items: ClassVar[tuple[str, ...]] = ("3.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.flow.split_inputs) or ctx.flow.imports("sklearn")

    def finish(self, ctx: ModuleContext) -> None:
        text = ctx.source
        if not any(word in text for word in ("fit", "mean(", "std(", "ocab")):
            return
        flow = ctx.flow
        split_inputs = [arg for _, args in flow.split_inputs for arg in args]
        for node in flow.nodes(ast.Call):
            data = _fitted_data(ctx, node)
            if data is None:
                continue
            kind = flow.held_out_kind(data, frozenset({"test", "val", "split"}))
            if kind is not None:
                where = "the test/validation split" if kind != "split" else "a held-out split"
                reason = f"is fitted on `{ast.unparse(data)}`, which includes {where}"
            elif _before_split(ctx, data, split_inputs):
                reason = (
                    f"is fitted on `{ast.unparse(data)}`, the data later split into train and test"
                )
            else:
                continue
            ctx.report(
                self,
                node,
                f"`{ast.unparse(node.func)}` {reason}: test statistics leak into training",
                data={"data": ast.unparse(data), "held_out": kind},
            )


def _fitted_data(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The data a preprocessing fit (or statistic/vocabulary) is computed from."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in _FIT_METHODS and call.args:
        if func.attr == "fit_transform" or _is_transformer(ctx, func.value):
            return call.args[0]
        return None
    if _VOCAB_BUILDERS.search(identifier(func)) and call.args:
        return call.args[0]
    if isinstance(func, ast.Attribute) and func.attr in _STAT_METHODS:
        parent = ctx.parents.get(call)
        if isinstance(parent, ast.Assign) and any(
            _STAT_NAME.search(identifier(t)) for t in parent.targets
        ):
            if ctx.enclosing_function(call) is not None and _in_loop_or_forward(ctx, call):
                return None
            return func.value
    return None


def _is_transformer(ctx: ModuleContext, receiver: ast.expr) -> bool:
    qual = ctx.flow.constructed_as(receiver) or ""
    if qual.startswith(_TRANSFORMER_MODULES):
        return True
    return bool(_TRANSFORMER_NAME.search(identifier(receiver)))


def _in_loop_or_forward(ctx: ModuleContext, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return anc.name == "forward"
    return False


def _before_split(ctx: ModuleContext, data: ast.expr, split_inputs: list[ast.expr]) -> bool:
    """`data` is (part of) what a split divides, and is not itself a split's output."""
    flow = ctx.flow

    def split_output(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Slice)
        return isinstance(node, ast.Call) and flow.is_split_call(node)

    if not split_inputs or flow.sources_include(data, split_output) is not None:
        return False
    ignored = set(ctx.imports.aliases) | set(flow.functions) | set(flow.classes) | {"self"}
    data_names = flow.root_names(data) - ignored
    return any(data_names & flow.root_names(arg) for arg in split_inputs)
