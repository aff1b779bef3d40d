"""label-vector-column-index: per-class scores indexed `[:, labels]` and then reduced."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_LABELS = re.compile(r"(^|_)(labels?|targets?|y|ys|gt|actions?|acts?|classes|cls)($|_)")
_SCORES = frozenset({"softmax", "log_softmax", "sigmoid", "logsigmoid"})
_REDUCTIONS = frozenset({"sum", "mean"})


class LabelVectorColumnIndex(Rule):
    """Detects per-class scores (a `softmax`/`log_softmax`/`sigmoid` output, directly or
    through a local name) indexed with `[:, labels]` by a vector of labels or actions and
    reduced with `.sum()`/`.mean()` (or `torch.sum`/`torch.mean`): `probs[:,
    disc_labels].sum()`, `log_probs[:, actions].mean()`.

    Why it matters: a vector in the second place selects whole columns, so `P[:, labels]` is
    an N x N block (every sample's score for every sample's label), not each sample's score
    for its own label. Its sum or mean mixes all samples' labels: the loss, penalty or
    policy gradient is computed on the wrong quantity and trains without any error.
    facebookresearch/DomainBed fixed exactly this in DANN's gradient penalty (`1538dc4`:
    `disc_softmax[:, disc_labels].sum()` -> `F.cross_entropy(disc_out, disc_labels,
    reduction='sum')`); REINFORCE code writes `log_probs[:, actions]` the same way.

    Not reported: `[:, labels]` not reduced where it is taken (a matching cost matrix, DETR's
    `-out_prob[:, tgt_ids]`), `P[torch.arange(n), labels]`, `gather`, index names that are not
    labels (`[:, keep]`, `[:, idx]`), scores that are not class probabilities.

    Example:
        disc_softmax = F.softmax(disc_out, dim=1)
        penalty = autograd.grad(disc_softmax[:, disc_labels].sum(), [disc_input])[0]

    Fix: take each row's own entry: `disc_softmax.gather(1, disc_labels[:, None]).sum()` or
    `disc_softmax[torch.arange(len(disc_labels)), disc_labels].sum()`.
    """

    id = "label-vector-column-index"
    point = 4
    severity = Severity.HIGH
    title = "Class scores indexed [:, labels] and reduced"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Subscript,)
    triggers = Triggers(tuple(sorted(_SCORES)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Subscript)
        index = node.slice
        if not (isinstance(index, ast.Tuple) and len(index.elts) == 2):
            return
        rows, columns = index.elts
        if not (
            isinstance(rows, ast.Slice)
            and rows.lower is None
            and rows.upper is None
            and rows.step is None
            and isinstance(columns, ast.Name)
            and _LABELS.search(columns.id.lower())
        ):
            return
        if not _reduced(ctx, node) or not _class_scores(ctx, node.value, node):
            return
        shown = ast.unparse(node)
        ctx.report(
            self,
            node,
            f"`{shown}` selects whole columns by the vector `{columns.id}`: an N x N block of "
            "every sample's score for every sample's label, and its reduction mixes them all. "
            f"Take each row's own entry: `{ast.unparse(node.value)}.gather(1, "
            f"{columns.id}[:, None])`.",
        )


def _reduced(ctx: ModuleContext, node: ast.Subscript) -> bool:
    """`x[:, y].sum()` / `.mean()`, or `torch.sum(x[:, y])` / `torch.mean(...)`."""
    parent = ctx.parents.get(node)
    if isinstance(parent, ast.Attribute) and parent.attr in _REDUCTIONS:
        return isinstance(ctx.parents.get(parent), ast.Call)
    if isinstance(parent, ast.Call) and node in parent.args:
        return (ctx.call_qualname(parent) or "") in ("torch.sum", "torch.mean")
    return False


def _class_scores(ctx: ModuleContext, value: ast.expr, site: ast.AST) -> bool:
    """`value` is a softmax/log-softmax/sigmoid output, or a local name bound to one."""
    if _score_call(value):
        return True
    if not isinstance(value, ast.Name):
        return False
    scope: ast.AST = ctx.enclosing_function(site) or ctx.tree
    bound = [
        inner.value
        for inner in walk_scope(scope)
        if isinstance(inner, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == value.id for t in inner.targets)
    ]
    return bool(bound) and all(_score_call(v) for v in bound)


def _score_call(value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and terminal_name(value.func) in _SCORES
