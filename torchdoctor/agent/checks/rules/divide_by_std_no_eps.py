"""divide-by-std-no-eps: division by a standard deviation or norm with no epsilon."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.model_facts import LOSS_NAME
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    module_name,
    publish_differentiated_calls,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import FunctionNode, identifier
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_SPREAD = frozenset({"std", "var", "norm"})
# Methods of a model that return its embeddings (CLIP's encode_image / encode_text).
_EMBEDDING_METHODS = ("encode", "get_image_features", "get_text_features")
_ROOTS = frozenset({"sqrt", "rsqrt"})
_TORCH_ROOTS = frozenset({"torch.sqrt", "torch.rsqrt"})
# Random draws (latents, noise, interpolation weights): the zero vector has probability zero.
_DRAWS = frozenset(
    {"torch.randn", "torch.randn_like", "torch.normal", "torch.rand", "torch.rand_like"}
)
_DRAW_DEPTH = 6
# Generators of synthetic point clouds (two moons, swiss roll, blobs): random samples too.
_SYNTHETIC_DATASETS = ("sklearn.datasets.make_",)
_LAYER_PARAMETERS = frozenset({"weight", "weight_v", "weight_orig"})
"""A layer's parameters by their PyTorch names: learned (or initialised) values, not data."""
_GATES = ("std(", "norm(", "var(", "** 2", "pow(2", "square(", "register_buffer(")
_OVERLAP_WORDS = ("dice", "Dice", "DICE", "iou", "IoU", "IOU", "jaccard", "Jaccard", "tversky")
_OVERLAP_NAME = re.compile(r"dice|iou|jaccard|tversky", re.IGNORECASE)
_SUMS = frozenset({"sum", "mean"})
_NORM_FUNCTIONS = frozenset(
    {"torch.norm", "torch.linalg.norm", "torch.linalg.vector_norm", "torch.linalg.matrix_norm"}
)


