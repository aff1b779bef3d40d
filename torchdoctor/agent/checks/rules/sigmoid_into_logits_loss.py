"""sigmoid-into-logits-loss: a sigmoid output fed to BCEWithLogitsLoss (sigmoid applied twice)."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.loss_inputs import loss_inputs, model_parameter
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_models,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import first_argument
from torchdoctor.agent.checks.rules.bce_on_sigmoid import is_sigmoid
from torchdoctor.agent.models import Severity

_LOGITS_LOSS = "BCEWithLogitsLoss"
_LOGITS_FUNCTION = "torch.nn.functional.binary_cross_entropy_with_logits"


class SigmoidIntoLogitsLoss(Rule):
    """Detects a sigmoid output (`torch.sigmoid(...)`, `x.sigmoid()`, an `nn.Sigmoid` module,
    followed through variables, views, local functions and the unpacking of a local model's
    tuple output at the sigmoid's position: `scores, _, _ = model(x, shuffled, adj)` with
    `forward` returning `self.sigm(self.disc(...)), h_1, h_2`; not another position's, nor
    a callee whose returns differ in arity) passed as the input of
    `nn.BCEWithLogitsLoss` or `F.binary_cross_entropy_with_logits`, also when the criterion is
    chosen by a condition (`CrossEntropyLoss() if n_classes > 1 else BCEWithLogitsLoss()`).

    Why it matters: the loss applies the sigmoid itself. Fed probabilities in (0, 1), it
    computes the loss of `sigmoid(sigmoid(x))`, which lies in (0.5, 0.73): predictions can
    never approach 0, gradients shrink and the model trains towards the wrong optimum, with no
    error raised.

    A criterion built and called inline (`nn.BCEWithLogitsLoss()(out, y)`) counts, and so does
    the output of a model class from another file whose `forward` ends in a sigmoid (also
    `nn.Sigmoid()(out)`), a loss helper's parameter filled by its callers (`def loss_fn(outputs,
    targets): return nn.BCEWithLogitsLoss()(outputs, targets)` called as `loss_fn(probs, y)`),
    and a model that arrives as a parameter of a module-level function (`def train_fn(
    data_loader, model, ...)`) called from another file with a model whose class ends in a
    sigmoid. The class's sigmoid may lie past a view or a helper its `forward` returns
    (`return prediction.view(-1)`, `return decode(z)`), and the class may be picked by name
    (`getattr(model, args.model)(adj)`: each class of that module).

    Not reported: a sigmoid used for metrics or thresholds next to a loss fed the logits; a
    sigmoid into `BCELoss` (that is `bce-on-sigmoid`); models whose last layer is a sigmoid
    (that is `activation-on-logits`).

    Example:
        criterion = nn.BCEWithLogitsLoss()
        loss = criterion(torch.sigmoid(model(x)), y)

    Fix: pass the logits (`criterion(model(x), y)`) and apply `sigmoid` only to predictions.
    """

    id = "sigmoid-into-logits-loss"
    point = 3
    severity = Severity.HIGH
    title = "Sigmoid output fed to BCEWithLogitsLoss"
    items: ClassVar[tuple[str, ...]] = ("3.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "with_logits" in ctx.source or _LOGITS_LOSS in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        for call in flow.nodes(ast.Call):
            if not _is_logits_loss(ctx, call):
                continue
            received = first_argument(call, "input")
            if received is None:
                continue
            for value, site in loss_inputs(ctx, call, received):
                sigmoid = next(
                    (
                        p
                        for p in flow.producers(value)
                        if "igmoid" in ctx.source
                        and is_sigmoid(ctx, p)
                        and _may_run_before(ctx, p, site)
                    ),
                    None,
                )
                if sigmoid is None:
                    self._defer_to_the_model_file(ctx, site, value)
                    continue
                through = "" if site is call else f" (through `{ast.unparse(site.func)}`)"
                ctx.report(
                    self,
                    site,
                    f"BCEWithLogitsLoss{through} receives `{ast.unparse(value)}`, already a "
                    f"sigmoid output (line {sigmoid.lineno}): the sigmoid is applied twice; "
                    "pass the logits",
                    data={"sigmoid_line": sigmoid.lineno},
                )

    def _defer_to_the_model_file(self, ctx: ModuleContext, call: ast.Call, value: ast.expr) -> None:
        """`prediction = model(user, item)` with `model` built from a class of another file
        (NCF's `model.NCF`), or a model given as a parameter of a module-level function
        (`def train_fn(data_loader, model, ...)`, called from another file): pending on that
        class's `forward` ending in a sigmoid."""
        symbols = imported_models(ctx, value)
        if not symbols and (passed := model_parameter(ctx, value)) is not None:
            function, parameter, position = passed
            found = ctx.finding(
                self,
                call,
                f"BCEWithLogitsLoss receives `{ast.unparse(value)}`, the output of the model "
                f"passed as `{parameter}`, whose forward ends in a sigmoid (in a caller's "
                "class): the sigmoid is applied twice; return the logits",
                data={"parameter": parameter},
            )
            if found is not None:
                pending = Pending(
                    symbol=function,
                    needs="output:sigmoid",
                    finding=found,
                    parameter=parameter,
                    position=position,
                )
                defer(ctx, self.id, pending)
        for symbol in symbols:
            found = ctx.finding(
                self,
                call,
                f"BCEWithLogitsLoss receives `{ast.unparse(value)}`, the output of `{symbol}`, "
                "whose forward ends in a sigmoid: the sigmoid is applied twice; return the "
                "logits",
                data={"model": symbol},
            )
            if found is not None:
                defer(ctx, self.id, Pending(symbol=symbol, needs="output:sigmoid", finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed_at_outputs(
            facts,
            cls.id,
            lambda model, _, losses: (
                f"`{model}.forward` returns this sigmoid's output, and BCEWithLogitsLoss "
                f"receives it ({losses}), which applies the sigmoid again; return the logits"
            ),
            "BCEWithLogitsLoss receives the model's output here",
        )


_LOOPS = (ast.For, ast.AsyncFor, ast.While)


def _may_run_before(ctx: ModuleContext, producer: ast.expr, call: ast.Call) -> bool:
    """Whether the sigmoid can have run when the loss is called: the producers are found
    flow-insensitively, so `loss = criterion(pred, y)` followed by `pred = pred.sigmoid()` for
    the metrics would otherwise count. In one function, a later line reaches an earlier one
    only around a loop holding both."""
    function = ctx.enclosing_function(call)
    if ctx.enclosing_function(producer) is not function or producer.lineno < call.lineno:
        return True
    loops_around_call = {id(a) for a in ctx.ancestors(call) if isinstance(a, _LOOPS)}
    return any(id(a) in loops_around_call for a in ctx.ancestors(producer))


def _is_logits_loss(ctx: ModuleContext, call: ast.Call) -> bool:
    """`F.binary_cross_entropy_with_logits(...)`, or a criterion that may be a
    `BCEWithLogitsLoss` (one branch of a conditional construction is enough)."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual == _LOGITS_FUNCTION
    if isinstance(call.func, ast.Call):  # `nn.BCEWithLogitsLoss()(gate_out, gate_target)`
        inline = ctx.flow.qualname_of(call.func) or ""
        return inline.startswith("torch.") and inline.endswith(f".{_LOGITS_LOSS}")
    if not isinstance(call.func, ast.Name | ast.Attribute):
        return False
    sources = list(ctx.flow.sources(call.func))
    for source in list(sources):  # a criterion given as a parameter: what the callers pass
        if isinstance(source, ast.Name):
            sources += ctx.calls.arguments_for(source)
    for source in sources:
        branches = [source.body, source.orelse] if isinstance(source, ast.IfExp) else [source]
        for branch in branches:
            for built in ctx.flow.constructors(branch):
                qual = ctx.flow.qualname_of(built) or ""
                if qual.startswith("torch.") and qual.endswith(f".{_LOGITS_LOSS}"):
                    return True
    return False
