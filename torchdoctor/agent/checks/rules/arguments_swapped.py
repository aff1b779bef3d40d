"""arguments-swapped: positional arguments named after each other's parameters."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import module_name, project_imports, project_symbol
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.patterns import root_name, terminal_name
from torchdoctor.agent.models import Severity

_SIGNATURES_KEY = "arguments_swapped.signatures"
_CALLS_KEY = "arguments_swapped.calls"


class ArgumentsSwapped(Rule):
    """Detects a call to a function or class of the project (the same module, or another file
    it imports from) whose arguments carry the names of each other's parameters:
    `cal_loss(pred, gold, smoothing, trg_pad_idx)` against `def cal_loss(pred, gold,
    trg_pad_idx, smoothing=False)`.

    Why it matters: Python binds positional arguments by position, not by name, so the two
    values trade places without an error; here the padding index became the smoothing flag
    and the flag the padding index, and the loss ignored the wrong token.
    jadore801120/attention-is-all-you-need-pytorch fixed exactly this (`13501ef`, "fix
    misplaced parameters"). The same slip swaps `(pred, target)`, `(height, width)` or
    `(in_channels, out_channels)`.

    An argument's name is its variable's name or the last attribute (`opt.smoothing`,
    `self.pad_idx`). A function of another file is matched by its import (`from losses import
    cal_loss`), and only when one file of the project defines it. Reported when two
    arguments (by position, or by keyword: `f(pred=target, target=pred)`) each carry the other
    one's parameter name. Not reported:
    a function calling itself (recursion often swaps on purpose: `gcd(b, a % b)`), functions
    with `*args`, calls that resolve to more than one local definition, operands of one role
    (`a`/`b`, `node1`/`node2`, `lhs`/`rhs`, `self`/`other`, `ind`/`ind_inv`: reversed on
    purpose, as in `gt(a, b): return lt(b, a)`), and `in`/`out` pairs
    (`Conv(out_channels, in_channels)`, demucs' decoder `HDecLayer(chout, chin)`: a layer
    mapping back). kimiyoung/transformer-xl's
    `self._update_mems(hids, mems, mlen, qlen)` against `def _update_mems(self, hids, mems,
    qlen, mlen)` is one such swap, reported in its issues #59, #96 and #118.

    Also reported, for a function of the same module: a parameter given `config.<another
    parameter's name>` while no argument carries its own name and the module shows `config`
    has a field of that name (`keep_best_trajectories(dataset, config.frac, config.frac)`
    against `def keep_best_trajectories(dataset, frac, discount)`, `config.discount` read
    elsewhere): corl-team/CORL fixed exactly this (`cabbf3c`). One value given to two
    parameters when the config has no field of the second's name (`Block(args.dim,
    args.dim)`) and `self.` attributes stay silent.

    Also reported: a torch loss whose inputs play different roles (cross-entropy, NLL, binary
    cross-entropy with or without logits, multi-label soft margin: `(input, target)`) given
    a target-named value first and a prediction-named one second
    (`nn.BCEWithLogitsLoss()(targets.view(-1, 1), outputs)`): the labels are scored as
    logits against the predictions, silently when the shapes agree. Symmetric losses (MSE,
    L1) and `kl_div` (whose order distillation code writes either way) are not.

    Example:
        def cal_loss(pred, gold, trg_pad_idx, smoothing=False): ...
        loss = cal_loss(pred, gold, smoothing, trg_pad_idx)

    Fix: pass them in the parameters' order, or by keyword
    (`cal_loss(pred, gold, trg_pad_idx, smoothing=smoothing)`).
    """

    id = "arguments-swapped"
    point = 1
    severity = Severity.HIGH
    title = "Arguments passed in each other's places"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def finish(self, ctx: ModuleContext) -> None:
        _publish_signatures(ctx)
        if "oss" in ctx.source or "entropy" in ctx.source:
            self._loss_operands_swapped(ctx)
        signatures = _local_signatures(ctx)
        imported = project_imports(ctx)
        if not signatures and not imported:
            return
        candidates: list[dict[str, Any]] = []
        for node in ctx.nodes_by_type().get(ast.Call, ()):
            assert isinstance(node, ast.Call)
            if len(node.args) + len(node.keywords) < 2:
                continue
            local = signatures.get(terminal_name(node.func), ())
            if not local and root_name(node.func) not in imported:
                continue  # neither a local name nor an import of the project's
            names = [terminal_name(a) for a in node.args]
            names += [terminal_name(k.value) for k in node.keywords]
            if len({n for n in names if n}) < 2:
                continue  # fewer than two names: nothing to swap
            if any(
                _swapped_names(bound) is not None or _misplaced_names(bound, params) is not None
                for params in local
                for bound in [_bind_names(params, node)]
            ):
                self._check_local(ctx, node)  # a local definition of that name would swap
            elif not local:
                candidate = self._candidate(ctx, node)
                if candidate is not None:
                    candidates.append(candidate)
        if candidates:
            ctx.facts[_CALLS_KEY] = candidates

    def _loss_operands_swapped(self, ctx: ModuleContext) -> None:
        """A torch loss whose inputs play different roles (`(input, target)`: cross-entropy,
        NLL, binary cross-entropy with or without logits) given the targets first and the
        model's outputs second, by their names (`criterion(targets.view(-1, 1), outputs)`)."""
        for node in ctx.flow.nodes(ast.Call):
            if len(node.args) < 2:
                continue
            first, second = (_operand_name(a) for a in node.args[:2])
            if not (_TARGET_NAME.match(first) and _PREDICTION_NAME.match(second)):
                continue
            loss = _asymmetric_loss(ctx, node)
            if loss is None:
                continue
            ctx.report(
                self,
                node,
                f"`{loss}` takes (input, target), but this call passes `{first}` as the input "
                f"and `{second}` as the target: the loss of the labels given the predictions "
                "is computed, with no error when the shapes agree",
                data={"loss": loss, "operands": [first, second]},
            )

    def _check_local(self, ctx: ModuleContext, node: ast.Call) -> None:
        calls = ctx.calls
        targets = calls.resolve(node)
        if len(targets) != 1 or targets[0].args.vararg is not None:
            return
        fn = targets[0]
        if ctx.enclosing_function(node) is fn:
            return
        bound = calls.bind(node, fn)
        swapped = _swapped(list(bound.items()))
        if swapped is not None:
            slots = [dict(_slot(node, bound[param]), param=param) for param in swapped]
            ctx.report(
                self, node, _message(fn.name, *swapped), data={"callee": fn.name, "swap": slots}
            )
            return
        misplaced = _misplaced(ctx, bound)
        if misplaced is not None:
            param, argument = misplaced
            ctx.report(self, argument, _misplaced_message(fn.name, param, argument))

    def _candidate(self, ctx: ModuleContext, node: ast.Call) -> dict[str, Any] | None:
        """A call of another file's function with two or more named arguments: its callee,
        the names passed (by position, by keyword) and its finding, for the project pass to
        judge against the callee's parameters."""
        symbol = project_symbol(ctx, node.func)
        if symbol is None or any(isinstance(a, ast.Starred) for a in node.args):
            return None
        positional = [terminal_name(a) for a in node.args]
        keywords = {k.arg: terminal_name(k.value) for k in node.keywords if k.arg}
        if sum(bool(n) for n in [*positional, *keywords.values()]) < 2:
            return None
        found = ctx.finding(self, node, "")
        if found is None:
            return None
        return {
            "callee": symbol,
            "positional": positional,
            "keywords": keywords,
            "finding": found.model_dump(mode="json"),
        }

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """Calls of another file's function judged against its parameters."""
        signatures: dict[str, list[tuple[str, list[str]]]] = {}
        for module, module_facts in facts.items():
            for name, params in module_facts.get(_SIGNATURES_KEY, {}).items():
                signatures.setdefault(name, []).append((module_name(module), params))
        found: list[RawFinding] = []
        for module_facts in facts.values():
            for candidate in module_facts.get(_CALLS_KEY, []):
                where, _, name = candidate["callee"].rpartition(".")
                defined = _defined(signatures.get(name, []), where)
                if len(defined) != 1:
                    continue  # unknown, or defined in several files: no telling which
                params = defined[0]
                bound = list(zip(params, candidate["positional"], strict=False))
                bound += [(k, v) for k, v in candidate["keywords"].items() if k in params]
                swapped = _swapped_names(bound)
                if swapped is not None:
                    passed = len(candidate["positional"])
                    slots = [
                        {"param": p, "position": params.index(p)}
                        if params.index(p) < passed
                        else {"param": p, "keyword": p}
                        for p in swapped
                    ]
                    finding = dict(
                        candidate["finding"],
                        message=_message(name, *swapped),
                        data={"callee": name, "swap": slots},
                    )
                    found.append(RawFinding.model_validate(finding))
        return found


def _slot(call: ast.Call, argument: ast.expr) -> dict[str, Any]:
    """Where `argument` sits in `call`: its position, or its keyword (for the codemod)."""
    for index, positional in enumerate(call.args):
        if positional is argument:
            return {"position": index}
    keyword = next(k.arg for k in call.keywords if k.value is argument)
    return {"keyword": keyword}


def _defined(definitions: list[tuple[str, list[str]]], where: str) -> list[list[str]]:
    """The parameter lists of the definitions an import from `where` may mean: the module
    of that name, else every module whose dotted name ends (or `where` ends) with it."""
    exact = [params for module, params in definitions if module == where]
    if exact or not where:
        return exact
    return [
        params
        for module, params in definitions
        if module.endswith("." + where) or where.endswith("." + module)
    ]


def _publish_signatures(ctx: ModuleContext) -> None:
    """This module's top-level functions and classes -> the parameter names a call binds
    (a class: its `__init__`'s, without `self`); those taking `*args` left out."""
    signatures: dict[str, list[str]] = {}
    for stmt in ctx.tree.body:
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        fn: ast.FunctionDef | ast.AsyncFunctionDef | None = None
        skip = 0
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            fn = stmt
        else:
            fn = next(
                (s for s in stmt.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
                None,
            )
            skip = 1
        if fn is None or fn.args.vararg is not None:
            continue
        params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]][skip:]
        if len(params) + len(fn.args.kwonlyargs) >= 2:
            signatures[stmt.name] = params + [a.arg for a in fn.args.kwonlyargs]
    if signatures:
        ctx.facts[_SIGNATURES_KEY] = signatures


def _message(function: str, first: str, second: str) -> str:
    return (
        f"`{function}` takes `{first}` before `{second}`, but this call passes `{second}` as "
        f"`{first}` and `{first}` as `{second}`: arguments bind by position (or by the "
        "keyword given), not by the variable's name, so the two values trade places "
        "silently. Pass each under its own parameter."
    )


def _local_signatures(ctx: ModuleContext) -> dict[str, list[list[str]]]:
    """Name -> the parameter lists of this module's functions, methods (without `self`) and
    classes (their `__init__`'s) of that name: a cheap first look before resolving a call."""
    found: dict[str, list[list[str]]] = {}
    by_type = ctx.nodes_by_type()
    for kind in (ast.FunctionDef, ast.AsyncFunctionDef):
        for fn in by_type.get(kind, ()):
            assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
            if params and params[0] in ("self", "cls"):
                params = params[1:]
            params += [a.arg for a in fn.args.kwonlyargs]
            owner = ctx.parents.get(fn)
            name = (
                owner.name if fn.name == "__init__" and isinstance(owner, ast.ClassDef) else fn.name
            )
            found.setdefault(name, []).append(params)
    return found


def _bind_names(params: list[str], call: ast.Call) -> list[tuple[str, str]]:
    bound = [(p, terminal_name(a)) for p, a in zip(params, call.args, strict=False)]
    return bound + [(k.arg, terminal_name(k.value)) for k in call.keywords if k.arg in params]


def _swapped(bound: list[tuple[str, ast.expr]]) -> tuple[str, str] | None:
    """The first pair of parameters whose arguments carry each other's names."""
    return _swapped_names([(param, terminal_name(arg)) for param, arg in bound])


def _swapped_names(names: list[tuple[str, str]]) -> tuple[str, str] | None:
    """`_swapped` of (parameter, the argument's name) pairs."""
    for i, (first, first_arg) in enumerate(names):
        if not first_arg or first_arg == first:
            continue
        for second, second_arg in names[i + 1 :]:
            if (
                first_arg == second
                and second_arg == first
                and not _mirrored(first, second)
                and not _interchangeable(first, second)
            ):
                return first, second
    return None


def _misplaced_names(bound: list[tuple[str, str]], params: list[str]) -> tuple[str, str] | None:
    """The first (parameter, argument name) where the argument carries the name of another
    of the callee's parameters and no argument carries this parameter's name."""
    passed = {arg for _, arg in bound}
    for param, arg in bound:
        if arg and arg != param and arg in params and param not in passed:
            return param, arg
    return None


def _misplaced(ctx: ModuleContext, bound: dict[str, ast.expr]) -> tuple[str, ast.expr] | None:
    """A parameter given `config.<other parameter>` while the module shows that `config` has
    a field of this parameter's own name (read as `config.<param>`, or a config class's
    field): `keep_best_trajectories(dataset, config.frac, config.frac)`, `discount` given
    the fraction though `config.discount` exists."""
    names = [(param, terminal_name(arg)) for param, arg in bound.items()]
    passed = {name for _, name in names}
    for param, arg in bound.items():
        name = terminal_name(arg)
        if (
            not isinstance(arg, ast.Attribute)
            or not isinstance(arg.value, ast.Name)
            or arg.value.id in ("self", "cls")
            or name == param
            or name not in bound
            or param in passed
        ):
            continue
        if param in _fields_of(ctx, arg.value.id):
            return param, arg
    return None


def _fields_of(ctx: ModuleContext, receiver: str) -> set[str]:
    """Attributes the module reads on `receiver` (`config.discount`), and the fields of the
    module's config classes (class-level annotated names)."""
    memo = ctx.memo_table("arguments_swapped.fields")
    if receiver not in memo:
        fields: set[str] = set()
        for node in ctx.nodes_by_type().get(ast.Attribute, ()):
            assert isinstance(node, ast.Attribute)
            if isinstance(node.value, ast.Name) and node.value.id == receiver:
                fields.add(node.attr)
        for cls in ctx.nodes_by_type().get(ast.ClassDef, ()):
            assert isinstance(cls, ast.ClassDef)
            fields |= {
                s.target.id
                for s in cls.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
        memo[receiver] = fields
    found: set[str] = memo[receiver]
    return found


def _misplaced_message(function: str, param: str, argument: ast.expr) -> str:
    shown = ast.unparse(argument)
    assert isinstance(argument, ast.Attribute) and isinstance(argument.value, ast.Name)
    return (
        f"`{function}`'s `{param}` receives `{shown}`, the value meant for its "
        f"`{argument.attr}` parameter, though `{argument.value.id}.{param}` exists: the "
        f"function runs with `{param}` equal to `{argument.attr}`. Pass "
        f"`{argument.value.id}.{param}`."
    )


_IN_OUT = {"in": "out", "input": "output", "inp": "out", "inputs": "outputs"}
_MIRROR = {**_IN_OUT, **{out: inp for inp, out in _IN_OUT.items()}}


_SYMMETRIC = frozenset(
    frozenset(pair)
    for pair in (
        ("lhs", "rhs"), ("left", "right"), ("self", "other"), ("first", "second"),
        ("old", "new"), ("before", "after"), ("prev", "next"), ("this", "that"),
        ("src", "dst"), ("row", "col"), ("u", "v"), ("up", "down"),
    )
)  # fmt: skip
"""Parameter pairs that name two operands of one role: a call that passes them the other way
round reverses the operation on purpose (`lt(b, a)` for `gt`, `sub(other, self)`; a
resampling's gradient is the resampling with `up=down, down=up`, StyleGAN2-ADA's
`upfirdn2d` backward)."""
_TRAILING_INDEX = re.compile(r"_?\d+$")
_DERIVED = re.compile(
    r"^(?:inv|rev|reverse|inverse|other|neg)_|_(?:inv|rev|t|T|inverse|other|neg)$"
)


def _interchangeable(first: str, second: str) -> bool:
    """Two operands of one role, which a caller may swap on purpose: placeholders of one or
    two letters (`a`/`b`, `x`/`y`), numbered copies (`node1`/`node2`, `n0`/`n1`), a name and
    its inverse (`ind`/`ind_inv`), or a symmetric pair (`lhs`/`rhs`, `self`/`other`). Library
    code reverses such operands constantly (torch's own sources: `can_fuse(node2, node1)`,
    `supercedes(b, a)`, `trivial_solve(rhs, lhs)`)."""
    if len(first) <= 2 and len(second) <= 2:
        return True
    if _TRAILING_INDEX.sub("", first) == _TRAILING_INDEX.sub("", second):
        return True
    if _DERIVED.sub("", first) == second or _DERIVED.sub("", second) == first:
        return True
    return frozenset((first.lower(), second.lower())) in _SYMMETRIC


def _mirrored(first: str, second: str) -> bool:
    """`in_channels` / `out_channels`: a layer that maps back (a bottleneck's expansion, a
    decoder mirroring its encoder) passes them the other way round on purpose."""
    a, b = first.lower().split("_"), second.lower().split("_")
    if len(a) != len(b):
        return False
    return all(_mirrored_part(x, y) for x, y in zip(a, b, strict=True))


def _mirrored_part(x: str, y: str) -> bool:
    """One part of the two names: equal, an in/out pair, or the same stem with `in`/`out`
    before or after it (demucs' `chin`/`chout`, `inplanes`/`outplanes`, `nin`/`nout`)."""
    if x == y or _MIRROR.get(x) == y:
        return True
    for one, other in _IN_OUT.items():
        for a, b in ((one, other), (other, one)):
            if x.endswith(a) and y.endswith(b) and x[: -len(a)] and x[: -len(a)] == y[: -len(b)]:
                return True
            if x.startswith(a) and y.startswith(b) and x[len(a) :] and x[len(a) :] == y[len(b) :]:
                return True
    return False


# torch losses whose two inputs play different roles: swapped, they compute another quantity
# (the labels scored as logits) with no error when the shapes agree. Symmetric losses (MSE,
# L1) and `kl_div` (its argument order varies in distillation code) are left out.
_ASYMMETRIC_MODULES = frozenset(
    {"CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "MultiLabelSoftMarginLoss"}
)
_ASYMMETRIC_FUNCTIONS = frozenset(
    {
        "torch.nn.functional.cross_entropy",
        "torch.nn.functional.nll_loss",
        "torch.nn.functional.binary_cross_entropy",
        "torch.nn.functional.binary_cross_entropy_with_logits",
        "torch.nn.functional.multilabel_soft_margin_loss",
    }
)
_TARGET_NAME = re.compile(
    r"^(targets?|labels?|y|y_?true|gts?|gold|ground_?truths?|true_labels?|batch_(labels?|targets?))$"
)
_PREDICTION_NAME = re.compile(
    r"^(outputs?|preds?|predictions?|logits|y_?pred|y_?hat|yhat|out|scores|probs)$"
)
# tensor methods that keep a value's role (`targets.view(-1, 1)`, `labels.float()`,
# `logits.sigmoid()`: predictions still)
_ROLE_KEEPING = frozenset(
    {
        *("view", "reshape", "float", "long", "squeeze", "unsqueeze", "flatten", "to"),
        *("type", "contiguous", "cuda", "detach", "double", "half"),
        *("sigmoid", "softmax", "log_softmax"),
    }
)


def _operand_name(expr: ast.expr) -> str:
    """The name a loss operand is read from, through role-keeping tensor methods."""
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in _ROLE_KEEPING
    ):
        expr = expr.func.value
    return terminal_name(expr)


def _asymmetric_loss(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The loss `call` computes when it is one of the asymmetric torch losses, else None."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual.rsplit(".", 1)[-1] if qual in _ASYMMETRIC_FUNCTIONS else None
    made = ctx.flow.loss_class(call.func)
    return made if made in _ASYMMETRIC_MODULES else None