class DivideByStdNoEps(Rule):
    """Detects `x / x.std()`, `x / torch.std(x)`, `x / x.norm(...)`, `x / torch.sqrt(x.var())`,
    `x / var.sqrt()` where `var = torch.var(...)` (also `/=`) where the divisor has no `+ eps`
    and no `clamp`, also a spread bound to a name in the same function (`std = x.std(-1,
    keepdim=True)`, then `(x - mean) / std`: a layer norm written by hand) that no test or
    comparison before the division reads; a division by a sum of squares (`dot * s /
    torch.sum(s ** 2, -1)`, a signal's energy, also through a name that no
    `if`/`assert`/`torch.where` tests); and an epsilon that precedence adds to the quotient
    instead of the divisor (`np.abs(y_hat - y) / np.abs(y) + 1e-5`, the divisor a magnitude,
    spread or sum); and a min-max normalisation's range (`(x - x.min()) / (x.max() -
    x.min())`, or `x.div_(x.max())` after `x.sub_(x.min())`, or `(x - lo) / (hi - lo)` with
    `lo`, `hi` a statistics mapping's `"min"` and `"max"` entries, directly or bound to
    names: a dataset feature that never changes; not configured bounds such as a schedule's
    `sigma_min`/`sigma_max`, an action space's `low`/`high`, nor reductions bound to names)
    with no epsilon, clamp or test;
    and a Dice or IoU ratio with no smoothing term in a function or class named for it
    (`dsc = (2. * (p * t).sum()) / (p.sum() + t.sum())` in `DiceLoss.forward`): an empty
    prediction and an empty target give 0 / 0.
    Also the magnitude of a spectrum with no epsilon under the root
    (`torch.sqrt(spec.pow(2).sum(-1))` of an STFT, `sqrt(s.real ** 2 + s.imag ** 2)`) where
    autograd differentiates it: in a model's `forward`, a loss, or a helper that this file
    or another one hands a model's output with autograd on (a vocoder's mel spectrogram of
    the generated audio): the root's gradient divides by the root, and a bin's two squared
    parts underflow to zero for quiet audio. Not the root of an embedding's or a
    displacement's squared norm (as rarely zero as the norms above).

    Also reported: a division whose numerator another division of the same function
    divides by a divisor of the same form with an epsilon added (`intersection / union`
    beside `intersection / (target + 1e-10)`: the author knows these counts reach zero);
    the log of an energy (a sum of squares) or of an energy over something (an SNR,
    `10 * torch.log10(torch.sum(proj ** 2, -1) / (torch.sum(noise ** 2, -1) + eps))`) with
    no epsilon: a silent source's energy is 0 and its log -inf; the log of a sum multiplied
    by a mask (`torch.log(attn.sum(2)) * x_mask`: the sum is 0 on the padding, and -inf * 0
    is NaN); and the first log or root of a parameter, nothing added, in a function that
    takes an epsilon or floor parameter with a small default (`clip_val=1e-5`, `eps=1e-8`)
    and never reads it (a vocoder's `torch.log(x * C)`: the floor was dropped). Not a
    constant numerator (`1.0 / n` beside `1.0 / (m + eps)`), nor a guarded sibling of
    another form (a count of batches beside a count of words), nor an energy that a test
    before the log reads, nor a floor parameter of a function with no log or root of its
    parameters (an optimizer factory's `eps`, a kernel dividing by a bandwidth), nor a
    smoothing term of 1.

    A root may be written as a power (`torch.pow(var, 0.5)`, `var ** 0.5`, Conv-TasNet's
    channel-wise layer norm).

    Why it matters: the spread (or range) is zero for a constant input, a single-element
    batch or an all-zero vector (padding, dead features); the division then yields NaN/Inf
    that spreads through the loss into every weight.

    Not reported: the norm of a model's embedding (`feats / feats.norm(dim=-1)` with `feats`
    from `model(x)` or `model.encode_image(x)`, also through item selection and tensor methods)
    or of a learned parameter (weight normalisation), also as a local helper's parameter when
    every call in the module passes one: a learned vector is not the zero vector;
    nor the norm of a random draw (`torch.randn` latents, also a local helper's parameter
    when every call in the module passes one, as a `slerp(z0, z1, t)` of latents does, and
    values computed from draws only, such as the slerp's orthogonal component); nor the std
    or variance of a random draw or a synthetic dataset (`make_swiss_roll(n, noise=0.1)`,
    `torch.randn(n, 2)`) or of what is computed from one only: the sample's points do not
    all coincide.

    Example:
        advantages = (adv - adv.mean()) / adv.std()

    Fix: `/ (x.std() + 1e-8)`, `x.norm(...).clamp_min(eps)`, or `F.normalize(x, eps=...)`.
    """

    id = "divide-by-std-no-eps"
    point = 2
    severity = Severity.LOW
    title = "Division by std/norm without epsilon"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    triggers = Triggers(
        (*_GATES, *_OVERLAP_WORDS, "abs(", "min(", "backward"),
        all_of=(("e-", "eps"), ("/ (", "log", "sqrt")),
    )

    def applies(self, ctx: ModuleContext) -> bool:
        source = ctx.source
        return (
            any(w in source for w in _GATES)
            or ("sum(" in source and any(w in source for w in _OVERLAP_WORDS))
            or ("abs(" in source and ("e-" in source or "eps" in source))
            or ("min(" in source and "max(" in source)
            or (
                ("e-" in source or "eps" in source)
                and ("/ (" in source or "log" in source or "sqrt" in source)
            )
        )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A root of an energy in a helper of one file holds when another file's call gives
        that helper a model's output with autograd on."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def finish(self, ctx: ModuleContext) -> None:
        if "backward" in ctx.source:
            publish_differentiated_calls(ctx)
        if not self.applies(ctx):
            return
        self._roots_of_energies(ctx)
        self._logs_of_energies(ctx)
        self._unused_floors(ctx)
        nodes: list[ast.BinOp | ast.AugAssign] = [
            *ctx.flow.nodes(ast.BinOp),
            *ctx.flow.nodes(ast.AugAssign),
        ]
        for node in nodes:
            if not isinstance(node.op, ast.Div):
                continue
            divisor = node.right if isinstance(node, ast.BinOp) else node.value
            if _epsilon_after_the_quotient(ctx, node, divisor):
                ctx.report(
                    self,
                    node,
                    f"the epsilon is added to the quotient, not to `{ast.unparse(divisor)}`: "
                    "the division still yields NaN/Inf where the divisor is zero; write "
                    "`a / (b + eps)`",
                    data={"divisor": ast.unparse(divisor)},
                )
                continue
            if _unguarded_spread(ctx, divisor) or _named_spread(ctx, node, divisor):
                why = "spread is zero (constant or single-element input)"
            elif _unguarded_range(ctx, node, divisor):
                why = "range is zero (a constant input)"
            elif _unguarded_energy(ctx, node, divisor):
                why = "energy is zero (a silent or all-zero input)"
            elif _unguarded_overlap(ctx, node, divisor):
                why = "prediction and the target are both empty (a slice with no foreground)"
            elif _counts_from_zero(ctx, divisor):
                why = (
                    "count is zero: the buffer starts at zeros and grows only where updates "
                    "land (a codebook entry no input picked)"
                )
            elif (sibling := _guarded_sibling(ctx, node, divisor)) is not None:
                why = (
                    f"divisor is zero; the same numerator's other ratio, line {sibling.lineno} "
                    f"(`{ast.unparse(sibling)}`), is kept away from zero"
                )
            else:
                continue
            if _compared_around(ctx, node, divisor):
                continue  # `if torch.norm(r) > eps: r = eps * r / torch.norm(r)`
            ctx.report(
                self,
                node,
                f"division by `{ast.unparse(divisor)}` with no epsilon: NaN/Inf when the {why}",
                data={"divisor": ast.unparse(divisor)},
            )
        for call in ctx.flow.calls_named(("div_", "div")):
            if isinstance(call.func, ast.Attribute) and len(call.args) == 1:
                divisor = call.args[0]
                if _unguarded_range(ctx, call, divisor):
                    ctx.report(
                        self,
                        call,
                        f"division by `{ast.unparse(divisor)}` with no epsilon: NaN/Inf when "
                        "the range is zero (a constant input)",
                        data={"divisor": ast.unparse(divisor)},
                    )

    def _logs_of_energies(self, ctx: ModuleContext) -> None:
        """`10 * torch.log10(ratio)` where `ratio` is an energy (a sum of squares) or an
        energy divided by something (an SNR: `torch.sum(proj ** 2, -1) / (torch.sum(noise **
        2, -1) + eps)`), with no epsilon: the energy of a silent source or an all-zero
        frame is 0, its log -inf, and the loss NaN."""
        for call in ctx.flow.calls_to(_LOGS):
            if not call.args or _epsilon_added(call.args[0]):
                continue
            argument = call.args[0]
            values: list[ast.expr] = [argument]
            if isinstance(argument, ast.Name):
                if _tested_around(ctx, call, argument.id):
                    continue
                values = _same_function_values(ctx, argument, call)
            if not values:
                continue
            if all(_energy_or_ratio_of_one(ctx, v, call) for v in values):
                ctx.report(
                    self,
                    call,
                    f"`{ast.unparse(call)}`: the log of an energy (a sum of squares) with no "
                    "epsilon: -inf for a silent or all-zero input, and the loss NaN; write "
                    "`log(x + eps)`",
                    data={"divisor": ast.unparse(argument)},
                )
            elif (mask := _masked_by(ctx, call)) is not None and all(
                _summed(v) is not None for v in values
            ):
                ctx.report(
                    self,
                    call,
                    f"`{ast.unparse(call)}` of a sum, then multiplied by `{ast.unparse(mask)}`"
                    ": the sum is 0 where the mask is (padding), its log -inf, and -inf * 0 "
                    "is NaN, which the loss's sum spreads; write `log(x + eps)`",
                    data={"divisor": ast.unparse(argument)},
                )

    def _unused_floors(self, ctx: ModuleContext) -> None:
        """A function that takes an epsilon or a clipping floor (`clip_val=1e-5`, `eps=1e-8`)
        and never reads it, while it takes a log or a root of its parameters, nothing added
        (HiFi-GAN's `dynamic_range_compression_torch(x, C=1, clip_val=1e-5)` returning
        `torch.log(x * C)`): the floor meant for that argument was dropped."""
        for function in ctx.flow.nodes(ast.FunctionDef):
            floors = _floor_parameters(function)
            if not floors:
                continue
            read = {
                n.id
                for n in walk_tree(function)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
            }
            unused = [f for f in floors if f.arg not in read]
            if not unused:
                continue
            site = _unguarded_site(ctx, function)
            if site is None:
                continue
            floor = unused[0]
            default = _default_of(function, floor)
            ctx.report(
                self,
                site,
                f"`{ast.unparse(site)}` has no epsilon, and `{floor.arg}="
                f"{ast.unparse(default) if default is not None else '...'}`, the function's "
                "floor for it, is never used: NaN/-inf where the argument is zero",
                data={"divisor": floor.arg},
            )

    def _roots_of_energies(self, ctx: ModuleContext) -> None:
        """`torch.sqrt(spec.pow(2).sum(-1))`: the magnitude of a spectrum (an STFT's or FFT's
        real and imaginary parts squared and summed) with no epsilon under the root, on a
        path autograd differentiates: in a model's `forward`, a loss, or a helper this file
        or another one gives a model's output (a vocoder's mel spectrogram of the generated
        audio, compared with the real one in the loss). A bin's two squared parts underflow
        to zero for quiet audio (in float16 below 6e-8), unlike the norm of an embedding."""
        if "stft" not in ctx.source and "fft" not in ctx.source and ".imag" not in ctx.source:
            return
        for root in ctx.flow.calls_named(_ROOTS):
            energy = _root_argument(ctx, root)
            if energy is None or not (
                _unguarded_energy(ctx, root, energy) or _squared_parts(energy)
            ):
                continue
            if not ctx.flow.derives_from(energy, lambda node: _spectral(ctx, node)):
                continue
            if grad_may_be_off(ctx, root):
                continue
            message = (
                f"`{ast.unparse(root)}` has no epsilon under the root: its gradient divides "
                "by the root, NaN wherever the energy is zero (a silent frame, a zero vector); "
                "write `torch.sqrt(e + eps)`"
            )
            where = _differentiated_where(ctx, root)
            if where == "here":
                ctx.report(self, root, message)
            elif where is not None:
                found = ctx.finding(self, root, message)
                if found is not None:
                    defer(
                        ctx,
                        self.id,
                        Pending(symbol=where, needs="differentiated-by-a-caller", finding=found),
                    )


