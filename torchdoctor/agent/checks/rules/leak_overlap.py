"""leak-overlap: the same samples can end up in training and in the held-out split."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind, training_name
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.leak_sink import related_location
from torchdoctor.agent.checks.loops import phase_flags, walk_scope
from torchdoctor.agent.checks.patterns import is_model_expr
from torchdoctor.agent.models import Severity

_DUPLICATING = re.compile(r"fit_resample|fit_sample|oversampl|smote|augment|resample", re.I)
_TRANSFORMER_NAME = re.compile(
    r"scaler|normali[sz]er|encoder|imputer|vectori[sz]er|selector|pca|tokenizer|vocab", re.I
)
_HELD_OUT = frozenset({"test", "val", "split"})
_WORDS = re.compile(r"[^a-zA-Z]+|(?<=[a-z])(?=[A-Z])")
_CROSS_VALIDATORS = frozenset(
    {"cross_val_score", "cross_validate", "cross_val_predict", "learning_curve", "validation_curve"}
)


class LeakOverlap(Rule):
    """Detects train/test overlap visible in the code: a split (`train_test_split`,
    `random_split`) applied to data that was oversampled (`fit_resample`, SMOTE) or augmented
    beforehand, a training loop that iterates over data derived from the test/validation split
    (directly, through a `DataLoader`, a `ConcatDataset`, or a local function), and an
    estimator `fit` (or a cross-validation, which fits clones) on test data.

    Why it matters: oversampling or augmenting before the split puts copies (or near-copies)
    of the same sample on both sides; training on held-out rows makes the model memorise what
    it is evaluated on. Either way the test score measures recall, not generalisation
    (Yang et al., ASE'22, "overlap leakage").

    Also reported: a training part and a held-out part picked from one frame by the same
    mask (`train_df = train[train['kfold'] != fold]`, then `valid_df` with the same `!=`: a
    fold test copied without inverting it).

    So is one picked twice by the same split key (`train_data = train_valid_data["train"]`,
    then `valid_data = train_valid_data["train"]`: the "test" part of a DatasetDict's
    `train_test_split` lost to a copied line).

    Also reported: an estimator fitted on the whole data inside a cross-validation loop
    (`for train_index, test_index in kf.split(x, y): ... classifier.fit(x, y)`, then scored
    on `x[test_index]`): every fold's test rows are in the fit. Not when the loop fits on the
    fold (`x[train_index]`, `x_train`), never reads the test indices, or rebinds `x`.

    Not reported: a training loop over a subset of a pool named for both sides
    (`train_dataset = Subset(train_and_valid, train_indices)`: the name says the pool holds
    the validation rows too, not that this subset does).

    Rows drawn with replacement count as oversampling (`minority.sample(n=k, replace=True)`
    concatenated back before `train_test_split`).

    Example:
        X_res, y_res = SMOTE().fit_resample(X, y)
        X_train, X_test, y_train, y_test = train_test_split(X_res, y_res)

    Fix: split first; oversample/augment only the training part; build the training loader
    from the training split only.
    """

    id = "leak-overlap"
    point = 3
    severity = Severity.HIGH
    title = "Training and test data overlap"
    items: ClassVar[tuple[str, ...]] = ("3.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            bool(ctx.flow.split_inputs)
            or ("backward" in ctx.source and bool(ctx.loops.training_loops))
            or (".split(" in ctx.source and ".fit(" in ctx.source)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not any(w in ctx.source for w in ("split", "test", "val", "Test", "Val")):
            return
        if ".split(" in ctx.source and ".fit(" in ctx.source:
            self._fit_on_every_row_of_a_fold_loop(ctx)
        self._resampled_before_split(ctx)
        self._held_out_in_training(ctx)
        if "train" in ctx.source:
            self._same_rows_both_sides(ctx)

    def _fit_on_every_row_of_a_fold_loop(self, ctx: ModuleContext) -> None:
        """`for train_index, test_index in kf.split(x, y):` whose body fits an estimator on
        `x` itself (`classifier.fit(x, y)`, a copy of the line meant for `x_train`) and reads
        the fold's test indices: every fold's test rows are in the fit, so the fold scores
        measure recall. `kf` must be built by a cross-validation splitter (`KFold`,
        `StratifiedKFold`, `ShuffleSplit`, ...); `x` must not be rebound in the loop."""
        for loop in ctx.flow.nodes(ast.For):
            assert isinstance(loop, ast.For)
            folds = _fold_split(ctx, loop)
            if folds is None:
                continue
            data, test_index = folds
            body = list(walk_scope(loop.body))
            if not any(isinstance(n, ast.Name) and n.id == test_index for n in body):
                continue  # the test rows are never scored here
            if any(
                isinstance(n, ast.Name) and n.id == data and isinstance(n.ctx, ast.Store)
                for n in body
            ):
                continue
            for node in body:
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "fit"
                    and node.args
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id == data
                ):
                    ctx.report(
                        self,
                        node,
                        f"`{ast.unparse(node)}` fits on every row of `{data}` inside the "
                        f"cross-validation loop over `{ast.unparse(loop.iter)}`: each fold's "
                        f"test rows (`{test_index}`) are in the fit; fit on the fold's "
                        "training rows",
                        data={"data": data, "test_index": test_index},
                    )

    def _same_rows_both_sides(self, ctx: ModuleContext) -> None:
        """`train_df = train[train['kfold'] != fold]` and `valid_df = train[train['kfold'] !=
        fold]`: the training and the held-out part picked from one frame by the same mask
        (a fold test copied without inverting it), so they are the same rows."""
        picked: dict[tuple[int, str, str], list[tuple[str, ast.Assign]]] = {}
        for stmt in ctx.flow.nodes(ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                continue
            rows = _rows_picked(stmt.value)
            if rows is None:
                continue
            scope = ctx.enclosing_function(stmt)
            key = (id(scope), rows[0], ast.dump(rows[1]))
            picked.setdefault(key, []).append((stmt.targets[0].id, stmt))
        for (_, frame, _), named in picked.items():
            trained = [name for name, _ in named if training_name(name)]
            held = [(name, stmt) for name, stmt in named if held_out_name_kind(name)]
            if not trained or not held:
                continue
            name, stmt = held[0]
            rows = _rows_picked(stmt.value)
            part = rows[1] if rows is not None and isinstance(rows[1], ast.Constant) else None
            by_key = part is not None
            how = f"the same part, {ast.unparse(part)}" if part is not None else "the same mask"
            fix = "pick the held-out part" if by_key else "invert the mask"
            ctx.report(
                self,
                stmt,
                f"`{name}` picks the same rows of `{frame}` as `{trained[0]}` ({how}): "
                f"the model is validated on the rows it trains on; {fix}",
                data={"train": trained[0]},
            )

    def _resampled_before_split(self, ctx: ModuleContext) -> None:
        flow = ctx.flow
        for split, inputs in flow.split_inputs:
            if not isinstance(split, ast.Call):
                continue
            for data in inputs:
                origin = flow.sources_include(data, _duplicating_call)
                if origin is None or not isinstance(origin, ast.Call):
                    continue
                ctx.report(
                    self,
                    split,
                    f"the split divides `{ast.unparse(data)}`, oversampled/augmented by "
                    f"`{ast.unparse(origin.func)}` (line {origin.lineno}): copies of one sample "
                    "land in both train and test",
                    data={"resample_line": origin.lineno},
                )
                break

    def _held_out_in_training(self, ctx: ModuleContext) -> None:
        flow = ctx.flow
        for loop in ctx.loops.training_loops if "backward" in ctx.source else []:
            node = loop.node
            if not isinstance(node, ast.For | ast.AsyncFor):
                continue
            # a pool of training and validation rows (`train_and_valid`) is cut into both
            # sides by indices: only a held-out name of its own counts
            kind = flow.held_out_kind(node.iter, _HELD_OUT, pools=False)
            if (
                kind is not None
                and not _phase_flag_picks_data(ctx, node)
                and _anything_held_out_from(ctx)
            ):
                ctx.report(
                    self,
                    node,
                    f"the training loop iterates over `{ast.unparse(node.iter)}`, which derives "
                    "from the held-out split: the model trains on what it is evaluated on",
                    data={"held_out": kind},
                    header_only=True,
                )
        if ".fit(" not in ctx.source and "cross_va" not in ctx.source:
            return
        for call in flow.nodes(ast.Call):
            if identifier(call.func) in _CROSS_VALIDATORS:
                self._cross_validated_on_test(ctx, call)
                continue
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "fit" and call.args):
                continue
            receiver = call.func.value
            if _TRANSFORMER_NAME.search(identifier(receiver)):
                continue
            if is_model_expr(ctx, call.args[0]):
                continue  # Lightning's `trainer.fit(model, datamodule)`: the model, not data
            qual = flow.constructed_as(receiver) or ""
            if qual.startswith(("sklearn.preprocessing.", "sklearn.feature_", "sklearn.impute.")):
                continue
            if flow.held_out_kind(call.args[0], frozenset({"test"})) is not None:
                ctx.report(
                    self,
                    call,
                    f"`{ast.unparse(call.func)}` trains on `{ast.unparse(call.args[0])}`, "
                    "which derives from the test split",
                    data={"held_out": "test"},
                )

    def _cross_validated_on_test(self, ctx: ModuleContext, call: ast.Call) -> None:
        """`cross_val_score(model, X_test, y_test)` fits a clone of the model on test folds:
        the test split trains models and scores them, so it no longer measures anything."""
        data = next((k.value for k in call.keywords if k.arg == "X"), None)
        if data is None and len(call.args) > 1:
            data = call.args[1]
        flow = ctx.flow
        if data is None or flow.held_out_kind(data, frozenset({"test"})) is None:
            return
        split = flow.sources_include(data, flow.is_split_part)
        related = [related_location(ctx, split, "where the test split is made")] if split else []
        ctx.report(
            self,
            call,
            f"`{ast.unparse(call.func)}` fits and scores models on `{ast.unparse(data)}`, which "
            "derives from the test split: the test set is used for training and selection",
            data={"held_out": "test", "related": related},
        )


def _phase_flag_picks_data(ctx: ModuleContext, loop: ast.For | ast.AsyncFor) -> bool:
    """One loop serves both phases: every backward in it runs under `if is_train:` and the
    same flag picks the data (`data = self.train_dataset if is_train else
    self.test_dataset`, or `if train: loader = train_loader` / `else: loader =
    test_loader` as world-models' `data_pass`; minGPT's and Decision Transformer's
    `run_epoch(split)`, demucs'
    `self.loaders['train'] if train else self.loaders['valid']`), so the held-out pass
    never trains."""
    flags = phase_flags(ctx, loop)
    if not flags:
        return False
    owner = ctx.enclosing_function(loop)
    flow = ctx.flow

    def picks(train: ast.expr | None, held_out: ast.expr | None) -> bool:
        return (
            train is not None
            and held_out is not None
            and (flow.held_out_kind(train, _HELD_OUT) is None or _names_training(train))
            and flow.held_out_kind(held_out, _HELD_OUT) is not None
        )

    for choice in walk_scope(owner.body if owner is not None else ctx.tree.body):
        if isinstance(choice, ast.IfExp | ast.If) and ast.unparse(choice.test) in flags:
            if isinstance(choice, ast.IfExp) and picks(choice.body, choice.orelse):
                return True
            if isinstance(choice, ast.If):
                iterated = {n.id for n in ast.walk(loop.iter) if isinstance(n, ast.Name)}
                train, held_out = _bound(choice.body, iterated), _bound(choice.orelse, iterated)
                if picks(train, held_out):
                    return True  # `if train: loader = train_loader` / `else: loader = test_loader`
    return False


def _bound(block: list[ast.stmt], names: set[str]) -> ast.expr | None:
    """The value a branch binds to one of `names`, those the loop iterates (world-models'
    `data_pass`: `loader = train_loader`, then `for i, data in enumerate(loader)`)."""
    for stmt in block:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and stmt.targets[0].id in names
        ):
            return stmt.value
    return None


def _names_training(expr: ast.expr) -> bool:
    """`self.train_dataset`, `loaders['train']`: the expression names the training split."""
    if isinstance(expr, ast.Subscript):
        key = expr.slice
        return isinstance(key, ast.Constant) and key.value in ("train", "training")
    return isinstance(expr, ast.Name | ast.Attribute) and training_name(identifier(expr))


_KEEPS_ROWS = frozenset({"reset_index", "copy", "dropna", "values", "to_numpy"})


# The keys of a split's parts (`train_valid_data = data.train_test_split(...)`, then
# `train_valid_data["train"]`: a Hugging Face DatasetDict, a dict of splits).
_SPLIT_KEYS = frozenset({"train", "test", "val", "valid", "validation", "dev", "eval"})


def _rows_picked(value: ast.expr) -> tuple[str, ast.expr] | None:
    """(frame, mask) of `frame[mask]` / `frame.loc[mask]`, through row-keeping calls
    (`.reset_index(drop=True)`, `.copy()`); the mask a comparison, or the name of a split's
    part (`splits["train"]`)."""
    while isinstance(value, ast.Call | ast.Attribute):
        func = value.func if isinstance(value, ast.Call) else value
        if not (isinstance(func, ast.Attribute) and func.attr in _KEEPS_ROWS):
            break
        value = func.value
    if not isinstance(value, ast.Subscript):
        return None
    split_key = (
        isinstance(value.slice, ast.Constant)
        and isinstance(value.slice.value, str)
        and value.slice.value.lower() in _SPLIT_KEYS
    )
    if not isinstance(value.slice, ast.Compare) and not split_key:
        return None
    frame = value.value
    if isinstance(frame, ast.Attribute) and frame.attr == "loc":
        frame = frame.value
    return (frame.id, value.slice) if isinstance(frame, ast.Name) else None


def _duplicating_call(node: ast.AST) -> bool:
    """An oversampler or augmenter (`fit_resample`, SMOTE, `resample`), or rows drawn with
    replacement (pandas' `minority.sample(n=k, replace=True)`): copies of samples."""
    if not isinstance(node, ast.Call):
        return False
    name = identifier(node.func)
    if name == "sample":
        return any(
            k.arg == "replace" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
    return bool(_DUPLICATING.search(name))


def _anything_held_out_from(ctx: ModuleContext) -> bool:
    """Whether the module holds data a held-out split is held out from: a split call, a
    dataset built with `train=`/`split=`/`subset=`/`mode=`, a slice (`x[:k]`, `x[k:]`), a value
    whose name speaks of training (`train_text`, `x_train`), or split data imported from
    elsewhere. A module with none of these has one corpus, whatever its name (the n-gram
    tutorial trains on `test_sentence`, a sonnet, and holds nothing out): a name alone does
    not make it a test split."""
    if ctx.flow.split_inputs:
        return True
    functions = {
        node.name
        for node in ast.walk(ctx.tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.keyword) and node.arg in ("train", "split", "subset", "mode"):
            return True
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            return True
        if isinstance(node, ast.alias):
            name = node.asname or node.name.rsplit(".", 1)[-1]
            if _speaks_of_training(name) or held_out_name_kind(name) is not None:
                return True
        if isinstance(node, ast.Name | ast.Attribute | ast.arg):
            name = (
                node.id
                if isinstance(node, ast.Name)
                else (node.attr if isinstance(node, ast.Attribute) else node.arg)
            )
            if name not in functions and _speaks_of_training(name):
                return True
    return False


def _speaks_of_training(name: str) -> bool:
    """`train_text`, `x_train`, `trainset`: the name says it is the training side of
    something ('train' alone, a function's name, does not)."""
    tokens = [t.lower() for t in _WORDS.split(name) if t]
    return training_name(name) or (
        len(tokens) > 1 and any(t in ("train", "training") for t in tokens)
    )


# Cross-validation splitters (scikit-learn's `KFold`, `StratifiedKFold`, `ShuffleSplit`,
# `TimeSeriesSplit`, `LeaveOneOut`, ...), by the ending of their class name.
_SPLITTER = re.compile(r"(Fold|Split|LeaveOneOut|LeavePOut|LeaveOneGroupOut)$")


def _fold_split(ctx: ModuleContext, loop: ast.For) -> tuple[str, str] | None:
    """('x', 'test_index') for `for train_index, test_index in kf.split(x, y):` with `kf` a
    cross-validation splitter built in this module (or the splitter built inline)."""
    call, target = loop.iter, loop.target
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "split"
        and call.args
        and isinstance(call.args[0], ast.Name)
        and isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and all(isinstance(e, ast.Name) for e in target.elts)
    ):
        return None
    receiver = call.func.value
    built = [receiver] if isinstance(receiver, ast.Call) else []
    if isinstance(receiver, ast.Name):
        built = [b for b in ctx.flow.definitions(receiver) if isinstance(b, ast.Call)]
    if not built or not all(_SPLITTER.search(identifier(b.func) or "") for b in built):
        return None
    test = target.elts[1]
    assert isinstance(test, ast.Name)
    return call.args[0].id, test.id
