"""train-loader-no-shuffle: the DataLoader a training loop iterates never shuffles."""

from __future__ import annotations

import ast
import builtins
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    callee_symbol,
    class_symbols,
    module_name,
    star_modules,
)
from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS, TRAINING_STEP_METHODS
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import held_out_name_kind, identifier
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.patterns import has_star_kwargs, kwarg
from torchdoctor.agent.models import Severity

_ORDERING = ("shuffle", "sampler", "batch_sampler")


class TrainLoaderNoShuffle(Rule):
    """Detects a `torch.utils.data.DataLoader` built without `shuffle`, `sampler` or
    `batch_sampler` whose batches a training loop of the same file iterates (the loop calls
    `backward()` and an optimizer step), over a map-style dataset.

    Why it matters: without shuffling every epoch sees the batches in the same order, and
    datasets are often stored sorted (by class, by date, by length): consecutive batches are
    correlated, the gradient estimate is biased within an epoch, and the model fits the order
    (typically the last classes seen). Accuracy ends lower and varies with the file order.

    A loop that hands each batch to a trainer's step method defined in another file
    (`trainer.train_step(images, targets)`) trains too, and so does a trainer's `fit` given
    the loader after the model (`trainer.fit(model, train_loader)`, Lightning) or as
    `train_dataloaders=`; a `fit(loader_a, loader_b)` whose first argument is itself a
    loader is not read as one.

    An explicit `shuffle=False` (or a flag every assignment of which is `False`, as when the
    train branch of a split switch copies the test branch's) is reported like a missing one
    (a flag copied from the test
    loader, or turned off while debugging, is the usual cause; mature training code on the
    precision corpus never iterates such a loader to train), also beside a
    `DistributedSampler` that is None when the run is not distributed (the DataLoader
    refuses a sampler with `shuffle=True`; the other path then never shuffles). So is the
    inverted test `shuffle=(train_sampler is not None)` beside `sampler=train_sampler` when
    the sampler is None on some path (`shuffle=(train_sampler is None)` was meant).

    Not reported: an unshuffled loader whose name is bound again, shuffled, before the
    training loop (a notebook's mean-and-std pass over the images in order), `shuffle=False`
    beside a sampler built to keep its order on some path
    (`DistributedSampler(ds, shuffle=False)`, a `SequentialSampler`: the order is chosen on
    every path), a training loop that carries a state from batch to batch (`output, hidden =
    model(x, hidden)`: consecutive chunks of one sequence, truncated back-propagation
    through time), a sampler of any kind (`DistributedSampler` shuffles) but a
    `SequentialSampler` (reported
    like no sampler, also when it is the sampler of one path: `SequentialSampler if
    args.local_rank == -1 else DistributedSampler`), options passed through `**kwargs`
    (`DataLoader(ds, **train_kwargs)`), a loader whose function takes a `shuffle` parameter
    it hands to something else (a dataset or sampler that shuffles itself: lit-llama's
    `PackedDataset(..., shuffle=shuffle)`), iterable datasets (they cannot be shuffled by the
    loader), loaders handed to Opacus (`privacy_engine.make_private(...,
    data_loader=train_loader)` draws its batches by Poisson sampling), loaders named for
    validation or test data, pytest modules (a test fits a few steps to see the code run),
    loaders no training loop iterates
    unless they are named for training (or built over training data, or returned by a
    `train_dataloader` hook or a function named for a training loader, `def
    instance_a_train_loader(self, ...)`) and handed to the caller (returned, or stored on
    `self`) by a function that does not iterate them: a
    loader factory whose training loop lives in another function or file. A factory that
    returns `DataLoader(dataset, ...)` for its `dataset` parameter is reported at the calls
    that give it training data or build a training hook's loader (`train_dataloader`). A
    training loop over what a function of another file returns (`dataloader =
    get_data(args)`, `get_data` in `utils.py` returning such a loader) is reported at that
    call.

    Example:
        train_loader = DataLoader(train_set, batch_size=64)
        for x, y in train_loader:
            ...
            loss.backward()
            optimizer.step()

    Fix: `DataLoader(train_set, batch_size=64, shuffle=True)` (or a sampler that shuffles,
    e.g. `DistributedSampler` with `set_epoch(epoch)` every epoch).
    """

    id = "train-loader-no-shuffle"
    point = 3
    severity = Severity.MEDIUM
    title = "Training DataLoader without shuffling"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "DataLoader" in ctx.source and (
            bool(ctx.loops.training_loops) or bool(_TRAIN_NAME.search(ctx.source))
        )

    def finish(self, ctx: ModuleContext) -> None:
        if "DataLoader" in ctx.source and "return" in ctx.source:
            _publish_unordered_factories(ctx)
        if "class " in ctx.source and ("shuffle(" in ctx.source or "perm" in ctx.source):
            _publish_self_shuffling_classes(ctx)
        if "shuffle" in ctx.source:
            _publish_batchers(ctx)
        if ctx.test_module:
            return  # a test trains a few steps to see the code run: order is not its point
        if "False" in ctx.source and ctx.loops.training_loops:
            self._check_batchers(ctx)
        if not self.applies(ctx):
            if "backward" in ctx.source and ctx.loops.training_loops:
                self._defer_imported_factories(ctx)
            return
        self._defer_imported_factories(ctx)
        flow = ctx.flow
        reported: set[int] = set()
        for node in [*(loop.node for loop in ctx.loops.training_loops), *_delegating_loops(ctx)]:
            if not isinstance(node, ast.For | ast.AsyncFor | ast.While) or _carries_state(node):
                continue
            iterated = [] if isinstance(node, ast.While) else _iterated_loaders(ctx, node.iter, 0)
            for source in [*iterated, *_drawn_loaders(ctx, node)]:
                if _orders(ctx, source) or id(source) in reported:
                    continue
                reported.add(id(source))
                shuffling = _dataset_may_shuffle_itself(ctx, source)
                if shuffling is True:
                    continue
                message = (
                    "the training loop iterates this DataLoader in the same order every "
                    f"epoch: {_no_order(source)}, no sampler"
                )
                if not shuffling:
                    ctx.report(self, source, message)
                    continue
                found = ctx.finding(self, source, message)
                if found is not None:  # unless the project's dataset class shuffles itself
                    pending = {"symbols": shuffling, "finding": found.model_dump()}
                    ctx.facts.setdefault(_DATASET_PENDING_KEY, []).append(pending)
        fits = _trainer_fits(ctx)
        for source in flow.calls_to(DATALOADERS):
            forwarded = _shuffle_defaulting_off(ctx, source)
            if id(source) in reported or _orders(ctx, source, forwarded):
                continue
            fitted = None if forwarded else _fitted_by_a_trainer(ctx, source, fits)
            if fitted is not None:
                reported.add(id(source))
                ctx.report(
                    self,
                    source,
                    f"line {fitted.lineno} trains on this DataLoader "
                    f"(`{ast.unparse(fitted.func)}`), which has no shuffle and no sampler: "
                    "every epoch sees the batches in the same order",
                )
                continue
            handed = None if forwarded else _training_loader_handed_out(ctx, source)
            if handed is not None:
                ctx.report(
                    self,
                    source,
                    f"`{handed}` is built for training and handed to its caller with no "
                    "shuffle and no sampler: every epoch sees the batches in the same order",
                )
                continue
            for site in _factory_calls_for_training(ctx, source, forwarded):
                ctx.report(
                    self,
                    site,
                    f"`{ast.unparse(site.func)}` builds the training loader with the "
                    f"DataLoader of line {source.lineno}, which has no shuffle and no sampler: "
                    "every epoch sees the batches in the same order",
                    data={"loader_line": source.lineno},
                )

    def _check_batchers(self, ctx: ModuleContext) -> None:
        """A training loop over a batch generator of the project told not to shuffle
        (`for X, Y in data.get_batches(X, Y, batch_size, False)`, LSTNet's, with `def
        get_batches(self, inputs, targets, batch_size, shuffle=True)`): `shuffle=False`
        given by name, or `False` passed for a parameter named `shuffle` of a function of
        this file or, through the project pass, of another."""
        for loop in ctx.loops.training_loops:
            node = loop.node
            if not isinstance(node, ast.For | ast.AsyncFor) or _carries_state(node):
                continue
            call = _unwrapped(node.iter)
            if call is None or ctx.flow.qualname_of(call) in DATALOADERS:
                continue
            message = (
                f"the training loop iterates `{ast.unparse(call.func)}(...)` told not to "
                "shuffle: every epoch sees the batches in the same order"
            )
            flag = kwarg(call, "shuffle")
            if isinstance(flag, ast.Constant) and flag.value is False:
                ctx.report(self, call, message)
                continue
            offs = [i for i, a in enumerate(call.args) if _false(a)]
            if not offs or any(isinstance(a, ast.Starred) for a in call.args):
                continue
            local = ctx.calls.resolve(call)
            if local:
                if any(_false(ctx.calls.bind(call, fn).get("shuffle")) for fn in local):
                    ctx.report(self, call, message)
                continue
            found = ctx.finding(self, call, message)
            if found is not None:
                name = identifier(call.func).rsplit(".", 1)[-1]
                pending = {"name": name, "offs": offs, "finding": found.model_dump()}
                ctx.facts.setdefault(_BATCHER_PENDING_KEY, []).append(pending)

    def _defer_imported_factories(self, ctx: ModuleContext) -> None:
        """A training loop over the loader a function of another file returns
        (`dataloader = get_data(args)` with `get_data` in `utils.py`): reported when the
        project pass finds that function returning a loader that never shuffles."""
        seen: set[int] = set()
        for loop in ctx.loops.training_loops:
            node = loop.node
            if not isinstance(node, ast.For | ast.AsyncFor):
                continue
            for source in _loader_sources(ctx, node.iter, 0):
                if id(source) in seen:
                    continue
                seen.add(id(source))
                symbols = _factory_symbols(ctx, source)
                if not symbols:
                    continue
                found = ctx.finding(
                    self,
                    source,
                    f"`{ast.unparse(source.func)}` returns the loader this training loop "
                    "iterates, built with no shuffle and no sampler: every epoch sees the "
                    "batches in the same order",
                )
                if found is not None:
                    ctx.facts.setdefault(_PENDING_KEY, []).append(
                        {"symbols": symbols, "finding": found.model_dump()}
                    )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """Loops over another file's unordered loader factory; loaders over another file's
        dataset class, unless that class shuffles its own samples."""
        factories = {s for f in facts.values() for s in f.get(_FACTORIES_KEY, [])}
        shuffling = {s for f in facts.values() for s in f.get(_SELF_SHUFFLING_KEY, [])}
        return (
            [
                RawFinding.model_validate(p["finding"])
                for f in facts.values()
                for p in f.get(_PENDING_KEY, [])
                if any(_same_symbol(s, factory) for s in p["symbols"] for factory in factories)
            ]
            + [
                RawFinding.model_validate(p["finding"])
                for f in facts.values()
                for p in f.get(_DATASET_PENDING_KEY, [])
                if not any(_same_symbol(s, own) for s in p["symbols"] for own in shuffling)
            ]
            + _confirmed_batcher_calls(facts)
        )