_SPECTRA = frozenset({"torch.stft", "torch.view_as_real"})


def _spectral(ctx: ModuleContext, node: ast.AST) -> bool:
    """A complex spectrum or its parts: `torch.stft`, `torch.fft.*`, `x.real`/`x.imag`."""
    if isinstance(node, ast.Attribute):
        return node.attr in ("real", "imag") and isinstance(node.ctx, ast.Load)
    if not isinstance(node, ast.Call):
        return False
    qual = ctx.flow.qualname_of(node) or ""
    return qual in _SPECTRA or qual.startswith("torch.fft.")


def _squared_parts(value: ast.expr) -> bool:
    """`re ** 2 + im ** 2`: a sum of squares written term by term, no epsilon among them."""
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        return all(_square(side) or _squared_parts(side) for side in (value.left, value.right))
    return False


def _root_argument(ctx: ModuleContext, root: ast.Call) -> ast.expr | None:
    """`e` in `torch.sqrt(e)` or `e.sqrt()` (not NumPy's or `math`'s: no autograd there)."""
    if root.args:
        return root.args[0] if ctx.flow.qualname_of(root) in _TORCH_ROOTS else None
    if isinstance(root.func, ast.Attribute) and not root.keywords:
        return root.func.value
    return None


def _differentiated_where(ctx: ModuleContext, node: ast.AST) -> str | None:
    """'here' when `node` runs in a model's `forward`, a function named as a loss, or a
    helper some call of this file gives a model's output with autograd on; the helper's
    qualified name when it is a module-level function no call of this file so gives (other
    files' calls decide); None otherwise."""
    fn = ctx.enclosing_function(node)
    if fn is None:
        return None
    if fn.name == "forward" or LOSS_NAME.search(fn.name):
        return "here"
    for site in ctx.calls.call_sites(fn):
        arguments = [*site.args, *(k.value for k in site.keywords)]
        if not grad_may_be_off(ctx, site) and any(
            ctx.flow.graph_origin(a) == "output" for a in arguments
        ):
            return "here"
    if isinstance(ctx.parents.get(fn), ast.Module):
        return f"{module_name(ctx.path)}.{fn.name}"
    return None


# Divisors that are zero for some data: a magnitude, a spread, a sum.
_MAY_BE_ZERO = frozenset({"abs", "absolute", "fabs", *_SPREAD, "sum"})
_SMALL = 1e-3
_GUARDED_BY_EPS = frozenset({"sqrt", "rsqrt", "log", "log2", "log10", "log1p"})


def _epsilon_after_the_quotient(ctx: ModuleContext, node: ast.AST, divisor: ast.expr) -> bool:
    """`np.abs(v_ - v) / np.abs(v) + 1e-5`: a small constant (or an `eps`) added to the
    quotient of a division by a magnitude, spread or sum, where precedence puts it after the
    division: meant for the divisor, it guards nothing (a MAPE over targets that reach
    zero). Not when the sum is the argument of a root or log (`torch.sqrt(ss / n + 1e-5)`,
    a masked standard deviation): the epsilon is there for that function."""
    if not (isinstance(node, ast.BinOp) and isinstance(divisor, ast.Call)):
        return False
    if identifier(divisor.func) not in _MAY_BE_ZERO:
        return False
    parent = ctx.parents.get(node)
    if not (isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add)):
        return False
    if parent.left is not node:
        return False
    outer = ctx.parents.get(parent)
    if isinstance(outer, ast.Call) and identifier(outer.func) in _GUARDED_BY_EPS:
        return False  # `sqrt(ss / n + 1e-5)`: the epsilon guards the root or log, not the division
    added = parent.right
    if isinstance(added, ast.Constant) and isinstance(added.value, float):
        return 0 < added.value <= _SMALL
    return "eps" in identifier(added).lower()


_EXTREMA = {"max": "max", "amax": "max", "min": "min", "amin": "min"}
_RESHAPES = frozenset({"flatten", "view", "reshape", "detach", "float", "abs"})


