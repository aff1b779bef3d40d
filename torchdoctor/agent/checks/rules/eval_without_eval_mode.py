"""eval-without-eval-mode: an evaluation path runs the model while it is in training mode."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar, Literal

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.eval_mode import (
    eval_before,
    mode_calls,
    model_anchor,
    model_of,
    model_put_in_eval,
    runs_model_method,
    statements_before,
    train_mode_after_eval,
)
from torchdoctor.agent.checks.analysis.gradmode import function_mode, is_grad_off_context
from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    Property,
    callee_symbol,
    defer,
    imported_classes,
    is_package_init,
    module_name,
    project_function_calls,
    publish,
    publish_mode_calls,
    publish_mode_layers,
)
from torchdoctor.agent.checks.analysis.reachability import mode_flag, mode_switch
from torchdoctor.agent.checks.analysis.roles import evaluation_helpers
from torchdoctor.agent.checks.analysis.vocabulary import (
    HELD_OUT_SPLITS,
    MODULE_WRAPPERS,
    alternation,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import FunctionNode, kwarg, module_level
from torchdoctor.agent.checks.loops import (
    enclosing_ifs,
    is_backward_call,
    method_name,
    nodes_of,
    phase_constant,
    phase_equality,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.patterns import shape_check_only, switches_to_eval
from torchdoctor.agent.checks.smoke_tests import is_model_smoke_function
from torchdoctor.agent.models import Severity

_EVAL_FUNCTION = re.compile(
    r"^(evaluate|evaluation|eval|validate|validation|val|vali|valid|test|testing)(_|$)"
    r"|_(evaluate|evaluation|eval|validate|validation|val|test)$"
    # the stage named in the middle (`dnn_test_model`, `run_eval_epoch`)
    r"|_(evaluate|evaluation|eval|validate|validation|test)_(model|net|network|epoch|loop)$",
    re.IGNORECASE,
)
# Prediction/serving paths belong to inference-no-eval (point 7); Lightning's *_step hooks run
# after the framework has already switched the mode.
_OTHER_RULES_PATHS = re.compile(r"predict|infer|serve|serving|classify", re.IGNORECASE)
_HOOK_NAME = re.compile(r"_step$", re.IGNORECASE)
_CRITERION = re.compile(r"loss|crit", re.IGNORECASE)
_MODE_DEPENDENT = re.compile(
    r"Dropout|BatchNorm|InstanceNorm|dropout|\bTransformer(?:Encoder|Decoder)?(?:Layer)?\("
)  # `nn.TransformerEncoderLayer(...)` (dropout 0.1 by default), not a `TransformerBlock`


def _other_rules_path(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """A prediction/serving function (inference-no-eval's), or a framework's `*_step` hook: a
    method (`LightningModule.validation_step`). A module-level `test_step(model, loader)`
    (a notebook-exported engine) is the caller's evaluation, judged here."""
    if _OTHER_RULES_PATHS.search(fn.name):
        return True
    return bool(_HOOK_NAME.search(fn.name)) and isinstance(ctx.parents.get(fn), ast.ClassDef)


class EvalWithoutEvalMode(Rule):
    """Detects an evaluation path that calls the model with no `.eval()` on its way: a
    function named like `evaluate`/`validate`/`test_epoch`, a `with torch.no_grad()` or
    `torch.inference_mode()` block (at a script's top level only when the script trains), a
    loop over held-out data written inline in a training module (`for x in test_loader:` after
    the epoch's training loop, grad on or off), or
    a function decorated with `@torch.no_grad()` / `@torch.inference_mode()`, a helper of any
    name that is called with held-out data (`score(model, val_loader)`), or a
    call of a local epoch function with the flag value that skips its backward
    (`self._run_one_epoch(epoch, cross_valid=True)`), or a
    `for phase in ("train", "val"):` loop that runs the model for both phases and never
    switches the mode (`model.train(phase == "train")` and an `.eval()` branch count). `.eval()`
    (and what it calls, `.train(False)` or `.train(mode=False)`: not a switch back to training
    mode) counts when it is called in that function, in a function it calls, in any function that
    calls it (up to three levels), or on the model object itself (`model = Net().eval()`,
    `self.model.eval()`); an `.eval()` in a branch that returns (`if args.test_only:`) does
    not reach the code after it, nor does one the function makes only after the evaluation
    and outside every loop around it (a solver's `train()` validating inside its epoch loop
    and switching to `.eval()` only for the final test), nor does a rebinding `self.model =
    self.model.eval()` made by a method of another class (a sibling runner's `evaluate`) or
    by a method that then runs the model itself, for the attribute read by other methods,
    and a helper is judged at every
    call of it in the module, not only at one. A region that runs the model only through a
    local helper (`self._forward_pass(x, y)`, shared with the training loop, or a
    `self.val_step(x, y)` that only evaluation regions call) is reported at that call. A
    module-level helper given the model and called only from other
    files (`evaluate(model, val_loader)` imported by `train.py`) is judged at those calls:
    reported when one runs without `.eval()` before it.

    Why it matters: in training mode dropout keeps dropping units and BatchNorm normalises
    with the batch's own statistics (and updates its running averages with validation data),
    so validation metrics are noisy, batch-size dependent and lower than the model's real
    quality; model selection built on them is wrong. Models known to have no dropout or
    normalisation layer (a model parameter is known by what every call in its module passes:
    `compute_accuracy(model, loader)` with `model = MultilayerPerceptron(...)`, a plain class
    of the file with hand-written layers), functions that set `.train()` before the model
    runs with no update in between (recomputing BatchNorm statistics; a `.train()` after the
    loop only restores the mode, one at the top of the epoch is for its training loop) and
    methods
    of `nn.Module`s (`forward`, `generate`: their caller owns the mode) and the `forward` of
    any local class (an ensemble kept as a plain object), and a no-grad block
    in a closure of a training step (targets of an EMA encoder) or in a function that fits a
    model's output with grad to a loss (DQN's target network under no_grad in `dqn_loss`), and
    an RL agent's action choice under no_grad (`get_action`, `select_action`, an `*Agent`
    class's `__call__`, decorated or with a block: experience collected for training) are not
    reported, nor is a model returned by a loader of another file that builds it with Hugging
    Face's `from_pretrained` (eval mode), also among the items of a tuple (LLaVA's
    `tokenizer, model, image_processor, context_len = load_pretrained_model(...)`), nor a
    forward whose output is only read for its shape (`print(encoder(img).shape)` on one
    test batch: a check that the model runs; a helper sizing the next layer from a dummy
    input, `return tuple(module(dummy).shape)`, `.view(1, -1).size(1)`), nor a call inside
    `with eval_mode(model):` or a function decorated `@eval_mode(model)` (also a closure
    nested in one: k-diffusion's sampling `demo()` calls its samplers under
    `@K.utils.eval_mode(model_ema)`; `evaluating` counts too), helpers that switch the model
    to eval mode for their extent; a decorator of another name given the model still counts
    for nothing; prediction/serving functions are left to `inference-no-eval`.

    Also reported: a test whose one branch calls `model.train()` and whose other branch runs
    the model with no `.eval()` (score_sde's `get_model_fn`: `if not train: return model(x,
    labels)` / `else: model.train(); ...`): after the training branch has run once, the
    other runs in training mode. Not when the function switches the model to eval mode
    before the test, nor when the other branch feeds the run to a loss (a training
    objective of its own: ImageCaptioning's `LossWrapper`).

    Example:
        @torch.no_grad()
        def evaluate(model, loader):
            return sum((model(x).argmax(1) == y).sum() for x, y in loader)

    Fix: call `model.eval()` before the evaluation loop and `model.train()` after it (or at
    the start of the next training epoch).
    """

    id = "eval-without-eval-mode"
    point = 3
    severity = Severity.HIGH
    title = "Evaluation runs in training mode"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    severity_note = (
        "high when the model is known to have mode-dependent layers (dropout, batch/instance "
        "norm, transformer blocks); medium when its layers cannot be seen (a model built "
        "elsewhere or loaded); not reported when it is known to have none"
    )

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            "from_pretrained" in ctx.source  # a loader: its summary tells what it returns
            or any(True for _ in _evaluation_regions(ctx))
            or bool(_phase_loops(ctx))
            or bool(_flagged_evaluation_calls(ctx))
            or bool(_one_branch_runs(ctx))
        )

    def _mode_set_on_one_branch_only(self, ctx: ModuleContext) -> None:
        """`if not train: return model(x, labels)` / `else: model.train(); return model(x,
        labels)`: one branch of a test puts the model in training mode and runs it, the
        other runs it with no `.eval()`, so once the training branch has run the other one
        runs in training mode too (score_sde's `get_model_fn` with its `model.eval()` lost).
        Not when the function puts the model in eval mode before the test."""
        for run, test, switch, layers in _one_branch_runs(ctx):
            ctx.report(
                self,
                run,
                f"`{ast.unparse(run.func)}` runs here with no `.eval()`, while the other "
                f"branch of `if {ast.unparse(test.test)}:` (line {switch.lineno}) puts it in "
                "training mode: once that branch has run, this one runs in training mode "
                f"too, and {_consequence(layers)}",
                severity=_severity(layers),
                data={"mode_dependent_layers": layers, **model_anchor(model_of(run))},
            )

    def finish(self, ctx: ModuleContext) -> None:
        publish_mode_calls(ctx, mode_calls(ctx))
        publish_mode_layers(ctx)
        if (
            "forward" in ctx.source
            or is_package_init(ctx)
            or "from_pretrained" in ctx.source  # a loader that may return a model in eval mode
        ):
            publish(ctx)  # whether its classes are mode-free, for the modules importing them
        self._mode_set_on_one_branch_only(ctx)
        if (
            "no_grad" not in ctx.source
            and "inference_mode" not in ctx.source
            and not (re.search(r"def \w*(eval|valid|test)", ctx.source))
            and not evaluation_helpers(ctx)
            and not _held_out_loops(ctx, [], ctx.test_module)
            and not _held_out_draws(ctx, [], ctx.test_module)
            and not _held_out_calls(ctx, [], ctx.test_module)
            and not _phase_loops(ctx)
            and not _flagged_evaluation_calls(ctx)
        ):
            return
        reported: set[int] = set()
        for owner, loop, call in _phase_loops(ctx):
            if _eval_on_path(ctx, owner, call) or _mode_set_by_phase(owner or ctx.tree):
                continue
            layers = _mode_dependent(ctx, model_of(call))
            if layers == "none":
                continue
            reported.add(id(call))
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call.func)}` runs for every phase of `for "
                f"{ast.unparse(loop.target)} in {ast.unparse(loop.iter)}`, evaluation ones "
                f"included, with no `.eval()`: {_consequence(layers)}",
                severity=_severity(layers),
                data={"mode_dependent_layers": layers, **model_anchor(model_of(call))},
            )
        for site, runner in _flagged_evaluation_calls(ctx):
            if id(site) in reported or eval_before(ctx, site):
                continue
            model_call = next(
                n
                for n in walk_scope(runner.body)
                if isinstance(n, ast.Call) and ctx.flow.is_model_call(n)
            )
            layers = _mode_dependent(ctx, model_of(model_call))
            if layers == "none":
                continue
            reported.add(id(site))
            ctx.report(
                self,
                site,
                f"`{ast.unparse(site.func)}` runs its evaluation pass here (its backward is "
                f"skipped by this call's flag) with no `.eval()` before it: "
                f"{_consequence(layers)}",
                severity=_severity(layers),
                data={"mode_dependent_layers": layers},
            )
        regions = _evaluation_regions(ctx)
        judged = {id(owner) for owner, _ in regions if owner is not None}
        siblings: set[tuple[int, str]] = set()
        for owner, body in regions:
            found_call = _model_call_in(ctx, body, judged)
            if found_call is None:
                continue
            call, model_call = found_call
            if id(call) in reported or ctx.loops.backpropagates(body):
                continue
            if shape_check_only(ctx, model_call):
                continue  # `print(encoder(img).shape)`: a check that the model runs
            elsewhere = owner is not None and _helper_of_a_caller_elsewhere(ctx, owner, call)
            if owner is not None and is_model_smoke_function(ctx, owner):
                continue  # a model file's shape check on random input, not an evaluation
            if owner is not None and _over_training_data(ctx, owner, body):
                continue  # training state built in the mode training runs in
            switch = train_mode_after_eval(ctx, owner, call)
            if switch is not None:
                self._report_switch(ctx, switch, _mode_dependent(ctx, model_of(model_call)))
                reported.add(id(call))
                continue
            if owner is not None and _train_mode_set_before(ctx, owner, call):
                continue  # the mode is set on purpose (e.g. recomputing BatchNorm statistics)
            evaluated = ""
            if _eval_on_path(ctx, owner, call):
                sibling = _sibling_left_in_training(ctx, owner, body)
                if sibling is None:
                    continue
                key = (id(owner), ast.unparse(model_of(sibling[0])))
                if key in siblings:
                    continue  # one finding per model and function, not per inner loop
                siblings.add(key)
                call = model_call = sibling[0]
                evaluated = sibling[1]
            if owner is not None and _stored_after_eval(ctx, owner, model_of(model_call)):
                continue
            layers = _mode_dependent(ctx, model_of(model_call))
            if layers == "none":
                continue
            reported.add(id(call))
            known = layers == "known"
            through = (
                ""
                if model_call is call
                else f" (it runs `{ast.unparse(model_call.func)}` on line {model_call.lineno})"
            )
            missing = (
                "with no `.eval()` before it"
                if not evaluated
                else f"with `{evaluated}.eval()` but no `{ast.unparse(model_of(call))}.eval()` "
                "(training switches it to `.train()` by name)"
            )
            found = ctx.finding(
                self,
                call,
                f"`{ast.unparse(call.func)}`{through} runs on an evaluation path {missing}: "
                f"{_consequence(layers)}",
                severity=_severity(layers),
                data={"mode_dependent_layers": layers, **model_anchor(model_of(model_call))},
            )
            if found is None:
                continue
            inherited = _attribute_of_a_project_base(ctx, owner, model_of(model_call))
            if inherited is not None:
                # `self.model` of a class built on another file's class, whose constructor
                # may put it in eval mode (pytorch-grad-cam's `BaseCAM`)
                symbol, attribute = inherited
                defer(
                    ctx,
                    self.id,
                    Pending(
                        symbol=symbol,
                        needs="attribute-not-evaluated-by-base",
                        attribute=attribute,
                        finding=found,
                        also=[] if known else ["mode-layers-in-project"],
                    ),
                )
                continue
            needs, entry = _callers_decide(ctx, owner, call, elsewhere)
            if elsewhere and needs is None:
                continue  # a method whose callers are in other files: not followed
            # Layers not seen here: a project with no mode-dependent layer anywhere has none.
            also: list[Property] = [] if known else ["mode-layers-in-project"]
            loader = None if needs is not None else project_loader(ctx, owner, model_call)
            if needs is not None:
                assert entry is not None
                symbol = f"{module_name(ctx.path)}.{entry.name}"
            elif loader is not None:
                # `model = load_model(path)` from another file: it may return the model in
                # eval mode (deepspeech.pytorch's `utils.load_model`)
                symbol, needs = loader, "not-returned-in-eval"
            elif not known and len(built := imported_classes(ctx, model_of(model_call))) == 1:
                # a class from another file: the project pass knows whether it is mode-free
                symbol, needs = built[0], "not-mode-free"
            elif also:
                symbol, needs, also = ctx.path, also[0], []
            else:
                ctx.findings.append(found)
                continue
            defer(ctx, self.id, Pending(symbol=symbol, needs=needs, finding=found, also=also))

    def _report_switch(self, ctx: ModuleContext, switch: ast.Call, layers: ModeLayers) -> None:
        if layers == "none":
            return
        ctx.report(
            self,
            switch,
            f"`{ast.unparse(switch)}` switches the model back to training mode after "
            f"`.eval()`, before it runs on this evaluation path: {_consequence(layers)}",
            severity=_severity(layers),
            data={"mode_dependent_layers": layers},
        )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A helper whose callers are in other files: reported when one of them calls it
        without `.eval()` before (or, for a helper named like an evaluation, when none is
        seen at all)."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _sibling_left_in_training(
    ctx: ModuleContext, owner: FunctionNode | None, body: list[ast.stmt]
) -> tuple[ast.Call, str] | None:
    """(the first call, the model put in eval) for a second model of an evaluation function
    left in training mode: the function puts one model in eval mode by name (`model.eval()`)
    and runs another (`predictor(h[src], h[dst])`, OGB's link-prediction `test`) that the
    module's training code switches to `.train()` by that same name, with no `.eval()` of it
    here, in a caller before the call, or on the object itself. The author switches modes
    model by model, so the one left out runs with dropout and batch statistics.

    Not judged: an `.eval()` of anything but a named model (`for m in models: m.eval()`,
    `self.eval()` of a container), a model reached through one put in eval
    (`model.head(x)` after `model.eval()`), one the module never switches to training.
    A script's evaluation at module level (SincNet's `speaker_id.py`, three networks switched
    one by one) is judged on the top-level statement that holds it (its epoch loop)."""
    scope = owner.body if owner is not None else _top_level_statement(ctx, body)
    evaluated: list[str] = []
    loop_targets = {
        t.id
        for node in walk_scope(scope)
        if isinstance(node, ast.For | ast.comprehension)
        for t in walk_tree(node.target)
        if isinstance(t, ast.Name)
    }
    for node in walk_scope(scope):
        if not (isinstance(node, ast.Call) and switches_to_eval(node)):
            continue
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
        if not isinstance(receiver, ast.Name | ast.Attribute):
            return None
        text = ast.unparse(receiver)
        if text == "self" or text in loop_targets:
            return None
        evaluated.append(text)
    if not evaluated:
        return None
    trained = _trained_by_name(ctx)
    callers_evaluate = _receivers_before_calls_of(ctx, owner, "eval") if owner else set()
    for node in walk_scope(body):
        if not isinstance(node, ast.Call):
            continue
        model = model_of(node)
        if not isinstance(model, ast.Name | ast.Attribute):
            continue
        text = ast.unparse(model)
        if text not in trained:
            continue  # called, and switched with `.train()` by training code: a module
        if any(text == e or text.startswith(e + ".") for e in evaluated):
            continue
        if text in callers_evaluate or model_put_in_eval(ctx, model):
            continue
        return node, evaluated[0]
    return None


