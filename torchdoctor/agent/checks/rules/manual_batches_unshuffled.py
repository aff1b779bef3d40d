"""manual-batches-unshuffled: hand-cut training batches in the same order every epoch."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.analysis.vocabulary import FOLD_SPLITTERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import TrainingLoop, nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

# Calls that may reorder the data, and names of a recurrent state carried over consecutive
# chunks (whose order is the point): with any of them in the module the rule stands down.
_REORDERING_CALLS = frozenset(
    {"shuffle", "shuffled", "permutation", "permute_rows", "randperm", "sample", "choice",
     "choices", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler",
     "DistributedSampler", "BatchSampler"}
)  # fmt: skip
_ORDERED_CHUNKS = re.compile(
    r"^(hid|hx|cx|h0|c0|mems|state|states)$|(^|_)(hidden|bptt)(_|$)|_states?$", re.IGNORECASE
)
_SLICE_BY_STEP = re.compile(r"\[\s*(\w+)\s*:\s*(\1\s*\+|\w+\s*\])")
_BATCH_SIZE = re.compile(r"^(bs|bsz|batch|(\w+_)?batch_?size|(\w+_)?bs)$", re.IGNORECASE)
_WRAPPERS = frozenset({"enumerate", "tqdm", "list", "iter", "trange"})


class ManualBatchesUnshuffled(Rule):
    """Detects a training loop over batches cut by hand from a sequence (`for i in range(0,
    len(X), bs): xb = X[i:i + bs]`, or a helper returning `[graphs[i:i + bs] for i in
    range(0, len(graphs), bs)]` that the epoch loop iterates) when nothing in the module
    reorders that sequence: no `random.shuffle`, `np.random.permutation`, `torch.randperm`,
    `.sample(...)` or sampler. The loop must run once per epoch (inside another loop, or in a
    function this module calls from one: `for epoch in ...: train()`) and train
    (back-propagate and step, itself or through a method it calls). The batch may be cut as
    `X[i:i + bs]` or up to an end the body computes (`for b, start in enumerate(range(0, N,
    bs)): end = min(start + bs, N); data = X[idx[start:end]]`, a VAE recommender's users).
    A cross-validation splitter's `shuffle=True` (`StratifiedKFold(n_splits=10,
    shuffle=True)`, sorted folds for the evaluation) does not count as a reordering.

    Why it matters: it is the hand-written twin of a `DataLoader` without `shuffle=True`:
    every epoch sees the same batches in the same order, and data stored sorted (by class, by
    source, by length) gives correlated consecutive batches and a model that fits the order.
    SimGNN shuffles its graph pairs in `create_batches`; without that line the batches never
    change.

    Also reported: a training loop whose body picks its batch as the first indices of an
    ordered range (`selected_idx = np.arange(len(train_graphs))[:args.batch_size]`, bounds
    the loop never changes): every step trains on the same examples, whatever the module
    does elsewhere; not when the loop's own body shuffles, permutes or samples.

    Not reported: modules that shuffle, permute or sample anything (the order may be
    randomised elsewhere), recurrent scripts (`hidden`, `bptt`: consecutive chunks of one
    sequence are the point), sequences named for validation or test data, single passes (no
    epoch loop around the batches).

    Example:
        for epoch in range(epochs):
            for i in range(0, len(X_train), batch_size):
                loss = criterion(model(X_train[i:i + batch_size]), y_train[i:i + batch_size])
                loss.backward()
                optimizer.step()

    Fix: permute once per epoch (`order = torch.randperm(len(X_train))`, then slice
    `X_train[order[i:i + bs]]`), or `random.shuffle(items)` before cutting the batches.
    """

    id = "manual-batches-unshuffled"
    point = 3
    severity = Severity.MEDIUM
    title = "Hand-cut training batches never shuffled"
    items: ClassVar[tuple[str, ...]] = ("3.2",)
    triggers = Triggers(all_of=(("range(",), ("backward",)))

    def finish(self, ctx: ModuleContext) -> None:
        if "arange(" in ctx.source or "range(" in ctx.source:
            self._same_batch_every_step(ctx)
        if not _SLICE_BY_STEP.search(ctx.source) or _reorders_or_carries_state(ctx):
            return  # no `seq[i:i + ...]` in the text: no hand-cut batch to find
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop" or not isinstance(loop.node, ast.For):
                continue
            if not _inside_a_loop(ctx, loop.node):
                continue
            cut = _batches_cut_here(loop.node) or _batches_from_a_helper(ctx, loop)
            if cut is None:
                continue
            site, sequence = cut
            if held_out_name_kind(sequence) is not None:
                continue
            ctx.report(
                self,
                site,
                f"training batches are cut from `{sequence}` in the same order every epoch: "
                "nothing in this file shuffles it; permute the indices each epoch "
                f"(`torch.randperm(len({sequence}))`) or `random.shuffle` before cutting",
            )

    def _same_batch_every_step(self, ctx: ModuleContext) -> None:
        """`selected_idx = np.arange(len(train_graphs))[:args.batch_size]` in a training
        loop's body: the first indices of an ordered range, sliced with bounds the loop never
        changes, so every step trains on the same examples (a `np.random.permutation` that
        became `np.arange`). Not when the loop's body reorders something itself."""
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop" or not isinstance(loop.node, ast.For | ast.While):
                continue
            body = list(walk_scope(loop.node.body))
            if any(
                isinstance(n, ast.Call) and terminal_name(n.func) in _REORDERING_CALLS for n in body
            ):
                continue
            varying = _names_bound(loop.node, body)
            for node in body:
                if _fixed_head_of_a_range(node, varying):
                    assert isinstance(node, ast.Subscript)
                    ctx.report(
                        self,
                        node,
                        f"`{ast.unparse(node)}` picks the same first indices on every step of "
                        "this training loop: the batch never changes; draw them "
                        "(`np.random.permutation(n)[:bs]`, `torch.randperm(n)[:bs]`)",
                    )


def _names_bound(loop: ast.For | ast.While, body: list[ast.AST]) -> set[str]:
    """The loop's target names and every name its body binds: what changes between steps."""
    names: set[str] = set()
    if isinstance(loop, ast.For):
        names = {n.id for n in walk_tree(loop.target) if isinstance(n, ast.Name)}
    for node in body:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _fixed_head_of_a_range(node: ast.AST, varying: set[str]) -> bool:
    """`np.arange(n)[:bs]`, `torch.arange(n)[0:bs]`, `list(range(n))[:bs]` with `bs` a
    batch size (a name or attribute so named) read from nothing the loop changes."""
    if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)):
        return False
    window = node.slice
    lower = window.lower
    if window.upper is None or window.step is not None:
        return False
    if lower is not None and not (isinstance(lower, ast.Constant) and lower.value == 0):
        return False
    source = node.value
    if isinstance(source, ast.Call) and terminal_name(source.func) == "list" and source.args:
        source = source.args[0]
    if not (isinstance(source, ast.Call) and terminal_name(source.func) in ("arange", "range")):
        return False
    upper = window.upper
    size = upper.attr if isinstance(upper, ast.Attribute) else getattr(upper, "id", "")
    if not _BATCH_SIZE.search(size):
        return False  # positions (`torch.arange(max_len)[:seq_len]`) are the same each step
    read = {n.id for n in walk_tree(window.upper) if isinstance(n, ast.Name)}
    read |= {n.id for n in walk_tree(source) if isinstance(n, ast.Name)}
    return not read & varying


def _reorders_or_carries_state(ctx: ModuleContext) -> bool:
    """A call that may reorder data (`random.shuffle`, `torch.randperm`, a sampler, any
    `shuffle=` keyword but a cross-validation splitter's: `KFold(shuffle=True).split(x)`
    returns each fold's indices sorted), or a name of a recurrent state (`hidden`, `bptt`)."""
    for call in nodes_of(ctx, ast.Call):
        assert isinstance(call, ast.Call)
        if terminal_name(call.func) in _REORDERING_CALLS:
            return True
        if any(k.arg == "shuffle" for k in call.keywords):
            if terminal_name(call.func) in FOLD_SPLITTERS:
                continue  # `StratifiedKFold(shuffle=True)`: sorted folds, rows not reordered
            return True
    return any(
        _ORDERED_CHUNKS.search(node.id if isinstance(node, ast.Name) else node.attr)
        for node in nodes_of(ctx, ast.Name, ast.Attribute)
        if isinstance(node, ast.Name | ast.Attribute)
    )


def _inside_a_loop(ctx: ModuleContext, node: ast.AST, hops: int = 0) -> bool:
    """An epoch loop encloses `node` in its function (or at module level), or encloses a call
    of this module to the function holding `node` (`for epoch in ...: train()`, the batches
    cut in `def train():`)."""
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            if hops >= 2:
                return False
            return any(
                _inside_a_loop(ctx, site, hops + 1) for site in ctx.calls.call_sites(ancestor)
            )
        if isinstance(ancestor, ast.Lambda):
            return False
        if isinstance(ancestor, ast.For | ast.While):
            return True
    return False


def _batches_cut_here(loop: ast.For) -> tuple[ast.AST, str] | None:
    """`for i in range(0, len(X), bs): ... X[i:i + bs]`: (the loop, 'X'). Also `for b, start
    in enumerate(range(0, N, bs))` and a slice ending at a name the body binds to `start +
    bs` or `min(start + bs, N)` (`end = min(start + bs, N); X[idx[start:end]]`)."""
    iterated, target = loop.iter, loop.target
    if (
        isinstance(iterated, ast.Call)
        and isinstance(iterated.func, ast.Name)
        and iterated.func.id == "enumerate"
        and len(iterated.args) == 1
        and isinstance(target, ast.Tuple)
        and len(target.elts) == 2
    ):
        iterated, target = iterated.args[0], target.elts[1]
    step = _stepped_range(iterated)
    if step is None or not isinstance(target, ast.Name):
        return None
    body = list(walk_scope(loop.body))
    ends = _ends_of_a_window(body, target.id, step)
    sequence = _sliced_by(body, target.id, step, ends)
    return (loop, sequence) if sequence else None


def _ends_of_a_window(body: list[ast.AST], index: str, step: str) -> frozenset[str]:
    """Names the body binds to `index + step` or `min(index + step, n)`: a batch's end."""
    ends: set[str] = set()
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        if not isinstance(target, ast.Name):
            continue
        if isinstance(value, ast.Call) and terminal_name(value.func) == "min" and value.args:
            value = value.args[0]
        if _is_window_end(value, index, step):
            ends.add(target.id)
    return frozenset(ends)


def _is_window_end(upper: ast.expr, index: str, step: str) -> bool:
    return (
        isinstance(upper, ast.BinOp)
        and isinstance(upper.op, ast.Add)
        and ast.unparse(upper.left) == index
        and ast.unparse(upper.right) == step
    )


def _batches_from_a_helper(ctx: ModuleContext, loop: TrainingLoop) -> tuple[ast.AST, str] | None:
    """The loop iterates what a function of this file returns (`batches =
    self.create_batches()`), slices cut in a stepped loop or a comprehension (`[X[i:i + bs]
    for i in range(0, len(X), bs)]`): (where they are cut, 'X')."""
    assert isinstance(loop.node, ast.For)
    iterated = loop.node.iter
    while (
        isinstance(iterated, ast.Call)
        and isinstance(iterated.func, ast.Name)
        and iterated.func.id in _WRAPPERS
        and iterated.args
    ):
        iterated = iterated.args[0]
    values = ctx.flow.definitions(iterated) if isinstance(iterated, ast.Name) else [iterated]
    for value in values:
        if not isinstance(value, ast.Call):
            continue
        for fn in ctx.flow.functions.get(terminal_name(value.func), []):
            for node in walk_tree(fn):
                if isinstance(node, ast.For) and (cut := _batches_cut_here(node)):
                    return cut  # `batches.append(graphs[i:i + bs])` in a loop
                if isinstance(node, ast.ListComp | ast.GeneratorExp) and len(node.generators) == 1:
                    generator = node.generators[0]
                    step = _stepped_range(generator.iter)
                    if step is None or not isinstance(generator.target, ast.Name):
                        continue
                    sequence = _sliced_by(walk_tree(node.elt), generator.target.id, step)
                    if sequence:
                        return node, sequence
    return None


def _stepped_range(expr: ast.expr) -> str | None:
    """The step's text of `range(0, n, step)` with a step that is no literal 1."""
    if not (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Name)
        and expr.func.id == "range"
        and len(expr.args) == 3
    ):
        return None
    step = expr.args[2]
    if isinstance(step, ast.Constant) and step.value == 1:
        return None
    return ast.unparse(step)


def _sliced_by(
    nodes: Iterable[ast.AST], index: str, step: str, ends: frozenset[str] = frozenset()
) -> str:
    """The sequence of the first `seq[index:index + step]` (or `seq[index:end]`, `end` one of
    `ends`) among `nodes`, else ''."""
    for node in nodes:
        if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)):
            continue
        lower, upper = node.slice.lower, node.slice.upper
        if not (isinstance(lower, ast.Name) and lower.id == index) or upper is None:
            continue
        if _is_window_end(upper, index, step) or (isinstance(upper, ast.Name) and upper.id in ends):
            return ast.unparse(node.value)
    return ""