def _unguarded_range(ctx: ModuleContext, division: ast.AST, divisor: ast.expr) -> bool:
    """A min-max normalisation: `(x - x.min()) / (x.max() - x.min())`, the range bound to a
    name no test around the division reads, or `x.div_(x.max())` after `x.sub_(x.min())`
    shifted `x` in the same function (torch-cam's CAM normalisation): zero for a constant
    input. Not when a test before the division reads `x` (DINO's `if mask.max() > 0:`)."""
    if isinstance(divisor, ast.Name):
        if _tested_around(ctx, division, divisor.id):
            return False
        values = [
            v
            for v in ctx.flow.definitions(divisor)
            if ctx.enclosing_function(v) is ctx.enclosing_function(division)
        ]
        return bool(values) and all(_range_of_one_tensor(v) for v in values)
    numerator = _numerator(division)
    if numerator.isidentifier() and _tested_around(ctx, division, numerator):
        return False  # `if x.max() > 0:` before the division: the author handled the zero case
    if _range_of_one_tensor(divisor) or _range_of_stored_extremes(ctx, division, divisor):
        return True
    top = _extremum(divisor)
    if top is None or top[0] != "max":
        return False
    return numerator == top[1] and _shifted_by_its_min(ctx, division, numerator)


def _range_of_one_tensor(value: ast.expr) -> bool:
    """`x.max() - x.min()`, `torch.max(x) - torch.min(x)`, `x.amax(1) - x.amin(1)`."""
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Sub)):
        return False
    high, low = _extremum(value.left), _extremum(value.right)
    return high is not None and low is not None and high == ("max", low[1]) and low[0] == "min"


def _range_of_stored_extremes(ctx: ModuleContext, division: ast.AST, divisor: ast.expr) -> bool:
    """`(x - lo) / (hi - lo)` written inline, `hi` and `lo` the `"max"` and `"min"` entries of
    one statistics mapping (`stats["max"]`, `buffer["min"]`), or names bound once in the
    division's function to them. Per-feature extremes of a dataset are equal for a feature
    that never changes (a fixed joint, a constant channel). Not names bound to anything else
    (a schedule's configured `sigma_min` and `sigma_max`, arguments, reductions such as
    `x_min = np.min(X, 0)` of a t-SNE embedding)."""
    if not (isinstance(division, ast.BinOp) and isinstance(divisor, ast.BinOp)):
        return False
    numerator = division.left
    if not (
        isinstance(divisor.op, ast.Sub)
        and isinstance(numerator, ast.BinOp)
        and isinstance(numerator.op, ast.Sub)
        and ast.unparse(numerator.right) == ast.unparse(divisor.right)
    ):
        return False
    high = _stored_extreme(ctx, division, divisor.left)
    low = _stored_extreme(ctx, division, divisor.right)
    return (
        high is not None
        and low is not None
        and high[0] == "max"
        and (low[0], low[1]) == ("min", high[1])
    )


def _stored_extreme(
    ctx: ModuleContext, division: ast.AST, value: ast.expr
) -> tuple[str, str] | None:
    """('max' or 'min', its source) for `stats["max"]`, or a name the division's function
    binds once to such an entry."""
    if isinstance(value, ast.Name):
        fn = ctx.enclosing_function(division)
        values = [v for v in ctx.flow.definitions(value) if ctx.enclosing_function(v) is fn]
        if len(values) != 1 or isinstance(values[0], ast.Name):
            return None
        value = values[0]
    if (
        isinstance(value, ast.Subscript)
        and isinstance(value.slice, ast.Constant)
        and isinstance(value.slice.value, str)
        and value.slice.value in _EXTREMA
    ):
        return _EXTREMA[value.slice.value], ast.unparse(value.value)
    return None


def _extremum(value: ast.expr) -> tuple[str, str] | None:
    """('max' or 'min', the tensor reduced) for `x.max()`, `x.flatten(1).max(-1).values[:,
    None]`, `torch.min(x)`, `np.max(x)`; None for anything else."""
    while isinstance(value, ast.Subscript) or (
        isinstance(value, ast.Attribute) and value.attr == "values"
    ):
        value = value.value
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Attribute | ast.Name):
        return None
    kind = _EXTREMA.get(identifier(value.func))
    if kind is None:
        return None
    func = value.func
    module_function = isinstance(func, ast.Name) or (
        isinstance(func.value, ast.Name) and func.value.id in ("torch", "np", "numpy")
    )
    if module_function:
        return (kind, _base(value.args[0])) if value.args else None
    assert isinstance(func, ast.Attribute)
    return kind, _base(func.value)