def _trained_by_name(ctx: ModuleContext) -> frozenset[str]:
    """Receivers of `.train()` (or `.train(True)`) in the module's functions (or its
    top-level script) that back-propagate (memoised per module)."""
    memo = ctx.memo_table("eval_without_eval_mode.trained_by_name")
    if "" not in memo:
        names: set[str] = set()
        for node in ctx.flow.nodes(ast.Call):
            if not isinstance(node.func, ast.Attribute) or not _plain_train(node):
                continue
            fn = ctx.enclosing_function(node)
            if ctx.loops.backpropagates(fn.body if fn is not None else ctx.tree.body):
                names.add(ast.unparse(node.func.value))  # a script's top-level loop too
        memo[""] = frozenset(names)
    found: frozenset[str] = memo[""]
    return found


def _receivers_before_calls_of(ctx: ModuleContext, owner: FunctionNode, method: str) -> set[str]:
    """Receivers of `.<method>()` in the statements that run before each call of `owner` in
    this module (its callers' own switches)."""
    found: set[str] = set()
    for site in ctx.calls.call_sites(owner):
        caller = ctx.enclosing_function(site)
        for node in walk_scope(statements_before(ctx, caller, site)):
            if (
                isinstance(node, ast.Call)
                and method_name(node) == method
                and isinstance(node.func, ast.Attribute)
            ):
                found.add(ast.unparse(node.func.value))
    return found


