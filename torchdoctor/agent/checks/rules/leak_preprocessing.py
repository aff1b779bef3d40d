"""leak-preprocessing: a scaler, vocabulary or statistic is fitted on data with test rows."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    callee_symbol,
    defer,
    is_package_init,
    publish,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import held_out_name_kind, identifier
from torchdoctor.agent.checks.leak_sink import (
    TRANSFORMER_MODULES,
    find_sink,
    produced_names,
    related_location,
)
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.models import Severity

_FIT_METHODS = frozenset({"fit", "fit_transform", "partial_fit", "fit_on_texts", "adapt"})
_SCALE_FUNCTIONS = frozenset(
    {
        "scale",
        "normalize",
        "minmax_scale",
        "robust_scale",
        "maxabs_scale",
        "quantile_transform",
        "power_transform",
    }
)
_RESAMPLE_METHODS = frozenset({"fit_resample", "fit_sample"})
_TRANSFORMER_NAME = re.compile(
    r"scaler|normali[sz]er|standardi[sz]er|encoder|imputer|vectori[sz]er|selector|pca|svd|"
    r"tokenizer|vocab|transformer|discreti[sz]er|binarizer",
    re.IGNORECASE,
)
_CATEGORY_ENCODERS = frozenset(
    {"LabelEncoder", "OrdinalEncoder", "OneHotEncoder", "LabelBinarizer", "MultiLabelBinarizer"}
)
_CATEGORY_ENCODER_NAME = re.compile(
    r"(label|ordinal|onehot|one_hot)_?(encoder|binarizer)|^le$|^ohe$", re.IGNORECASE
)
_VOCAB_BUILDERS = re.compile(r"build_vocab|vocab_from|Vocab$", re.IGNORECASE)
_STAT_METHODS = frozenset({"mean", "std", "var", "min", "max", "median", "nanmean", "nanstd"})
_STAT_LIBRARIES = ("numpy.", "torch.", "statistics.")
_FILLERS = frozenset({"fillna", "Normalize", "normalize", "replace", "where", "nan_to_num"})
_FRAME_APPLIERS = frozenset({"apply", "transform", "agg", "aggregate"})
_LIBRARY_PREFIXES = ("sklearn.", "numpy.", "pandas.", "torch.", "scipy.", "imblearn.", "os.")
Leak = tuple[ast.Call, str, ast.expr, str | None]
"""(where the leak starts, why, the contaminated data, the held-out kind if named)"""
_STAT_NAME = re.compile(r"mean|std|mu|sigma|avg|var|stat|min|max|norm", re.IGNORECASE)


class LeakPreprocessing(Rule):
    """Detects preprocessing fitted on data that includes the held-out split: a scaler,
    imputer, vectorizer, feature selector, PCA or tokenizer whose `fit`/`fit_transform`
    receives test/validation data (or a concatenation with it), or the whole dataset before
    `train_test_split`/`random_split`/head-tail slicing divides it; the same for statistics
    that fill or rescale data (`fillna(np.mean(df.x))`, `mean = X.mean(0)` then `X - mean`)
    and vocabularies built from such data. A split may be rows picked by held-out indices
    (`data_split(X, y, mask, test_indices)`, `X.iloc[val_idx]`) or ranges cut at borders
    picked from lists by the split's index (`data[border1s[set_type]:...]`); a loop over a
    frame's columns computes one dataset statistic per column; a statistic converted on the
    way (`pixels.mean(axis=(0, 1, 2)).tolist()`, `tuple(...)` given to `Normalize`) is
    followed to where it goes. Label/one-hot encoders
    (categories only) are not reported, nor is a fit on the rows of one part picked by
    split indices (`X[train_idx]` with `train_idx, test_idx = train_test_split(all_idx)`),
    also read back from a dict of splits (`data['train']['x_num']`, tabm's example). The
    data-flow analysis follows names, tuple unpacking of splits and local functions across
    the module.

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
        """Splits, sklearn, or a held-out dataset built in the module (`train=False`)."""
        held_out_dataset = "train=False" in ctx.source
        return bool(ctx.flow.split_inputs) or ctx.flow.imports("sklearn") or held_out_dataset

    def finish(self, ctx: ModuleContext) -> None:
        text = ctx.source
        if "split" in text or is_package_init(ctx):
            publish(ctx)  # a helper that splits its arguments, for the modules calling it
        if not any(word in text for word in ("fit", "mean(", "std(", "ocab", "scale", "normal")):
            return
        if ctx.test_module:
            return  # a pytest module exercises the API on small splits: no score to contaminate
        flow = ctx.flow
        split_inputs = [arg for _, args in flow.split_inputs for arg in args]
        split_inputs += _helper_split_arguments(ctx) + _picked_by_held_out_rows(ctx)
        candidates = [
            *flow.calls_named(_FIT_METHODS | _STAT_METHODS | _SCALE_FUNCTIONS | _RESAMPLE_METHODS),
            *flow.calls_matching(_VOCAB_BUILDERS),
        ]
        leaks: list[Leak] = []
        helper_leaks: dict[str, list[Leak]] = {}
        inner_splits: dict[int, ast.Call] = {}  # source id -> the split it is fitted before
        helpers: list[tuple[ast.Call, str]] | None = None  # looked for at the first need
        for node in candidates:
            data = _fitted_data(ctx, node)
            if data is None:
                continue
            applied = _column_helper_applied(ctx, data)
            through = ""
            if applied is not None:  # `def f(col): return scaler.fit_transform(col)`
                through = f" column by column, by `{ast.unparse(node.func)}` (line {node.lineno})"
                node, data = applied  # then `df.apply(f)`: the fit sees every row of `df`
            kind = flow.held_out_kind(data, frozenset({"test", "val", "split"}))
            every = _every_split_of(ctx, data)
            if every is not None:
                kind = "split"
                reason = (
                    f"is fitted{through} on `{ast.unparse(data)}`, every part of "
                    f"`{every}` (its `'train'` part and the held-out ones) joined"
                )
            elif kind is not None:
                where = "the test/validation split" if kind != "split" else "a held-out split"
                reason = f"is fitted{through} on `{ast.unparse(data)}`, which includes {where}"
            elif _before_split(ctx, data, split_inputs) or _output_split(
                ctx, node, data, split_inputs
            ):
                reason = (
                    f"is fitted{through} on `{ast.unparse(data)}`, the data later split into train "
                    "and test"
                )
            elif (inner := _split_again(ctx, node, data)) is not None:
                reason = (
                    f"is fitted on `{ast.unparse(data)}`, a training part that "
                    f"`{ast.unparse(inner.func)}` (line {inner.lineno}) splits again into fit and "
                    "validation rows"
                )
                inner_splits[id(node)] = inner
            else:
                if helpers is None:
                    helpers = _imported_helper_calls(ctx)
                for call, symbol in _helpers_given(ctx, node, data, helpers):
                    reason = (
                        f"is fitted on `{ast.unparse(data)}`, the data `{ast.unparse(call.func)}` "
                        f"(line {call.lineno}) later splits into train and test"
                    )
                    helper_leaks.setdefault(symbol, []).append((node, reason, data, None))
                continue
            leaks.append((node, reason, data, kind))
        self._report_at_sinks(ctx, leaks, inner_splits=inner_splits)
        for symbol, found in helper_leaks.items():  # confirmed if the helper splits its input
            self._report_at_sinks(ctx, found, symbol)

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def _emit(
        self,
        ctx: ModuleContext,
        node: ast.AST,
        message: str,
        data: dict[str, Any],
        symbol: str | None,
    ) -> None:
        """Report, or leave to the project pass when the split happens in `symbol`."""
        if symbol is None:
            ctx.report(self, node, message, data=data)
            return
        found = ctx.finding(self, node, message, data=data)
        if found is not None:
            defer(ctx, self.id, Pending(symbol=symbol, needs="splits-data", finding=found))

    def _report_at_sinks(
        self,
        ctx: ModuleContext,
        leaks: list[Leak],
        symbol: str | None = None,
        inner_splits: dict[int, ast.Call] | None = None,
    ) -> None:
        """Each leak at the first place its data trains, selects or evaluates a model (the
        sources as related locations, one finding per sink); at its source when the module
        never uses the data that way."""
        fitted = {
            identifier(node.func.value)
            for node, *_ in leaks
            if isinstance(node.func, ast.Attribute) and node.func.attr in _FIT_METHODS
        }
        by_sink: dict[ast.Call, list[Leak]] = {}
        for leak in leaks:
            node, reason, data, kind = leak
            carriers = produced_names(ctx, node, data)
            inner = (inner_splits or {}).get(id(node))
            if inner is None:
                sink = find_sink(ctx, node, carriers, fitted)
            else:  # a use of the parts the inner split makes, where its names mean them
                parts = produced_names(ctx, inner, inner)
                sink = find_sink(ctx, inner, parts, fitted, _split_scope(ctx, inner))
            if sink is None and symbol is None and _goes_nowhere(ctx, node, carriers, kind):
                continue  # `preview = scale(df)` never trained on: nothing is contaminated
            if sink is None:
                self._emit(
                    ctx,
                    node,
                    f"`{ast.unparse(node.func)}` {reason}: test statistics leak into training",
                    {"data": ast.unparse(data), "held_out": kind},
                    symbol,
                )
            else:
                by_sink.setdefault(sink, []).append(leak)
        for sink, found in by_sink.items():
            # in source order, whatever order the walk met them in: the report is reproducible
            sources = sorted(found, key=lambda leak: (leak[0].lineno, leak[0].col_offset))
            first = sources[0]
            what = ", ".join(
                f"`{ast.unparse(node.func)}` (line {node.lineno})" for node, *_ in sources
            )
            self._emit(
                ctx,
                sink,
                f"`{ast.unparse(sink.func)}` uses data contaminated by test statistics: "
                f"{what} {first[1]}",
                {
                    "data": ast.unparse(first[2]),
                    "held_out": first[3],
                    "related": [
                        related_location(
                            ctx,
                            node,
                            f"where the leak starts: `{ast.unparse(node.func)}` {reason}",
                        )
                        for node, reason, *_ in sources
                    ],
                },
                symbol,
            )


def _goes_nowhere(
    ctx: ModuleContext, source: ast.Call, carriers: set[str], kind: str | None
) -> bool:
    """The data a source produced under fresh names (`preview = scale(df)`, `X_2d =
    PCA(2).fit_transform(X)` for a plot) is never read, or, when the leak is fitting before
    the split, never reaches the split: only its input is split, so nothing trained on is
    contaminated. A bare `selector.fit(...)`, a statistic, or a column filled in place
    (`X_test["age"] = ...`) changes an object that is the point, and is kept."""
    statement = next(a for a in ctx.ancestors(source) if isinstance(a, ast.stmt))
    if not carriers or not isinstance(statement, ast.Assign):
        return False
    if not all(isinstance(t, ast.Name | ast.Tuple) for t in statement.targets):
        return False
    end = statement.end_lineno or statement.lineno
    reads = [
        read
        for name in carriers
        for read in ctx.flow.reads_of(name)
        if read.lineno < statement.lineno or read.lineno > end
    ]
    if not reads:
        return True
    func = source.func
    produces_data = isinstance(func, ast.Attribute) and func.attr in (
        {"fit_transform"} | _RESAMPLE_METHODS
    )
    if kind is not None or not produces_data:
        return False
    split_inputs = [arg for _, args in ctx.flow.split_inputs for arg in args]
    split_inputs += _helper_split_arguments(ctx) + _picked_by_held_out_rows(ctx)
    return not any(carriers & ctx.flow.root_names(arg) for arg in split_inputs)


def _split_again(ctx: ModuleContext, call: ast.Call, data: ast.expr) -> ast.Call | None:
    """The split that divides again the output of `scaler.fit_transform(X_train)` (a part of
    an earlier split) under a new name: `X_train_std` given to a feature-selection helper that
    splits it into fit and validation rows. The scaler saw the validation rows."""
    func = call.func
    flow = ctx.flow
    if not (isinstance(func, ast.Attribute) and func.attr == "fit_transform"):
        return None
    if flow.sources_include(data, flow.is_split_part) is None:
        return None
    outputs = produced_names(ctx, call, data) - {identifier(func.value)} - flow.root_names(data)
    if not outputs:
        return None
    for split, inputs in flow.split_inputs:
        if not isinstance(split, ast.Call):
            continue
        if split.lineno > call.lineno and any(outputs & flow.root_names(d) for d in inputs):
            return split
        fn = ctx.enclosing_function(split)
        if fn is None:
            continue
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        split_params = {p for p in params if any(p in flow.root_names(d) for d in inputs)}
        for site in ctx.calls.call_sites(fn) if split_params else []:
            given = [arg for name, arg in ctx.calls.bind(site, fn).items() if name in split_params]
            if site.lineno > call.lineno and any(outputs & flow.root_names(a) for a in given):
                return split
    return None


def _split_scope(ctx: ModuleContext, split: ast.Call) -> set[int]:
    """Ids of the function making `split` and of the local functions it calls (or the module
    only): where the names of the parts it makes are meaningful."""
    fn = ctx.enclosing_function(split)
    if fn is None:
        return {id(None)}
    calls = [node for node in walk_tree(fn) if isinstance(node, ast.Call)]  # lambdas too
    return {id(fn)} | {id(callee) for call in calls for callee in ctx.calls.resolve(call)}


def _output_split(
    ctx: ModuleContext, call: ast.Call, data: ast.expr, split_inputs: list[ast.expr]
) -> bool:
    """`X = scaler.fit_transform(np.load(path))` then `split(X, y)`: the transformed output
    of data no split produced is what gets split (the input itself has no name to follow)."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "fit_transform") or not split_inputs:
        return False
    flow = ctx.flow
    if flow.sources_include(data, flow.is_split_part) is not None:
        return False
    outputs = produced_names(ctx, call, data) - {identifier(func.value)}
    return any(outputs & flow.root_names(arg) for arg in split_inputs)


def _helper_split_arguments(ctx: ModuleContext) -> list[ast.expr]:
    """What the module's own helpers split, seen at their call sites: for `def
    make_splits(X, y): return train_test_split(X, y)` (or a method `Splitter.split`), the
    arguments `make_splits(features, labels)` passes to the split parameters."""
    flow = ctx.flow
    found: list[ast.expr] = []
    for split, inputs in flow.split_inputs:
        fn = ctx.enclosing_function(split)
        if fn is None:
            continue
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        split_params = {p for p in params if any(p in flow.root_names(d) for d in inputs)}
        if not split_params:
            continue
        for call in ctx.calls.call_sites(fn):
            bound = ctx.calls.bind(call, fn)
            found += [arg for name, arg in bound.items() if name in split_params]
    return found


_ROW_INDEX = re.compile(r"(^|_)(idx|index|indices|ids|rows)$", re.IGNORECASE)


def _picked_by_held_out_rows(ctx: ModuleContext) -> list[ast.expr]:
    """Data whose held-out rows are picked by index: the data given with held-out row
    indices to one call (SAINT's `data_split(X, y, nan_mask, test_indices)`), or indexed by
    them (`X.iloc[val_idx]`, `X.loc[test_indices]`). The rows were assigned to the splits
    before (a random `Set` column, a permutation): statistics of the whole `X` see them."""
    memo = ctx.memo_table("leak_preprocessing.held_out_rows")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: list[ast.expr] = []
    flow = ctx.flow
    if "ind" in ctx.source or "idx" in ctx.source or "rows" in ctx.source:
        for call in flow.nodes(ast.Call):
            names = [a for a in call.args if isinstance(a, ast.Name)]
            if any(_held_out_rows(a.id) for a in names):
                found += [a for a in names if not _held_out_rows(a.id) and a.id != "self"]
        for sub in flow.nodes(ast.Subscript):
            index = sub.slice
            if isinstance(index, ast.Name) and _held_out_rows(index.id):
                base = sub.value
                if isinstance(base, ast.Attribute) and base.attr in ("loc", "iloc", "values"):
                    base = base.value
                if isinstance(base, ast.Name):
                    found.append(base)
    memo[""] = found
    return found


def _held_out_rows(name: str) -> bool:
    return bool(_ROW_INDEX.search(name)) and held_out_name_kind(name) is not None


def _imported_helper_calls(ctx: ModuleContext) -> list[tuple[ast.Call, str]]:
    """Calls of functions imported from the project's own modules (not a library), with the
    symbol: a helper such as `split_data(X, y)` may split its arguments."""
    found: list[tuple[ast.Call, str]] = []
    for call in ctx.flow.nodes(ast.Call):
        if not call.args or not isinstance(call.func, ast.Name | ast.Attribute):
            continue
        symbol = callee_symbol(ctx, call.func) or _imported_method(ctx, call.func)
        if symbol is not None and not symbol.startswith(_LIBRARY_PREFIXES):
            found.append((call, symbol))
    return found


def _imported_method(ctx: ModuleContext, func: ast.expr) -> str | None:
    """`HoldOut().split` / `splitter.split` with `splitter = HoldOut()` imported from another
    module -> 'splitting.HoldOut.split'."""
    if not isinstance(func, ast.Attribute):
        return None
    receiver = func.value
    built = [receiver] if isinstance(receiver, ast.Call) else list(ctx.flow.constructors(receiver))
    for call in built:
        if isinstance(call, ast.Call):
            symbol = callee_symbol(ctx, call.func)
            if symbol is not None:
                return f"{symbol}.{func.attr}"
    return None


def _helpers_given(
    ctx: ModuleContext, fit: ast.Call, data: ast.expr, helpers: list[tuple[ast.Call, str]]
) -> list[tuple[ast.Call, str]]:
    """The helper calls that receive `data` (or what is computed from it) after it was fitted."""
    flow = ctx.flow
    ignored = set(ctx.imports.aliases) | set(flow.functions) | set(flow.classes) | {"self"}
    data_names = flow.root_names(data) - ignored
    if isinstance(fit.func, ast.Attribute) and fit.func.attr == "fit_transform":
        data_names |= produced_names(ctx, fit, data) - {identifier(fit.func.value)} - ignored
    return [
        (call, symbol)
        for call, symbol in helpers
        if call.lineno >= data.lineno
        and any(data_names & flow.root_names(arg) for arg in call.args)
    ]


def _fitted_data(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The data a preprocessing fit (or statistic/vocabulary) is computed from."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in _FIT_METHODS and call.args:
        if _categories_only(ctx, func.value):
            return None
        if func.attr == "fit_transform" or _is_transformer(ctx, func.value):
            return call.args[0]
        return None
    if _VOCAB_BUILDERS.search(identifier(func)) and call.args:
        return call.args[0]
    qual = ctx.flow.qualname_of(call) or ""
    if qual.startswith("sklearn.preprocessing.") and identifier(func) in _SCALE_FUNCTIONS:
        if identifier(func) == "normalize" and not _across_samples(call):
            return None  # each row scaled to unit norm by itself: no statistic of the others
        return call.args[0] if call.args else None
    if isinstance(func, ast.Attribute) and func.attr in _RESAMPLE_METHODS and call.args:
        return call.args[0]  # over-sampling (SMOTE, ...) synthesises rows from its input
    data = _statistic_of(ctx, call)
    if data is None or not _transforms_data(ctx, call):
        return None
    if ctx.enclosing_function(call) is not None and _in_loop_or_forward(ctx, call):
        return None
    return _applied_frame(ctx, data) or data


_JOINS = frozenset({"concatenate", "vstack", "cat", "concat", "row_stack"})
_SPLIT_KEYS = frozenset({"train", "training"})


def _every_split_of(ctx: ModuleContext, data: ast.expr) -> str | None:
    """`np.concatenate(list(X.values()))` (also `np.vstack`, `torch.cat`, `pd.concat`) where
    `X` is a dict of splits that the same function indexes by `'train'`: the fit sees the
    validation and test parts too. The dict's name, else None."""
    if not (isinstance(data, ast.Call) and identifier(data.func) in _JOINS and data.args):
        return None
    parts = data.args[0]
    if isinstance(parts, ast.Call) and identifier(parts.func) in ("list", "tuple") and parts.args:
        parts = parts.args[0]
    if not (
        isinstance(parts, ast.Call)
        and isinstance(parts.func, ast.Attribute)
        and parts.func.attr == "values"
        and isinstance(parts.func.value, ast.Name)
    ):
        return None
    name = parts.func.value.id
    scope = ctx.enclosing_function(data) or ctx.tree
    for node in walk_tree(scope):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == name
            and isinstance(node.slice, ast.Constant)
            and node.slice.value in _SPLIT_KEYS
        ):
            return name
    return None


def _across_samples(call: ast.Call) -> bool:
    """`normalize(X, axis=0)`: each feature scaled by its norm over the samples."""
    axis = next((k.value for k in call.keywords if k.arg == "axis"), None)
    return isinstance(axis, ast.Constant) and axis.value == 0


def _applied_frame(ctx: ModuleContext, data: ast.expr) -> ast.expr | None:
    """`df` when `data` is the column a lambda receives from `df.apply(lambda col: ...)` (or
    `transform`/`agg`, column-wise, the default): its statistics run over every row of `df`.
    Row-wise application (`axis=1`) computes per-row values, not dataset statistics."""
    if not isinstance(data, ast.Name):
        return None
    for anc in ctx.ancestors(data):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return None
        if not isinstance(anc, ast.Lambda):
            continue
        if data.id not in {a.arg for a in anc.args.args}:
            return None
        applying = ctx.parents.get(anc)
        if (
            isinstance(applying, ast.Call)
            and anc in applying.args
            and isinstance(applying.func, ast.Attribute)
            and applying.func.attr in _FRAME_APPLIERS
            and not _row_wise(applying)
        ):
            return applying.func.value
        return None
    return None


def _column_helper_applied(ctx: ModuleContext, data: ast.expr) -> tuple[ast.Call, ast.expr] | None:
    """(`frame.apply(scale_column)`, `frame`) when `data` is computed from the column
    parameter of the local function `scale_column`, applied column-wise: it fits on each
    whole column of `frame`."""
    fn = ctx.enclosing_function(data)
    if fn is None or not fn.args.args:
        return None
    column = fn.args.args[0].arg  # `column`, `column.values.reshape(-1, 1)`
    if not any(isinstance(n, ast.Name) and n.id == column for n in walk_tree(data)):
        return None
    for read in ctx.flow.reads_of(fn.name):
        applying = ctx.parents.get(read)
        if (
            isinstance(applying, ast.Call)
            and applying.args[:1] == [read]
            and isinstance(applying.func, ast.Attribute)
            and applying.func.attr in _FRAME_APPLIERS
            and not _row_wise(applying)
        ):
            return applying, applying.func.value
    return None


def _row_wise(call: ast.Call) -> bool:
    axis = next((k.value for k in call.keywords if k.arg == "axis"), None)
    return isinstance(axis, ast.Constant) and axis.value in (1, "columns")


def _statistic_of(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """`x.mean()` -> x; `np.mean(x)` / `torch.std(x)` -> x; otherwise None."""
    func = call.func
    qual = ctx.flow.qualname_of(call) or ""
    if qual.startswith(_STAT_LIBRARIES) and qual.rsplit(".", 1)[-1] in _STAT_METHODS:
        return call.args[0] if call.args else None
    if qual == "" and isinstance(func, ast.Attribute) and func.attr in _STAT_METHODS:
        return func.value
    return None


def _transforms_data(ctx: ModuleContext, call: ast.Call) -> bool:
    """The statistic fills or rescales data (`fillna(mean)`, `(x - mean) / std`,
    `Normalize(mean, std)`), as opposed to summarising a metric for a report. A statistic
    rescaled by a constant (`data.mean(axis=0) / 255`) is followed to where it goes."""
    node: ast.expr = call
    parent = ctx.parents.get(call)
    while True:
        if (
            isinstance(parent, ast.BinOp)
            and parent.left is node
            and isinstance(parent.right, ast.Constant)
            and isinstance(parent.op, ast.Div | ast.Mult)
        ):
            node, parent = parent, ctx.parents.get(parent)
            continue
        converted = _converted(ctx, node, parent)
        if converted is None:
            break
        node, parent = converted, ctx.parents.get(converted)
    if isinstance(parent, ast.Call) and identifier(parent.func) in _FILLERS:
        return True
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Sub | ast.Div):
        # inline standardisation: `(X - X.mean()) / X.std()`; not a band of two statistics
        # (`rmse.mean(axis=0) - rmse.std(axis=0)`, a plot's error band)
        left = parent.left
        band = isinstance(left, ast.Call) and _statistic_of(ctx, left) is not None
        return parent.right is node and not band and not _reduced_again(ctx, parent)
    if isinstance(parent, ast.keyword):
        grand = ctx.parents.get(parent)
        return isinstance(grand, ast.Call) and identifier(grand.func) in _FILLERS
    if not isinstance(parent, ast.Assign):
        return False
    names = {t.id for t in parent.targets if isinstance(t, ast.Name)}
    if not any(_STAT_NAME.search(name) for name in names):
        return False
    for use in (read for name in names for read in ctx.flow.reads_of(name)):
        holder = ctx.parents.get(use)
        if (
            isinstance(holder, ast.BinOp)
            and isinstance(holder.op, ast.Sub | ast.Div)
            and holder.right is use
            and not _STAT_NAME.search(identifier(holder.left))
            and not _reduced_again(ctx, holder)
        ):
            return True  # `x - mean`, `(x - mean) / std`; not `mean - std` in a plot
        if isinstance(holder, ast.keyword):
            holder = ctx.parents.get(holder)
        if isinstance(holder, ast.Call) and identifier(holder.func) in _FILLERS:
            return True
    return False


# Conversions that hand a statistic on unchanged (`stats.mean(axis=(0, 1, 2)).tolist()` given
# to `Normalize`): method calls on it, and wrappers around it.
_CONVERSIONS = frozenset({"tolist", "item", "numpy", "cpu", "detach", "float"})
_WRAPPERS = frozenset({"list", "tuple", "float"})


def _converted(ctx: ModuleContext, node: ast.expr, parent: ast.AST | None) -> ast.Call | None:
    """The call that converts `node` (`node.tolist()`, `tuple(node)`), or None."""
    if isinstance(parent, ast.Attribute) and parent.value is node and parent.attr in _CONVERSIONS:
        call = ctx.parents.get(parent)
        return call if isinstance(call, ast.Call) and call.func is parent else None
    if (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Name)
        and parent.func.id in _WRAPPERS
        and parent.args[:1] == [node]
    ):
        return parent
    return None


_ELEMENTWISE = frozenset({"abs", "fabs", "square", "sqrt", "pow", "power", "exp", "log"})
_REDUCTIONS = _STAT_METHODS | {"sum", "nansum"}


def _reduced_again(ctx: ModuleContext, centred: ast.expr) -> bool:
    """The centred or rescaled values are reduced again, through element-wise arithmetic:
    `torch.mean(torch.abs(y - y.mean()))` (a mean absolute deviation),
    `((p - p_mean) * (y - y_mean)).mean(0)` (a covariance). That computes one more statistic,
    a metric's normaliser or a correlation, not rescaled data for a model to see."""
    node: ast.AST = centred
    parent = ctx.parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.BinOp | ast.UnaryOp):
            node, parent = parent, ctx.parents.get(parent)
            continue
        if isinstance(parent, ast.Attribute) and parent.value is node:
            call = ctx.parents.get(parent)
            return isinstance(call, ast.Call) and call.func is parent and parent.attr in _REDUCTIONS
        if not isinstance(parent, ast.Call) or node not in parent.args[:1]:
            return False
        name = identifier(parent.func)
        if name in _REDUCTIONS:
            return True
        if name not in _ELEMENTWISE:
            return False
        node, parent = parent, ctx.parents.get(parent)
    return False


def _categories_only(ctx: ModuleContext, receiver: ast.expr) -> bool:
    """Label/ordinal/one-hot encoders learn only the set of categories, not statistics of
    the rows: fitting them on all data is common and not counted as leakage (as in Yang et
    al.'s benchmark)."""
    qual = ctx.flow.constructed_as(receiver) or ""
    if qual.rsplit(".", 1)[-1] in _CATEGORY_ENCODERS:
        return True
    return bool(_CATEGORY_ENCODER_NAME.search(identifier(receiver)))


def _is_transformer(ctx: ModuleContext, receiver: ast.expr) -> bool:
    qual = ctx.flow.constructed_as(receiver) or ""
    if qual.startswith(TRANSFORMER_MODULES):
        return True
    return bool(_TRANSFORMER_NAME.search(identifier(receiver)))


def _in_loop_or_forward(ctx: ModuleContext, node: ast.AST) -> bool:
    """In a loop (batches, steps) or a model's `forward`; not a loop over a frame's columns
    whose statistic reads the column it is at (SAINT's `for col in cont_columns:
    X.fillna(X[col].mean())`: one dataset statistic per column)."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.AsyncFor) and _over_columns(anc, node):
            continue
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return anc.name == "forward"
    return False


def _over_columns(loop: ast.For | ast.AsyncFor, node: ast.AST) -> bool:
    """`for col in columns:` whose loop variable keys a column read in `node` (`X[col]`)."""
    if not isinstance(loop.target, ast.Name) or "col" not in ast.unparse(loop.iter).lower():
        return False
    name = loop.target.id
    return any(
        isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Name) and sub.slice.id == name
        for sub in walk_tree(node)
    )


def _before_split(ctx: ModuleContext, data: ast.expr, split_inputs: list[ast.expr]) -> bool:
    """`data` is (part of) what a split divides, and is not itself a split's output."""
    flow = ctx.flow

    if not split_inputs or _split_output(ctx, data):
        return False
    ignored = set(ctx.imports.aliases) | set(flow.functions) | set(flow.classes) | {"self"}
    data_names = flow.root_names(data) - ignored
    return any(
        data_names & flow.root_names(arg) for arg in split_inputs if _scopes_meet(ctx, data, arg)
    )


def _scopes_meet(ctx: ModuleContext, data: ast.expr, split_input: ast.expr) -> bool:
    """The fitted data and the split's input sit in one function, at module level, in
    functions nested one in the other, in methods of one class (`self.X` carries the data
    between them), or the split's function calls the fitting one (its result is split): a
    local `minibatches` of one class's method is not the `minibatches` another class's
    method splits (DomainBed's algorithms)."""
    here = ctx.enclosing_function(data)
    there = ctx.enclosing_function(split_input)
    if here is None or there is None or here is there:
        return True
    owner = ctx.parents.get(here)
    if isinstance(owner, ast.ClassDef) and owner is ctx.parents.get(there):
        return True
    if any(  # `x = standardize(x)` then `x[n:]` in the caller: the helper's result is split
        isinstance(node, ast.Call) and identifier(node.func) == here.name
        for node in walk_scope(there.body)
    ):
        return True
    return any(a is there for a in ctx.ancestors(here)) or any(
        a is here for a in ctx.ancestors(there)
    )


def _split_output(ctx: ModuleContext, data: ast.expr) -> bool:
    """`data` holds a split's output. A notebook rebinds `X` many times: only the bindings
    that reach this read count (`X = concat([X_train, y_train])` earlier, then `X, y =
    make_classification(...)`: X here is fresh data, not a split part)."""
    flow = ctx.flow
    values = flow.live_definitions(data) if isinstance(data, ast.Name) else [data]
    if not values:
        values = [data]
    if any(_fold_rows(ctx, value) or _split_index_rows(ctx, value) for value in values):
        return True

    def split_part(node: ast.AST) -> bool:  # also a fold's rows a binding or two away
        if isinstance(node, ast.Subscript):
            entry = _dict_entry(ctx, node, 0)  # `data['train']['x']` of a dict literal
            if entry is not None and entry is not node and split_part(entry):
                return True
        return flow.is_split_part(node) or (
            isinstance(node, ast.Subscript)
            and (_fold_rows(ctx, node) or _split_index_rows(ctx, node))
        )

    return any(flow.sources_include(value, split_part) is not None for value in values)


def _dict_entry(ctx: ModuleContext, node: ast.expr, hops: int) -> ast.expr | None:
    """The value a constant-key subscript reads from a dict literal (`data_numpy['train']
    ['x_num']` of `data_numpy = {'train': {'x_num': X_num[train_idx], ...}, ...}`), through
    single bindings; None when it cannot be told."""
    if hops > 4:
        return None
    if isinstance(node, ast.Name):
        values = ctx.flow.definitions(node)
        return values[0] if len(values) == 1 else None
    if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)):
        return None
    base = _dict_entry(ctx, node.value, hops + 1)
    if not isinstance(base, ast.Dict):
        return None
    for key, value in zip(base.keys, base.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == node.slice.value:
            return value
    return None


def _split_index_rows(ctx: ModuleContext, value: ast.expr) -> bool:
    """`X[train_idx]` where `train_idx` is unpacked from a split of row indices
    (`train_idx, test_idx = train_test_split(np.arange(len(y)))`, tabm's example): the rows of
    one part, a split's output."""
    if not isinstance(value, ast.Subscript) or not isinstance(value.slice, ast.Name):
        return False
    splits = {id(call) for call, _ in ctx.flow.split_inputs}
    return any(id(bound) in splits for bound, _, _ in ctx.flow.unpackings(value.slice))


def _fold_rows(ctx: ModuleContext, value: ast.expr) -> bool:
    """`X[train_index]` where `train_index` is bound by `for train_index, test_index in
    kf.split(X)` (or its `enumerate`): one fold's rows, a split's output."""
    if not isinstance(value, ast.Subscript) or not isinstance(value.slice, ast.Name):
        return False
    splits = {id(call) for call, _ in ctx.flow.split_inputs}
    for loop in ctx.flow.nodes(ast.For):
        source = loop.iter
        if isinstance(source, ast.Call) and identifier(source.func) == "enumerate" and source.args:
            source = source.args[0]
        if id(source) in splits and any(
            isinstance(n, ast.Name) and n.id == value.slice.id for n in walk_tree(loop.target)
        ):
            return True
    return False
