"""sklearn-random-state: a random split without `random_state`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import ALL_LIBRARY_SEEDERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import has_star_kwargs, kwarg, source_has, terminal_name
from torchdoctor.agent.models import Severity

_ALWAYS_RANDOM = frozenset(
    {
        "sklearn.model_selection.train_test_split",
        "sklearn.model_selection.ShuffleSplit",
        "sklearn.model_selection.StratifiedShuffleSplit",
        "sklearn.model_selection.GroupShuffleSplit",
    }
)
_RANDOM_WHEN_SHUFFLED = frozenset(
    {
        "sklearn.model_selection.KFold",
        "sklearn.model_selection.StratifiedKFold",
        "sklearn.model_selection.RepeatedKFold",
    }
)

# What seeds NumPy's global generator, which a split given no random_state draws from
# (sklearn's check_random_state(None) is numpy.random's singleton).
_NUMPY_SEEDERS = ALL_LIBRARY_SEEDERS | {"numpy.random.seed"}

_SPLITTER_NAMES = frozenset(q.rsplit(".", 1)[-1] for q in _ALWAYS_RANDOM | _RANDOM_WHEN_SHUFFLED)


class SklearnRandomState(Rule):
    """Detects a scikit-learn split that shuffles (`train_test_split`, `ShuffleSplit`,
    `KFold(shuffle=True)`...) without `random_state=`.

    Why it matters: every run draws a different train/validation/test partition, so metrics
    move between runs for reasons unrelated to the model, and a test set can leak into
    training across restarts when splits are recomputed.

    Example:
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2)

    Not reported: a module that seeds NumPy's global generator (`np.random.seed`,
    `delu.random.seed`, `seed_everything`): a split given no random_state draws from it, so
    every run gets the same split.

    Fix: pass a fixed seed: `train_test_split(x, y, test_size=0.2, random_state=SEED)`.
    """

    id = "sklearn-random-state"
    point = 5
    severity = Severity.MEDIUM
    title = "Random split without random_state"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _SPLITTER_NAMES
    triggers = Triggers(("sklearn",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in _SPLITTER_NAMES:
            return
        if not source_has(ctx, "sklearn") or has_star_kwargs(node):
            return
        qual = ctx.call_qualname(node)
        if qual in _RANDOM_WHEN_SHUFFLED:
            shuffle = kwarg(node, "shuffle")
            shuffled = isinstance(shuffle, ast.Constant) and shuffle.value is True
            if not shuffled and qual != "sklearn.model_selection.RepeatedKFold":
                return
        elif qual in _ALWAYS_RANDOM:
            shuffle = kwarg(node, "shuffle")
            if isinstance(shuffle, ast.Constant) and shuffle.value is False:
                return
        else:
            return
        if kwarg(node, "random_state") is None and not _seeds_numpy(ctx):
            name = qual.rsplit(".", 1)[-1]
            ctx.report(
                self,
                node,
                f"{name} shuffles without random_state: every run gets a different split",
            )


def _seeds_numpy(ctx: ModuleContext) -> bool:
    """The module calls something that seeds NumPy's global generator."""
    return "seed" in ctx.source and any(
        isinstance(call, ast.Call) and ctx.call_qualname(call) in _NUMPY_SEEDERS
        for call in nodes_of(ctx, ast.Call)
    )