def _model_call_in(
    ctx: ModuleContext, body: list[ast.stmt], judged: set[int]
) -> tuple[ast.Call, ast.Call] | None:
    """(where to report, the model call) for an evaluation region: its first model call, or
    else its first call of a local helper that runs the model and that the training code calls
    too (`self._forward_pass(x, y)`: the region's caller owns the mode). A helper that is an
    evaluation region itself (`judged`) is judged on its own."""
    for node in walk_scope(body):
        if isinstance(node, ast.Call) and ctx.flow.is_model_call(node):
            return node, node
    for node in walk_scope(body):
        if isinstance(node, ast.Call) and runs_model_method(ctx, node):
            return node, node  # `generator.module.infer(x)`: VITS's evaluation
    for site, helper in ctx.calls.callees(body):
        if id(helper) in judged or ctx.flow.module_method(helper):
            continue
        shared = _shared_with_training(ctx, helper)
        if not shared and not _step_of_evaluation(ctx, helper, judged):
            continue  # a generation or scoring helper: its callers are judged where they are
        for node in walk_scope(helper.body):
            if isinstance(node, ast.Call) and ctx.flow.is_model_call(node):
                if not shared and _mode_switched(ctx, model_of(node)):
                    break  # the class manages its model's mode (`model.train(flag)`)
                return site, node
    return None


def _step_of_evaluation(ctx: ModuleContext, helper: FunctionNode, judged: set[int]) -> bool:
    """A `*_step` method (left out of the regions as a framework hook) that only evaluation
    regions of this module call: a trainer class's `val_epoch` running `self.val_step(inputs,
    labels)` under no_grad (gradsflow's `Model`). When nothing in the module switches that
    model's mode (`_mode_switched`), the region runs it as training left it. Other helpers
    (an RL agent's `get_action` under no_grad) are judged where their callers are."""
    owner = ctx.parents.get(helper)
    if not _HOOK_NAME.search(helper.name) or not isinstance(owner, ast.ClassDef):
        return False
    sites = ctx.calls.call_sites(helper)
    return bool(sites) and all(
        (caller := ctx.enclosing_function(site)) is not None and id(caller) in judged
        for site in sites
    )


def _mode_switched(ctx: ModuleContext, model: ast.expr) -> bool:
    """Whether the module calls `.eval()` or `.train(<flag>)` on this model's expression
    anywhere (texar's executor: `self.model.train(self.test_mode == "train")` before its
    validation loop): its mode is managed, if not by a plain `.eval()`. A bare `.train()`
    (or `.train(True)`) at the top of training only says the model trains."""
    text = ast.unparse(model)
    return any(
        isinstance(call.func, ast.Attribute)
        and ast.unparse(call.func.value) == text
        and mode_switch(call) is not None
        and not _plain_train(call)
        for call in ctx.flow.calls_named(("eval", "train"))
    )


def _shared_with_training(ctx: ModuleContext, helper: FunctionNode) -> bool:
    """Whether a function that back-propagates also calls `helper` (a forward helper shared
    by the training step and the evaluation)."""
    for site in ctx.calls.call_sites(helper):
        caller = ctx.enclosing_function(site)
        if caller is not None and ctx.loops.backpropagates(caller.body):
            return True
    return False