_FACTORIES_KEY = "unordered-loader-factories"
_PENDING_KEY = "pending:train-loader-no-shuffle:factory"
_SELF_SHUFFLING_KEY = "self-shuffling-datasets"
_DATASET_PENDING_KEY = "pending:train-loader-no-shuffle:dataset"
_BATCHERS_KEY = "batchers-with-shuffle"
_BATCHER_PENDING_KEY = "pending:train-loader-no-shuffle:batcher"


def _false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is False


def _unwrapped(expr: ast.expr) -> ast.Call | None:
    """The call a loop iterates, through `enumerate(...)`/`tqdm(...)`."""
    while isinstance(expr, ast.Call) and identifier(expr.func) in _WRAPPERS and expr.args:
        expr = expr.args[0]
    return expr if isinstance(expr, ast.Call) else None


def _publish_batchers(ctx: ModuleContext) -> None:
    """Functions and methods with a parameter named `shuffle`: name -> its position among
    the arguments a call passes (`self` left out of a method's)."""
    found: dict[str, list[int]] = {}
    for name, defs in ctx.loops.functions.items():
        for fn in defs:
            params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
            if params and params[0] in ("self", "cls"):
                params = params[1:]
            if "shuffle" in params:
                found.setdefault(name, []).append(params.index("shuffle"))
    if found:
        ctx.facts[_BATCHERS_KEY] = found


