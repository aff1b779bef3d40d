"""kl-log-ratio-inverted: a KL divergence written by hand as `p * (log q - log p)`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOGS = frozenset({"log", "log2", "log10", "safe_log"})
_STATEMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Return, ast.Expr)


class KlLogRatioInverted(Rule):
    """Detects a KL divergence written by hand with its log ratio inverted: `p * (log(q) -
    log(p))` (`torch.log`, `x.log()`, a local `log` helper), summed or averaged and bound to
    a name, or returned from a function, whose name says KL (`kl_divs`, `masked_kl_div`),
    with no minus sign in front of it anywhere it is used.

    Why it matters: `sum p * (log q - log p)` is `-KL(p || q)`, never positive; a penalty
    meant to keep a policy near its reference rewards drifting away from it instead, and a
    KL logged for monitoring reads as zero or negative. PaLM-rlhf-pytorch's PPO
    `masked_kl_div` had the terms swapped until `2bb47d4`.

    Not reported: the usual order `p * (log p - log q)`, the inverted form negated where it
    is computed (`-(p * (log q - log p)).sum()`) or where its name is used (`loss = -kl`,
    `x - kl`), and products of logs of unrelated values or in code whose names do not say
    KL (a cross-entropy difference, a log-likelihood ratio of importance weights).

    Example:
        def masked_kl_div(prob1, prob2):
            return (prob1 * (torch.log(prob2) - torch.log(prob1))).sum(dim=-1)

    Fix: `(prob1 * (torch.log(prob1) - torch.log(prob2))).sum(dim=-1)`, or
    `F.kl_div(prob2.log(), prob1, reduction="none").sum(-1)`.
    """

    id = "kl-log-ratio-inverted"
    point = 3
    severity = Severity.HIGH
    title = "KL divergence with its log ratio inverted"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(lowered=("kl",))

    def finish(self, ctx: ModuleContext) -> None:
        for node in ctx.nodes_by_type().get(ast.BinOp, []):
            if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Mult):
                continue
            for weight, ratio in ((node.left, node.right), (node.right, node.left)):
                if not _inverted_ratio(weight, ratio):
                    continue
                statement, negated = _statement_of(ctx, node)
                if negated or statement is None or not _says_kl(ctx, statement):
                    break
                if _negated_where_used(ctx, statement):
                    break
                ctx.report(
                    self,
                    node,
                    f"`{ast.unparse(node)}` weights log({ast.unparse(weight)}) by "
                    f"{ast.unparse(weight)} with a minus sign: summed, that is -KL, "
                    "never positive; a KL penalty built on it rewards moving away from the "
                    f"reference; write `{ast.unparse(weight)} * (log p - log q)` with "
                    "p the weighting distribution",
                )
                break


def _log_argument(expr: ast.expr) -> ast.expr | None:
    """`x` of `torch.log(x)`, `log(x)`, `x.log()`."""
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in _LOGS:
        return None
    if expr.args:
        return expr.args[0]
    if isinstance(func, ast.Attribute) and not expr.keywords:
        return func.value
    return None


def _inverted_ratio(weight: ast.expr, ratio: ast.expr) -> bool:
    """`ratio` is `log(q) - log(weight)` with `q` another value."""
    if not isinstance(ratio, ast.BinOp) or not isinstance(ratio.op, ast.Sub):
        return False
    first, second = _log_argument(ratio.left), _log_argument(ratio.right)
    if first is None or second is None:
        return False
    same = ast.dump(second) == ast.dump(weight)
    return same and ast.dump(first) != ast.dump(weight)


def _statement_of(ctx: ModuleContext, node: ast.AST) -> tuple[ast.stmt | None, bool]:
    """The statement holding `node`, and whether a minus sign applies on the way up."""
    if _under_minus(ctx, node):
        return None, True
    parent = ctx.parents.get(node)
    while parent is not None and not isinstance(parent, ast.stmt):
        parent = ctx.parents.get(parent)
    return (parent if isinstance(parent, _STATEMENTS) else None), False


def _under_minus(ctx: ModuleContext, node: ast.AST) -> bool:
    """A minus sign applies to `node`'s value: it is negated, subtracted, or multiplied by a
    negated factor (`-beta * kl`), on the way up to its statement."""
    child, parent = node, ctx.parents.get(node)
    while parent is not None and not isinstance(parent, ast.stmt):
        if isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.USub):
            return True
        if isinstance(parent, ast.BinOp):
            if isinstance(parent.op, ast.Sub) and parent.right is child:
                return True
            if isinstance(parent.op, ast.Mult | ast.Div):
                other = parent.right if parent.left is child else parent.left
                if isinstance(other, ast.UnaryOp) and isinstance(other.op, ast.USub):
                    return True
        child, parent = parent, ctx.parents.get(parent)
    return False


def _target_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
        targets = [statement.target]
    else:
        return []
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _says_kl(ctx: ModuleContext, statement: ast.stmt) -> bool:
    names = _target_names(statement)
    if isinstance(statement, ast.Return):
        function = ctx.enclosing_function(statement)
        names = [function.name] if function is not None else []
    return any("kl" in name.lower() for name in names)


def _negated_where_used(ctx: ModuleContext, statement: ast.stmt) -> bool:
    """A name bound to the value is read under a minus sign in the same scope."""
    names = set(_target_names(statement))
    if not names:
        return False
    function = ctx.enclosing_function(statement)
    body = function.body if function is not None else ctx.tree.body
    for node in walk_scope(body):
        if (
            isinstance(node, ast.Name)
            and node.id in names
            and isinstance(node.ctx, ast.Load)
            and _under_minus(ctx, node)
        ):
            return True
    return False