def _one_branch_runs(ctx: ModuleContext) -> list[tuple[ast.Call, ast.If, ast.Call, ModeLayers]]:
    """(the model's run with no `.eval()`, the test, the other branch's `.train()`, the
    model's layers) for each test whose one branch switches the model to training mode."""
    memo = ctx.memo_table("eval_without_eval_mode.one_branch")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: list[tuple[ast.Call, ast.If, ast.Call, ModeLayers]] = []
    if ".train()" in ctx.source and "else" in ctx.source:
        for test in ctx.flow.nodes(ast.If):
            if not test.orelse:
                continue
            for trains, other in ((test.body, test.orelse), (test.orelse, test.body)):
                hit = _run_beside_a_switch(ctx, test, trains, other)
                if hit is not None:
                    found.append(hit)
                    break
    memo[""] = found
    return found


def _run_beside_a_switch(
    ctx: ModuleContext, test: ast.If, trains: list[ast.stmt], other: list[ast.stmt]
) -> tuple[ast.Call, ast.If, ast.Call, ModeLayers] | None:
    for node in walk_scope(trains):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "train"
            and mode_flag(node) is None
            and isinstance(node.func.value, ast.Name | ast.Attribute)
        ):
            continue
        model = ast.dump(node.func.value)
        if _switches(other, model, to_train=False) or _switches(other, model, to_train=True):
            return None  # the other branch sets its own mode
        if any(isinstance(n, ast.Call) and is_backward_call(n) for n in walk_scope(other)):
            return None  # it trains too
        run = next(
            (n for n in walk_scope(other) if isinstance(n, ast.Call) and ast.dump(n.func) == model),
            None,
        )
        function = ctx.enclosing_function(test)
        before = [s for s in function.body if s.lineno < test.lineno] if function else []
        if run is None or _switches(before, model, to_train=False):
            return None
        if _feeds_a_loss(ctx, run, other):
            return None  # a training objective of its own (ImageCaptioning's LossWrapper)
        layers = _mode_dependent(ctx, model_of(run))
        return None if layers == "none" else (run, test, node, layers)
    return None


def _feeds_a_loss(ctx: ModuleContext, run: ast.Call, branch: list[ast.stmt]) -> bool:
    """The run's output goes into a loss in the branch (`lm_loss = self.crit(self.model(...),
    labels)`, or through the name it is bound to): the branch computes a training
    objective, in training mode on purpose."""
    parent = ctx.parents.get(run)
    bound = (
        {t.id for t in parent.targets if isinstance(t, ast.Name)}
        if isinstance(parent, ast.Assign)
        else set()
    )
    for node in walk_scope(branch):
        if isinstance(node, ast.Call) and _loss_like(ctx, node.func):
            for part in ast.walk(node):
                if part is run or (isinstance(part, ast.Name) and part.id in bound):
                    return True
    return False


def _loss_like(ctx: ModuleContext, func: ast.expr) -> bool:
    """A loss callee, or one named or built like a criterion (`self.crit`, built as
    `losses.LanguageModelCriterion()`)."""
    if ctx.flow.is_loss_callee(func) or _CRITERION.search(identifier(func)):
        return True
    return any(_CRITERION.search(ast.unparse(c.func)) for c in ctx.flow.constructors(func))


def _switches(branch: list[ast.stmt], model: str, to_train: bool) -> bool:
    """The branch calls `model.train()` (`to_train`) or `model.eval()` / `model.train(False)`
    as a statement of its own scope."""
    for node in walk_scope(branch):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and ast.dump(node.func.value) == model
        ):
            continue
        if (to_train and _plain_train(node)) or (not to_train and switches_to_eval(node)):
            return True
    return False


def _plain_train(call: ast.Call) -> bool:
    """`x.train()` or `x.train(True)`: training mode for certain, not a flag's choice."""
    flag = mode_flag(call)
    return method_name(call) == "train" and (
        flag is None or (isinstance(flag, ast.Constant) and flag.value is True)
    )


def _consequence(layers: ModeLayers) -> str:
    if layers == "known":
        return "its dropout/normalisation layers behave as in training"
    return "any dropout or BatchNorm in it behaves as in training"


def _severity(layers: ModeLayers) -> Severity:
    """High when the model's dropout/BatchNorm layers are seen, medium when only presumed."""
    return Severity.HIGH if layers == "known" else Severity.MEDIUM


def _evaluation_regions(ctx: ModuleContext) -> list[tuple[FunctionNode | None, list[ast.stmt]]]:
    """Functions and blocks that evaluate (worked out once: `applies` asks after `finish`)."""
    memo = ctx.memo_table("eval_without_eval_mode.regions")
    if "" not in memo:
        memo[""] = _find_evaluation_regions(ctx)
    found: list[tuple[FunctionNode | None, list[ast.stmt]]] = memo[""]
    return found


def _find_evaluation_regions(
    ctx: ModuleContext,
) -> list[tuple[FunctionNode | None, list[ast.stmt]]]:
    flow = ctx.flow
    regions: list[tuple[FunctionNode | None, list[ast.stmt]]] = []
    named: set[int] = set()
    test_module = ctx.test_module
    trains = "backward" in ctx.source and bool(ctx.loops.training_loops)
    for defs in flow.functions.values():
        for fn in defs:
            if _other_rules_path(ctx, fn) or _model_method(ctx, fn):
                continue
            by_name = bool(_EVAL_FUNCTION.search(fn.name)) and not test_module
            if test_module and fn.name.startswith("test"):
                continue  # a unit test comparing outputs, decorated no_grad or not
            if by_name or (function_mode(ctx, fn) == "off" and not _acting(ctx, fn)):
                regions.append((fn, fn.body))
                named.add(id(fn))
    for fn in evaluation_helpers(ctx) if not test_module else []:
        if id(fn) in named or _other_rules_path(ctx, fn) or ctx.flow.module_method(fn):
            continue
        regions.append((fn, fn.body))
        named.add(id(fn))
    blocks: list[ast.With | ast.AsyncWith] = [*flow.nodes(ast.With), *flow.nodes(ast.AsyncWith)]
    for node in blocks:
        if not any(is_grad_off_context(ctx, item.context_expr) for item in node.items):
            continue
        owner = ctx.enclosing_function(node)
        if owner is not None and _model_method(ctx, owner):
            continue
        if owner is None and not trains:
            continue  # a script's top level that does not train is inference-no-eval's
        if owner is not None and (id(owner) in named or _other_rules_path(ctx, owner)):
            continue
        if owner is not None and test_module and owner.name.startswith("test"):
            continue
        if owner is not None and _closure_of_a_training_step(ctx, owner):
            continue
        if owner is not None and (_targets_of_a_loss(ctx, owner, node) or _acting(ctx, owner)):
            continue
        regions.append((owner, node.body))
    regions += _held_out_loops(ctx, regions, test_module)
    regions += _held_out_draws(ctx, regions, test_module)
    regions += _held_out_calls(ctx, regions, test_module)
    return regions


_ACTING = re.compile(r"(^|_)(act|acts|action|actions)($|_)", re.IGNORECASE)
_AGENT_CLASS = re.compile(r"Agent|Actor|Policy|Player|Worker", re.IGNORECASE)