def _base(value: ast.expr) -> str:
    """The tensor under reshapes and copies: `cams.flatten(start_dim=-2)` -> `cams`."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _RESHAPES
    ):
        value = value.func.value
    return ast.unparse(value)


def _numerator(division: ast.AST) -> str:
    if isinstance(division, ast.BinOp):
        return _base(division.left)
    if isinstance(division, ast.AugAssign):
        return ast.unparse(division.target)
    if isinstance(division, ast.Call) and isinstance(division.func, ast.Attribute):
        return ast.unparse(division.func.value)
    return ""


def _shifted_by_its_min(ctx: ModuleContext, division: ast.AST, tensor: str) -> bool:
    """Before `division`, in its function, `tensor` lost its own minimum: `x.sub_(x.min())`,
    `x -= x.min()` or `x = x - x.min()`."""
    fn = ctx.enclosing_function(division)
    line = getattr(division, "lineno", 0)
    for node in walk_tree(fn) if fn is not None else []:
        if getattr(node, "lineno", line) >= line:
            continue
        subtracted: ast.expr | None = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "sub_"
            and ast.unparse(node.func.value) == tensor
            and len(node.args) == 1
        ):
            subtracted = node.args[0]
        elif (
            isinstance(node, ast.AugAssign)
            and isinstance(node.op, ast.Sub)
            and ast.unparse(node.target) == tensor
        ):
            subtracted = node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and ast.unparse(node.targets[0]) == tensor
            and isinstance(node.value, ast.BinOp)
            and isinstance(node.value.op, ast.Sub)
            and _base(node.value.left) == tensor
        ):
            subtracted = node.value.right
        if subtracted is not None and _extremum(subtracted) == ("min", tensor):
            return True
    return False


def _unguarded_spread(ctx: ModuleContext, divisor: ast.expr, depth: int = 0) -> bool:
    """`x.std()`, `torch.norm(x)`, `var.sqrt()`, `torch.sqrt(var)` where `var` holds a
    variance (a name is followed only under a root: `x / norm` may be guarded elsewhere,
    as LARS's `torch.where(update_norm > 0, ...)`): a spread with no `+ eps` or clamp."""
    if isinstance(divisor, ast.Name) and 0 < depth < 2:
        values = ctx.flow.definitions(divisor)
        return bool(values) and all(_unguarded_spread(ctx, v, depth + 1) for v in values)
    inner = _rooted(divisor)
    if inner is not None:
        return depth < 2 and _unguarded_spread(ctx, inner, depth + 1)
    if not isinstance(divisor, ast.Call):
        return False
    name = identifier(divisor.func)
    if name == "norm" and _embedding_norm(ctx, divisor):
        return False
    if name in _SPREAD:
        return not _spread_of_a_draw(ctx, divisor)
    return False


def _named_spread(ctx: ModuleContext, division: ast.AST, divisor: ast.expr) -> bool:
    """`std = x.std(-1, keepdim=True)` bound in the function of the division (`(x - mean) /
    std`, a layer norm written by hand), every binding there a spread with no epsilon, and no
    test around the division reading the name (`torch.where(norm > 0, ...)`, `if std > 0:`)
    nor any comparison of it before the division (DGI's `f = f[:, sigma > 0]` drops the
    constant columns first)."""
    if not isinstance(divisor, ast.Name) or _tested_around(ctx, division, divisor.id):
        return False
    scope = ctx.enclosing_function(division)
    line = getattr(division, "lineno", 0)
    for compare in walk_tree(scope) if scope is not None else []:
        if (
            isinstance(compare, ast.Compare)
            and compare.lineno <= line
            and any(isinstance(n, ast.Name) and n.id == divisor.id for n in walk_tree(compare))
        ):
            return False
    values = [v for v in ctx.flow.definitions(divisor) if ctx.enclosing_function(v) is scope]
    return bool(values) and all(
        isinstance(v, ast.Call) and _unguarded_spread(ctx, v, 1) for v in values
    )


def _rooted(value: ast.expr) -> ast.expr | None:
    """What a square root is taken of: `torch.sqrt(v)`, `v.sqrt()`, `v.rsqrt()`, and the
    same written as a power, `torch.pow(v, 0.5)`, `v.pow(0.5)`, `v ** 0.5` (Conv-TasNet's
    channel-wise layer norm); None when `value` is no root."""
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Pow):
        return value.left if _half(value.right) else None
    if not isinstance(value, ast.Call):
        return None
    name = identifier(value.func)
    receiver = value.func.value if isinstance(value.func, ast.Attribute) else None
    if name in _ROOTS:
        return value.args[0] if value.args else receiver  # torch.sqrt(v) / v.sqrt()
    if name == "pow" and value.args and _half(value.args[-1]):
        return value.args[0] if len(value.args) == 2 else receiver
    return None


def _half(power: ast.expr) -> bool:
    return isinstance(power, ast.Constant) and power.value == 0.5


def _spread_of_a_draw(ctx: ModuleContext, spread: ast.Call) -> bool:
    """`x.std()` / `torch.std(x)` (or var) of a random draw or of a synthetic dataset
    (`X, y = make_swiss_roll(n, noise=0.1)`, `torch.randn(n, 2)`), or of values computed
    from such only: many points drawn at random do not all coincide."""
    if identifier(spread.func) == "norm":
        return False  # a norm is zero for a single zero vector, not a coincidence of points
    value: ast.expr | None = None
    if ctx.flow.qualname_of(spread) is not None and spread.args:
        value = spread.args[0]
    elif isinstance(spread.func, ast.Attribute):
        value = spread.func.value
    if isinstance(value, ast.Subscript):
        value = value.value  # `sample[:, 0].std()`: a column of the draw
    return value is not None and _drawn(ctx, value, 0)


def _unguarded_energy(ctx: ModuleContext, division: ast.AST, divisor: ast.expr) -> bool:
    """A sum of squares (`torch.sum(s ** 2, dim=-1)`, an energy or squared norm), directly or
    bound to a name in the same function that no test around the division looks at
    (Conv-TasNet's SI-SNR projection `dot * s / s_energy`): zero for a silent or all-zero
    input."""
    if _sum_of_squares(ctx, divisor):
        return True
    if not isinstance(divisor, ast.Name) or _tested_around(ctx, division, divisor.id):
        return False
    values = [
        v
        for v in ctx.flow.definitions(divisor)
        if ctx.enclosing_function(v) is ctx.enclosing_function(division)
    ]
    return bool(values) and all(_sum_of_squares(ctx, v) for v in values)


def _sum_of_squares(ctx: ModuleContext, value: ast.expr) -> bool:
    if not (isinstance(value, ast.Call) and identifier(value.func) in _SUMS):
        return False
    qual = ctx.flow.qualname_of(value)
    if qual is not None:
        summed: ast.expr | None = value.args[0] if value.args else None
    elif isinstance(value.func, ast.Attribute):
        summed = value.func.value
    else:
        return False
    return summed is not None and _square(summed)


def _square(value: ast.expr) -> bool:
    """`x ** 2`, `x.pow(2)`, `torch.square(x)`, `x * x`."""
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Pow):
        return isinstance(value.right, ast.Constant) and value.right.value == 2
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult):
        return ast.dump(value.left) == ast.dump(value.right)
    if isinstance(value, ast.Call) and identifier(value.func) == "square":
        return True
    if isinstance(value, ast.Call) and identifier(value.func) == "pow" and value.args:
        power = value.args[-1]
        return isinstance(power, ast.Constant) and power.value == 2
    return False


_SHAPE_ONLY = frozenset({"unsqueeze", "view", "reshape", "expand_as", "expand", "t", "float"})


_LOGS = frozenset(
    {"torch.log", "torch.log10", "torch.log2", "numpy.log", "numpy.log10", "numpy.log2"}
)
_EPSILON_NAME = re.compile(r"eps|smooth", re.IGNORECASE)


def _epsilon(value: ast.expr) -> bool:
    """A small positive constant (`1e-10`) or a name for one (`EPS`, `self.eps`,
    `config.smooth`)."""
    if isinstance(value, ast.Constant):
        return isinstance(value.value, int | float) and 0 < value.value < 1e-2
    name = identifier(value) if isinstance(value, ast.Name | ast.Attribute) else ""
    return bool(name) and bool(_EPSILON_NAME.search(name))


def _epsilon_added(value: ast.expr) -> bool:
    """`x + eps` (either side), or anything added: a sum is not taken as unguarded."""
    return isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add)


