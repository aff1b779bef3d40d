"""advantage-not-detached: a policy-gradient term weighted by an advantage that still carries
the critic's graph."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Calls that give log-probabilities (`dist.log_prob(a)`, `probs.log()`, `F.log_softmax(z)`).
_LOG_CALLS = frozenset({"log_prob", "log", "log_softmax", "logsigmoid"})
# Names of log-probabilities handed over by another function or model (`tour, critique,
# log_probs, _ = self.agent(data)`).
_LOG_PROB_NAME = re.compile(
    r"^(\w*_)?(log_?probs?|log_?p|log_?pi|log_?policy|log_?likelihoods?|logprobs?)(_\w*)?$",
    re.IGNORECASE,
)
# Names of a critic's estimate (`V`, `values`, `critique`, `baseline`): with the regression
# or model call below, what makes the subtracted term the value the critic learns.
_VALUE_NAME = re.compile(
    r"^(v|vs|v_s|v_pred|values?|state_values?|value_preds?|pred_values?|critic\w*|critique"
    r"|baselines?|vf|v_t|value_estimates?)$",
    re.IGNORECASE,
)
# Losses that regress a prediction on a target: the critic's.
_REGRESSIONS = frozenset({"mse_loss", "smooth_l1_loss", "l1_loss", "huber_loss"})
_REGRESSION_MODULES = ("MSELoss", "SmoothL1Loss", "L1Loss", "HuberLoss")
# Calls and attributes that cut the graph of what they are applied to.
_CUTS = frozenset({"detach", "item", "numpy", "tolist", "detach_"})
# Shape and type steps that keep a value's graph (`V.squeeze(-1)`, `Vs[i].expand_as(Q)`).
_KEEPS = frozenset(
    {"squeeze", "unsqueeze", "view", "reshape", "expand_as", "expand", "flatten", "float"}
)


class AdvantageNotDetached(Rule):
    """Detects a policy-gradient term that multiplies log-probabilities by an advantage, a
    difference `R - V` (written in the product or bound to a name first), whose subtracted
    value is the critic's estimate with its graph: a model's output in the function, a value
    a regression loss of the function fits (`F.mse_loss(reward, critique)`, `(Qret - V) ** 2`),
    or a tensor named as the value (`V`, `Vs[i]`, `values`, `critique`, `baseline`), with no
    `.detach()` (or `.item()`, `.data`) on the way (ACER's `log_prob * (Qret - Vs[i])`,
    encode-attend-navigate's `((reward - critique) * log_probs).mean()`).

    Why it matters: the policy term's gradient flows into the critic through the advantage.
    The critic is pushed to make the policy objective larger (lower values where actions were
    taken, whatever the returns), on top of its own regression loss; the value estimate
    drifts, the advantage it feeds back is biased and training is unstable. The advantage must
    be a constant weight for the log-probabilities.

    Not reported: a detached value or advantage (`(R - V).detach()`, `R - V.detach()`,
    `V.item()`, `V.data`), values computed with autograd off (`with torch.no_grad():` around
    the term), advantages read from a buffer (GAE computed earlier from stored values, as
    PPO does), products with anything but log-probabilities (PPO's `ratio * advantages`), and
    differences whose subtracted term is no critic's value by any of the signs above.

    Example:
        tour, critique, log_probs, _ = agent(data)
        reward = reward_fn(data, tour)
        actor_loss = ((reward - critique) * log_probs).mean()
        critic_loss = F.mse_loss(reward, critique)

    Fix: detach the advantage in the policy term: `((reward - critique).detach() *
    log_probs).mean()` (or `advantage = (returns - values).detach()`); the critic keeps
    learning from its own loss.
    """

    id = "advantage-not-detached"
    point = 4
    severity = Severity.HIGH
    title = "Policy gradient weighted by an advantage that is not detached"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("log",), ("-",), ("*",)))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            self.triggers.found_in(ctx.source)
            and bool(_candidates(ctx))
            and ctx.flow.imports("torch")
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        reported: set[int] = set()
        for product, factors in _candidates(ctx):
            if not any(_log_probabilities(ctx, f) for f in factors):
                continue
            for factor in factors:
                value = _critic_value_in(ctx, factor)
                if value is None or id(product) in reported:
                    continue
                if grad_may_be_off(ctx, product):
                    break
                reported.add(id(product))
                ctx.report(
                    self,
                    product,
                    f"the log-probabilities are weighted by `{ast.unparse(factor)}`, which "
                    f"subtracts the critic's `{ast.unparse(value)}` without `.detach()`: the "
                    "policy loss back-propagates into the critic; detach the advantage",
                    data={"value": ast.unparse(value)},
                )


def _candidates(ctx: ModuleContext) -> list[tuple[ast.BinOp, list[ast.expr]]]:
    """(product, its factors) for the top of each chain of multiplications that has a factor
    reading like a log-probability (its text says `log`) and one that may be a difference (a
    subtraction, or a name that may be bound to one): a syntactic sieve, before any data
    flow is asked (memoised per module: `applies` and `finish` both ask)."""
    memo = ctx.memo_table("advantage-not-detached.candidates")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: list[tuple[ast.BinOp, list[ast.expr]]] = []
    for product in ctx.nodes_by_type().get(ast.BinOp, ()):
        if not (isinstance(product, ast.BinOp) and isinstance(product.op, ast.Mult)):
            continue
        parent = ctx.parents.get(product)
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult):
            continue  # judged once, at the top of the product
        factors = _factors(product)
        if len(factors) < 2:
            continue
        logs = [i for i, f in enumerate(factors) if _mentions_log(f)]
        weights = [
            i
            for i, f in enumerate(factors)
            if isinstance(peeled := _peeled(f), ast.Name)
            or (isinstance(peeled, ast.BinOp) and isinstance(peeled.op, ast.Sub))
        ]
        if logs and any(i not in logs or len(logs) > 1 for i in weights):
            found.append((product, factors))
    memo[""] = found
    return found


def _mentions_log(factor: ast.expr) -> bool:
    """A name or attribute of the factor says `log` (`log_probs`, `pi.log()`, `F.log_softmax`)."""
    for node in ast.walk(factor):
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
        if isinstance(name, str) and "log" in name.lower():
            return True
    return False


def _factors(product: ast.expr) -> list[ast.expr]:
    """The operands of a chain of multiplications (`rho * log_prob * A`, `-(x * y)`)."""
    if isinstance(product, ast.UnaryOp) and isinstance(product.op, ast.USub):
        return _factors(product.operand)
    if isinstance(product, ast.BinOp) and isinstance(product.op, ast.Mult):
        return [*_factors(product.left), *_factors(product.right)]
    return [product]


def _tail(expr: ast.expr) -> str:
    while isinstance(expr, ast.Subscript):
        expr = expr.value
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return expr.id if isinstance(expr, ast.Name) else ""


def _peeled(expr: ast.expr) -> ast.expr:
    """`x` of `x.squeeze(-1)`, `x.expand_as(q)`, `x[i]`: steps that keep what `x` holds."""
    while True:
        if (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in _KEEPS
        ):
            expr = expr.func.value
        elif isinstance(expr, ast.Subscript):
            expr = expr.value
        else:
            return expr


def _cut(expr: ast.expr) -> bool:
    """`x.detach()`, `x.item()`, `x.data`, `torch.tensor(...)` of numbers: no graph."""
    for node in ast.walk(expr):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CUTS
        ):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "data":
            return True
    return False


def _log_probabilities(ctx: ModuleContext, factor: ast.expr) -> bool:
    """A factor holding log-probabilities: a log call (`dist.log_prob(a)`, `pi.log()`,
    `F.log_softmax(z)`), seen through its name's bindings and `gather`/indexing, or a name
    that says it is one (`log_probs` from a model's tuple output)."""
    peeled = _peeled(factor)
    if _LOG_PROB_NAME.match(_tail(peeled)):
        return True
    for producer in ctx.flow.producers(peeled):
        func = producer.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _LOG_CALLS:
            return True
        if (
            name == "gather"
            and isinstance(func, ast.Attribute)
            and any(
                isinstance(p.func, ast.Attribute | ast.Name) and _tail(p.func) in _LOG_CALLS
                for p in ctx.flow.producers(func.value)
            )
        ):
            return True
    return False


def _critic_value_in(ctx: ModuleContext, factor: ast.expr) -> ast.expr | None:
    """The critic's value that an advantage factor subtracts with its graph: the factor is a
    difference (or a name bound, in this function, only to differences) none of whose parts is
    detached, and its subtracted term is a critic's value."""
    if _cut(factor):
        return None
    differences: list[ast.BinOp] = []
    peeled = _peeled(factor)
    if isinstance(peeled, ast.BinOp) and isinstance(peeled.op, ast.Sub):
        differences = [peeled]
    elif isinstance(peeled, ast.Name):
        bound = ctx.flow.reaching_or_all(peeled)
        if not bound or any(
            _cut(value) or not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Sub))
            for value in bound
        ):
            return None
        differences = [value for value in bound if isinstance(value, ast.BinOp)]
    for difference in differences:
        subtracted = difference.right
        if (
            _cut(subtracted)
            or _bound_without_graph(ctx, subtracted)
            or _detached_in_place(ctx, subtracted, difference)
        ):
            continue
        if _critic_value(ctx, subtracted, difference):
            return subtracted
    return None


def _bound_without_graph(ctx: ModuleContext, value: ast.expr) -> bool:
    """`v` read where every binding that reaches it is detached or built with autograd off
    (`v = (q * pi).sum(1).detach()`, minimalRL's ACER)."""
    peeled = _peeled(value)
    if not isinstance(peeled, ast.Name):
        return False
    bound = ctx.flow.reaching_or_all(peeled)
    return bool(bound) and all(_cut(b) or grad_may_be_off(ctx, b) for b in bound)


def _detached_in_place(ctx: ModuleContext, value: ast.expr, difference: ast.BinOp) -> bool:
    """`state_value.detach_()` on a line of the function before the difference that reads
    it (Popular-RL-Algorithms' actor-critic: detached in place, then subtracted)."""
    text = ast.unparse(_peeled(value))
    owner = ctx.enclosing_function(difference)
    body = owner.body if owner is not None else ctx.tree.body
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "detach_"
        and ast.unparse(node.func.value) == text
        and node.lineno <= difference.lineno
        for node in walk_scope(body)
    )