def _acting(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """An RL agent choosing actions under no_grad (`get_action`, `select_action`, `act`, or
    the `__call__` of an `*Agent` class): experience collected for training, in the mode the
    training sets, not an evaluation."""
    if _ACTING.search(fn.name):
        return True
    owner = ctx.parents.get(fn)
    return (
        fn.name == "__call__"
        and isinstance(owner, ast.ClassDef)
        and bool(_AGENT_CLASS.search(owner.name))
    )


def _model_method(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """A method of a local `nn.Module`, or the `forward` of any local class (a boosting
    ensemble kept as a plain object, whose `forward` sums its nets' outputs under no_grad for
    training and evaluation alike): part of the model's computation, its caller owns the
    mode."""
    if ctx.flow.module_method(fn):
        return True
    return fn.name == "forward" and isinstance(ctx.parents.get(fn), ast.ClassDef)


def _flagged_evaluation_calls(ctx: ModuleContext) -> list[tuple[ast.Call, FunctionNode]]:
    """(call, its function) for calls of a local epoch function that runs the model and
    back-propagates only under one of its flags, given the value that skips the backward
    (Conv-TasNet's `self._run_one_epoch(epoch, cross_valid=True)` with `if not cross_valid:
    loss.backward()`): the call is the evaluation pass."""
    memo = ctx.memo_table("eval_without_eval_mode.flagged")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: list[tuple[ast.Call, FunctionNode]] = []
    memo[""] = found
    if "backward" not in ctx.source or ctx.test_module:
        return found
    # only a function around a backward call can have a flag that skips it (looked up from
    # the engine's node index rather than by walking every function)
    around_backward = {
        id(outer)
        for call in nodes_of(ctx, ast.Call)
        if isinstance(call, ast.Call) and is_backward_call(call)
        for outer in ctx.ancestors(call)
        if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    for defs in ctx.flow.functions.values():
        for fn in defs:
            if id(fn) not in around_backward:
                continue
            flag = _backward_flag(ctx, fn)
            if flag is None:
                continue
            name, skipping = flag
            for site in ctx.calls.call_sites(fn):
                given = ctx.calls.bind(site, fn).get(name)
                if isinstance(skipping, bool):
                    skips = isinstance(given, ast.Constant) and bool(given.value) is skipping
                else:  # the training phase's constant: another phase's skips the backward
                    skips = (
                        given is not None
                        and phase_constant(given)
                        and ast.unparse(given) != skipping
                    )
                if skips:
                    found.append((site, fn))
    return found


def _backward_flag(ctx: ModuleContext, fn: FunctionNode) -> tuple[str, bool | str] | None:
    """(parameter, the value that skips the backward) when `fn` runs the model and every
    backward in it sits under `if not flag:` or `if flag:` on one of its parameters; or
    (parameter, the training phase) when under `if phase == <constant>:` (a call given
    another phase's constant skips it)."""
    params = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
    guards: set[tuple[str, bool | str]] = set()
    backwards = [n for n in walk_scope(fn.body) if isinstance(n, ast.Call) and is_backward_call(n)]
    if not backwards or not any(
        isinstance(n, ast.Call) and ctx.flow.is_model_call(n) for n in walk_scope(fn.body)
    ):
        return None
    for call in backwards:
        phase = next(
            (
                equality
                for guard, part in enclosing_ifs(ctx, call, fn)
                if part == "body"
                and (equality := phase_equality(guard.test)) is not None
                and equality[0] in params
            ),
            None,
        )
        if phase is not None:
            guards.add(phase)
            continue
        guard = next(
            (
                (guard.test, part)
                for guard, part in enclosing_ifs(ctx, call, fn)
                if part != "test" and _flag_name(guard.test) in params
            ),
            None,
        )
        if guard is None:
            return None
        test, part = guard
        negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
        runs_when = (not negated) if part == "body" else negated
        guards.add((_flag_name(test) or "", not runs_when))
    return guards.pop() if len(guards) == 1 else None


def _flag_name(test: ast.expr) -> str | None:
    """`flag` of `if flag:` / `if not flag:`."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test = test.operand
    return test.id if isinstance(test, ast.Name) else None


def _closure_of_a_training_step(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """`fn` is defined inside a function that back-propagates (I-JEPA's `def forward_target()`
    inside `train_step()`, computing the EMA encoder's targets under no_grad): part of the
    step, not an evaluation; a closure named like one is judged by its name."""
    outer = ctx.enclosing_function(fn)
    return outer is not None and ctx.loops.backpropagates(outer.body)


def _targets_of_a_loss(
    ctx: ModuleContext, fn: FunctionNode, block: ast.With | ast.AsyncWith
) -> bool:
    """`fn` combines, outside `block`, what the block computes with a model's output that
    has grad (DQN's `dqn_loss(batch, net, target_net)`: `net(states)` fitted to the target
    network's values computed under no_grad, by `nn.MSELoss()` or `(q - target) ** 2`): the
    block computes a loss's targets, part of a training step, not an evaluation."""
    inside = {id(n) for n in walk_tree(block)}
    targets = {
        t.id
        for n in walk_scope(block.body)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    with_grad: set[str] = set()
    end = block.end_lineno or block.lineno
    for node in walk_scope(fn.body):
        if id(node) in inside:
            continue
        if not isinstance(node, ast.Assign | ast.Return) or node.value is None:
            continue
        value = node.value
        names = {n.id for n in walk_tree(value) if isinstance(n, ast.Name)}
        grad = bool(names & with_grad) or any(
            isinstance(n, ast.Call) and ctx.flow.is_model_call(n) for n in walk_tree(value)
        )
        bound = (
            {t.id for t in node.targets if isinstance(t, ast.Name)}
            if isinstance(node, ast.Assign)
            else set()
        )
        if node.lineno < block.lineno:
            # before the block only what has grad counts, less what the block binds again
            # (yolo3's `fit_ont_epoch` reuses `outputs` and `loss` of its training loop in
            # its validation loop's no_grad block)
            with_grad |= bound if grad else set()
            with_grad -= targets
            continue
        if node.lineno <= end:
            continue
        if grad and names & targets:
            return True
        if grad:  # what is derived from either carries it on
            with_grad |= bound
        elif names & targets:
            targets |= bound
    return False


def _held_out_loops(
    ctx: ModuleContext, regions: list[tuple[FunctionNode | None, list[ast.stmt]]], test_module: bool
) -> list[tuple[FunctionNode | None, list[ast.stmt]]]:
    """Loops over held-out data written inline, grad on or off, outside the regions already
    found (deepspeech.pytorch's test loop after the epoch's training loop in `main`); in a
    module that does not train, only in a helper given the model that only other files call
    (NCF's `evaluate.metrics(model, test_loader, top_k)`: its callers own the mode)."""
    if test_module:
        return []
    trains = bool(ctx.loops.training_loops)
    covered = {id(stmt) for _, body in regions for stmt in body}
    found: list[tuple[FunctionNode | None, list[ast.stmt]]] = []
    for node in ctx.flow.nodes(ast.For):
        if not isinstance(node, ast.For):
            continue
        # where the loop is first (its function's kind and place, a lookup each): in a module
        # that does not train, only loops of uncalled module-level functions can count
        owner = ctx.enclosing_function(node)
        if owner is not None and (ctx.flow.module_method(owner) or _other_rules_path(ctx, owner)):
            continue
        if not trains and not _uncalled_module_function(ctx, owner):
            continue
        # then what the loop iterates: most loops are not over held-out data, and walking
        # each body for a model call cost more than the rest of this rule
        if ctx.flow.held_out_kind(node.iter) is None:
            continue
        if not any(
            isinstance(n, ast.Call) and ctx.flow.is_model_call(n) for n in walk_scope(node.body)
        ):
            continue
        if _inside_a_training_step(ctx, node):
            continue
        if any(id(anc) in covered for anc in ctx.ancestors(node)):
            continue
        if not trains and not _helper_for_other_files(ctx, owner, node):
            continue
        found.append((owner, [node]))
    return found


def _uncalled_module_function(ctx: ModuleContext, owner: FunctionNode | None) -> bool:
    """`owner` is a module-level function nothing in this module calls."""
    if owner is None or not isinstance(ctx.parents.get(owner), ast.Module):
        return False
    return not ctx.flow.callers.get(owner.name)


def _helper_for_other_files(ctx: ModuleContext, owner: FunctionNode | None, loop: ast.For) -> bool:
    """`loop` runs, in a module-level function nothing in this module calls, a model that
    function is given as a parameter."""
    if owner is None or not _uncalled_module_function(ctx, owner):
        return False
    params = {a.arg for a in [*owner.args.posonlyargs, *owner.args.args, *owner.args.kwonlyargs]}
    return any(
        isinstance(n, ast.Call)
        and ctx.flow.is_model_call(n)
        and isinstance(root := model_of(n), ast.Name)
        and root.id in params
        for n in walk_scope(loop.body)
    )


_DRAW_WRAPPERS = frozenset({"iter", "enumerate"})


def _held_out_draws(
    ctx: ModuleContext, regions: list[tuple[FunctionNode | None, list[ast.stmt]]], test_module: bool
) -> list[tuple[FunctionNode | None, list[ast.stmt]]]:
    """A held-out batch drawn inline in a training loop (`j, data =
    next(enumerate(testdataloader, 0))` every ten steps, PointNet's trainer) and the
    statements after it in its block that run the model without back-propagating: an
    evaluation written into the training step."""
    if test_module or not ctx.loops.training_loops or "next(" not in ctx.source:
        return []
    covered = {id(stmt) for _, body in regions for stmt in body}
    found: list[tuple[FunctionNode | None, list[ast.stmt]]] = []
    for node in ctx.flow.nodes(ast.Assign):
        value = node.value
        if not (isinstance(value, ast.Call) and method_name(value) == "next" and value.args):
            continue
        drawn = value.args[0]
        while isinstance(drawn, ast.Call) and method_name(drawn) in _DRAW_WRAPPERS and drawn.args:
            drawn = drawn.args[0]
        if ctx.flow.held_out_kind(drawn) is None:
            continue
        block = _block_of(ctx, node)
        rest = block[block.index(node) :] if block else []
        if not rest or any(id(stmt) in covered for stmt in rest):
            continue
        if any(id(anc) in covered for anc in ctx.ancestors(node)):
            continue
        if ctx.loops.backpropagates(rest) or not any(
            isinstance(n, ast.Call) and ctx.flow.is_model_call(n) for n in walk_scope(rest)
        ):
            continue
        owner = ctx.enclosing_function(node)
        if owner is not None and (ctx.flow.module_method(owner) or _other_rules_path(ctx, owner)):
            continue
        found.append((owner, rest))
    return found


def _held_out_calls(
    ctx: ModuleContext, regions: list[tuple[FunctionNode | None, list[ast.stmt]]], test_module: bool
) -> list[tuple[FunctionNode | None, list[ast.stmt]]]:
    """The model run on held-out tensors inline in a training loop (`test_pred =
    net(test_x)` every ten steps, a tutorial's dropout comparison) and the statements after
    it in its block, when they do not back-propagate: an evaluation written into the step."""
    if test_module or not ctx.loops.training_loops:
        return []
    covered = {id(stmt) for _, body in regions for stmt in body}
    found: list[tuple[FunctionNode | None, list[ast.stmt]]] = []
    seen: set[tuple[int, str]] = set()  # (block, model): each model once per block
    for loop in ctx.loops.training_loops:
        if loop.kind != "loop":
            continue
        for call in walk_scope(loop.node.body):
            if not (isinstance(call, ast.Call) and call.args and ctx.flow.is_model_call(call)):
                continue
            if all(ctx.flow.held_out_kind(arg) is None for arg in call.args):
                continue
            statement = next(
                (a for a in [call, *ctx.ancestors(call)] if isinstance(a, ast.stmt)), None
            )
            block = _block_of(ctx, statement) if statement is not None else []
            key = (id(block), ast.unparse(call.func))
            if statement is None or not block or key in seen:
                continue
            seen.add(key)
            rest = block[block.index(statement) :]  # its first model call is this one
            if any(id(stmt) in covered for stmt in rest):
                continue
            if any(id(anc) in covered for anc in ctx.ancestors(statement)):
                continue
            targets = [*getattr(statement, "targets", []), getattr(statement, "target", None)]
            if ctx.loops.backpropagates(rest) or any(
                t is not None and ctx.flow.is_backpropagated(t) for t in targets
            ):
                continue  # what it computes is trained on: part of the step, not an evaluation
            owner = ctx.enclosing_function(statement)
            if owner is not None and (
                ctx.flow.module_method(owner) or _other_rules_path(ctx, owner)
            ):
                continue
            found.append((owner, rest))
    return found


def _top_level_statement(ctx: ModuleContext, body: list[ast.stmt]) -> list[ast.stmt]:
    """The module-level statement that holds `body` (a script's epoch loop), as a block."""
    if not body:
        return []
    node: ast.AST = body[0]
    for ancestor in ctx.ancestors(body[0]):
        if isinstance(ancestor, ast.Module):
            break
        node = ancestor
    return [node] if isinstance(node, ast.stmt) else []


def _block_of(ctx: ModuleContext, stmt: ast.stmt) -> list[ast.stmt]:
    """The statement list `stmt` belongs to (a body, an else branch)."""
    parent = ctx.parents.get(stmt)
    for field in ("body", "orelse", "finalbody"):
        block = getattr(parent, field, None)
        if isinstance(block, list) and any(s is stmt for s in block):
            return block
    return []


_PHASE_NAME = re.compile(rf"['\"]({alternation(HELD_OUT_SPLITS)})['\"]", re.I)


def _phase_loops(ctx: ModuleContext) -> list[tuple[FunctionNode | None, ast.For, ast.Call]]:
    """`for phase in ("train", "val"):` loops whose body runs the model for both phases and
    back-propagates only in the training one (the torchvision fine-tuning shape): the first
    model call of each, with its function."""
    if not ctx.loops.training_loops or not _PHASE_NAME.search(ctx.source):
        return []
    found: list[tuple[FunctionNode | None, ast.For, ast.Call]] = []
    for loop in ctx.flow.nodes(ast.For):
        if not isinstance(loop, ast.For) or not isinstance(loop.target, ast.Name):
            continue
        if not isinstance(loop.iter, ast.Tuple | ast.List) or not any(
            isinstance(e, ast.Constant)
            and isinstance(e.value, str)
            and e.value.lower() in HELD_OUT_SPLITS
            for e in loop.iter.elts
        ):
            continue
        if not ctx.loops.backpropagates(loop.body):
            continue
        call = next(
            (
                n
                for n in walk_scope(loop.body)
                if isinstance(n, ast.Call) and ctx.flow.is_model_call(n)
            ),
            None,
        )
        owner = ctx.enclosing_function(loop)
        if call is not None and not (owner is not None and ctx.flow.module_method(owner)):
            found.append((owner, loop, call))
    return found


def _mode_set_by_phase(scope: ast.AST) -> bool:
    """`model.train(phase == "train")` or `model.train(mode=...)`: the mode follows the phase."""
    return any(
        isinstance(n, ast.Call)
        and method_name(n) == "train"
        and any(not isinstance(a, ast.Constant) for a in [*n.args, *(k.value for k in n.keywords)])
        for n in walk_tree(scope)
    )


def _inside_a_training_step(ctx: ModuleContext, node: ast.AST) -> bool:
    """`node` sits in a loop whose own iterations back-propagate (a loop over modalities or
    heads, a no-grad forward inside the training step): part of that step, not an evaluation."""
    loops = (ast.For, ast.AsyncFor, ast.While)
    for outer in ctx.ancestors(node):
        if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if not isinstance(outer, loops):
            continue
        for call in walk_scope(outer.body):
            if isinstance(call, ast.Call) and is_backward_call(call):
                innermost = next(a for a in ctx.ancestors(call) if isinstance(a, loops))
                if innermost is outer:
                    return True
    return False


def _eval_on_path(ctx: ModuleContext, owner: FunctionNode | None, call: ast.Call) -> bool:
    flow = ctx.flow
    if flow.reaches_method(
        owner.body if owner is not None else module_level(ctx.tree), "eval"
    ) and not (owner is not None and _evaluated_only_after(ctx, owner, call)):
        return True
    if model_put_in_eval(ctx, model_of(call)):
        return True
    sites = flow.callers.get(owner.name, []) if owner is not None else []
    # a batch helper shared with the training loop (Informer's `_process_one_batch`) runs in
    # training mode there on purpose: only its evaluation calls need an `.eval()` before them
    evaluating = [site for site in sites if not _training_step_call(ctx, site)]
    sites = evaluating or sites
    # every call must follow an `.eval()`: DeepLabV3+'s `validate` is called after one in the
    # `--test_only` branch, and without one in the periodic validation of the training loop
    return bool(sites) and all(eval_before(ctx, site) for site in sites)


def _training_step_call(ctx: ModuleContext, site: ast.Call) -> bool:
    """`site` computes what its loop back-propagates (`pred, true = self._process_one_batch(
    ...)`, then `criterion(pred, true).backward()`): a training step's own forward, not a
    validation pass run between steps."""
    loop = next(
        (a for a in ctx.ancestors(site) if isinstance(a, ast.For | ast.AsyncFor | ast.While)),
        None,
    )
    if loop is None:
        return False
    for node in walk_scope(loop.body):
        if not (isinstance(node, ast.Call) and is_backward_call(node)):
            continue
        assert isinstance(node.func, ast.Attribute)
        losses = [node.func.value, *node.args]
        if any(ctx.flow.derives_from(loss, lambda n: n is site) for loss in losses):
            return True
    return False


def _stored_after_eval(ctx: ModuleContext, owner: FunctionNode, model: ast.expr) -> bool:
    """`self.net(...)` in a method of a class whose `__init__` stores one of its parameters
    as `self.net`, when every construction of that class in this module follows an
    `.eval()` (BiSeNet's `net.eval()` then `evaluator = MscEval(net, dl)`): the evaluator
    holds a model its caller already switched."""
    if not (
        isinstance(model, ast.Attribute)
        and isinstance(model.value, ast.Name)
        and model.value.id == "self"
    ):
        return False
    cls = ctx.parents.get(owner)
    if not isinstance(cls, ast.ClassDef):
        return False
    init = next(
        (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    if init is None:
        return False
    params = {a.arg for a in [*init.args.args[1:], *init.args.kwonlyargs]}
    stored = any(
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Name)
        and node.value.id in params
        and any(
            isinstance(t, ast.Attribute)
            and t.attr == model.attr
            and isinstance(t.value, ast.Name)
            and t.value.id == "self"
            for t in node.targets
        )
        for node in walk_scope(init.body)
    )
    if not stored:
        return False
    sites = [
        c
        for c in ctx.flow.calls_named((cls.name,))
        if isinstance(c.func, ast.Name) and c.func.id == cls.name
    ]
    return bool(sites) and all(eval_before(ctx, site) for site in sites)


def _attribute_of_a_project_base(
    ctx: ModuleContext, owner: FunctionNode | None, model: ast.expr
) -> tuple[str, str] | None:
    """(the base class's qualified import, the attribute) when `model` is `self.<attribute>`
    in a method of a class built on a class imported from elsewhere (not torch's)."""
    if (
        owner is None
        or not isinstance(model, ast.Attribute)
        or not isinstance(model.value, ast.Name)
        or model.value.id != "self"
    ):
        return None
    cls = ctx.parents.get(owner)
    if not isinstance(cls, ast.ClassDef):
        return None
    for base in cls.bases:
        symbol = callee_symbol(ctx, base)
        if symbol is not None and not symbol.startswith("torch."):
            return symbol, model.attr
    return None


def _callers_decide(
    ctx: ModuleContext, owner: FunctionNode | None, call: ast.Call, elsewhere: bool
) -> tuple[Property | None, FunctionNode | None]:
    """What the project pass must see at the callers in other files for the finding to
    hold, and at the callers of which function, when they decide the mode: a module-level
    function given the model as a parameter and called nowhere in this module, or called
    only by such a function that hands its own model parameter on. None: the finding holds
    as it is."""
    if owner is None or not isinstance(ctx.parents.get(owner), ast.Module):
        return None, None
    if elsewhere:
        return "called-in-train-mode", owner
    if not _model_is_a_parameter(owner, call):
        return None, None
    entry = _entry_called_elsewhere(ctx, owner, call)
    return ("left-in-train-mode-by-a-caller", entry) if entry is not None else (None, None)


def _entry_called_elsewhere(
    ctx: ModuleContext, owner: FunctionNode, call: ast.Call
) -> FunctionNode | None:
    """`owner` itself when nothing in this module calls it; else, up to three levels, the one
    module-level function that calls it with its own parameter as the model
    (`zero_shot_eval(model, ...)` -> `run_classifier(model, ...)`) and is itself called only
    from other files. None when any local caller passes something else, or several do."""
    current, param = owner, _model_parameter(call)
    for _ in range(3):
        sites = ctx.flow.callers.get(current.name, [])
        if not sites:
            return current
        callers = {ctx.enclosing_function(site) for site in sites}
        caller = callers.pop() if len(callers) == 1 else None
        if caller is None or not isinstance(ctx.parents.get(caller), ast.Module):
            return None
        passed = {_argument_for(site, current, param) for site in sites}
        if len(passed) != 1 or (name := passed.pop()) is None or name not in _parameters(caller):
            return None
        current, param = caller, name
    return None


def _over_training_data(ctx: ModuleContext, owner: FunctionNode, body: list[ast.stmt]) -> bool:
    """A helper not named like an evaluation whose model loops iterate a parameter that every
    local caller fills with the training data (`init_memory(train_loader, model)` filling a
    memory bank that the training steps then update in training mode): no held-out pass."""
    if _EVAL_FUNCTION.search(owner.name):
        return False
    sites = ctx.flow.callers.get(owner.name, [])
    loops = [
        n
        for n in walk_scope(body)
        if isinstance(n, ast.For)
        and any(isinstance(c, ast.Call) and ctx.flow.is_model_call(c) for c in walk_scope(n.body))
    ]
    if not sites or not loops:
        return False
    params = _parameters(owner)
    nested = {id(inner) for loop in loops for inner in walk_scope(loop.body)}
    for loop in (loop for loop in loops if id(loop) not in nested):
        iterated = {n.id for n in walk_tree(loop.iter) if isinstance(n, ast.Name)} & params
        if not iterated:
            return False
        for site in sites:
            for param in iterated:
                passed = _argument_for(site, owner, param)
                if passed is None or not _TRAINING_DATA.search(passed):
                    return False
                if held_out_name_kind(passed) is not None:
                    return False
    return True


_TRAINING_DATA = re.compile(r"(^|_)train(ing)?(_?(loader|set|data|dl|ds|dataset|iter))?$", re.I)


def _parameters(fn: FunctionNode) -> set[str]:
    return {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}


def _model_parameter(call: ast.Call) -> str:
    root = model_of(call)
    while isinstance(root, ast.Attribute):
        root = root.value
    return root.id if isinstance(root, ast.Name) else ""


def _argument_for(site: ast.Call, callee: FunctionNode, param: str) -> str | None:
    """The variable a call passes as `callee`'s parameter `param` (by position or keyword)."""
    value = _argument_expr(site, callee, param)
    return value.id if isinstance(value, ast.Name) else None


def _argument_expr(site: ast.Call, callee: FunctionNode, param: str) -> ast.expr | None:
    positional = [a.arg for a in [*callee.args.posonlyargs, *callee.args.args]]
    value: ast.expr | None = next((k.value for k in site.keywords if k.arg == param), None)
    if value is None and param in positional and positional.index(param) < len(site.args):
        value = site.args[positional.index(param)]
    return value


def project_loader(ctx: ModuleContext, owner: FunctionNode | None, call: ast.Call) -> str | None:
    """The function of another project file whose result is the evaluated model (`model =
    load_model(path)` in this function, or at each local caller for a model parameter); None
    when there is none, or several."""
    loaders = {id(site): symbol for symbol, site in project_function_calls(ctx)}
    if not loaders:
        return None
    model = model_of(call)
    values: list[ast.expr | None] = [model]
    if owner is not None and _model_is_a_parameter(owner, call):
        sites = ctx.flow.callers.get(owner.name, [])
        values = [_argument_expr(site, owner, _model_parameter(call)) for site in sites]
    found: set[str] = set()
    for value in values:
        if value is None:
            return None
        found.update(
            loaders[id(source)] for source in ctx.flow.sources(value) if id(source) in loaders
        )
    return found.pop() if len(found) == 1 else None


def _train_mode_set_before(ctx: ModuleContext, owner: FunctionNode, call: ast.Call) -> bool:
    """`.train()` before the model runs: training mode on purpose (recomputing BatchNorm
    statistics); a `.train()` after the evaluation only restores the mode for the next
    epoch (Pytorch-UNet's `evaluate`) and does not excuse a missing `.eval()`."""
    before = statements_before(ctx, owner, call)
    if not ctx.flow.reaches_method(before, "train"):
        return False
    switches = [
        n.lineno
        for stmt in before
        for n in walk_tree(stmt)
        if isinstance(n, ast.Call)
        and method_name(n) == "train"
        and not switches_to_eval(n)
        and n.lineno < call.lineno
    ]
    if not switches or _inside_a_training_step(ctx, call):
        # set in a function called before (not located), or a forward inside the training
        # step itself (a metric on the training batch): taken as deliberate
        return True
    # a training pass between the last `.train()` and this call: that mode was for the updates
    last = max(switches)
    return not any(
        isinstance(n, ast.Call) and is_backward_call(n) and last < n.lineno < call.lineno
        for stmt in before
        for n in walk_tree(stmt)
    )


def _evaluated_only_after(ctx: ModuleContext, owner: FunctionNode, call: ast.Call) -> bool:
    """Every call of the function that sets eval mode (itself or through a local function)
    comes after `call` and outside every loop around it: a solver's `train()` that runs its
    validation loader inside the epoch loop in training mode, and switches to `.eval()` only
    for the test after the epochs. Such an `.eval()` does not put `call` in eval mode."""
    loops: set[int] = set()
    for a in ctx.ancestors(call):
        if a is owner:
            break
        if isinstance(a, ast.For | ast.While | ast.AsyncFor):
            loops.add(id(a))
    found = False
    for node in walk_scope(owner.body):
        if not isinstance(node, ast.Call) or node is call:
            continue
        if ctx.flow.mode_method(node) != "eval" and not (
            ctx.calls.resolve(node) and ctx.flow.reaches_method(node, "eval", excluding=call)
        ):
            continue
        found = True
        if node.lineno <= call.lineno or any(id(a) in loops for a in ctx.ancestors(node)):
            return False
    return found


def _model_is_a_parameter(owner: FunctionNode, call: ast.Call) -> bool:
    root = model_of(call)
    while isinstance(root, ast.Attribute):
        root = root.value
    params = {a.arg for a in [*owner.args.posonlyargs, *owner.args.args, *owner.args.kwonlyargs]}
    return isinstance(root, ast.Name) and root.id in params and root.id != "self"


def _helper_of_a_caller_elsewhere(ctx: ModuleContext, owner: FunctionNode, call: ast.Call) -> bool:
    """A no-grad helper not named like an evaluation, given the model as a parameter and
    called nowhere in this module (LLMs-from-scratch's `generate_text_simple(model, ...)`):
    its callers, in other files, own the mode."""
    if _EVAL_FUNCTION.search(owner.name) or ctx.flow.callers.get(owner.name):
        return False
    root = model_of(call)
    while isinstance(root, ast.Attribute):
        root = root.value
    params = {a.arg for a in [*owner.args.posonlyargs, *owner.args.args, *owner.args.kwonlyargs]}
    return isinstance(root, ast.Name) and root.id in params and root.id != "self"


ModeLayers = Literal["known", "unknown", "none"]


def _mode_dependent(
    ctx: ModuleContext, model: ast.expr, wrappers: frozenset[int] = frozenset()
) -> ModeLayers:
    """Whether the model has dropout/normalisation layers: seen ("known"), not visible from
    here ("unknown": built elsewhere, loaded, a third-party class), or known absent. A
    wrapper (`DistributedDataParallel(model)`, `torch.compile(model)`) has the layers of the
    module it wraps (torchdistill's `evaluate` wraps a model it is given), the wrapper
    itself left out of what it wraps (`self.model = nn.DataParallel(self.model)`)."""
    flow = ctx.flow
    constructors = [c for c in flow.constructors(model) if id(c) not in wrappers]
    if not constructors:
        passed = _passed_by_local_callers(ctx, model) if len(wrappers) < 4 else None
        if not passed:
            return "unknown"
        # a parameter: what every caller of this module hands it (`compute_accuracy(model,
        # loader)` after `model = MultilayerPerceptron(...)`, a plain class of this file)
        verdicts = {_mode_dependent(ctx, value, wrappers | {id(model)}) for value in passed}
        if "known" in verdicts:
            return "known"
        return "unknown" if "unknown" in verdicts else "none"
    verdict: ModeLayers = "none"
    for call in constructors:
        if flow.qualname_of(call) in MODULE_WRAPPERS:
            wrapped = call.args[0] if call.args else kwarg(call, "module")
            found: ModeLayers = "unknown"
            if wrapped is not None and len(wrappers) < 4:
                found = _mode_dependent(ctx, wrapped, wrappers | {id(call)})
            if found == "known":
                return "known"
            if found == "unknown":
                verdict = "unknown"
            continue
        name = call.func.id if isinstance(call.func, ast.Name) else None
        if name is not None and name in flow.classes:
            found = _class_mode_dependent(ctx, flow.classes[name], set())
            if found == "known":
                return "known"
            if found == "unknown":
                verdict = "unknown"
            continue
        qual = ctx.flow.qualname_of(call) or ""
        if qual.startswith("torch.nn.") and _MODE_DEPENDENT.search(ast.unparse(call)):
            return "known"
        if not qual.startswith("torch.nn."):
            verdict = "unknown"
    return verdict


def _passed_by_local_callers(ctx: ModuleContext, model: ast.expr) -> list[ast.expr] | None:
    """The arguments every call in this module passes for `model`, a parameter of the
    function that runs it; None when it is not one, nothing here calls the function, or a
    call passes it by `*args`/`**kwargs`."""
    if not isinstance(model, ast.Name) or model.id == "self":
        return None
    fn = ctx.enclosing_function(model)
    if fn is None or model.id not in {a.arg for a in [*fn.args.posonlyargs, *fn.args.args]}:
        return None
    sites = ctx.flow.callers.get(fn.name, [])
    if not sites or len(sites) > 8:
        return None
    values = [_argument_expr(site, fn, model.id) for site in sites]
    if any(isinstance(a, ast.Starred) for site in sites for a in site.args) or any(
        k.arg is None for site in sites for k in site.keywords
    ):
        return None
    return [v for v in values if v is not None] if all(v is not None for v in values) else None


def _class_mode_dependent(ctx: ModuleContext, cls: ast.ClassDef, seen: set[str]) -> ModeLayers:
    seen.add(cls.name)
    text = ast.unparse(cls)
    if _MODE_DEPENDENT.search(text):
        return "known"
    classes = ctx.flow.classes
    verdict: ModeLayers = "none"
    for node in walk_tree(cls):
        if isinstance(node, ast.Call):
            callee = node.func.id if isinstance(node.func, ast.Name) else ""
            if callee in classes and callee not in seen:
                found = _class_mode_dependent(ctx, classes[callee], seen)
                if found == "known":
                    return "known"
                if found == "unknown":
                    verdict = "unknown"
            elif callee and callee not in classes and callee[:1].isupper():
                qual = ctx.flow.qualname_of(node) or ""
                if not qual.startswith("torch.nn."):
                    verdict = "unknown"
    return verdict
