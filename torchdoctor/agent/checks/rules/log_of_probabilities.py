"""log-of-probabilities: log() taken of a softmax or sigmoid output, with no epsilon."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import SIGMOID, SOFTMAX
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOG = frozenset({"torch.log", "torch.log2", "torch.log10"})
_LOG_SOFTMAX = frozenset({"torch.nn.functional.log_softmax", "torch.log_softmax"})
_VIEWS = frozenset(
    {"view", "reshape", "squeeze", "unsqueeze", "float", "double", "to", "contiguous",
     "permute", "transpose", "flatten"}
)  # fmt: skip
_MAX_HOPS = 6
# Uniform draws in [0, 1): `torch.rand` returns exactly 0 about once per 2**24 elements.
_UNIFORM_DRAWS = frozenset({"torch.rand", "torch.rand_like"})
_TRIGGER_WORDS = (
    "oftmax", "sigmoid", "1 -", "1-", "1.0 -", "1. -", "rand(", "rand_like(", "uniform_(",
    "gather(", "take_along_dim(",
)  # fmt: skip


class LogOfProbabilities(Rule):
    """Detects `torch.log(p)` / `p.log()` where `p` is the output of a softmax or a sigmoid
    (directly, through variables or views), with nothing added or clamped in between; or some
    of its elements (`p.gather(1, y)`, `p[i, y]`, the values of `p.topk(k)`): a picked
    probability is 0 as easily. Not a pick by a `multinomial` draw or the `argmax`, nor
    `p.max(dim)` (at least 1/classes for a softmax).

    Why it matters: softmax and sigmoid round small probabilities to exactly 0 in float32
    (and much sooner in float16/bfloat16); their log is then `-inf`, the loss becomes
    inf/NaN and the gradients NaN. `log_softmax` and `logsigmoid` compute the same values
    stably, without ever forming the tiny probability.

    Also reported: `F.log_softmax(p)` of such probabilities, or of a `torch.distributions`
    object's `.probs`: they are normalised a second time as if they were logits, so the
    result is not `log p` (a policy's entropy and log-likelihood come out wrong).

    Also reported: the log of a true-class probability picked from `p` and `1 - p`
    (`torch.where(t == 1, p, 1 - p)`, `p * t + (1 - p) * (1 - t)`, a hand-written focal or
    binary cross-entropy loss): it is exactly 0 wherever `p` reaches 0 or 1.

    Also reported: a binary cross-entropy or focal loss written by hand on probabilities of
    any source (a detector's sigmoid outputs handed in), `-(t * torch.log(p) + (1 - t) *
    torch.log(1 - p))`, the log of `p` reported where the same function also takes the log
    of `1 - p` and nothing clamps `p` (its values, or an in-place `p.clamp_()` before) or
    adds an epsilon; and the log of entries gathered from probabilities of any source
    (`gold = torch.gather(final_dist, 1, target.unsqueeze(1))`, then `-torch.log(gold)`: a
    pointer-generator's negative log-likelihood on what its decoder returns; also in the
    method form and through a name re-bound to its own pick, a categorical DQN's `dist =
    dist.gather(1, action).squeeze(1)`, then `dist.log()`).

    Also reported: the log of a uniform draw (`torch.rand`, `torch.rand_like`,
    `x.uniform_()`), Gumbel noise written as `-torch.log(-torch.log(u))`: a draw in [0, 1) is
    exactly 0 about once per 2**24 elements (every few steps for a large batch of logits),
    and its log is -inf (the sample is then NaN).

    Also reported: the log of `1 - a.pow(2)` (`1 - a ** 2`) where `a` is a tanh output, the
    change-of-variables term of a tanh-squashed Gaussian policy (SAC): tanh rounds to exactly
    ±1 in float32 once its input passes about 9, and the log is -inf.

    Also reported: the log of what a model of the module's own class returns when every
    `return` of its `forward` is a softmax or sigmoid output, or every one is a tuple holding
    one at the position the caller unpacks (`policy, value = model(x)` on `return
    F.softmax(self.pi(x), dim=1), self.v(x)`, then `policy[0].log()`: ptan's A2C sample
    until `1207ffb`), or some of its elements (`torch.log(policy_net(s).flatten()[a])`).

    Not reported: `torch.log(p + eps)`, `p.clamp(min=eps).log()`, `torch.log(p.clamp(...))`,
    `torch.log(1 - a.pow(2) + 1e-6)`, `1 - x ** 2` of a value that is no tanh output,
    probabilities from another source (an imported model's output, a local model whose `forward`
    returns logits on some path, a dataset) logged whole, or only their complement
    (`torch.log(1 - p)` alone), `log1p`; gathered entries picked by the argmax or a draw, or
    gathered from values kept above 0 (`exp`, a clamp, `+ eps`), or overwritten with a
    constant where they may be 0 (`pi_taken[mask == 0] = 1.0`); a uniform draw with a lower
    bound above 0 (`u.uniform_(1e-5, 1 - 1e-5)`, logistic sampling's `log(u) - log(1 - u)`).

    Example:
        log_probs = torch.log(F.softmax(logits, dim=-1))

    Fix: `F.log_softmax(logits, dim=-1)` (or `F.logsigmoid(x)` for a sigmoid).
    """

    id = "log-of-probabilities"
    point = 3
    severity = Severity.MEDIUM
    title = "log() of softmax/sigmoid probabilities"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(_TRIGGER_WORDS)

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        return "log" in text and any(k in text for k in _TRIGGER_WORDS)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        reported: set[int] = set()
        named = {id(c): c for c in flow.calls_named(("log", "log2", "log10", "log_softmax"))}
        named.update((id(c), c) for c in flow.calls_to(_LOG | _LOG_SOFTMAX))  # aliases
        for call in sorted(named.values(), key=lambda c: (c.lineno, c.col_offset)):
            qual = flow.qualname_of(call)
            func = call.func
            if qual in _LOG_SOFTMAX and call.args and call.lineno not in reported:
                self._check_renormalised(ctx, call, call.args[0])
                reported.add(call.lineno)
                continue
            if qual in _LOG and call.args:
                argument = call.args[0]
            elif (
                qual is None
                and isinstance(func, ast.Attribute)
                and func.attr == "log"
                and not call.args
            ):
                argument = func.value
            else:
                continue
            producer = _activation(ctx, argument, 0)
            draw = _uniform_draw(ctx, argument, 0) if producer is None else None
            if draw is not None and call.lineno not in reported:
                reported.add(call.lineno)
                ctx.report(
                    self,
                    call,
                    f"log of `{ast.unparse(draw)}` (line {draw.lineno}), a uniform draw in "
                    "[0, 1): it is exactly 0 now and then, and its log is -inf; add an "
                    "epsilon (`u + 1e-20`) or clamp it",
                    data={"activation": "uniform", "direct": draw is argument},
                )
                continue
            squashed = _tanh_complement(ctx, argument, 0) if producer is None else None
            if squashed is not None and call.lineno not in reported:
                reported.add(call.lineno)
                ctx.report(
                    self,
                    call,
                    f"log of `1 - a²` where `a` is the tanh output `{ast.unparse(squashed)}` "
                    f"(line {squashed.lineno}): tanh rounds to exactly ±1 in float32 once its "
                    "input passes about 9, and the log is then -inf (a squashed policy's "
                    "log-probability turns NaN); add an epsilon (`1 - a.pow(2) + 1e-6`) or use "
                    "`2 * (log(2) - z - softplus(-2 * z))` of the pre-activation",
                    data={"activation": "tanh", "direct": False},
                )
                continue
            if producer is None and call.lineno not in reported:
                chosen = _true_class_probability(ctx, argument, 0)
                if chosen is not None:
                    reported.add(call.lineno)
                    ctx.report(
                        self,
                        call,
                        f"log of `{ast.unparse(chosen)}` (line {chosen.lineno}), a "
                        "probability chosen from p and 1 - p: it is exactly 0 wherever p "
                        "reaches 0 or 1, and its log is -inf; add an epsilon or clamp it, or "
                        "compute the loss from logits (`BCEWithLogitsLoss`)",
                        data={"activation": "complement", "direct": False},
                    )
                    continue
                partner = _complement_logged(ctx, call, argument) if qual in _LOG else None
                if partner is not None:
                    reported.add(call.lineno)
                    ctx.report(
                        self,
                        call,
                        f"`{ast.unparse(call)}` and `{ast.unparse(partner)}` (line "
                        f"{partner.lineno}): a binary cross-entropy written by hand on "
                        "probabilities that nothing clamps; either log is -inf where p "
                        "reaches 0 or 1; clamp p to [eps, 1 - eps] or compute the loss from "
                        "logits (`BCEWithLogitsLoss`)",
                        data={"activation": "complement", "direct": False},
                    )
                    continue
                gathered = (
                    _gathered_pick(ctx, argument, 0)
                    if (qual in _LOG or qual is None) and not _bounded(ctx, argument, call)
                    else None
                )
                if gathered is not None:
                    reported.add(call.lineno)
                    ctx.report(
                        self,
                        call,
                        f"log of `{ast.unparse(gathered)}` (line {gathered.lineno}), the "
                        "probabilities of the picked entries (the target's, in a loss written "
                        "by hand) with no epsilon: a probability that rounds to 0 gives -inf; "
                        "add an epsilon or clamp it",
                        data={"activation": "picked", "direct": False},
                    )
                continue
            if producer is None or call.lineno in reported:
                continue
            reported.add(call.lineno)
            kind = "softmax" if _kind(ctx, producer) == "softmax" else "sigmoid"
            direct = producer is argument and qual in _LOG
            ctx.report(
                self,
                call,
                f"log of a {kind} output (line {producer.lineno}): probabilities that round to "
                f"0 give -inf; use {'log_softmax' if kind == 'softmax' else 'logsigmoid'}",
                data={"activation": kind, "direct": direct},
            )

    def _check_renormalised(self, ctx: ModuleContext, call: ast.Call, argument: ast.expr) -> None:
        """`F.log_softmax(p)` where `p` already holds probabilities: a softmax output or a
        distribution's `.probs`."""
        softmax = _activation(ctx, argument, 0)
        producer: ast.expr | None = (
            softmax if softmax is not None and _kind(ctx, softmax) == "softmax" else None
        )
        what = "a softmax output"
        if producer is None:
            producer = _distribution_probs(ctx, argument, 0)
            what = "a distribution's .probs"
        if producer is None:
            return
        ctx.report(
            self,
            call,
            f"log_softmax of probabilities ({what}, line {producer.lineno}): they are "
            "normalised again as if they were logits, so the result is not log p; take the "
            "log_softmax of the logits (or the distribution's .logits)",
            data={"activation": "softmax", "direct": False},
        )


def _distribution_probs(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Attribute | None:
    """`dist.probs` of a `torch.distributions` object, through single assignments."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return _distribution_probs(ctx, values[0], hops + 1) if len(values) == 1 else None
    if not (isinstance(expr, ast.Attribute) and expr.attr == "probs"):
        return None
    made = [ctx.flow.qualname_of(c) or "" for c in ctx.flow.constructors(expr.value)]
    return expr if any(q.startswith("torch.distributions.") for q in made) else None


def _true_class_probability(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.expr | None:
    """A probability of the true class picked from `p` and its complement, through single
    assignments and views: `torch.where(t == 1, p, 1 - p)` or `p * t + (1 - p) * (1 - t)`
    (a hand-written focal or binary cross-entropy loss). Nothing keeps it away from 0."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return _true_class_probability(ctx, values[0], hops + 1) if len(values) == 1 else None
    if isinstance(expr, ast.Call):
        func = expr.func
        if ctx.flow.qualname_of(expr) == "torch.where" and len(expr.args) == 3:
            first, second = expr.args[1], expr.args[2]
            if _complement_of(second, first) or _complement_of(first, second):
                return expr
            return None
        if isinstance(func, ast.Attribute) and func.attr in _VIEWS and not ctx.qualname(func):
            return _true_class_probability(ctx, func.value, hops + 1)
        return None
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, right = _factors(expr.left), _factors(expr.right)
        if left and right and _complementary_products(left, right):
            return expr
    return None


# Values kept inside (0, 1) or above 0 by construction: clamped, or exponentials.
_BOUNDED = frozenset(
    {"clamp", "clip", "clamp_min", "clamp_max", "clamp_", "clip_", "exp", "softplus",
     "log_softmax", "log", "logsigmoid", "maximum", "minimum", "where"}
)  # fmt: skip


def _bounded(ctx: ModuleContext, expr: ast.expr, call: ast.Call, hops: int = 0) -> bool:
    """`expr` holds values that something visibly keeps away from 0 (or that are not
    probabilities at all): a clamp, an exponential, an epsilon added, through names (any of
    their reaching values) and views, or an in-place clamp of the name before `call`."""
    if hops > _MAX_HOPS:
        return True
    if isinstance(expr, ast.Name):
        function = ctx.enclosing_function(call)
        if function is not None and any(
            _guards_in_place(n, expr.id) and getattr(n, "lineno", 0) <= call.lineno
            for n in ast.walk(function)
        ):
            return True
        values = ctx.flow.reaching_or_all(expr)
        return any(_bounded(ctx, v, call, hops + 1) for v in values)
    if isinstance(expr, ast.BinOp):
        return isinstance(expr.op, ast.Add)
    if isinstance(expr, ast.Constant):
        return True
    if not isinstance(expr, ast.Call):
        return False
    func = expr.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name in _BOUNDED:
        return True
    if name == "uniform_" and ctx.flow.qualname_of(expr) is None:
        return _uniform_draw(ctx, expr, 0) is None  # `u.uniform_(1e-5, 1 - 1e-5)`
    if isinstance(func, ast.Attribute) and name in _VIEWS and not ctx.qualname(func):
        return _bounded(ctx, func.value, call, hops + 1)
    return False


def _guards_in_place(node: ast.AST, name: str) -> bool:
    """`p.clamp_(...)` (or `p.data.clamp_(...)`), or entries of `p` overwritten with a
    constant (`pi_taken[mask == 0] = 1.0`: the padded picks set to a probability of 1 before
    the log)."""
    if isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr not in (
            "clamp_",
            "clip_",
            "clamp_min_",
        ):
            return False
        target = func.value
        if isinstance(target, ast.Attribute) and target.attr == "data":
            target = target.value  # `dist.data.clamp_(0.01, 0.99)`: the same storage
        return isinstance(target, ast.Name) and target.id == name
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and any(
            isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name
            for t in node.targets
        )
    )


def _complement_logged(ctx: ModuleContext, call: ast.Call, argument: ast.expr) -> ast.Call | None:
    """`torch.log(p)` where the same function also takes `torch.log(1 - p)`: a binary
    cross-entropy (or focal loss) written by hand, `-(t * log(p) + (1 - t) * log(1 - p))`,
    on probabilities p that no clamp or epsilon keeps inside (0, 1). The log of the
    complement found in the same function; None when p is bounded."""
    if not isinstance(argument, ast.Name | ast.Attribute | ast.Subscript):
        return None
    function = ctx.enclosing_function(call)
    if function is None:
        return None
    partners = [
        other
        for other in ast.walk(function)
        if isinstance(other, ast.Call)
        and other is not call
        and other.args
        and ctx.flow.qualname_of(other) in _LOG
        and _complement_of(other.args[0], argument)
    ]
    partner = min(partners, key=lambda p: abs(p.lineno - call.lineno), default=None)
    if partner is None or _bounded(ctx, argument, call):
        return None
    return partner


_PICKS = frozenset({"gather", "take_along_dim"})


def _gathered_pick(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Call | None:
    """The `gather` (or `take_along_dim`) whose picked entries `expr` is, through single
    assignments and views: `gold = torch.gather(dist, 1, target.unsqueeze(1)).squeeze()`,
    then `-torch.log(gold)`, a negative log-likelihood written by hand on the probabilities
    a model returns. Not a pick by a draw or the argmax (never a zero probability), nor a
    pick of values kept away from 0 (a clamp, an exponential, `p + eps`)."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        if ctx.flow.unpackings(expr):
            return None
        reached = ctx.flow.reaching(expr)
        values = [reached] if reached is not None else ctx.flow.definitions(expr)
        if len(values) != 1:
            return None
        return _gathered_pick(ctx, values[0], hops + 1)
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr in _VIEWS and not ctx.qualname(func):
        return _gathered_pick(ctx, func.value, hops + 1)
    source = _receiver(ctx, expr, _PICKS)
    if source is None:
        return None
    positional = expr.args[-1] if expr.args else None
    picks = next((k.value for k in expr.keywords if k.arg in ("index", "indices")), positional)
    if picks is None or _nonzero_pick(ctx, picks, 0) or _bounded(ctx, source, expr):
        return None
    return expr


def _factors(expr: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        return expr.left, expr.right
    return None


def _complementary_products(
    left: tuple[ast.expr, ast.expr], right: tuple[ast.expr, ast.expr]
) -> bool:
    """`p * t + (1 - p) * (1 - t)` in any order of the factors."""
    a, b = left
    for c, d in (right, right[::-1]):
        if (_complement_of(c, a) and _complement_of(d, b)) or (
            _complement_of(c, b) and _complement_of(d, a)
        ):
            return True
    return False


def _complement_of(expr: ast.expr, of: ast.expr) -> bool:
    """`expr` is `1 - of` (or `1.0 - of`)."""
    return (
        isinstance(expr, ast.BinOp)
        and isinstance(expr.op, ast.Sub)
        and isinstance(expr.left, ast.Constant)
        and expr.left.value in (1, 1.0)
        and not isinstance(expr.left.value, bool)
        and ast.dump(expr.right) == ast.dump(of)
    )


_TANH = frozenset({"torch.tanh", "torch.nn.functional.tanh"})


def _tanh_complement(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Call | None:
    """The tanh call `a` of `expr` = `1 - a.pow(2)` (`1 - a ** 2`, `1 - a * a`,
    `1 - torch.pow(a, 2)`, `1 - a.square()`), through single assignments: the change-of-variables
    term of a tanh-squashed Gaussian policy, exactly 0 where tanh saturates."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return _tanh_complement(ctx, values[0], hops + 1) if len(values) == 1 else None
    if not (
        isinstance(expr, ast.BinOp)
        and isinstance(expr.op, ast.Sub)
        and isinstance(expr.left, ast.Constant)
        and expr.left.value in (1, 1.0)
    ):
        return None
    squared = _squared(expr.right)
    return _tanh_of(ctx, squared, hops + 1) if squared is not None else None


def _squared(expr: ast.expr) -> ast.expr | None:
    """`a` of `a.pow(2)`, `a ** 2`, `a * a`, `torch.pow(a, 2)`, `a.square()`, `torch.square(a)`."""
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, ast.Pow) and _is_two(expr.right):
            return expr.left
        if isinstance(expr.op, ast.Mult) and ast.dump(expr.left) == ast.dump(expr.right):
            return expr.left
        return None
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)):
        return None
    func = expr.func
    on_torch = isinstance(func.value, ast.Name) and func.value.id == "torch"
    if func.attr == "pow":
        if on_torch and len(expr.args) == 2 and _is_two(expr.args[1]):
            return expr.args[0]
        if not on_torch and len(expr.args) == 1 and _is_two(expr.args[0]):
            return func.value
    if func.attr == "square":
        if on_torch and len(expr.args) == 1:
            return expr.args[0]
        if not on_torch and not expr.args:
            return func.value
    return None


def _is_two(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and expr.value in (2, 2.0)


def _tanh_of(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Call | None:
    """The `torch.tanh(z)` / `z.tanh()` / `F.tanh(z)` call `expr` is, through single
    assignments and views."""

    def is_tanh(call: ast.Call) -> bool:
        if ctx.flow.qualname_of(call) in _TANH:
            return True
        func = call.func
        return (
            isinstance(func, ast.Attribute)
            and not ctx.qualname(func)
            and func.attr == "tanh"
            and not call.args
            and not ctx.flow.is_module_value(func.value)
        )

    return _call_through_views(ctx, expr, hops, is_tanh)


def _call_through_views(
    ctx: ModuleContext, expr: ast.expr, hops: int, wanted: Callable[[ast.Call], bool]
) -> ast.Call | None:
    """The call `expr` is, followed through single assignments and views, if `wanted`."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return _call_through_views(ctx, values[0], hops + 1, wanted) if len(values) == 1 else None
    if not isinstance(expr, ast.Call):
        return None
    if wanted(expr):
        return expr
    func = expr.func
    if isinstance(func, ast.Attribute) and not ctx.qualname(func) and func.attr in _VIEWS:
        return _call_through_views(ctx, func.value, hops + 1, wanted)
    return None


def _kind(ctx: ModuleContext, call: ast.Call) -> str:
    qual = ctx.flow.qualname_of(call)
    func = call.func
    name = qual or (func.attr if isinstance(func, ast.Attribute) else "")
    if name in SOFTMAX or name == "softmax":
        return "softmax"
    if name in SIGMOID or name == "sigmoid":
        return "sigmoid"
    return ""


def _uniform_draw(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Call | None:
    """The uniform draw `expr` is (`torch.rand(...)`, `torch.rand_like(x)`, `x.uniform_()`
    with no lower bound above 0), through single assignments and views only."""

    def is_draw(call: ast.Call) -> bool:
        if ctx.flow.qualname_of(call) in _UNIFORM_DRAWS:
            return True
        func = call.func
        if not isinstance(func, ast.Attribute) or ctx.qualname(func) or func.attr != "uniform_":
            return False
        low = (
            call.args[0]
            if call.args
            else next((k.value for k in call.keywords if k.arg in ("a", "from")), None)
        )
        if low is None:
            return True
        # a lower bound of a name (`uniform_(eps, 1)`): kept away from 0
        return (
            isinstance(low, ast.Constant) and isinstance(low.value, int | float) and low.value <= 0
        )

    return _call_through_views(ctx, expr, hops, is_draw)


def _activation(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.Call | None:
    """The softmax/sigmoid call `expr` is, through single assignments, views and
    selections of some of its elements (`p.gather(1, y)`, `p[i]`, `p.topk(k)` values)."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.reaching_or_all(expr)  # `p = p.topk(k)[0]; torch.log(p)`
        if len(values) != 1:
            return None
        positions = {p for v, p, _ in ctx.flow.unpackings(expr) if v is values[0]}
        if positions:  # `vals, idx = p.topk(k)`: only the values are probabilities
            ranked = _ranked_source(ctx, values[0])
            if ranked is not None:
                return _activation(ctx, ranked, hops + 1) if positions == {0} else None
            if len(positions) == 1 and isinstance(values[0], ast.Call):
                # `policy, value = model(x)`: the element the model's forward returns there
                return _forward_activation(ctx, values[0], positions.pop(), hops + 1)
            return None
        return _activation(ctx, values[0], hops + 1)
    picked = _selected_source(ctx, expr)
    if picked is not None:
        return _activation(ctx, picked, hops + 1)
    if not isinstance(expr, ast.Call):
        return None
    if _kind(ctx, expr):
        func = expr.func
        if isinstance(func, ast.Attribute) and ctx.flow.qualname_of(expr) is None:
            return expr if not ctx.flow.is_module_value(func.value) else None
        return expr
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr in _VIEWS and not ctx.qualname(func):
        return _activation(ctx, func.value, hops + 1)
    return _forward_activation(ctx, expr, None, hops + 1)


def _forward_activation(
    ctx: ModuleContext, call: ast.Call, position: int | None, hops: int
) -> ast.Call | None:
    """The softmax/sigmoid that a call of the module's own model class returns: every
    `return` of its `forward` is one (`position` None), or every `return` is a tuple whose
    element at `position` is one (`policy, value = model(x)` on `return F.softmax(...),
    self.v(x)`). A model of another module, or a forward with some other return, gives
    None: what it returns is not seen."""
    if hops > _MAX_HOPS or not ctx.flow.is_model_call(call):
        return None
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        func = func.value
    cls = ctx.flow.local_class(func) if isinstance(func, ast.Name | ast.Attribute) else None
    forward = (
        next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "forward"), None)
        if cls is not None
        else None
    )
    if forward is None:
        return None
    returned = [
        node.value
        for node in walk_scope(forward.body)
        if isinstance(node, ast.Return) and node.value is not None
    ]
    found: ast.Call | None = None
    for value in returned:
        if position is not None:
            if not isinstance(value, ast.Tuple) or position >= len(value.elts):
                return None
            value = value.elts[position]
        producer = _activation(ctx, value, hops + 1)
        if producer is None:
            return None
        found = found or producer
    return found


# Selections that keep some elements' values: a probability picked out can be 0 as well.
_GATHERS = frozenset({"gather", "index_select", "masked_select", "take_along_dim", "take"})
# Ranked picks returning (values, indices); not `max`: the largest probability of a
# softmax is at least 1/classes, its log finite.
_RANKED = frozenset({"topk", "sort", "kthvalue", "min", "median"})
# Indices that pick a probability above 0: a draw from it, or its largest entry.
_NONZERO_PICKS = frozenset({"torch.multinomial", "torch.argmax", "multinomial", "argmax"})


def _receiver(ctx: ModuleContext, call: ast.Call, names: frozenset[str]) -> ast.expr | None:
    """The tensor `call` (`x.name(...)` or `torch.name(x, ...)`) reads, for a name in names."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in names:
        return None
    qual = ctx.flow.qualname_of(call)
    if qual == f"torch.{func.attr}":
        return call.args[0] if call.args else None
    return func.value if qual is None else None


def _ranked_source(ctx: ModuleContext, expr: ast.expr) -> ast.expr | None:
    """The tensor a `(values, indices)` ranking call (`p.topk(k)`, `torch.sort(p)`) ranks."""
    return _receiver(ctx, expr, _RANKED) if isinstance(expr, ast.Call) else None


def _selected_source(ctx: ModuleContext, expr: ast.expr) -> ast.expr | None:
    """The tensor whose elements `expr` picks: `p[i]`, `p.gather(d, idx)`,
    `torch.index_select(p, ...)`, `p.topk(k)[0]`, `p.topk(k).values`; None when the picked
    index is a draw from, or the argmax of, the probabilities (never a zero one)."""
    if isinstance(expr, ast.Subscript):
        ranked = _ranked_source(ctx, expr.value)
        if ranked is not None:
            index = expr.slice
            first = isinstance(index, ast.Constant) and index.value == 0
            return ranked if first else None
        return expr.value
    if isinstance(expr, ast.Attribute) and expr.attr == "values":
        return _ranked_source(ctx, expr.value)
    if not isinstance(expr, ast.Call):
        return None
    source = _receiver(ctx, expr, _GATHERS)
    if source is None:
        return None
    positional = expr.args[-1] if expr.args else None
    picks = next((k.value for k in expr.keywords if k.arg in ("index", "indices")), positional)
    if picks is not None and _nonzero_pick(ctx, picks, 0):
        return None
    return source


def _nonzero_pick(ctx: ModuleContext, expr: ast.expr, hops: int) -> bool:
    """Every value `expr` may hold is a `torch.multinomial` draw or an `argmax`, through
    assignments, views and subscripts."""
    if hops > _MAX_HOPS:
        return False
    if isinstance(expr, ast.Name):
        values = ctx.flow.definitions(expr)
        return bool(values) and all(_nonzero_pick(ctx, v, hops + 1) for v in values)
    if isinstance(expr, ast.Subscript):
        return _nonzero_pick(ctx, expr.value, hops + 1)
    if not isinstance(expr, ast.Call):
        return False
    func = expr.func
    qual = ctx.flow.qualname_of(expr)
    if qual in _NONZERO_PICKS or (
        qual is None and isinstance(func, ast.Attribute) and func.attr in _NONZERO_PICKS
    ):
        return True
    if isinstance(func, ast.Attribute) and func.attr in _VIEWS and not ctx.qualname(func):
        return _nonzero_pick(ctx, func.value, hops + 1)
    return False
