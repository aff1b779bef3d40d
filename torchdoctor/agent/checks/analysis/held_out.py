"""Does a value derive from the test/validation split? Splits and what they divide."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from functools import cached_property

from torchdoctor.agent.checks.analysis.defuse import (
    MAX_DEPTH,
    MAX_VISITS,
    DefUse,
    identifier,
    is_false,
    kwarg,
)
from torchdoctor.agent.checks.analysis.vocabulary import HELD_OUT_SPLITS
from torchdoctor.agent.checks.loops import walk_scope, walk_tree

_HELD_OUT_TOKENS = {
    "test": "test",
    "tst": "test",
    "testing": "test",
    "holdout": "test",
    "heldout": "test",
    "val": "val",
    "vali": "val",  # Informer, Autoformer, Time-Series-Library: `vali_data, vali_loader`
    "valid": "val",
    "validation": "val",
    "eval": "val",
}
_NOT_DATA_TOKENS = frozenset(
    {
        "freq",
        "interval",
        "every",
        "size",
        "ratio",
        "frac",
        "fraction",
        "pct",
        "percent",
        "num",
        "n",
        "count",
        "steps",
        "epochs",
        "episodes",
        "iters",
        "rounds",
        "batch",
        "bs",
        "split",
        "splits",
        "mode",
        "only",
        "case",
        "cases",
        "time",
        "func",
        "fn",
        "step",
        "period",
        "flag",
        "enabled",
        "dir",
        "path",
        "file",
        "id",
        "ids",
        "kwargs",
        "args",
        "config",
        "cfg",
        "opts",
        "params",
        "settings",
        "name",
        "names",
        "collate",
        "transform",
        "transforms",
        "fmt",
        "print",
        "verbose",
    }
)
_DATA_SUFFIXES = (
    "loader",
    "set",
    "data",
    "dataset",
    "ds",
    "dl",
    "iter",
    "x",
    "y",
    "images",
    "labels",
    "df",
    "features",
    "targets",
)
_NON_DATA_KEYWORDS = frozenset(
    {
        "collate_fn",
        "transform",
        "target_transform",
        "transforms",
        "batch_size",
        "num_workers",
        "shuffle",
        "sampler",
        "batch_sampler",
        "pin_memory",
        "drop_last",
        "device",
        "dtype",
        "worker_init_fn",
        "generator",
        "callbacks",
        "model",
        "optimizer",
        "criterion",
        "loss_fn",
        "scheduler",
        "random_state",
        "test_size",
        "train_size",
        "stratify",
        # progress bars and loggers: a count or a label, not data (`LogProgress(logger,
        # loader, total=total, name=name)`)
        "total",
        "desc",
        "name",
    }
)
# Objects that hold options: `args.test` is the test section of a configuration (demucs'
# `split=self.args.test.split`), not test data.
_CONFIG_HOLDERS = frozenset({"args", "config", "cfg", "conf", "opts", "opt", "hparams", "hps"})
_TOKEN_SPLIT = re.compile(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])")
SPLIT_FUNCTIONS = frozenset(
    {
        "sklearn.model_selection.train_test_split",
        "torch.utils.data.random_split",
        "torch.utils.data.dataset.random_split",
    }
)
_UNSEEN = object()
_SPLIT_SIMPLE_NAMES = frozenset({"train_test_split", "random_split"})
# Cross-validation: a splitter's `.split(X, y)` and the helpers that split inside divide their
# data into fit and held-out folds as surely as `train_test_split` does.
_CV_SPLITTERS = frozenset(
    f"sklearn.model_selection.{name}"
    for name in (
        "KFold", "StratifiedKFold", "GroupKFold", "StratifiedGroupKFold", "RepeatedKFold",
        "RepeatedStratifiedKFold", "ShuffleSplit", "StratifiedShuffleSplit", "GroupShuffleSplit",
        "LeaveOneOut", "LeavePOut", "TimeSeriesSplit",
    )
)  # fmt: skip
_CV_HELPERS = frozenset(
    f"sklearn.model_selection.{name}"
    for name in ("cross_val_score", "cross_validate", "cross_val_predict")
)


def held_out_name_kind(name: str) -> str | None:
    """'X_test' -> 'test', 'valloader' -> 'val', 'val_freq' -> None, 'latest' -> None."""
    tokens = [t.lower() for t in _TOKEN_SPLIT.split(name) if t]
    if any(t in _NOT_DATA_TOKENS for t in tokens):
        return None
    for token in tokens:
        if token in _HELD_OUT_TOKENS:
            return _HELD_OUT_TOKENS[token]
        for prefix in ("test", "val", "valid", "eval"):
            if token.startswith(prefix) and token[len(prefix) :] in _DATA_SUFFIXES:
                return _HELD_OUT_TOKENS[prefix]
        for suffix in ("test", "val"):
            if token.endswith(suffix) and token[: -len(suffix)] in _DATA_SUFFIXES:
                return _HELD_OUT_TOKENS[suffix]
    return None


def _config_section(node: ast.Attribute) -> bool:
    """`self.args.test`, `cfg.val`: a bare split name read from an options object."""
    if node.attr.lower() not in HELD_OUT_SPLITS:
        return False
    holder = node.value
    name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", "")
    return name.lower() in _CONFIG_HOLDERS


def _split_key(node: ast.Subscript) -> str | None:
    """The split a subscript's key names: a string (`X['test']`) or a constant named for it
    (`metrics[lib.TEST]`), lowered; None for other keys."""
    key = node.slice
    if isinstance(key, ast.Name | ast.Attribute):
        named = key.attr if isinstance(key, ast.Attribute) else key.id
        split = named.lower() if named.isupper() else ""
    elif isinstance(key, ast.Constant) and isinstance(key.value, str):
        split = key.value.lower()
    else:
        return None
    return split if split in HELD_OUT_SPLITS or split in ("train", "training") else None


def _split_entry(node: ast.Subscript) -> str | None:
    """`X['test']`, `data["val"]`: the held-out entry of a dict of splits (tab-ddpm's
    `{'train': ..., 'val': ..., 'test': ...}`), not a section of an options object
    (`cfg['test']`). The key may be a constant named for the split (`metrics[lib.TEST]`,
    `X[Split.VAL]`: tabular-dl-revisiting-models' `lib.TEST = 'test'`)."""
    split = _split_key(node)
    if split is None or split not in HELD_OUT_SPLITS:
        return None
    holder = node.value
    name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", "")
    if not name or name.lower() in _CONFIG_HOLDERS or _names_a_setting(name):
        return None
    return held_out_name_kind(split) or "val"


def _names_a_setting(name: str) -> bool:
    """`step`, `batch_size`, `num_workers`: an attribute named for a count or an option."""
    tokens = [t.lower() for t in _TOKEN_SPLIT.split(name) if t]
    return bool(tokens) and tokens[-1] in _NOT_DATA_TOKENS


def _given_a_named_split(call: ast.Call) -> bool:
    """An argument of the call is a name that says which split it is (`val_loader`,
    `train_data`, `X_test`)."""
    return any(
        isinstance(arg, ast.Name | ast.Attribute)
        and (held_out_name_kind(identifier(arg)) is not None or training_name(identifier(arg)))
        for arg in [*call.args, *(k.value for k in call.keywords)]
    )


def _names_a_pool(node: ast.expr) -> bool:
    """`train_and_valid`, `train_val_data`: the name says it holds the training split and a
    held-out one together."""
    if not isinstance(node, ast.Name | ast.Attribute):
        return False
    tokens = [t.lower() for t in _TOKEN_SPLIT.split(identifier(node)) if t]
    return any(t in ("train", "training") for t in tokens)


def training_name(name: str) -> bool:
    """'train_data', 'trainset', 'train_loader': the name says it holds the training split
    ('train_mask', 'train' and 'training' alone do not name data)."""
    tokens = [t.lower() for t in _TOKEN_SPLIT.split(name) if t]
    if held_out_name_kind(name) is not None:
        return False
    has_train = any(t in ("train", "training") for t in tokens)
    if has_train and any(t in _DATA_SUFFIXES for t in tokens):
        return True
    return any(
        t.startswith(prefix) and t[len(prefix) :] in _DATA_SUFFIXES
        for t in tokens
        for prefix in ("train", "training")
    )


class HeldOut(DefUse):
    """Held-out derivation and the splits of one module."""

    def is_split_call(self, call: ast.Call) -> bool:
        """`train_test_split`/`random_split` from sklearn or torch (also the old
        `sklearn.cross_validation` module), or an unresolved local of that name."""
        qual = self.qualname_of(call)
        if qual is not None:
            return qual in SPLIT_FUNCTIONS or (
                qual.startswith("sklearn.") and qual.endswith(".train_test_split")
            )
        return identifier(call.func) in _SPLIT_SIMPLE_NAMES

    def held_out_kind(
        self,
        expr: ast.expr,
        kinds: frozenset[str] = frozenset({"test", "val"}),
        *,
        pools: bool = True,
    ) -> str | None:
        """'test' or 'val' when `expr` may derive from that held-out split, else None.

        Evidence: a name that says so (`X_test`, `val_loader`, `testset`), a dataset built with
        `train=False` or `split="test"`, the held-out half of `train_test_split`/`random_split`
        (kind 'split' for an unnamed `random_split` part), the tail `x[k:]` of a sequence whose
        head `x[:k]` is taken too, and anything computed from those (calls, loaders, loops).

        `pools=False`: a name for the union of the training and a held-out split
        (`train_and_valid`, `train_val_set`, the pool later cut into both by indices) is no
        evidence: what is cut from it may be either side.
        """
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, 0)]
        # per node, shared by every question of this module (loops ask about many iterables
        # that derive from the same few names)
        direct = self.ctx.memo_table("held_out.direct" if pools else "held_out.direct.no_pools")
        children = self.ctx.memo_table("held_out.children")
        while stack and len(seen) < MAX_VISITS:
            node, depth = stack.pop()
            if id(node) in seen or depth > MAX_DEPTH * 2:
                continue
            seen.add(id(node))
            kind = direct.get(id(node), _UNSEEN)
            if kind is _UNSEEN:
                kind = direct[id(node)] = self._direct_held_out(node)
                if kind is not None and not pools and _names_a_pool(node):
                    kind = direct[id(node)] = None
            if kind is not None and kind in kinds:
                return str(kind)
            nexts = children.get(id(node))
            if nexts is None:
                nexts = children[id(node)] = list(self._held_out_children(node))
            stack.extend((child, depth + 1) for child in nexts)
        return None

    def _direct_held_out(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name | ast.Attribute):
            if isinstance(node, ast.Name) and node.id == "self":
                return None
            if isinstance(node, ast.Attribute) and _config_section(node):
                return None
            kind = held_out_name_kind(identifier(node))
            if kind is not None:
                return kind
            if isinstance(node, ast.Name):
                for value, index, _ in self.unpackings(node):
                    if isinstance(value, ast.Call) and self.is_split_call(value) and index > 0:
                        split = identifier(value.func)
                        if split == "train_test_split" and index % 2 == 1:
                            return "test"
                        if split == "random_split":
                            return "split"
            return None
        if isinstance(node, ast.Call):
            if is_false(kwarg(node, "train")):
                return "test"
            for name in ("split", "subset", "mode"):
                option = kwarg(node, name)
                if (
                    isinstance(option, ast.Constant)
                    and isinstance(option.value, str)
                    and option.value.lower() in HELD_OUT_SPLITS
                ):
                    return held_out_name_kind(option.value) or "val"
            return None
        if isinstance(node, ast.Subscript) and self._is_tail_slice(node):
            return "split"
        if isinstance(node, ast.Subscript):
            return _split_entry(node)
        if isinstance(node, ast.Constant):
            return self._split_named(node)
        return None

    def _split_named(self, node: ast.Constant) -> str | None:
        """A held-out split's name handed to what loads its data (`get_batch('val')`), or
        among the names a loop hands it (nanoGPT's `for split in ['train', 'val']:` then
        `get_batch(split)`); the same string anywhere else is text, not data."""
        if not (isinstance(node.value, str) and node.value.lower() in HELD_OUT_SPLITS):
            return None
        parent = self.ctx.parents.get(node)
        if isinstance(parent, ast.List | ast.Tuple):
            loop = self.ctx.parents.get(parent)
            if not (isinstance(loop, ast.For | ast.comprehension) and loop.iter is parent):
                return None
        elif not (isinstance(parent, ast.Call) and any(a is node for a in parent.args)):
            return None
        return held_out_name_kind(node.value) or "val"

    def _held_out_children(self, node: ast.expr) -> Iterator[ast.expr]:
        if isinstance(node, ast.Name):
            # `train, val, test = load()` binds one part each of a mixed result: what `load`
            # returns as a whole says nothing about this part (split positions are read by
            # `_direct_held_out`).
            parts = {id(value) for value, _, _ in self.unpackings(node)}
            # The binding that reaches this read, when one does on every path: a name bound
            # again later (`features = pad_features(test_ints)` after the split of
            # `features`) says nothing about what was read before.
            values = self.reaching_or_all(node)
            yield from (v for v in values if id(v) not in parts)
        elif isinstance(node, ast.Attribute):
            if _names_a_setting(node.attr):
                return  # `state.tracker.step`, `loader.batch_size`: a count or option, no rows
            yield from self.definitions(node)
            if not training_name(node.attr):
                # `state.train_data` reads the training part of a container that also holds
                # the validation data (`State(train_data=..., val_data=...)`): what else the
                # container holds says nothing about this field
                yield node.value
        elif isinstance(node, ast.Call):
            if not self.is_split_call(node):
                yield from node.args
                yield from (
                    k.value
                    for k in node.keywords
                    if k.arg is not None and k.arg not in _NON_DATA_KEYWORDS
                )
                # A returned tuple mixes splits (`return train, test`): its parts are not all
                # held out, and unpacking positions are not tracked through returns. A helper
                # handed a split by name (`test_model(net, val_loader)`) computes on what it is
                # given: its own locals' names (`test_acc`) say nothing of the caller's split.
                if not _given_a_named_split(node):
                    yield from (r for r in self.returns_of(node) if not isinstance(r, ast.Tuple))
            if isinstance(node.func, ast.Attribute):
                yield node.func.value
        elif isinstance(node, ast.Subscript):
            if _split_key(node) is None:  # `metrics[lib.VAL]`: that split's entry alone
                yield self._first_part(node) or node.value
        elif isinstance(node, ast.Starred):
            yield node.value
        elif isinstance(node, ast.BinOp):
            yield node.left
            yield node.right
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            yield from node.elts
        elif isinstance(node, ast.IfExp):
            yield node.body
            yield node.orelse
        elif isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp):
            yield node.elt
            yield from (g.iter for g in node.generators)

    def _first_part(self, node: ast.Subscript) -> ast.expr | None:
        """`train` for `full[:len(train)]` (or `[:train.shape[0]]`) when `full =
        concat([train, test])`: the head of a concatenation cut at its first part's length is
        that part, not the held-out rows after it."""
        s = node.slice
        if not isinstance(s, ast.Slice) or s.lower is not None or s.upper is None:
            return None
        return self._cut_at_first_part(node.value, s.upper)

    def _cut_at_first_part(self, frame: ast.expr, bound: ast.expr) -> ast.Name | None:
        """The first part of the concatenation `frame` holds, when `bound` is its length: the
        cut undoes the concatenation (given train and test files) instead of splitting."""
        joined = self._joined(frame)
        if joined is None:
            return None
        parts = joined.args[0]
        if not isinstance(parts, ast.List | ast.Tuple) or not parts.elts:
            return None
        first = parts.elts[0]  # `train`, `train.loc[:, cols]`, `train.drop(columns=...)`
        while isinstance(first, ast.Subscript | ast.Attribute | ast.Call):
            if isinstance(first, ast.Call):
                if not isinstance(first.func, ast.Attribute):
                    return None
                first = first.func
            first = first.value
        if not isinstance(first, ast.Name):
            return None
        bounds = [bound, *(self.definitions(bound) if isinstance(bound, ast.Name) else [])]
        if any(_length_of(b, first.id) for b in bounds):
            return first
        return None

    def _joined(self, frame: ast.expr) -> ast.Call | None:
        """The `concat([...])` a frame holds, through its reaching bindings and row-preserving
        rewrites (`df = df.fillna(...)`, `df = pd.get_dummies(df)`)."""
        current: ast.expr = frame
        for _ in range(8):
            if isinstance(current, ast.Name):
                # what reaches this read: bound earlier, not by the statement it sits in
                around = {id(a) for a in self.ctx.ancestors(current)}  # `df = df.fillna(...)`
                values = [
                    v
                    for v in self.live_definitions(current)
                    if id(v) not in around and v.lineno <= current.lineno
                ]
                if len(values) != 1:
                    return None
                current = values[0]
            elif isinstance(current, ast.Call):
                if identifier(current.func) in _JOINS:
                    return current if current.args else None
                func = current.func
                if (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and self.definitions(func.value)
                ):
                    current = func.value  # `df.fillna(...)`, not `pd.get_dummies`
                elif current.args and isinstance(current.args[0], ast.Name):
                    current = current.args[0]  # `pd.get_dummies(df)`
                else:
                    return None
            else:
                return None
        return None

    @cached_property
    def _head_slices(self) -> set[tuple[str, str]]:
        """(sequence text, bound text) of every `x[:k]` in the module."""
        found: set[tuple[str, str]] = set()
        for node in self.nodes(ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                s = node.slice
                if s.lower is None and s.upper is not None and s.step is None:
                    found.add((ast.unparse(node.value), ast.unparse(s.upper)))
        return found

    def _is_tail_slice(self, node: ast.Subscript) -> bool:
        """`x[k:]` with `x[:k]` taken too; not when the cut undoes a concatenation of given
        train and test sets (`full[len(train):]`): that is no split of the data."""
        s = node.slice
        if not isinstance(s, ast.Slice) or s.lower is None or s.upper is not None:
            return False
        if (ast.unparse(node.value), ast.unparse(s.lower)) not in self._head_slices:
            return False
        return self._cut_at_first_part(node.value, s.lower) is None

    def _is_ratio_slice(self, node: ast.Subscript) -> bool:
        """`x[begin:end]` with a bound computed as a fraction of `len(x)` (directly or through
        the names it is bound to): `end = int(len(data) * self.train_ratio)`, a positional
        train/validation/test split."""
        s = node.slice
        if not isinstance(s, ast.Slice) or s.step is not None:
            return False
        for bound in (s.lower, s.upper):
            if bound is None:
                continue
            values = [bound, *(self.definitions(bound) if isinstance(bound, ast.Name) else [])]
            if any(self._fraction_of_length(value, node.value) for value in values):
                return True
            if any(self._split_border(value) for value in values):
                return True
        return False

    def _split_border(self, value: ast.expr) -> bool:
        """`border1s[self.set_type]`: a bound picked by the split's index from a list of
        borders of which one is a fraction of a length (`num_train = int(len(df_raw) *
        0.7)`), or by an index that names the split (`self.set_type = type_map[flag]` with
        `type_map = {'train': 0, 'val': 1, 'test': 2}`, the ETT datasets' fixed month
        borders): the train/validation/test cut of a time series (Informer's datasets),
        whose length is the raw table's, not the sliced array's."""
        if not isinstance(value, ast.Subscript) or not isinstance(value.value, ast.Name):
            return False
        borders = [
            element
            for listed in self.definitions(value.value)
            if isinstance(listed, ast.List | ast.Tuple) and len(listed.elts) >= 2
            for element in listed.elts
        ]
        if borders and (
            self._split_selector(value.slice)
            or (
                isinstance(value.slice, ast.Constant)
                and value.value.id in self._border_lists_of_splits
            )
        ):
            return True  # a split's range, or the range of one split by its number
        for element in borders:
            for name in walk_tree(element):
                bound = self.definitions(name) if isinstance(name, ast.Name) else []
                if any(self._fraction_of_any_length(b) for b in [name, *bound]):
                    return True
        return False

    @cached_property
    def _border_lists_of_splits(self) -> frozenset[str]:
        """Names of lists some subscript indexes by a split selector (`border1s[self.
        set_type]`): their constant entries are the splits' ranges (`border1s[0]`, the
        training range a scaler is fitted on)."""
        return frozenset(
            node.value.id
            for node in self.nodes(ast.Subscript)
            if isinstance(node.value, ast.Name) and self._split_selector(node.slice)
        )

    def _split_selector(self, index: ast.expr) -> bool:
        """`index` (a name or `self.attr`) holds a split's number looked up by its name in a
        literal table of the splits (`type_map[flag]`, `type_map = {'train': 0, 'val': 1,
        'test': 2}`)."""
        if not isinstance(index, ast.Name | ast.Attribute):
            return False
        for bound in self.definitions(index):
            if not (isinstance(bound, ast.Subscript) and isinstance(bound.value, ast.Name)):
                continue
            for table in self.definitions(bound.value):
                keys = {
                    k.value
                    for k in (table.keys if isinstance(table, ast.Dict) else [])
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                }
                if "train" in keys and keys & HELD_OUT_SPLITS:
                    return True
        return False

    def _fraction_of_any_length(self, value: ast.AST) -> bool:
        """`len(x) * 0.7` (or `* ratio`) for any sequence `x`."""
        for node in walk_tree(value):
            if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Mult):
                continue
            for length, factor in ((node.left, node.right), (node.right, node.left)):
                if (
                    isinstance(length, ast.Call)
                    and isinstance(length.func, ast.Name)
                    and length.func.id == "len"
                    and _is_fraction(factor)
                ):
                    return True
        return False

    def _fraction_of_length(self, value: ast.expr, sequence: ast.expr) -> bool:
        """`len(base) * ratio` (or `* 0.8`, `ratio * n` with `n = base.shape[0]`) somewhere
        in `value`, `base` being the text of `sequence` (unparsed only once a product shows:
        most slices' bounds have none)."""
        base = None
        for node in walk_tree(value):
            if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Mult):
                continue
            if base is None:
                base = ast.unparse(sequence)
            for length, factor in ((node.left, node.right), (node.right, node.left)):
                lengths = [length]
                if isinstance(length, ast.Name):
                    lengths += self.definitions(length)
                if any(_length_of(n, base) for n in lengths) and _is_fraction(factor):
                    return True
        return False

    @cached_property
    def _split_bases(self) -> set[str]:
        """Texts of the sequences split by head/tail slicing (`x` in `x[:k]`, `x[k:]`) or by
        slices at fractions of their length."""
        return {
            ast.unparse(sub.value)
            for sub in self.nodes(ast.Subscript)
            if self._is_tail_slice(sub) or self._is_ratio_slice(sub)
        }

    def is_split_part(self, node: ast.AST) -> bool:
        """A split call, or a head/tail slice of a sequence split by slicing."""
        if isinstance(node, ast.Call):
            return self.is_split_call(node)
        return (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Slice)
            and (":]" in self.ctx.source or "len(" in self.ctx.source)
            and ast.unparse(node.value) in self._split_bases
        )

    @cached_property
    def split_inputs(self) -> list[tuple[ast.expr, list[ast.expr]]]:
        """Every split with the data it divides: split calls (their positional arguments)
        and `x[k:]` tails whose head `x[:k]` is taken too (the sequence `x`)."""
        found: list[tuple[ast.expr, list[ast.expr]]] = []
        text = self.ctx.source
        if "split" in text:
            # a split call's callee ends in one of those names, or is an alias of one
            names = set(_SPLIT_SIMPLE_NAMES)
            names.update(
                alias
                for alias, target in self.ctx.imports.aliases.items()
                if target.rpartition(".")[2] in _SPLIT_SIMPLE_NAMES
            )
            named = {id(call) for call in self.calls_named(names)}
            for call in self.nodes(ast.Call):
                if id(call) in named and self.is_split_call(call):
                    found.append((call, [a for a in call.args if not isinstance(a, ast.Starred)]))
        if "split" in text or "cross_val" in text:
            found += self._cross_validation_inputs()
        if ":]" in text or "len(" in text:
            for sub in self.nodes(ast.Subscript):
                if self._is_tail_slice(sub) or self._is_ratio_slice(sub):
                    found.append((sub, [sub.value]))
        return found

    def _cross_validation_inputs(self) -> list[tuple[ast.expr, list[ast.expr]]]:
        """`kf.split(X, y)` for a scikit-learn splitter `kf` (its data: the arguments), and
        `cross_val_score(model, X, y)` and kin (the data after the estimator)."""
        found: list[tuple[ast.expr, list[ast.expr]]] = []
        for call in self.calls_named(("split",)):
            func = call.func
            if not isinstance(func, ast.Attribute) or not call.args:
                continue
            if any(self.qualname_of(c) in _CV_SPLITTERS for c in self.constructors(func.value)):
                found.append((call, [a for a in call.args if not isinstance(a, ast.Starred)]))
        for call in self.calls_to(_CV_HELPERS):
            found.append((call, [a for a in call.args[1:] if not isinstance(a, ast.Starred)]))
        return found

    def root_names(self, expr: ast.expr) -> set[str]:
        """Every plain name `expr` is computed from, through definitions (also of `self.x`
        attributes: a split inside a class method) and local returns (transitively, bounded)."""
        names: set[str] = set()
        seen: set[int] = set()
        frontier: list[ast.expr] = [expr]
        while frontier and len(seen) < MAX_VISITS:
            current = frontier.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for sub in walk_scope(current):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.add(sub.id)
                    frontier.extend(self.definitions(sub))
                elif isinstance(sub, ast.Attribute) and identifier(sub.value) == "self":
                    frontier.extend(self.definitions(sub))  # `self.X` set in `__init__`
                elif isinstance(sub, ast.Call):
                    frontier.extend(self.returns_of(sub))
        return names

    def sources_include(
        self, expr: ast.expr, predicate: Callable[[ast.AST], bool]
    ) -> ast.AST | None:
        """The first node among `expr`'s sources (and their parts) matching `predicate`."""
        for source in self.sources(expr):
            for sub in walk_scope(source):
                if predicate(sub):
                    return sub
                if sub is not source and isinstance(sub, ast.Name):
                    for value in self.definitions(sub):
                        for inner in walk_scope(value):
                            if predicate(inner):
                                return inner
        return None


_FRACTION_NAME = re.compile(r"ratio|frac|split|percent|proportion|train|test|val", re.IGNORECASE)


_JOINS = frozenset({"concat", "concatenate", "vstack", "cat"})


def _length_of(node: ast.expr, base: str) -> bool:
    """`len(base)`, `base.shape[0]`, `base.size(0)`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id == "len" and len(node.args) == 1 and ast.unparse(node.args[0]) == base
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
        return node.value.attr == "shape" and ast.unparse(node.value.value) == base
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "size" and ast.unparse(node.func.value) == base
    return False


def _is_fraction(factor: ast.expr) -> bool:
    """A ratio-like name or a constant strictly between 0 and 1."""
    if isinstance(factor, ast.Constant) and isinstance(factor.value, float):
        return 0 < factor.value < 1
    names = [identifier(n) for n in walk_tree(factor) if isinstance(n, ast.Name | ast.Attribute)]
    return any(_FRACTION_NAME.search(n) for n in names)