def _confirmed_batcher_calls(facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
    """Training loops over another file's batch generator given `False` where that
    generator (a project function or method of that name) takes `shuffle`."""
    positions: dict[str, set[int]] = {}
    for fact in facts.values():
        for name, where in fact.get(_BATCHERS_KEY, {}).items():
            positions.setdefault(name, set()).update(where)
    return [
        RawFinding.model_validate(p["finding"])
        for f in facts.values()
        for p in f.get(_BATCHER_PENDING_KEY, [])
        if positions.get(p["name"], set()) & set(p["offs"])
    ]


# Calls that reorder samples: a dataset calling one on its own list shuffles itself.
_SHUFFLES = frozenset({"shuffle", "permutation", "randperm"})


def _self_shuffling_classes(ctx: ModuleContext) -> set[str]:
    """The module's top-level classes whose methods reorder samples themselves as they are
    read (`np.random.shuffle(self.list_sample)` in a dataset that builds whole batches:
    CSAILVision's `TrainDataset`), found from the module's call index. A shuffle in
    `__init__` runs once (hifi-gan's `MelDataset`): every epoch then repeats that order."""
    memo = ctx.memo_table("train_loader_no_shuffle.self_shuffling")
    if "" not in memo:
        memo[""] = {
            outer.name
            for call in ctx.flow.calls_named(_SHUFFLES)
            if (fn := ctx.enclosing_function(call)) is not None and fn.name != "__init__"
            for outer in ctx.ancestors(fn)
            if isinstance(outer, ast.ClassDef) and ctx.parents.get(outer) is ctx.tree
        }
    found: set[str] = memo[""]
    return found


def _publish_self_shuffling_classes(ctx: ModuleContext) -> None:
    found = sorted(f"{module_name(ctx.path)}.{name}" for name in _self_shuffling_classes(ctx))
    if found:
        ctx.facts[_SELF_SHUFFLING_KEY] = found


def _dataset_may_shuffle_itself(ctx: ModuleContext, loader: ast.Call) -> bool | list[str]:
    """True when the loader's dataset is built by a class of this file that shuffles its own
    samples; the qualified names of the project classes of other files it may be built by
    (the project pass asks them), or [] when neither."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if dataset is None:
        return []
    symbols: list[str] = []
    for constructor in ctx.flow.constructors(dataset):
        func = constructor.func
        local = ctx.flow.classes.get(func.id) if isinstance(func, ast.Name) else None
        if local is not None:
            if local.name in _self_shuffling_classes(ctx):
                return True
            continue
        symbols += [s for s in class_symbols(ctx, func) if s not in symbols]
    return symbols


def _same_symbol(imported: str, defined: str) -> bool:
    """`utils.get_data` imported, `utils.get_data` or `src.utils.get_data` defined."""
    return imported == defined or defined.endswith("." + imported)


_WRAPPERS = frozenset({"enumerate", "tqdm", "iter", "trange"})


def _no_order(loader: ast.Call) -> str:
    flag = kwarg(loader, "shuffle")
    return "`shuffle=False`" if isinstance(flag, ast.Constant) else "no shuffle"


def _drawn_loaders(ctx: ModuleContext, loop: ast.For | ast.AsyncFor | ast.While) -> list[ast.Call]:
    """The DataLoaders a training loop draws its batches from with `next()`
    (`batch_iterator = iter(data_loader)` before a `for iteration in range(max_iter)` whose
    body calls `next(batch_iterator)`: ssd.pytorch's, an iteration-counted schedule)."""
    if "next(" not in ctx.source:
        return []
    return [
        source
        for node in walk_scope(loop.body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "next"
        and node.args
        for source in _iterated_loaders(ctx, node.args[0], 0)
    ]


def _carries_state(loop: ast.For | ast.AsyncFor | ast.While) -> bool:
    """The loop hands a value from one batch to the next through calls that take it and give
    its next value back (`output, hidden = model(data, hidden)`, `hidden =
    repackage_hidden(hidden)`), and is bound no other way in the loop: a recurrent state
    over consecutive chunks of one sequence (truncated back-propagation through time), where
    the batches' order is the point. `x = model(x)` after `x, y = batch` carries nothing."""
    carried: set[str] = set()
    other: set[str] = set()
    if isinstance(loop, ast.For | ast.AsyncFor):
        other |= {n.id for n in walk_tree(loop.target) if isinstance(n, ast.Name)}
    for node in walk_scope(loop.body):
        if isinstance(node, ast.Assign):
            targets = {n.id for t in node.targets for n in walk_tree(t) if isinstance(n, ast.Name)}
        else:
            if isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.AsyncFor):
                other |= {n.id for n in walk_tree(node.target) if isinstance(n, ast.Name)}
            continue
        passed = (
            {
                n.id
                for arg in node.value.args
                for n in walk_tree(arg)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
            }
            if isinstance(node.value, ast.Call)
            else set()
        )
        carried |= targets & passed
        other |= targets - passed
    return bool(carried - other)


def _delegating_loops(ctx: ModuleContext) -> list[ast.For]:
    """Loops whose body hands each batch to a trainer's step method that the module does not
    define (`losses = train_util.train_step(imgs, boxes, labels)`, the trainer imported from
    another file): they train though no backward() is in sight."""
    if not any(name in ctx.source for name in TRAINING_STEP_METHODS):
        return []
    local = set(ctx.loops.functions)
    training = {id(loop.node) for loop in ctx.loops.training_loops}
    return [
        loop
        for loop in ctx.flow.nodes(ast.For)
        if isinstance(loop, ast.For)
        and id(loop) not in training
        and any(
            isinstance(node, ast.Call)
            and identifier(node.func) in TRAINING_STEP_METHODS
            and identifier(node.func) not in local
            for node in walk_scope(loop.body)
        )
    ]


# What a trainer's `fit` takes its training batches by (Lightning's `Trainer.fit`).
_FIT_TRAIN_KEYWORDS = frozenset({"train_dataloaders", "train_dataloader"})


def _trainer_fits(ctx: ModuleContext) -> list[tuple[ast.Call, ast.expr]]:
    """(call, training loader argument) of the module's `trainer.fit(model, loader)` calls:
    the loader given as `train_dataloaders=` (or `train_dataloader=`), or as the second
    positional argument after the model (Lightning's `fit(model, train_dataloaders,
    val_dataloaders)`); the trainer iterates it every epoch."""
    if ".fit(" not in ctx.source:
        return []
    found: list[tuple[ast.Call, ast.expr]] = []
    for call in ctx.flow.nodes(ast.Call):
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "fit"
        ):
            continue
        given = [k.value for k in call.keywords if k.arg in _FIT_TRAIN_KEYWORDS]
        if (
            len(call.args) >= 2
            and not any(isinstance(a, ast.Starred) for a in call.args[:2])
            and not _a_loader(ctx, call.args[0])  # `fit(train_loader, val_loader)`: not ours
        ):
            given.append(call.args[1])
        found += [(call, loader) for loader in given]
    return found


def _a_loader(ctx: ModuleContext, expr: ast.expr) -> bool:
    return any(
        isinstance(source, ast.Call) and ctx.flow.qualname_of(source) in DATALOADERS
        for source in ctx.flow.sources(expr)
    )


def _fitted_by_a_trainer(
    ctx: ModuleContext, loader: ast.Call, fits: list[tuple[ast.Call, ast.expr]]
) -> ast.Call | None:
    """The `trainer.fit(model, loader)` call that trains on `loader`, directly or through
    the name it is bound to (`train_loader = DataLoader(ds, ...)`; `trainer.fit(model,
    train_loader)`)."""
    for call, given in fits:
        if any(source is loader for source in ctx.flow.sources(given)):
            return call
    return None


def _loader_sources(ctx: ModuleContext, expr: ast.expr, depth: int) -> list[ast.Call]:
    """The calls that built what a loop iterates, through `enumerate(...)`/`tqdm(...)`
    wrappers and the names they are bound to (`pbar = tqdm(dataloader)`)."""
    found: list[ast.Call] = []
    for source in ctx.flow.sources(expr):
        if not isinstance(source, ast.Call):
            continue
        if identifier(source.func) in _WRAPPERS and source.args and depth < 4:
            found += _loader_sources(ctx, source.args[0], depth + 1)
        else:
            found.append(source)
    return found


def _iterated_loaders(ctx: ModuleContext, expr: ast.expr, depth: int) -> list[ast.Call]:
    """The DataLoader calls a loop may iterate: through `enumerate(...)`/`tqdm(...)` wrappers,
    each loader of a `zip(labeled_loader, unlabeled_loader)`, and the names they are bound
    to (`with tqdm(enumerate(loader)) as t: for ... in t`; `data, loader = self._get_data(...)`
    unpacked from a local function returning `dataset, loader`), and
    from a parameter of the loop's function to what each call of that function in the module
    passes for it (`def train(args, train_loader, model)` called as `train(args,
    train_loader, model)` with `train_loader = DataLoader(...)` in `main`). A name bound again
    before the loop on every path holds that binding only (a notebook's unshuffled loader
    for computing the mean and std, rebound to a shuffled one before the training cell)."""
    found: list[ast.Call] = []
    if (
        isinstance(expr, ast.Name)
        and isinstance(reached := ctx.flow.reaching(expr), ast.Call)
        and ctx.flow.qualname_of(reached) in DATALOADERS
    ):
        expr = reached
    for source in ctx.flow.sources(expr):
        if isinstance(source, ast.Call):
            if identifier(source.func) in _WRAPPERS and source.args and depth < 4:
                found += _iterated_loaders(ctx, source.args[0], depth + 1)
            elif identifier(source.func) == "zip" and depth < 4:  # each loader, side by side
                for arg in source.args:
                    found += _iterated_loaders(ctx, arg, depth + 1)
            elif ctx.flow.qualname_of(source) in DATALOADERS:
                found.append(source)
        elif isinstance(source, ast.Name) and depth < 4:
            found += _passed_loaders(ctx, source, depth)
            for element in _unpacked_returns(ctx, source):
                loaders = _iterated_loaders(ctx, element, depth + 1)
                if len({id(loader) for loader in loaders}) == 1:
                    found += loaders  # several: the call's arguments pick one, unseen here
    return found


def _unpacked_returns(ctx: ModuleContext, name: ast.Name) -> list[ast.expr]:
    """What a local function's returns give a name unpacked from its call: Informer-style
    `train_data, train_loader = self._get_data(flag='train')` with `_get_data` ending in
    `return data_set, data_loader` -> `data_loader`. A function building a training and an
    evaluation loader on two branches of its flag (simpletransformers' `load_and_cache_
    examples(..., evaluate=...)`) returns one of them, which the call's flag decides: its
    loaders are not followed."""
    found: list[ast.expr] = []
    for value in ctx.flow.definitions(name):
        bound = ctx.parents.get(value)
        if not (
            isinstance(value, ast.Call)
            and isinstance(bound, ast.Assign)
            and len(bound.targets) == 1
            and isinstance(bound.targets[0], ast.Tuple)
        ):
            continue
        targets = bound.targets[0].elts
        index = next(
            (i for i, t in enumerate(targets) if isinstance(t, ast.Name) and t.id == name.id),
            None,
        )
        if index is None:
            continue
        for returned in ctx.flow.returns_of(value):
            if isinstance(returned, ast.Tuple) and len(returned.elts) == len(targets):
                found.append(returned.elts[index])
    return found


def _passed_loaders(ctx: ModuleContext, name: ast.Name, depth: int) -> list[ast.Call]:
    """The loaders the module's calls of `name`'s function pass for its parameter `name`;
    an argument named for held-out data (`run_epoch(model, val_loader)`) is not followed."""
    found: list[ast.Call] = []
    for passed in ctx.calls.arguments_for(name) or _wrapped_parameter_arguments(ctx, name):
        if not held_out_name_kind(identifier(passed)):
            found += _iterated_loaders(ctx, passed, depth + 1)
    return found


def _wrapped_parameter_arguments(ctx: ModuleContext, name: ast.Name) -> list[ast.expr]:
    """What the callers pass for a parameter whose only re-binding wraps it in a progress
    bar or an iterator (`if dist.is_primary(): loader = tqdm(loader)`, vq-vae-2's `train`):
    the loop still iterates the loader the caller passed."""
    fn = ctx.enclosing_function(name)
    if fn is None or name.id not in {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}:
        return []
    rebinds = [
        node
        for node in walk_tree(fn)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.For)
        and any(
            isinstance(t, ast.Name) and t.id == name.id
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    if not rebinds or not all(_wraps_itself(node, name.id) for node in rebinds):
        return []
    return [
        passed
        for site in ctx.calls.call_sites(fn)
        if (passed := ctx.calls.bind(site, fn).get(name.id)) is not None
    ]


def _wraps_itself(node: ast.AST, name: str) -> bool:
    """`loader = tqdm(loader, ...)`: a single target bound to a wrapper of its own value."""
    value = node.value if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
    return (
        isinstance(value, ast.Call)
        and identifier(value.func) in _WRAPPERS
        and bool(value.args)
        and isinstance(value.args[0], ast.Name)
        and value.args[0].id == name
    )


def _factory_symbols(ctx: ModuleContext, call: ast.Call) -> list[str]:
    """The qualified names a call of an imported function may resolve to (a name a project
    module's star import brings counts under each such module)."""
    if ctx.flow.qualname_of(call) in DATALOADERS:
        return []
    symbol = callee_symbol(ctx, call.func)
    if symbol is not None:
        return [symbol]
    if (
        isinstance(call.func, ast.Name)
        and call.func.id not in ctx.flow.functions
        and not hasattr(builtins, call.func.id)
    ):
        return [f"{module}.{call.func.id}" for module in star_modules(ctx)]
    return []


def _publish_unordered_factories(ctx: ModuleContext) -> None:
    """Module-level functions that return a DataLoader with no shuffle and no sampler, not
    named for held-out data (`def get_data(args): ... return DataLoader(dataset, ...)`)."""
    if ctx.test_module:
        return
    found = []
    for loader in ctx.flow.calls_to(DATALOADERS):
        owner = ctx.enclosing_function(loader)
        if (
            owner is None
            or owner not in ctx.tree.body
            or held_out_name_kind(owner.name)
            or not _returned(ctx, loader, owner)
            or _orders(ctx, loader, _shuffle_defaulting_off(ctx, loader))
            or kwarg(loader, "shuffle") is not None
        ):
            continue
        found.append(f"{module_name(ctx.path)}.{owner.name}")
    if found:
        ctx.facts[_FACTORIES_KEY] = found


# `train_loader`, `trainloader`, `train_subset`, `training_data`, `dl_train`
_TRAIN_NAME = re.compile(r"(^|[^A-Za-z])[Tt]rain(ing)?([^a-z]|$|set|loader|data|dl)")


def _orders(ctx: ModuleContext, loader: ast.Call, forwarded: str | None = None) -> bool:
    """Whether the loader may shuffle or keep an order on purpose (or we cannot tell); a
    `shuffle` forwarded from a factory's parameter (`forwarded`) is judged at its calls."""
    # `shuffle=False` written for the sampler's sake orders nothing on the sampler-less path,
    # and written alone it keeps the file order as surely as no `shuffle` at all
    skipped = {forwarded, "shuffle" if _off_for_the_sampler(ctx, loader) else None}
    flag = kwarg(loader, "shuffle")
    if flag is not None and _inverted_sampler_test(loader, flag):
        skipped.add("shuffle")  # false wherever the sampler is None
    elif flag is not None and _always_false(ctx, flag):
        if _order_kept_on_purpose(ctx, loader):
            return True
        skipped.add("shuffle")
    if forwarded is None and _shuffle_handled_by_a_parameter(ctx, loader):
        return True
    given = [(name, kwarg(loader, name)) for name in _ORDERING if name not in skipped]
    if any(
        value is not None
        and not _may_be_none(ctx, value)
        and not (name == "sampler" and _sequential_on_a_path(ctx, value))
        for name, value in given
    ):
        return True
    if len(loader.args) > 2 or not _options_seen(ctx, loader):
        return True  # positional shuffle/sampler, or options we cannot see
    return _held_out(ctx, loader) or _iterable(ctx, loader) or _resampled_privately(ctx, loader)


_PRIVATE_LOADERS = frozenset({"make_private", "make_private_with_epsilon", "from_data_loader"})


def _resampled_privately(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader's name is handed to Opacus (`privacy_engine.make_private(...,
    data_loader=train_loader)`, `DPDataLoader.from_data_loader(train_loader)`), whose
    replacement draws every batch by Poisson sampling: its order is not the loader's."""
    bound = ctx.parents.get(loader)
    if not (isinstance(bound, ast.Assign) and len(bound.targets) == 1):
        return False
    target = bound.targets[0]
    if not isinstance(target, ast.Name):
        return False
    return any(
        isinstance(arg, ast.Name) and arg.id == target.id
        for call in ctx.flow.calls_named(_PRIVATE_LOADERS)
        for arg in [*call.args, *(k.value for k in call.keywords if k.arg == "data_loader")]
    )


def _order_kept_on_purpose(ctx: ModuleContext, loader: ast.Call) -> bool:
    """`shuffle=False` beside a sampler built to keep its order on some path
    (`DistributedSampler(series, shuffle=False) if distributed else None`, a
    `SequentialSampler`): the order is the author's choice on every path, not an omission."""
    sampler = kwarg(loader, "sampler")
    if sampler is None:
        return False
    if _sequential_on_a_path(ctx, sampler):
        return True
    bound = ctx.flow.definitions(sampler) if isinstance(sampler, ast.Name) else [sampler]
    return any(
        isinstance(branch, ast.Call)
        and identifier(branch.func).rsplit(".", 1)[-1] == "DistributedSampler"
        and isinstance(off := kwarg(branch, "shuffle"), ast.Constant)
        and off.value is False
        for node in bound
        for branch in ([node.body, node.orelse] if isinstance(node, ast.IfExp) else [node])
    )


def _off_for_the_sampler(ctx: ModuleContext, loader: ast.Call) -> bool:
    """`shuffle=False` beside `sampler=train_sampler` where the sampler is a shuffling
    `DistributedSampler` on one path and None on the other (tacotron2's training loader:
    `DistributedSampler(trainset) if hparams.distributed_run else None`): the flag is off
    because a DataLoader refuses both a sampler and `shuffle=True`, and the run that is not
    distributed iterates in file order. A sampler built to keep its order
    (`shuffle=False`, a `SequentialSampler`) makes the flag deliberate."""
    shuffle, sampler = kwarg(loader, "shuffle"), kwarg(loader, "sampler")
    if not (isinstance(shuffle, ast.Constant) and shuffle.value is False):
        return False
    if not isinstance(sampler, ast.Name) or not _may_be_none(ctx, sampler):
        return False
    built = [
        branch
        for bound in ctx.flow.definitions(sampler)
        for branch in ([bound.body, bound.orelse] if isinstance(bound, ast.IfExp) else [bound])
        if not _none(branch)
    ]
    return bool(built) and all(_shuffling_sampler(node) for node in built)


def _sequential_on_a_path(ctx: ModuleContext, value: ast.expr) -> bool:
    """`sampler=SequentialSampler(ds)`, or a sampler that is one on some path:
    `sampler=train_sampler(ds)` with `train_sampler = SequentialSampler if args.local_rank
    == -1 else DistributedSampler`, `sampler=s` with `s = SequentialSampler(ds) if ... else
    DistributedSampler(ds)`; or one built by a call told not to shuffle
    (`DistributedSampler(ds, shuffle=False)`, a project helper's `data_sampler(dataset,
    shuffle=False, distributed=...)`: vq-vae-2's). Like a sampler that is None on one path,
    that path iterates in file order: with no `shuffle` beside it, nothing reorders the
    epochs."""
    if isinstance(value, ast.Name):
        return any(
            _ordered_sampler(ctx, branch) if isinstance(branch, ast.Call) else False
            for bound in ctx.flow.definitions(value)
            for branch in ([bound.body, bound.orelse] if isinstance(bound, ast.IfExp) else [bound])
        )
    return isinstance(value, ast.Call) and _ordered_sampler(ctx, value)


def _ordered_sampler(ctx: ModuleContext, call: ast.Call) -> bool:
    flag = kwarg(call, "shuffle")
    told_not_to = isinstance(flag, ast.Constant) and flag.value is False
    return told_not_to or _sequential_class(ctx, call.func)


def _sequential_class(ctx: ModuleContext, func: ast.expr) -> bool:
    """`SequentialSampler`, or a name bound to it on some path (an `IfExp` branch)."""
    if identifier(func).rsplit(".", 1)[-1] == "SequentialSampler":
        return True
    if not isinstance(func, ast.Name):
        return False
    return any(
        identifier(branch).rsplit(".", 1)[-1] == "SequentialSampler"
        for bound in ctx.flow.definitions(func)
        for branch in ([bound.body, bound.orelse] if isinstance(bound, ast.IfExp) else [bound])
    )


def _shuffling_sampler(node: ast.expr) -> bool:
    """`DistributedSampler(ds)` (it shuffles by default), not `DistributedSampler(ds,
    shuffle=False)`."""
    if not isinstance(node, ast.Call) or identifier(node.func) != "DistributedSampler":
        return False
    flag = kwarg(node, "shuffle")
    return flag is None or (isinstance(flag, ast.Constant) and flag.value is True)


def _options_seen(ctx: ModuleContext, loader: ast.Call) -> bool:
    """Every `**options` the loader is given is a dict literal of its function (either branch
    of `{"num_workers": n, "pin_memory": True} if use_cuda else {}`) that names neither
    `shuffle` nor a sampler and is not changed after it is built (`options["shuffle"] =`,
    `options.update(...)`): the loader's order is then as visible as without them."""
    for keyword in loader.keywords:
        if keyword.arg is not None:
            continue
        if not isinstance(keyword.value, ast.Name):
            return False
        if _forwarded_kwargs_seen(ctx, loader, keyword.value.id):
            continue
        values = ctx.flow.definitions(keyword.value)
        literals = [
            d for v in values for d in ([v.body, v.orelse] if isinstance(v, ast.IfExp) else [v])
        ]
        if not literals or not all(_plain_options(d) for d in literals):
            return False
        scope = ctx.enclosing_function(loader) or ctx.tree
        if _changed_after_built(scope, keyword.value.id):
            return False
    return True


def _forwarded_kwargs_seen(ctx: ModuleContext, loader: ast.Call, name: str) -> bool:
    """`**kwargs` is the `**` parameter of the loader's function, which the module calls
    (a wrapper class built as `InfiniteDataLoader(train_dataset, batch_size=b,
    num_workers=n)`, makemore's) with keywords none of which orders and no `**` of its own:
    every option the loader can receive is seen at those calls."""
    fn = ctx.enclosing_function(loader)
    if fn is None or fn.args.kwarg is None or fn.args.kwarg.arg != name:
        return False
    if _changed_after_built(fn, name):
        return False
    owner = ctx.parents.get(fn)
    callee = owner.name if fn.name == "__init__" and isinstance(owner, ast.ClassDef) else fn.name
    sites = [
        call
        for call in ctx.flow.nodes(ast.Call)
        if isinstance(call, ast.Call) and identifier(call.func) == callee
    ]
    return bool(sites) and all(
        all(k.arg is not None and k.arg not in _ORDERING for k in site.keywords) for site in sites
    )


def _plain_options(value: ast.expr) -> bool:
    """`{"num_workers": 4}` or `dict(num_workers=4)`: known keys, none that orders (a
    `"shuffle": False` orders nothing: EfficientDet's `training_params = {"shuffle": False,
    ...}` keeps the file order as surely as `shuffle=False` written in the call)."""
    if isinstance(value, ast.Dict):
        return all(
            isinstance(k, ast.Constant) and _orders_nothing(k.value, v)
            for k, v in zip(value.keys, value.values, strict=True)
        )
    if isinstance(value, ast.Call) and identifier(value.func) == "dict" and not value.args:
        return all(k.arg is not None and _orders_nothing(k.arg, k.value) for k in value.keywords)
    return False


def _orders_nothing(key: object, value: ast.expr) -> bool:
    if key not in _ORDERING:
        return True
    return key == "shuffle" and isinstance(value, ast.Constant) and value.value is False


def _changed_after_built(scope: ast.AST, name: str) -> bool:
    for node in walk_tree(scope):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and identifier(node.value) == name
        ):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("update", "setdefault", "__setitem__")
            and identifier(node.func.value) == name
        ):
            return True
    return False


def _shuffle_handled_by_a_parameter(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader's function takes a `shuffle` parameter and hands it to something else than
    this loader (`PackedDataset(..., shuffle=shuffle)` in lit-llama's `create_dataloader`, a
    dataset or sampler that shuffles itself): the order is the callers' choice, made there."""
    owner = ctx.enclosing_function(loader)
    if owner is None:
        return False
    names = {
        a.arg
        for a in [*owner.args.posonlyargs, *owner.args.args, *owner.args.kwonlyargs]
        if "shuffle" in a.arg.lower()
    }
    if not names:
        return False
    inside = {id(n) for n in walk_tree(loader)}
    return any(
        isinstance(node, ast.Name)
        and isinstance(node.ctx, ast.Load)
        and node.id in names
        and id(node) not in inside
        for node in walk_tree(owner)
    )


def _always_false(ctx: ModuleContext, value: ast.expr) -> bool:
    """`False`, or a name every binding of which is `False` (Informer-style `_get_data`:
    `if flag == 'test': shuffle_flag = False ... else: shuffle_flag = False`, then
    `DataLoader(..., shuffle=shuffle_flag)`); a parameter, or one `True` path, is not."""
    if isinstance(value, ast.Constant):
        return value.value is False
    if not isinstance(value, ast.Name):
        return False
    bound = [b for b in ctx.flow.definitions(value) if b is not value]
    return bool(bound) and all(isinstance(b, ast.Constant) and b.value is False for b in bound)


def _inverted_sampler_test(loader: ast.Call, flag: ast.expr) -> bool:
    """`shuffle=(train_sampler is not None)` (or `not train_sampler is None`) beside
    `sampler=train_sampler`: the test `shuffle=(train_sampler is None)` inverted, false
    exactly on the path with no sampler (and an error on the other)."""
    if isinstance(flag, ast.UnaryOp) and isinstance(flag.op, ast.Not):
        inner = flag.operand
        if not (isinstance(inner, ast.Compare) and isinstance(inner.ops[0], ast.Is)):
            return False
        compare = inner
    elif isinstance(flag, ast.Compare) and isinstance(flag.ops[0], ast.IsNot):
        compare = flag
    else:
        return False
    if len(compare.ops) != 1 or not _none(compare.comparators[0]):
        return False
    sampler = kwarg(loader, "sampler")
    return (
        isinstance(compare.left, ast.Name)
        and isinstance(sampler, ast.Name)
        and sampler.id == compare.left.id
    )


def _may_be_none(ctx: ModuleContext, value: ast.expr) -> bool:
    """`sampler=None`, or `sampler=train_sampler` with `train_sampler = None` on one path
    (`DistributedSampler(...)` only when distributed, also as `DistributedSampler(ds) if
    rank != -1 else None`): with no `shuffle` beside it, that path iterates in a fixed
    order."""
    if isinstance(value, ast.Constant):
        return value.value is None
    if not isinstance(value, ast.Name):
        return False
    return any(
        _none(bound)
        or (isinstance(bound, ast.IfExp) and (_none(bound.body) or _none(bound.orelse)))
        for bound in ctx.flow.definitions(value)
    )


def _none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _training_loader_handed_out(ctx: ModuleContext, loader: ast.Call) -> str | None:
    """The name of a loader built for training data (by its name or its dataset's) that its
    function returns or stores on `self` without iterating it: a loader factory whose
    training loop lives elsewhere (`get_loaders()` -> `train_loader, val_loader`)."""
    parent = ctx.parents.get(loader)
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if isinstance(parent, ast.Return):
        return _returned_for_training(ctx, loader, dataset)
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return None
    target = parent.targets[0]
    names = [identifier(target), identifier(dataset) if dataset is not None else ""]
    if not any(n and _TRAIN_NAME.search(n) for n in names):
        return None
    owner = ctx.enclosing_function(loader)
    if owner is None or ctx.test_module:
        return None  # a test's loaders keep their order on purpose
    text = ast.unparse(target)
    iterated = any(
        isinstance(node, ast.For | ast.AsyncFor | ast.comprehension)
        and text in {ast.unparse(sub) for sub in walk_tree(node.iter)}
        for node in walk_tree(owner)
    )
    if iterated:
        return None
    if isinstance(target, ast.Attribute) and identifier(target.value) == "self":
        return text
    returned = any(
        isinstance(node, ast.Return)
        and node.value is not None
        and any(ast.unparse(sub) == text for sub in walk_tree(node.value))
        for node in walk_tree(owner)
    )
    return text if returned and isinstance(target, ast.Name) else None


_SCORING_FUNCTION = re.compile(r"eval|valid|test|predict|infer|score", re.IGNORECASE)


def _returned_for_training(
    ctx: ModuleContext, loader: ast.Call, dataset: ast.expr | None
) -> str | None:
    """`return DataLoader(self.train_dataset, ...)` straight from a training hook (`def
    train_dataloader(self)`, Lightning's data modules: modelforge's) or over a dataset named
    for training: the loader is handed to the trainer that iterates it every epoch. A
    dataset that is a parameter of the function is left to the factory's call sites. A
    function named for a training loader (`def instance_a_train_loader(self, num_negatives,
    batch_size)`, building its dataset inside) is one too."""
    owner = ctx.enclosing_function(loader)
    if owner is None or ctx.test_module or dataset is None:
        return None
    name = identifier(dataset)
    params = {a.arg for a in [*owner.args.posonlyargs, *owner.args.args, *owner.args.kwonlyargs]}
    if not name or name in params or held_out_name_kind(name):
        return None
    if _SCORING_FUNCTION.search(owner.name):
        return None  # `def train_eval_dataloader(self)`: the training data scored in order
    if owner.name == "train_dataloader" or _TRAIN_NAME.search(name):
        return f"{owner.name}()"
    if _TRAIN_NAME.search(owner.name) and _LOADER_WORD.search(owner.name):
        return f"{owner.name}()"  # NCF's `instance_a_train_loader(self, ...)`: named for it
    return None


# A function named for the loader it makes (`instance_a_train_loader`, `get_train_loader`).
_LOADER_WORD = re.compile(r"loader|(^|_)dl($|_)", re.IGNORECASE)


def _shuffle_defaulting_off(ctx: ModuleContext, loader: ast.Call) -> str | None:
    """`shuffle` when the loader takes it from its function's parameter of the same role
    whose default is `False` (`def get_loader(dataset, shuffle=False): ...
    DataLoader(dataset, shuffle=shuffle)`): a call that omits it builds a loader that keeps
    its order as surely as one without `shuffle`."""
    value = kwarg(loader, "shuffle")
    owner = ctx.enclosing_function(loader)
    if not isinstance(value, ast.Name) or owner is None:
        return None
    positional = [*owner.args.posonlyargs, *owner.args.args]
    defaults = dict(
        zip(
            positional[len(positional) - len(owner.args.defaults) :],
            owner.args.defaults,
            strict=True,
        )
    )
    defaults.update(
        (a, d)
        for a, d in zip(owner.args.kwonlyargs, owner.args.kw_defaults, strict=True)
        if d is not None
    )
    default = next((d for a, d in defaults.items() if a.arg == value.id), None)
    off = isinstance(default, ast.Constant) and default.value in (False, None)
    return "shuffle" if off else None


def _factory_calls_for_training(
    ctx: ModuleContext, loader: ast.Call, forwarded: str | None = None
) -> list[ast.Call]:
    """The calls of a loader factory (`def _make_loader(self, dataset, batch_size): return
    DataLoader(dataset, ...)`) that pass it training data (`self.train_dataset`) or make the
    loader of a training hook (`def train_dataloader(self)`, Lightning's); with `forwarded`,
    only the calls that leave the factory's `shuffle` parameter at its default."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    owner = ctx.enclosing_function(loader)
    if owner is None or not isinstance(dataset, ast.Name) or ctx.test_module:
        return []
    if not _returned(ctx, loader, owner):
        return []
    if dataset.id not in {a.arg for a in [*owner.args.args, *owner.args.kwonlyargs]}:
        return []
    switch = kwarg(loader, forwarded) if forwarded else None
    found = []
    for site in ctx.calls.call_sites(owner):
        bound = ctx.calls.bind(site, owner)
        if isinstance(switch, ast.Name) and (switch.id in bound or has_star_kwargs(site)):
            continue
        passed = bound.get(dataset.id)
        name = identifier(passed) if passed is not None else ""
        caller = ctx.enclosing_function(site)
        hook = caller is not None and caller.name == "train_dataloader"
        if (hook or _TRAIN_NAME.search(name)) and not held_out_name_kind(name):
            found.append(site)
    return found


def _returned(ctx: ModuleContext, loader: ast.Call, owner: ast.AST) -> bool:
    """The function returns the loader, directly or through the one name it is bound to."""
    parent = ctx.parents.get(loader)
    if isinstance(parent, ast.Return):
        return True
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return False
    target = parent.targets[0]
    return isinstance(target, ast.Name) and any(
        isinstance(node, ast.Return)
        and isinstance(node.value, ast.Name)
        and node.value.id == target.id
        for node in walk_tree(owner)
    )


def _held_out(ctx: ModuleContext, loader: ast.Call) -> bool:
    parent = ctx.parents.get(loader)
    names = [identifier(t) for t in getattr(parent, "targets", [])]
    names += [identifier(a) for a in loader.args[:1]]
    return any(held_out_name_kind(n) for n in names if n)


def _iterable(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The dataset is (or may be) an `IterableDataset`: shuffling is not the loader's job."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if dataset is None:
        return True
    for source in ctx.flow.sources(dataset):
        text = ast.unparse(source)
        if "Iterable" in text or "stream" in text.lower() or "iter" in identifier(source).lower():
            return True
        if isinstance(source, ast.Call) and isinstance(source.func, ast.Name):
            local = ctx.flow.classes.get(source.func.id)
            if local is not None and any("Iterable" in ast.unparse(b) for b in local.bases):
                return True
    return False