_FLOOR_NAME = re.compile(
    r"^(eps|epsilon|\w+_eps|eps_\w+|clip_val|clip_value|clip_min|min_val|min_value|floor)$",
    re.IGNORECASE,
)


def _default_of(function: ast.FunctionDef, parameter: ast.arg) -> ast.expr | None:
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    if parameter in positional:
        offset = positional.index(parameter) - (len(positional) - len(arguments.defaults))
        return arguments.defaults[offset] if offset >= 0 else None
    if parameter in arguments.kwonlyargs:
        return arguments.kw_defaults[arguments.kwonlyargs.index(parameter)]
    return None


def _floor_parameters(function: ast.FunctionDef) -> list[ast.arg]:
    """Parameters named for an epsilon or a floor whose default is a small positive
    constant (`clip_val=1e-5`, `eps=1e-8`)."""
    arguments = function.args
    found = []
    for parameter in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        if not _FLOOR_NAME.match(parameter.arg):
            continue
        default = _default_of(function, parameter)
        if default is not None and _epsilon(default):
            found.append(parameter)
    return found


def _unguarded_site(ctx: ModuleContext, function: ast.FunctionDef) -> ast.expr | None:
    """The first log or root in the function's own body whose argument reads a parameter
    of the function with nothing added or clamped (`torch.log(x * C)`)."""
    parameters = {a.arg for a in [*function.args.posonlyargs, *function.args.args]}
    for node in walk_scope(function.body):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        qual = ctx.flow.qualname_of(node) or ""
        if qual in _LOGS or qual in _TORCH_ROOTS or qual == "numpy.sqrt":
            argument = node.args[0]
            if _epsilon_added(argument) or _clamped(argument):
                continue
            if any(isinstance(n, ast.Name) and n.id in parameters for n in walk_tree(argument)):
                return node
    return None


def _clamped(value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and identifier(value.func) in (
        "clamp", "clip", "clamp_min", "maximum", "max", "exp", "softplus"
    )  # fmt: skip


def _same_function_values(ctx: ModuleContext, name: ast.Name, at: ast.AST) -> list[ast.expr]:
    """The values of `name` that reach this read, bound in the function around `at`; empty
    when one comes from elsewhere (a parameter, another scope)."""
    values = ctx.flow.reaching_or_all(name)
    function = ctx.enclosing_function(at)
    if not values or any(ctx.enclosing_function(v) is not function for v in values):
        return []
    return values


def _energy_or_ratio_of_one(ctx: ModuleContext, value: ast.expr, at: ast.AST) -> bool:
    """A sum of squares, or a quotient whose numerator is one (directly or through a name
    bound in the same function)."""
    if _sum_of_squares(ctx, value):
        return True
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Div)):
        return False
    numerator = value.left
    if isinstance(numerator, ast.Name):
        bound = _same_function_values(ctx, numerator, at)
        return bool(bound) and all(_sum_of_squares(ctx, v) for v in bound)
    return _sum_of_squares(ctx, numerator)


