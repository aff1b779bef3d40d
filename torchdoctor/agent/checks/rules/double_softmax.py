"""double-softmax: probabilities (softmax/log_softmax output) fed to cross-entropy."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.loss_inputs import loss_inputs, model_parameter
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    Property,
    defer,
    imported_models,
    is_package_init,
    passed_for_parameter,
    publish,
    publish_model_passes,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule, related_place
from torchdoctor.agent.checks.dataflow import first_argument
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.patterns import argument, constant_int
from torchdoctor.agent.models import Severity

_SOFTMAX_FUNCTIONS = frozenset(
    {
        "torch.nn.functional.softmax",
        "torch.nn.functional.log_softmax",
        "torch.softmax",
        "torch.log_softmax",
        "torch.special.softmax",
        "torch.special.log_softmax",
    }
)
_SOFTMAX_MODULES = frozenset({"torch.nn.Softmax", "torch.nn.LogSoftmax"})
_DEFERRED: tuple[tuple[str, Property], ...] = (
    ("softmax", "output:softmax"),
    ("log_softmax", "output:log_softmax"),
)


def _has_cross_entropy(ctx: ModuleContext) -> bool:
    return "cross_entropy" in ctx.source or "CrossEntropyLoss" in ctx.source


def _softmax_dim(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, object] | None:
    """(input, dim) of `x.softmax(d)` / `F.softmax(x, dim=d)` with a constant dim; None for
    anything else (a log-softmax included: a softmax of log-probabilities is another shape)."""
    qualname = ctx.flow.qualname_of(call)
    func = call.func
    if qualname in ("torch.nn.functional.softmax", "torch.softmax", "torch.special.softmax"):
        if not call.args:
            return None
        value, dim = call.args[0], argument(call, "dim", 1)
    elif qualname is None and isinstance(func, ast.Attribute) and func.attr == "softmax":
        value, dim = func.value, argument(call, "dim", 0)
    else:
        return None
    number = constant_int(dim)
    return None if number is None else (value, number)


class DoubleSoftmax(Rule):
    """Detects a softmax or log-softmax output passed as the input of `nn.CrossEntropyLoss`
    or `F.cross_entropy`: `F.softmax(...)`, `x.softmax(dim)`, an `nn.Softmax` module,
    `torch.exp` of a log-softmax (a softmax written the long way), the per-step softmax
    outputs a local list collects and `torch.stack`/`torch.cat` joins (a decoder's
    `y_all.append(F.softmax(self.mlp(h), dim=1))`, then `torch.stack(y_all, dim=1)`; not when
    any appended value is not a softmax's output), or a
    model whose last layer (`nn.Sequential(..., nn.Softmax(1))`, the last `add_module` of an
    empty `nn.Sequential()` built by a helper, the layer a wrapper module is called with:
    `self.cd4(x, nn.Sequential(self.fc4, self.softmax))`) or `forward` return is a softmax,
    followed through variables, attributes (`self.criterion`), local functions and the
    arguments a module's calls pass for a `model` parameter; `criterion.forward(fx, y)` counts
    as a criterion call.
    A training wrapper given this file's module and `criterion=nn.CrossEntropyLoss` (skorch's
    `NeuralNet(MyModule, criterion=...)`) is reported at the softmax its `forward` returns.
    So is a model defined in another file (imported, or passed in by a caller): one finding
    on the softmax, where it is fixed, with each loss that receives it as a related location;
    likewise a softmax applied in another function of the file than the loss call (a model's
    `forward`, an activation helper such as `_activation_fn`), while one applied beside the
    loss is reported at the loss. A loss helper (`def auxiliary_loss(self, y_hat, y): return
    F.cross_entropy(y_hat, y)`) is followed to what its calls pass for its input.

    Also reported, loss or not: a softmax of a softmax over the same dim, nested
    (`F.softmax(F.softmax(z, -1), -1)`) or through the name's nearest binding above
    (`p = p.softmax(dim=1)` on the MAP branch, then `torch.max(p.softmax(dim=1), 1)`).

    Why it matters: cross-entropy applies `log_softmax` itself. Fed probabilities, it computes
    the loss of a softmax of probabilities: gradients shrink, the loss plateaus near ln(C) and
    accuracy stalls, without any error.

    Example:
        criterion = nn.CrossEntropyLoss()
        probs = F.softmax(model(x), dim=1)
        loss = criterion(probs, y)

    Fix: pass the logits to the loss and apply softmax only where probabilities are needed
    (metrics, inference). If the model must output log-probabilities, use `nn.NLLLoss`.
    """

    id = "double-softmax"
    point = 3
    severity = Severity.HIGH
    title = "Softmax applied before CrossEntropyLoss"
    items: ClassVar[tuple[str, ...]] = ("3.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return _has_cross_entropy(ctx) or "softmax" in ctx.source

    def _softmax_of_probabilities(self, ctx: ModuleContext) -> None:
        """`p = logits.softmax(dim=1)` (on some path), then `p.softmax(dim=1)` again, or
        `F.softmax(F.softmax(x, 1), 1)`: the second softmax flattens probabilities that
        already sum to one (each row's confidence shrinks toward 1/C)."""
        flow = ctx.flow
        for call in flow.nodes(ast.Call):
            outer = _softmax_dim(ctx, call)
            if outer is None:
                continue
            value, dim = outer
            inner: list[ast.expr] = [value]
            if isinstance(value, ast.Name):
                statement = next((a for a in ctx.ancestors(call) if isinstance(a, ast.stmt)), None)
                scope = ctx.enclosing_function(call)
                before = [
                    bound
                    for bound in flow.definitions(value)
                    if bound.lineno < call.lineno
                    and ctx.enclosing_function(bound) is scope
                    and not any(a is statement for a in ctx.ancestors(bound))
                ]
                # the binding nearest above: an earlier one rebound since says nothing
                inner = [max(before, key=lambda b: b.lineno)] if before else []
            for bound in inner:
                first = _softmax_dim(ctx, bound) if isinstance(bound, ast.Call) else None
                if first is not None and first[1] == dim:
                    ctx.report(
                        self,
                        call,
                        f"`{ast.unparse(call)}` applies a softmax to `{ast.unparse(value)}`, "
                        f"already a softmax over the same dim (line {bound.lineno}): the "
                        "probabilities are flattened toward uniform",
                        data={"softmax_of_probabilities": True},
                    )
                    break

    def finish(self, ctx: ModuleContext) -> None:
        if "oftmax" in ctx.source or is_package_init(ctx):
            publish(ctx)
        publish_model_passes(ctx)
        if "softmax" in ctx.source:
            self._softmax_of_probabilities(ctx)
        if not _has_cross_entropy(ctx):
            return
        flow = ctx.flow
        layers_reported: set[int] = set()  # one finding per softmax layer, not per loss
        # softmax applied in another function (a forward, an activation helper) -> the loss
        # sites it reaches: one finding there, where it is fixed
        elsewhere: dict[int, tuple[ast.Call, list[ast.Call]]] = {}
        for node in flow.nodes(ast.Call):
            if not _is_cross_entropy(ctx, node):
                continue
            received = first_argument(node, "input")
            if received is None:
                continue
            for logits, site in loss_inputs(ctx, node, received):
                self._check_input(ctx, node, logits, site, layers_reported, elsewhere)
        self._report_at_softmax(ctx, elsewhere)

        if "oftmax" in ctx.source:
            self._check_paired_criterion(ctx)

    def _check_input(
        self,
        ctx: ModuleContext,
        node: ast.Call,
        logits: ast.expr,
        site: ast.Call,
        layers_reported: set[int],
        elsewhere: dict[int, tuple[ast.Call, list[ast.Call]]],
    ) -> None:
        """`logits` reaches the cross-entropy call `node`; `site` is where it is handed to
        the loss: `node` itself, or the call of a loss helper that passes it on. A softmax
        applied in another function than `site`'s is collected in `elsewhere`."""
        flow = ctx.flow
        through = (
            "" if site is node else f" (through `{ast.unparse(site.func)}`, line {node.lineno})"
        )
        softmax = None
        if "oftmax" in ctx.source:
            softmax = next((p for p in flow.value_producers(logits) if _is_softmax(ctx, p)), None)
            if softmax is None:
                softmax = _stacked_softmax(ctx, logits)
        if softmax is not None and not (
            _is_log_softmax(ctx, softmax) and _may_expect_log_probabilities(ctx, node)
        ):
            owner = ctx.enclosing_function(softmax)
            if owner is not None and owner is not ctx.enclosing_function(site):
                if not ctx.suppressed(self.id, site.lineno):
                    sites = elsewhere.setdefault(id(softmax), (softmax, []))[1]
                    if all(other is not site for other in sites):
                        sites.append(site)
                return
            ctx.report(
                self,
                site,
                f"cross-entropy{through} receives `{ast.unparse(logits)}`, the output of a "
                f"softmax (line {softmax.lineno}); it applies log_softmax again",
                data={"softmax_line": softmax.lineno},
            )
            return
        element = _softmax_element(ctx, logits)
        if element is not None:
            layer, model_call = element
            if id(layer) in layers_reported:
                return
            layers_reported.add(id(layer))
            ctx.report(
                self,
                layer,
                f"`{ast.unparse(model_call.func)}` returns this softmax's output as "
                f"`{ast.unparse(logits)}`, and line {site.lineno} feeds it to "
                "cross-entropy, which applies log_softmax again",
                data={"loss_line": site.lineno},
            )
            return
        symbols = imported_models(ctx, logits)
        if not symbols:
            _defer_through_parameter(self, ctx, site, logits)
        for symbol in symbols:
            for kind, needs in _DEFERRED:
                found = ctx.finding(
                    self,
                    site,
                    f"cross-entropy{through} receives `{ast.unparse(logits)}`, the output "
                    f"of `{symbol}`, whose forward ends in {kind}; it applies log_softmax "
                    "again",
                    data={"model": symbol},
                )
                if found is not None:
                    defer(
                        ctx,
                        self.id,
                        Pending(symbol=symbol, needs=needs, finding=found),
                    )

    def _report_at_softmax(
        self, ctx: ModuleContext, elsewhere: dict[int, tuple[ast.Call, list[ast.Call]]]
    ) -> None:
        """One finding on each softmax that a function of the module applies (a `forward`
        returning `F.softmax(...)`, an activation helper) and cross-entropy receives in
        another: the fix goes there, each loss call that receives it a related location."""
        for softmax, sites in elsewhere.values():
            first_on_line = {site.lineno: site for site in reversed(sites)}
            lines = sorted(first_on_line)
            losses = [
                f for line in lines if (f := ctx.finding(self, first_on_line[line], "")) is not None
            ]
            log = _is_log_softmax(ctx, softmax)
            fix = (
                "return the logits, or train with nn.NLLLoss"
                if log
                else "return the logits and apply softmax only where probabilities are needed"
            )
            listed = ", ".join(map(str, lines))
            ctx.report(
                self,
                softmax,
                f"this {'log-softmax' if log else 'softmax'} ({_place(ctx, softmax)}) produces "
                f"what cross-entropy receives (line{'s' if len(lines) > 1 else ''} {listed}), "
                f"and cross-entropy applies log_softmax again: {fix}",
                data={
                    "loss_line": sites[0].lineno,
                    "related": [
                        related_place(loss, "cross-entropy receives the softmax output here")
                        for loss in losses
                    ],
                },
            )

    def _check_paired_criterion(self, ctx: ModuleContext) -> None:
        """`NeuralNet(MyModule, criterion=nn.CrossEntropyLoss)`: a wrapper given a model and
        the loss it trains it with, the model's `forward` ending in softmax."""
        for call in ctx.flow.nodes(ast.Call):
            criterion = next((k.value for k in call.keywords if k.arg in _CRITERIA), None)
            if criterion is None or not _names_cross_entropy(ctx, criterion):
                continue
            given = [*call.args, *(k.value for k in call.keywords if k.arg in _MODELS)]
            for model in given:
                softmax = _softmax_returned_by(ctx, model)
                if softmax is not None:
                    ctx.report(
                        self,
                        softmax,
                        f"`{ast.unparse(model)}` returns this softmax, and line {call.lineno} "
                        f"trains it with `{ast.unparse(criterion)}`, which applies "
                        "log_softmax again",
                        data={"criterion_line": call.lineno},
                    )
                    break

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed_at_outputs(
            facts,
            cls.id,
            lambda model, kind, losses: (
                f"`{model}.forward` returns this {kind}'s output, and cross-entropy receives "
                f"it ({losses}), which applies log_softmax again"
            ),
            "cross-entropy receives the model's output here",
        )


# The keywords a training wrapper takes its loss and its model by (skorch's `NeuralNet`,
# trainer classes): `Wrapper(Module, criterion=nn.CrossEntropyLoss)`.
_CRITERIA = frozenset({"criterion", "loss", "loss_fn", "loss_func", "loss_function"})
_MODELS = frozenset({"module", "model", "net", "network"})


def _stacked_softmax(ctx: ModuleContext, logits: ast.expr) -> ast.Call | None:
    """A softmax whose per-step outputs a local list collects and `torch.stack`/`torch.cat`
    joins into `logits` (a decoder's `y_all.append(F.softmax(self.mlp(h), dim=1))`, then
    `torch.stack(y_all, dim=1).view(-1, vocab)`): every step's scores are probabilities.
    Only when every appended value is a softmax's output."""
    flow = ctx.flow
    for joined in flow.producers(logits):
        elements = flow.stacked_elements(joined)
        if not elements:
            continue
        found = [
            next((p for p in flow.value_producers(e) if _is_softmax(ctx, p)), None)
            for e in elements
        ]
        if all(f is not None for f in found):
            return found[0]
    return None


def _place(ctx: ModuleContext, node: ast.AST) -> str:
    """`in `Net.forward``, or `a layer of `Classifier`` for one built in `__init__`."""
    owner = ctx.enclosing_function(node)
    if owner is None:
        return "at module level"
    cls = next((a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None)
    if cls is not None and owner.name == "__init__":
        return f"a layer of `{cls.name}`"
    return f"in `{cls.name}.{owner.name}`" if cls is not None else f"in `{owner.name}`"


def _names_cross_entropy(ctx: ModuleContext, value: ast.expr) -> bool:
    """`nn.CrossEntropyLoss`, `nn.CrossEntropyLoss()`, `F.cross_entropy` as a value."""
    target = value.func if isinstance(value, ast.Call) else value
    return ctx.qualname(target) in (
        "torch.nn.CrossEntropyLoss",
        "torch.nn.functional.cross_entropy",
    )


def _softmax_returned_by(ctx: ModuleContext, model: ast.expr) -> ast.Call | None:
    """The softmax call a module class of this file (`MyModule`, or an instance of it)
    returns from every `return` of its `forward`."""
    cls = None
    if isinstance(model, ast.Name) and model.id in ctx.flow.classes:
        cls = ctx.flow.classes[model.id]
    elif isinstance(model, ast.Name | ast.Attribute | ast.Call):
        cls = ctx.flow.local_class(model)
    forward = ctx.calls.method(cls.name, "forward") if cls is not None else None
    if forward is None:
        return None
    found: ast.Call | None = None
    for node in walk_tree(forward):
        if isinstance(node, ast.Return) and node.value is not None:
            softmax = next((p for p in ctx.flow.producers(node.value) if _is_softmax(ctx, p)), None)
            if softmax is None or _is_log_softmax(ctx, softmax):
                return None
            found = found or softmax
    return found


def _softmax_element(ctx: ModuleContext, logits: ast.expr) -> tuple[ast.Call, ast.Call] | None:
    """(the softmax, the model call) when `logits` is one element of a local model's tuple
    output (`validity, label = discriminator(imgs)`) that every `return` of its `forward`
    produces with a softmax, directly or as the last layer of an `nn.Sequential`
    (PyTorch-GAN's ACGAN auxiliary head `nn.Sequential(nn.Linear(...), nn.Softmax())`)."""
    if not isinstance(logits, ast.Name):
        return None
    for value in ctx.flow.definitions(logits):
        stmt = ctx.parents.get(value)
        if not (
            isinstance(value, ast.Call)
            and isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Tuple)
            and ctx.flow.is_model_call(value)
        ):
            continue
        names = [e.id if isinstance(e, ast.Name) else "" for e in stmt.targets[0].elts]
        if logits.id not in names:
            continue
        index = names.index(logits.id)
        cls = ctx.flow.local_class(value.func)
        forward = ctx.calls.method(cls.name, "forward") if cls is not None else None
        if forward is None:
            continue
        layers: list[ast.Call | None] = [
            _softmax_producing(ctx, node.value.elts[index])
            if isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(names)
            else None
            for node in walk_tree(forward)
            if isinstance(node, ast.Return) and node.value is not None
        ]
        first = layers[0] if layers else None
        complete = first is not None and all(layer is not None for layer in layers)
        if first is not None and complete and not _is_log_softmax(ctx, first):
            return first, value
    return None


def _softmax_producing(ctx: ModuleContext, value: ast.expr) -> ast.Call | None:
    """The softmax that produces `value`: a softmax call, or the last layer of the
    `nn.Sequential` that does."""
    for producer in ctx.flow.producers(value):
        if _is_softmax(ctx, producer):
            return producer
        if ctx.flow.constructed_as(producer.func) != "torch.nn.Sequential":
            return None
        for built in ctx.flow.constructors(producer.func):
            last = built.args[-1] if built.args else None
            if (
                ctx.flow.qualname_of(built) == "torch.nn.Sequential"
                and isinstance(last, ast.Call)
                and _is_softmax(ctx, last)
            ):
                return last
        return None
    return None


def _defer_through_parameter(
    rule: DoubleSoftmax, ctx: ModuleContext, node: ast.Call, logits: ast.expr
) -> None:
    """`log_probs = net(images)` with `net` a parameter (`def train(self, net)`): pending on
    the classes other files pass for it (`local.train(net=copy.deepcopy(net_glob))`)."""
    found = model_parameter(ctx, logits)
    if found is None:
        return
    function, parameter, position = found
    for kind, needs in _DEFERRED:
        finding = ctx.finding(
            rule,
            node,
            f"cross-entropy receives `{ast.unparse(logits)}`, the output of the model "
            f"passed as `{parameter}`, whose forward ends in {kind} (in a caller's class); "
            "it applies log_softmax again",
            data={"parameter": parameter},
        )
        if finding is not None:
            pending = Pending(
                symbol=function,
                needs=needs,
                finding=finding,
                parameter=parameter,
                position=position,
            )
            defer(ctx, rule.id, pending)


def _may_expect_log_probabilities(ctx: ModuleContext, call: ast.Call) -> bool:
    """The criterion called may also be a loss made for log-probabilities (`CTCLoss`,
    `NLLLoss`, `KLDivLoss`): chosen on a flag beside `CrossEntropyLoss` (deep-text-recognition's
    CTC or attention head), a `log_softmax` input is the one that loss needs."""
    return any(
        (ctx.flow.qualname_of(made) or "").rsplit(".", 1)[-1] in _LOG_PROBABILITY_LOSSES
        for callee in (call.func, *passed_for_parameter(ctx, call.func))
        for made in ctx.flow.constructors(callee)
    )


_LOG_PROBABILITY_LOSSES = frozenset({"CTCLoss", "NLLLoss", "KLDivLoss"})


def _is_cross_entropy(ctx: ModuleContext, call: ast.Call) -> bool:
    """`F.cross_entropy(...)`, or a call of a criterion built as `nn.CrossEntropyLoss`
    (`criterion(...)` or `criterion.forward(...)`): by the callee's own bindings, or when it
    is a parameter of a module-level function (`def train(loader, model, criterion, ...)`),
    by what this module's calls pass for it."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual == "torch.nn.functional.cross_entropy"
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        func = func.value  # `loss.forward(fx, y)`: the criterion's forward, called directly
    return any(
        _builds_cross_entropy(ctx, callee) for callee in (func, *passed_for_parameter(ctx, func))
    )


def _builds_cross_entropy(ctx: ModuleContext, callee: ast.expr) -> bool:
    if ctx.flow.loss_class(callee) is None:  # no torch loss module at all (cheap)
        return False
    # a criterion chosen on a flag may be cross-entropy whichever choice is written first
    return any(
        ctx.flow.qualname_of(made) == "torch.nn.CrossEntropyLoss"
        for made in ctx.flow.constructors(callee)
    )


def _is_softmax(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call)
    exponentiated = _exp_argument(call, qual)
    if exponentiated is not None:  # exp(log_softmax(z)) is softmax(z)
        return any(
            _is_softmax(ctx, p) and _is_log_softmax(ctx, p)
            for p in ctx.flow.producers(exponentiated)
        )
    if qual in _SOFTMAX_FUNCTIONS or qual in _SOFTMAX_MODULES:
        return True
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("softmax", "log_softmax") and qual is None:
        return not ctx.flow.is_module_value(func.value)
    return qual is None and ctx.flow.constructed_as(func) in _SOFTMAX_MODULES


def _exp_argument(call: ast.Call, qual: str | None) -> ast.expr | None:
    """`z` in `torch.exp(z)` and `z.exp()`."""
    if qual == "torch.exp" and call.args:
        return call.args[0]
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "exp" and not call.args and qual is None:
        return func.value
    return None


def _is_log_softmax(ctx: ModuleContext, call: ast.Call) -> bool:
    """A softmax producer (see `_is_softmax`) that yields log-probabilities."""
    qual = ctx.flow.qualname_of(call) or ctx.flow.constructed_as(call.func) or ""
    name = qual or (call.func.attr if isinstance(call.func, ast.Attribute) else "")
    return name.endswith(("log_softmax", "LogSoftmax"))