def _critic_value(ctx: ModuleContext, value: ast.expr, difference: ast.BinOp) -> bool:
    """A critic's estimate: named as a value, produced by a model call (not with autograd
    off), or fitted by a regression loss of the same function."""
    peeled = _peeled(value)
    if not isinstance(peeled, ast.Name | ast.Attribute | ast.Call):
        return False
    if isinstance(difference.left, ast.Constant):
        return False  # `1 - p`: a complement, not a return minus a baseline
    if _VALUE_NAME.match(_tail(peeled)):
        return True
    if any(
        ctx.flow.is_model_call(p) and not grad_may_be_off(ctx, p)
        for p in ctx.flow.producers(peeled)
    ):
        return True
    return _regressed(ctx, peeled, difference)


def _regressed(ctx: ModuleContext, value: ast.expr, difference: ast.BinOp) -> bool:
    """A regression loss of the function that fits `value`: `F.mse_loss(reward, critique)`,
    `criterion(V, R)` with an `nn.MSELoss`, or a square of a difference that subtracts it
    (`(Qret - V) ** 2`, `(R - V).pow(2)`)."""
    owner = ctx.enclosing_function(difference)
    body = owner.body if owner is not None else ctx.tree.body
    text = ast.unparse(value)
    for node in walk_scope(body):
        if not isinstance(node, ast.Call | ast.BinOp):
            continue
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            regression = name in _REGRESSIONS or (
                isinstance(func, ast.Name | ast.Attribute)
                and (ctx.flow.loss_class(func) or "").endswith(_REGRESSION_MODULES)
            )
            if regression and any(ast.unparse(_peeled(a)) == text for a in node.args[:2]):
                return True
            squared = (
                isinstance(func, ast.Attribute)
                and func.attr == "pow"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == 2
            )
            base = func.value if squared and isinstance(func, ast.Attribute) else None
        else:
            squared = (
                isinstance(node.op, ast.Pow)
                and isinstance(node.right, ast.Constant)
                and node.right.value == 2
            )
            base = node.left if squared else None
        if base is not None and _subtracts(ctx, base, text):
            return True
    return False


def _subtracts(ctx: ModuleContext, base: ast.expr, text: str) -> bool:
    """`base` is a difference subtracting `text`, or a name bound to one."""
    candidates: list[ast.expr] = [base]
    if isinstance(base, ast.Name):
        candidates = list(ctx.flow.reaching_or_all(base))
    return any(
        isinstance(c, ast.BinOp)
        and isinstance(c.op, ast.Sub)
        and ast.unparse(_peeled(c.right)) == text
        for c in candidates
    )