def _masked_by(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The mask a log is multiplied by (`torch.log(w) * x_mask`): a name or attribute named
    for a mask."""
    parent = ctx.parents.get(call)
    if not (isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult)):
        return None
    other = parent.right if parent.left is call else parent.left
    name = identifier(other) if isinstance(other, ast.Name | ast.Attribute) else ""
    return other if name and "mask" in name.lower() else None


def _guarded_sibling(ctx: ModuleContext, division: ast.AST, divisor: ast.expr) -> ast.BinOp | None:
    """Another division of the same numerator in the same function whose divisor, of the
    same form (`target_meter.sum` beside `union_meter.sum`), has an epsilon added
    (`intersection / (target + 1e-10)` beside `intersection / union`): the author knows
    these counts can be zero and guards one ratio, not this one. Not a constant numerator
    (`1 / x`), nor a divisor that is itself a sum or a constant, nor one of another form
    (a count of batches beside a count of words)."""
    if not isinstance(division, ast.BinOp) or isinstance(division.left, ast.Constant):
        return None
    if not isinstance(divisor, ast.Name | ast.Attribute | ast.Subscript | ast.Call):
        return None
    function = ctx.enclosing_function(division)
    if function is None:
        return None
    numerator = ast.dump(division.left)
    shape = _shape(divisor)
    for other in walk_tree(function):
        if (
            isinstance(other, ast.BinOp)
            and other is not division
            and isinstance(other.op, ast.Div)
            and ast.dump(other.left) == numerator
            and isinstance(other.right, ast.BinOp)
            and isinstance(other.right.op, ast.Add)
        ):
            left, right = other.right.left, other.right.right
            if (_epsilon(right) and _shape(left) == shape) or (
                _epsilon(left) and _shape(right) == shape
            ):
                return other
    return None


def _shape(node: ast.expr) -> str:
    """`node`'s form with its names left out: `union_meter.sum` and `target_meter.sum` are
    alike, `self.n_batchs` and `t` are not."""
    return re.sub(r"id='[^']*'", "id=''", ast.dump(node))


def _counts_from_zero(ctx: ModuleContext, divisor: ast.expr) -> bool:
    """`self.cluster_size.unsqueeze(0)`: a per-entry count kept in a buffer of the module
    that starts at `torch.zeros(...)` and is updated in place with tensors (an EMA of
    one-hot counts: `self.cluster_size.data.mul_(decay).add_(onehot_sum, ...)`), divided
    by as it is: an entry never updated stays zero (vq-vae-2's codebook without its
    Laplace smoothing). Not a count incremented by a constant (`self.n += 1`), nor one
    tested before the division."""
    while isinstance(divisor, ast.Call) and isinstance(divisor.func, ast.Attribute):
        if divisor.func.attr not in _SHAPE_ONLY:
            return False
        divisor = divisor.func.value
    if not (
        isinstance(divisor, ast.Attribute)
        and isinstance(divisor.value, ast.Name)
        and divisor.value.id == "self"
    ):
        return False
    cls = next((a for a in ctx.ancestors(divisor) if isinstance(a, ast.ClassDef)), None)
    if cls is None or _tested_around(ctx, divisor, divisor.attr):
        return False
    name = divisor.attr
    starts_at_zero = updated = False
    for node in walk_tree(cls):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if (
                node.func.attr == "register_buffer"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == name
            ):
                starts_at_zero = _zeros(ctx, node.args[1])
            elif node.func.attr in ("add_", "index_add_", "scatter_add_") and node.args:
                updated = updated or (
                    _updates(node.func.value, name) and not isinstance(node.args[-1], ast.Constant)
                )
    return starts_at_zero and updated


def _zeros(ctx: ModuleContext, value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and ctx.flow.qualname_of(value) == "torch.zeros"


def _updates(receiver: ast.expr, name: str) -> bool:
    """`self.<name>`, `self.<name>.data` or a chain of in-place calls on it
    (`self.cluster_size.data.mul_(decay)`)."""
    while True:
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute):
            receiver = receiver.func.value
        elif isinstance(receiver, ast.Attribute) and receiver.attr == "data":
            receiver = receiver.value
        else:
            break
    return (
        isinstance(receiver, ast.Attribute)
        and receiver.attr == name
        and isinstance(receiver.value, ast.Name)
        and receiver.value.id == "self"
    )


def _tested_around(ctx: ModuleContext, node: ast.AST, name: str) -> bool:
    """An `if`/`assert` before `node` in its function, or a conditional expression or
    `torch.where` around it, whose test reads `name`: the zero case is handled there."""
    fn = ctx.enclosing_function(node)
    line = getattr(node, "lineno", 0)
    for stmt in walk_tree(fn) if fn is not None else []:
        if (
            isinstance(stmt, ast.If | ast.Assert)
            and stmt.lineno < line
            and any(isinstance(n, ast.Name) and n.id == name for n in walk_tree(stmt.test))
        ):
            return True
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        test: ast.AST | None = None
        if isinstance(anc, ast.If | ast.IfExp | ast.While):
            test = anc.test
        elif isinstance(anc, ast.Call) and identifier(anc.func) == "where" and anc.args:
            test = anc.args[0]
        if test is not None and any(
            isinstance(n, ast.Name) and n.id == name for n in walk_tree(test)
        ):
            return True
    return False


def _compared_around(ctx: ModuleContext, node: ast.AST, divisor: ast.expr) -> bool:
    """The divisor itself is tested by an `if`/`while`/conditional expression around the
    division (BERT-NER's FGM projection `if torch.norm(r) > epsilon: r = epsilon * r /
    torch.norm(r)`, ivadomed's `if sample.std() < 1e-5: ... else: ... / sample.std()`), or
    by an `if` before it in the same function that leaves the block (`if s.max() == s.min():
    continue`, then `(s - s.min()) / (s.max() - s.min())`: a range's two ends compared),
    also at the top of the function (`if torch.any(high == low): raise ...`)."""
    sides = _tested_sides(divisor)
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.Lambda):
            return False
        if isinstance(anc, ast.If | ast.IfExp | ast.While) and _tests(anc.test, sides):
            return True
        for block in _blocks(anc):
            if any(stmt is child for stmt in block):
                for stmt in block:
                    if stmt is child:
                        break
                    if _exits_when(stmt, sides):
                        return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        child = anc
    return False


def _tested_sides(divisor: ast.expr) -> list[set[str]]:
    """What a comparison must hold, as texts of its sides, to test the divisor: the divisor
    itself, or both ends of a range (`hi - lo`)."""
    sides = [{ast.unparse(divisor)}]
    if isinstance(divisor, ast.BinOp) and isinstance(divisor.op, ast.Sub):
        sides.append({ast.unparse(divisor.left), ast.unparse(divisor.right)})
    return sides


def _tests(test: ast.expr, sides: list[set[str]]) -> bool:
    for part in walk_tree(test):
        if isinstance(part, ast.Compare):
            texts = {ast.unparse(side) for side in [part.left, *part.comparators]}
            if any(wanted <= texts for wanted in sides):
                return True
    return False


def _blocks(node: ast.AST) -> list[list[ast.stmt]]:
    return [
        block
        for block in (getattr(node, "body", None), getattr(node, "orelse", None))
        if isinstance(block, list)
    ]


def _exits_when(stmt: ast.stmt, sides: list[set[str]]) -> bool:
    """`if <test of the divisor>: continue` (or `return`, `raise`, `break`)."""
    return (
        isinstance(stmt, ast.If)
        and not stmt.orelse
        and isinstance(stmt.body[-1], ast.Continue | ast.Return | ast.Raise | ast.Break)
        and _tests(stmt.test, sides)
    )


def _embedding_norm(ctx: ModuleContext, norm: ast.Call) -> bool:
    """The L2 norm of a model's embedding (`feats = model.encode_image(x)`, `model(x)`,
    `self.encode_text(t)` in the model; CLIP's and DINO's normalisation): a learned
    embedding is not the zero vector, unlike data, gradients or a spread."""
    function = ctx.flow.qualname_of(norm) in _NORM_FUNCTIONS  # torch.norm(x, p)
    value: ast.expr | None = norm.args[0] if function and norm.args else None
    if not function and isinstance(norm.func, ast.Attribute):
        value = norm.func.value  # x.norm(p): the first argument is the order
    if value is None:
        return False
    return _never_zero(ctx, value, 0)


def _never_zero(ctx: ModuleContext, value: ast.expr, depth: int) -> bool:
    """An embedding, a learned parameter or a random draw; for a local function's parameter,
    what every call of that function in the module passes (`modulated_conv(x, weight=
    self.weight, styles=self.affine(w))`)."""
    if ctx.flow.derives_from(value, lambda node: _embeds(ctx, node)):
        return True
    if _learned(ctx, value, 0) or _drawn(ctx, value, 0):
        return True
    args = _call_arguments(ctx, value) if depth < 1 else []
    return bool(args) and all(_never_zero(ctx, a, depth + 1) for a in args)


def _call_arguments(ctx: ModuleContext, value: ast.expr) -> list[ast.expr]:
    """What the module's calls pass for the parameter `value` reads; [] when `value` reads
    no parameter, nothing calls its function, or a call leaves it to the default."""
    if not isinstance(value, ast.Name):
        return []
    fn = ctx.enclosing_function(value)
    if fn is None or not _reads_parameter(ctx, fn, value):
        return []
    args = [ctx.calls.bind(call, fn).get(value.id) for call in ctx.calls.call_sites(fn)]
    return [a for a in args if a is not None] if all(a is not None for a in args) else []


def _drawn(ctx: ModuleContext, value: ast.expr, depth: int, seen: set[int] | None = None) -> bool:
    """`value` derives from a random draw, is a local function's parameter that every call of
    that function in the module binds to one, or is computed from such values only (`c = b -
    d * a` between two drawn latents). A binding met again on the way counts as drawn."""
    seen = set() if seen is None else seen
    if ctx.flow.derives_from(value, lambda node: _is_draw(ctx, node)):
        return True
    if depth > _DRAW_DEPTH or not isinstance(value, ast.Name):
        return False
    fn = ctx.enclosing_function(value)
    if fn is not None and _reads_parameter(ctx, fn, value):
        args = _call_arguments(ctx, value)
        return bool(args) and all(_drawn(ctx, a, depth + 1, seen) for a in args)
    bound = [v for v in ctx.flow.definitions(value) if v is not value]
    if not bound or any(isinstance(ctx.parents.get(v), ast.AugAssign) for v in bound):
        return False
    for binding in bound:
        if id(binding) in seen:
            continue
        seen.add(id(binding))
        operands = _operands(ctx, binding)
        if not operands or not all(_drawn(ctx, n, depth + 1, seen) for n in operands):
            return False
    return True


def _operands(ctx: ModuleContext, value: ast.expr) -> list[ast.Name]:
    """The variables `value` computes with: names read, not called functions or modules."""
    called = {id(n.func) for n in walk_tree(value) if isinstance(n, ast.Call)}
    return [
        n
        for n in walk_tree(value)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, ast.Load)
        and id(n) not in called
        and n.id not in ctx.imports.aliases
    ]


def _is_draw(ctx: ModuleContext, node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Attribute) and node.func.attr == "normal_":
        return True
    qual = ctx.flow.qualname_of(node) or ""
    return qual in _DRAWS or qual.startswith(_SYNTHETIC_DATASETS)


def _reads_parameter(ctx: ModuleContext, fn: FunctionNode, name: ast.Name) -> bool:
    """`name` reads the value `fn` was called with: a parameter of `fn` that no statement
    before this one rebinds (`a = a / a.norm()` reads the argument), outside any loop."""
    arguments = fn.args
    if name.id not in {a.arg for a in [*arguments.posonlyargs, *arguments.args]}:
        return False
    statement: ast.AST = name
    for ancestor in ctx.ancestors(name):
        if ancestor is fn:
            break
        if isinstance(ancestor, ast.For | ast.AsyncFor | ast.While):
            return False
        if isinstance(ancestor, ast.stmt):
            statement = ancestor
    line = getattr(statement, "lineno", 0)
    return all(getattr(v, "lineno", 0) >= line for v in ctx.flow.definitions(name))


def _learned(ctx: ModuleContext, value: ast.expr, depth: int) -> bool:
    """`value` is a model's embedding or a learned parameter, read through tensor methods,
    item selection and names (`emb = out["text_features"].mean(0)` with `out = model(t)`;
    `self.v / self.v.norm()` with `self.v = nn.Parameter(...)`, weight normalisation, a
    layer's `.weight`)."""
    if depth > 6:
        return False
    if isinstance(value, ast.Call):
        if _embeds(ctx, value) or (ctx.flow.qualname_of(value) or "").endswith(".Parameter"):
            return True
        func = value.func
        return isinstance(func, ast.Attribute) and _learned(ctx, func.value, depth + 1)
    if isinstance(value, ast.Subscript):
        return _learned(ctx, value.value, depth + 1)
    if isinstance(value, ast.Attribute) and value.attr in _LAYER_PARAMETERS:
        return True  # `layer.weight` of a layer handed to an init helper (cleanrl's ppg)
    if isinstance(value, ast.Name | ast.Attribute):
        bound = [
            v
            for v in ctx.flow.definitions(value)
            if v is not value and not isinstance(ctx.parents.get(v), ast.AugAssign)
        ]  # `emb /= emb.norm()` rescales the value bound before
        return bool(bound) and all(_learned(ctx, v, depth + 1) for v in bound)
    return False


def _embeds(ctx: ModuleContext, node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr.startswith(_EMBEDDING_METHODS):
        return True
    return ctx.flow.is_model_call(node)


def _sum_terms(expr: ast.expr) -> list[ast.expr]:
    """The terms of `a + b - c` (one term for anything else)."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add | ast.Sub):
        return [*_sum_terms(expr.left), *_sum_terms(expr.right)]
    return [expr]


def _summed(expr: ast.expr) -> ast.expr | None:
    """What `x.sum(...)`, `torch.sum(x, ...)` or `np.sum(x)` adds up; None for anything else."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)):
        return None
    if expr.func.attr != "sum":
        return None
    owner = expr.func.value
    if isinstance(owner, ast.Name) and owner.id in ("torch", "np", "numpy"):
        return expr.args[0] if expr.args else None
    return owner


def _unguarded_overlap(ctx: ModuleContext, node: ast.AST, divisor: ast.expr) -> bool:
    """A Dice or IoU ratio written without a smoothing term: `(2 * (p * t).sum()) / (p.sum()
    + t.sum())`, `inter / (o.sum() + t.sum() - inter)`, in a function or class named for the
    overlap (`DiceLoss.forward`, `iou_score`): with an empty prediction and an empty target
    (a slice with no lesion) the quotient is 0 / 0."""
    if not isinstance(node, ast.BinOp) or not _OVERLAP_NAME.search(_owner_names(ctx, node)):
        return False
    terms = [
        (ctx.flow.reaching(term) or term) if isinstance(term, ast.Name) else term
        for term in _sum_terms(divisor)
    ]
    if len(terms) < 2 or any(_summed(term) is None for term in terms):
        return False  # `+ smooth`, `+ 1e-6`: a term that is no sum
    for part in walk_tree(node.left):
        value = part
        if isinstance(part, ast.Name):
            value = ctx.flow.reaching(part) or part
        for sub in walk_tree(value):
            summed = _summed(sub) if isinstance(sub, ast.expr) else None
            if isinstance(summed, ast.BinOp) and isinstance(summed.op, ast.Mult):
                return True  # the intersection: `(y_pred * y_true).sum()`
    return False


def _owner_names(ctx: ModuleContext, node: ast.AST) -> str:
    """The names of the function and class around `node`, joined."""
    return " ".join(
        a.name
        for a in ctx.ancestors(node)
        if isinstance(a, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    )
