"""nll-loss-input: NLLLoss fed probabilities (softmax) or raw logits, not log-probabilities."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.loss_inputs import model_parameter
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_models,
    is_package_init,
    publish,
)
from torchdoctor.agent.checks.analysis.vocabulary import LOG_SOFTMAX, NLL_LOSSES, SOFTMAX
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import first_argument
from torchdoctor.agent.models import Severity

_LOG = frozenset({"torch.log", "log"})
LINEAR_LAYERS = frozenset({"torch.nn.Linear", "torch.nn.LazyLinear"})


class NllLossInput(Rule):
    """Detects `nn.NLLLoss` / `F.nll_loss` whose input is the output of a softmax (through
    variables, views, local functions and a model's last layer or `forward`), or the raw
    output of a final `nn.Linear` (a local model whose `forward` returns `self.fc(x)`, an
    `nn.Sequential` ending in `Linear`).

    Why it matters: NLLLoss expects log-probabilities; it only picks `-input[target]`. Fed
    probabilities, the loss is `-p` instead of `-log p` (bounded, tiny gradients near
    confident mistakes); fed raw logits, nothing normalises them and the loss decreases by
    pushing the target logit to infinity. Training seems to work but converges badly.

    A model built from a class of another file of the project (imported by name or by a star
    import, or picked by name: `getattr(models, arch)(...)`, `import_module('models.' +
    name).Model(config)`) is judged by that class's `forward`, the first element of a returned
    tuple being what `output, hidden = model(x)` unpacks; so is a model that a training helper
    receives as a parameter (`def train(config, model, ...)`), by the classes its callers in
    other files pass.

    Also reported: log-probabilities normalised over dim 0 (`F.log_softmax(x, dim=0)` in the
    model's `forward`), the batch axis of the `(N, C)` input NLLLoss takes: each class column
    sums to one across the samples, and the loss trains the wrong distribution.

    Not reported: inputs that pass through a `log_softmax` (over another dim) or a `log(...)`
    anywhere on the way; models built by a library (their last layer is unknown); a `forward`
    whose returns differ (logits in training, probabilities at inference).

    Example:
        probs = F.softmax(model(x), dim=1)
        loss = F.nll_loss(probs, y)

    Fix: feed `F.log_softmax(logits, dim=1)` to NLLLoss, or pass the logits to
    `nn.CrossEntropyLoss`, which combines both.
    """

    id = "nll-loss-input"
    point = 3
    severity = Severity.HIGH
    title = "NLLLoss fed probabilities or raw logits"
    items: ClassVar[tuple[str, ...]] = ("3.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "nll_loss" in ctx.source or "NLLLoss" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "forward" in ctx.source or is_package_init(ctx):
            publish(ctx)  # what this file's models end in, for the files that train them
        if not self.applies(ctx):
            return
        flow = ctx.flow
        over_batch_lines: set[int] = set()
        for call in flow.nodes(ast.Call):
            if not is_nll_loss(ctx, call):
                continue
            value = first_argument(call, "input")
            if value is None:
                continue
            producers = _producers(ctx, value)
            kinds = {_kind(ctx, p) for p in producers}
            over_batch = [p for p in producers if _kind(ctx, p) == "log_softmax" and _dim_0(p)]
            if over_batch:
                for producer in over_batch:  # reported where the axis is chosen, once
                    if producer.lineno not in over_batch_lines:
                        over_batch_lines.add(producer.lineno)
                        ctx.report(
                            self,
                            producer,
                            "log_softmax over dim 0, the batch axis, feeds NLLLoss (line "
                            f"{call.lineno}): each class is normalised across the samples "
                            "instead of each sample across the classes; use dim=1 (or -1)",
                            data={"over_batch": True},
                        )
                continue
            if "log" in kinds or "log_softmax" in kinds:
                continue
            if "softmax" in kinds:
                what, received = "probabilities (a softmax output)", "softmax"
            elif "linear" in kinds and "softmax" not in kinds:
                what, received = "raw logits (the output of a final Linear layer)", "logits"
            else:
                self._defer_to_the_model_file(ctx, call, value, kinds)
                continue
            ctx.report(
                self,
                call,
                f"NLLLoss receives `{ast.unparse(value)}`, {what}; it expects "
                "log-probabilities (log_softmax)",
                data={
                    "received": received,
                    "input": ast.unparse(value),
                    "softmax_lines": sorted(
                        {p.lineno for p in producers if _kind(ctx, p) == "softmax"}
                    ),
                },
            )

    def _defer_to_the_model_file(
        self, ctx: ModuleContext, call: ast.Call, value: ast.expr, kinds: set[str]
    ) -> None:
        """`output, hidden = rnn(x)` with `rnn` built from a class of another file: pending on
        that class's `forward` ending (in its first returned element) in a softmax or a
        Linear layer."""
        if kinds - {""} or not _first_output(ctx, value):
            return
        symbols = imported_models(ctx, value)
        passed = model_parameter(ctx, value) if not symbols else None
        if passed is not None:  # `def train(config, model, ...)` called from another file
            function, parameter, position = passed
            for what, needs in _DEFERRED:
                found = ctx.finding(
                    self,
                    call,
                    f"NLLLoss receives `{ast.unparse(value)}`, the output of the model passed "
                    f"as `{parameter}`, whose forward ends in {what} (in a caller's class); it "
                    "expects log-probabilities (log_softmax)",
                    data={"parameter": parameter},
                )
                if found is not None:
                    pending = Pending(
                        symbol=function,
                        needs=needs,
                        finding=found,
                        parameter=parameter,
                        position=position,
                    )
                    defer(ctx, self.id, pending)
        for symbol in symbols:
            for what, needs in _DEFERRED:
                found = ctx.finding(
                    self,
                    call,
                    f"NLLLoss receives `{ast.unparse(value)}`, the output of `{symbol}`, "
                    f"whose forward ends in {what}; it expects log-probabilities (log_softmax)",
                    data={"model": symbol},
                )
                if found is not None:
                    defer(ctx, self.id, Pending(symbol=symbol, needs=needs, finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A model of another file ending in softmax is reported on its softmax (where
        `log_softmax` goes); one ending in a Linear layer at the loss (either place may add
        it)."""
        return ProjectIndex.from_facts(facts).confirmed_at_outputs(
            facts,
            cls.id,
            lambda model, _, losses: (
                f"`{model}.forward` returns this softmax's output (probabilities), and NLLLoss "
                f"receives it ({losses}), which expects log-probabilities (log_softmax)"
            ),
            "NLLLoss receives the model's output here",
        )


_DEFERRED: tuple[tuple[str, Any], ...] = (
    ("a softmax (probabilities)", "output:softmax"),
    ("a Linear layer (raw logits)", "output:linear"),
)


def _first_output(ctx: ModuleContext, value: ast.expr) -> bool:
    """No name in `value` was unpacked from anything but a first element (`output, hidden =
    rnn(x)`: `output`; `_, probs = model(x)` would be another element). The indices of a
    selection do not count (`output[idx_train]`, pyGAT's `idx_train` unpacked from
    `load_data()`)."""
    return all(
        position == 0
        for name in _selected_names(value)
        for _, position, _ in ctx.flow.unpackings(name)
    )


def _selected_names(value: ast.expr) -> list[ast.Name]:
    """The names `value` reads, leaving out those only inside a subscript's index."""
    found: list[ast.Name] = []
    stack: list[ast.AST] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            found.append(node)
        elif isinstance(node, ast.Subscript):
            stack.append(node.value)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def _producers(ctx: ModuleContext, value: ast.expr) -> list[ast.Call]:
    """What produced the loss input; a model passed in as a parameter (`train(model, ...)`)
    is taken to be the file's only network, when it defines exactly one."""
    flow = ctx.flow
    found = list(flow.value_producers(value))
    if (
        len(found) == 1
        and flow.is_model_call(found[0])
        and not list(flow.constructors(found[0].func))
    ):
        networks = [
            flow.classes[name]
            for name in flow.module_classes
            if ctx.calls.method(name, "forward") is not None
        ]
        if len(networks) == 1:
            found += flow.forward_producers(networks[0], 0)
    return found


def _dim_0(call: ast.Call) -> bool:
    """`F.log_softmax(x, dim=0)`, `F.log_softmax(x, 0)` or `x.log_softmax(0)`."""
    dim = next((k.value for k in call.keywords if k.arg == "dim"), None)
    if dim is None:
        method = isinstance(call.func, ast.Attribute) and call.func.attr == "log_softmax"
        position = 0 if method and len(call.args) == 1 else 1
        dim = call.args[position] if len(call.args) > position else None
    return isinstance(dim, ast.Constant) and dim.value == 0


def is_nll_loss(ctx: ModuleContext, call: ast.Call) -> bool:
    """`F.nll_loss(...)` or a call of an `nn.NLLLoss` (log-probabilities, classes at dim 1)."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual in NLL_LOSSES
    return ctx.flow.loss_class(call.func) in ("NLLLoss", "NLLLoss2d")  # the 2d alias: old FCNs


def _kind(ctx: ModuleContext, call: ast.Call) -> str:
    """'log', 'log_softmax', 'softmax', 'linear' or '' for one producer of the loss input."""
    flow = ctx.flow
    qual = flow.qualname_of(call) or ""
    func = call.func
    method = func.attr if isinstance(func, ast.Attribute) and not qual else ""
    built = "" if qual else (flow.constructed_as(func) or "")
    if qual in _LOG or method == "log":
        return "log"
    if qual in LOG_SOFTMAX or built in LOG_SOFTMAX or method == "log_softmax":
        return "log_softmax"
    if qual in SOFTMAX or built in SOFTMAX or method == "softmax":
        if isinstance(func, ast.Attribute) and method and flow.is_module_value(func.value):
            return ""
        return "softmax"
    if qual in LINEAR_LAYERS or built in LINEAR_LAYERS:
        return "linear"
    return ""
