"""validation-with-grad: evaluation runs the model with autograd recording."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    module_name,
    project_function_calls,
    publish_grad_calls,
)
from torchdoctor.agent.checks.analysis.roles import evaluation_helpers
from torchdoctor.agent.checks.analysis.vocabulary import INFERENCE_METHOD_PREFIXES
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import (
    FunctionNode,
    is_backward_call,
    nodes_of,
    phase_constant,
    phase_equality,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.patterns import (
    functions,
    is_false,
    mode_call_receivers,
    model_calls,
    model_runs,
    shape_check_only,
    switches_to_eval,
)
from torchdoctor.agent.models import Severity

# Calls of an evaluation method on an object, published under this prefix by method name:
# the object's class is not resolved, so every same-named call in the project counts.
METHOD_CALLS = "<method>"
_EVAL_FUNCTION = re.compile(
    r"^(eval|evaluate|evaluation|valid|validate|validation|val|test|predict|inference|infer)"
    r"($|_)|_(eval|evaluate|evaluation|validate|validation|val|valid|test|predict|inference)$"
    # inside a longer name (`measure_repeated_inference_timing`, `run_evaluation_loop`)
    r"|_(inference|evaluation|prediction|predictions)_",
    re.IGNORECASE,
)
# Functions that run a model over data only to keep what it computes: hidden states,
# features, embeddings, activations (`extract_hiddens`, `get_activations`,
# `compute_embeddings`, `extract_features`).
_EXTRACTION_FUNCTION = re.compile(
    r"^(extract|get|compute|collect|dump|cache|save|precompute)_(\w+_)?"
    r"(hiddens?|hidden_states|features?|feats|embeddings?|embeds|activations?|"
    r"representations?|latents)$",
    re.IGNORECASE,
)
_EVAL_LOADER = re.compile(
    r"^(val|valid|validation|test|eval|dev)_?(loader|dataloader|dl|data|dataset|ds|set|batches)s?$",
    re.IGNORECASE,
)
_HELD_OUT = frozenset({"test", "val"})
# Scripts that only evaluate or predict (`detect.py`, `test.py`, `eval_coco.py`, `demo.py`);
# pytest modules (`test_*.py`) are not among them.
_EVALUATION_SCRIPT = re.compile(
    r"^(test|eval|evaluate|evaluation|inference|infer|predict|demo|detect)([-_.][\w.-]*)?\.py$"
)
_FORWARD_NAME = re.compile(r"^(predict|infer|inference)($|_)")
_LIGHTNING_HOOKS = frozenset({"validation_step", "test_step", "predict_step"})
_ROUTE_DECORATORS = frozenset(
    {"route", "get", "post", "put", "patch", "delete", "websocket", "api_route"}
)
"""`@app.route(...)`, `@app.post(...)`, `@router.get(...)`: Flask, FastAPI and the like."""


def is_eval_function(fn: FunctionNode) -> bool:
    """Named like an evaluation, private or not (`validate`, `_valid_epoch`); pytest's
    `test_*` functions and Lightning's hooks are not."""
    return (
        fn.name not in _LIGHTNING_HOOKS
        and not fn.name.startswith("test_")
        and bool(_EVAL_FUNCTION.search(fn.name.lstrip("_")))
    )


class ValidationWithGrad(Rule):
    """Detects an evaluation function or loop (`evaluate`, `validate`, `test`, a loop over
    `val_loader`) that calls the model with no backward pass and outside `torch.no_grad()` /
    `torch.inference_mode()` (as a `with` block, a decorator, or `torch.set_grad_enabled(False)`).
    Every function of a script named for evaluation or prediction (`detect.py`, `test.py`)
    that never back-propagates counts as evaluation.
    In a training loop, so does the model switched to eval mode and then run before the loop
    switches it back, with nothing back-propagated in between (`ddpm.eval()` after each
    epoch, then `xh = ddpm.sample(8, ...)` to save a grid of samples).
    A helper counts as evaluation whatever its name when it is called with held-out data
    (`compute_accuracy(model, val_loader)`), and so does a loop over held-out data written
    inline in the training loop, and so does a function that puts the model in eval mode
    itself and then runs it on what it was given (a detector's `do_detect(model, img)`: one
    forward per call, the whole purpose of the function; also on the elements of what it was
    given, moved to the device: NCF's `evaluate(self, evaluate_data, epoch_id)` running
    `self.model(test_users, test_items)` on `evaluate_data[0]`, `evaluate_data[1]`), unless it
    clears the model's gradients first (`model.zero_grad()`: a forward function whose caller
    differentiates it, as Captum's attribution methods do). So does serving: a web request
    handler (`@app.route`, `@app.post`, `@router.get`) and the local functions it calls, where
    every request is one more forward (not a method named for handling models, such as a
    serving controller's `controller.list_models()`: it returns their names).

    So does a module-level function that runs a model over data in a loop only to keep what
    it computes (`extract_hiddens`, `get_activations`, `compute_embeddings`): a feature
    extractor that back-propagates nothing (methods such as a decoder's `extract_features`
    are the network's forward, not reported).

    The model may run through a helper of the module that calls it and back-propagates
    nothing (`pred, true = self._process_one_batch(vali_data, batch_x, batch_y)` in an
    Informer-style `vali`): the finding is on that call.

    Also reported: an epoch helper shared by training and evaluation whose flag parameter
    only guards the backward pass (`if train_model: loss.backward()`), at its forward, when
    some call outside no_grad passes the flag as False (`_epoch(valid_loader,
    train_model=False)`) and nothing in it sets the grad mode.

    Also reported: the branch of a test of a training flag (`if train:`, `if not
    self.training:`, `if phase == "train":`) that makes the same loss or model call as the
    other branch, which back-propagates, with autograd on and nothing back-propagated
    (score_sde's `step_fn`: `if train: loss = loss_fn(model, batch); loss.backward(); ...
    else: loss = loss_fn(model, batch)`, its `no_grad` lost). Not when both branches
    back-propagate (an AMP or accumulation switch), nor a test of another flag.

    Not reported: a forward whose output is only looked at for its shape
    (`print(encoder(img).shape)`), code under `set_grad_enabled(flag)` (the mode is decided
    at run time) or under a `no_grad` entered on the block's `ExitStack` before it
    (`stack.enter_context(torch.no_grad())`, detectron2's `inference_on_dataset`; one
    entering only `autocast`, or `no_grad` after the loop, is reported), a closure only
    handed to calls inside a `no_grad` function (k-diffusion's `sample_fn` given to
    `compute_features` in an `@torch.no_grad()` evaluation; one returned, stored or
    registered as a hook runs later and is judged by its callers), a
    helper every call of which already runs under `no_grad` (in its own file, or, for a
    module-level helper its file never calls, in the other files of the project: melgan's
    `validate()` of `utils/validation.py`, called under `no_grad` by `utils/train.py`; for an
    evaluation method its file never calls, every call of that method name in the other
    files: PET's `self.task_helper.eval_step(...)`), a
    `predict` method whose output a function of the module back-propagates (the forward
    under another name), a helper that also back-propagates with no flag saying when it
    evaluates (`run_epoch(model, val_loader, criterion)`, training whenever given an
    optimizer), one-off forwards (a shape check) outside any loop, evaluations that
    differentiate with
    `torch.autograd.grad` (a PGD attack measuring robust accuracy), and export helpers
    (`torch.onnx.export`, `torch.jit.trace` after one forward).

    Why it matters: autograd records every operation and keeps the activations alive for a
    backward pass that never comes: evaluation uses several times the memory it needs and
    runs slower, and large batches run out of memory.

    Example:
        def evaluate(model, loader):
            model.eval()
            for x, y in loader:
                correct += (model(x).argmax(1) == y).sum()

    Fix: decorate the function with `@torch.inference_mode()` (or wrap the loop in
    `with torch.no_grad():` when its outputs are reused in autograd later).
    """

    id = "validation-with-grad"
    point = 6
    severity = Severity.MEDIUM
    title = "Evaluation runs with gradients enabled"
    items: ClassVar[tuple[str, ...]] = ("6.1",)

    def finish(self, ctx: ModuleContext) -> None:
        source = ctx.source
        if "backward" in source and "else" in source and "train" in source:
            for branch_call, test in _evaluating_branch_calls(ctx):
                ctx.report(
                    self,
                    branch_call,
                    f"`{ast.unparse(branch_call.func)}` runs with autograd on in the branch of `if "
                    f"{ast.unparse(test.test)}:` that never back-propagates (the other branch "
                    "calls it and runs backward): the graph is kept for a backward that never "
                    "comes; wrap this branch in `torch.no_grad()`",
                )
        publish_grad_calls(  # whether each call of another file's function here records
            ctx, _grad_off_calls(ctx)
        )
        serves = "@" in source and any(f".{d}(" in source for d in _ROUTE_DECORATORS)
        if "(" not in source or not (
            serves
            or any(
                k in source
                for k in ("val", "test", "eval", "pred", "hidden", "feat", "embed", "activation")
            )
        ):
            return
        if ctx.flow.foreign_framework:
            return  # a Chainer or JAX script: no torch autograd to turn off
        reported: set[int] = set()
        candidates = [fn for fn in functions(ctx) if is_eval_function(fn)]
        chosen = {id(fn) for fn in candidates}  # `fn in candidates` without a list scan
        candidates += [fn for fn in evaluation_helpers(ctx) if id(fn) not in chosen]
        chosen = {id(fn) for fn in candidates}
        candidates += [
            fn
            for fn in functions(ctx)
            if id(fn) not in chosen
            and _EXTRACTION_FUNCTION.match(fn.name.lstrip("_"))
            and isinstance(ctx.parents.get(fn), ast.Module)
            and _runs_a_model_in_a_loop(ctx, fn)
        ]
        if _evaluation_script(ctx):
            chosen = {id(fn) for fn in candidates}
            candidates += [
                fn for fn in functions(ctx) if id(fn) not in chosen and not _in_network(ctx, fn)
            ]
        chosen = {id(fn) for fn in candidates}
        serving = [fn for fn in _serving_functions(ctx) if id(fn) not in chosen] if serves else []
        names = {fn.name for fn in [*candidates, *serving]}
        guarded_callers = self._grad_off_call_sites(ctx, names) if names else set()
        for fn in candidates:
            if fn.name not in guarded_callers and not _trained_through(ctx, fn):
                self._check_helper(ctx, fn, reported)
                # not repeated here: its callers live in other modules, once per batch
                # (`model.test()` in a training script's validation loop, `net.predict(x)`);
                # a function with its own data loop repeats that loop instead
                call = (
                    None if _runs_a_model_in_a_loop(ctx, fn) else _forward_after_own_eval(ctx, fn)
                )
                if call is not None and not any(
                    fn.lineno <= line <= (fn.end_lineno or fn.lineno) for line in reported
                ):
                    self._report(ctx, call, reported)
        for fn in functions(ctx):
            if id(fn) in chosen or _in_network(ctx, fn) or "backward" not in source:
                continue
            switched = _evaluated_through_flag(ctx, fn)
            if switched is None or any(
                fn.lineno <= line <= (fn.end_lineno or fn.lineno) for line in reported
            ):
                continue
            guard, site, passed = switched
            repeated = _in_loop(ctx, site, None)  # a full-batch step called once per epoch
            call = next(
                (
                    c
                    for c in model_calls(ctx, fn.body)
                    if (repeated or _in_loop(ctx, c, fn)) and not grad_may_be_off(ctx, c)
                ),
                None,
            )
            if call is not None:
                reported.add(call.lineno)
                ctx.report(
                    self,
                    call,
                    f"`{fn.name}` also evaluates (called with `{passed}` at line "
                    f"{site.lineno}), but `{guard}` only skips the backward pass: the model "
                    "still runs with autograd on, keeping activations for a backward that "
                    f"never comes; wrap the forward in `torch.set_grad_enabled({guard})`",
                )
        for fn in serving:  # one forward per request: no loop needed to repeat it
            if fn.name not in guarded_callers:
                call = self._first_with_grad(ctx, fn.body, reported)
                if call is not None:
                    reported.add(call.lineno)
                    ctx.report(
                        self,
                        call,
                        "the model answers a request with autograd on: every request keeps "
                        "activations for a backward pass that never happens (memory, latency)",
                    )
        if ".eval()" in source:
            checked = {id(fn) for fn in [*candidates, *serving]}
            for fn in functions(ctx):
                if id(fn) in checked or _in_network(ctx, fn):
                    continue
                call = _forward_after_own_eval(ctx, fn)
                if (
                    call is not None
                    and call.lineno not in reported
                    and fn.name not in self._grad_off_call_sites(ctx, {fn.name})
                ):
                    self._report(ctx, call, reported)
        if ".eval()" in source and "backward" in source:
            for call in _run_between_eval_and_train(ctx):
                if call.lineno not in reported:
                    self._report(ctx, call, reported)
        if "backward" in source and "==" in source:
            for loop, call, guard in _loops_shared_by_phase(ctx):
                end = loop.end_lineno or loop.lineno
                if any(loop.lineno <= line <= end for line in reported):
                    continue
                reported.add(call.lineno)
                ctx.report(
                    self,
                    call,
                    f"`{ast.unparse(call.func)}(...)` runs on every pass of this loop, but only "
                    f"`{guard}` back-propagates what it returns: the other phases ("
                    f"`{guard.split(' == ')[0]}` is also compared to other values) run it with "
                    "autograd on, keeping graphs that are never used; run it under "
                    f"`torch.set_grad_enabled({guard})`",
                )
        for node in nodes_of(ctx, ast.For):
            if not isinstance(node, ast.For):
                continue
            if any(node.lineno <= line <= (node.end_lineno or node.lineno) for line in reported):
                continue  # already reported through its function: one finding per loop
            # its first model call with autograd on, first: most loops have none, and
            # whether a loop iterates held-out data is the costly question
            call = self._first_with_grad(ctx, node.body, reported)
            if call is not None and self._callers_turn_grad_off(ctx, node):
                continue
            if call is not None and (
                any(_EVAL_LOADER.search(name) for name in _names_in(node.iter))
                or (
                    not _in_network(ctx, node)
                    and ctx.flow.held_out_kind(node.iter, _HELD_OUT) is not None
                )
            ):
                self._report(ctx, call, reported)

    def _check_helper(self, ctx: ModuleContext, fn: FunctionNode, reported: set[int]) -> None:
        """`_check_body` of an evaluation function; one its own module never calls is left to
        the project pass, which drops it when every call in the other files runs under
        no_grad."""
        call = self._first_with_grad(ctx, fn.body, reported, fn)
        if call is None:
            return
        owner = ctx.parents.get(fn)
        called_here = any(
            isinstance(c.func, ast.Attribute) for c in ctx.flow.calls_named([fn.name])
        )
        if isinstance(owner, ast.ClassDef) and not called_here:
            symbol = f"{METHOD_CALLS}.{fn.name}"  # `self.task_helper.eval_step(...)` elsewhere
        elif isinstance(owner, ast.Module) and fn.name not in ctx.flow.callers:
            symbol = f"{module_name(ctx.path)}.{fn.name}"
        else:
            self._report(ctx, call, reported)
            return
        reported.add(call.lineno)
        found = ctx.finding(self, call, _MESSAGE)
        if found is not None:
            defer(
                ctx,
                self.id,
                Pending(symbol=symbol, needs="run-with-grad-by-a-caller", finding=found),
            )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """An evaluation helper of one file is reported unless every call of it in the other
        files runs under no_grad (or none is seen and it is reported as before)."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def _check_body(
        self,
        ctx: ModuleContext,
        body: list[ast.stmt],
        reported: set[int],
        function: FunctionNode | None = None,
    ) -> None:
        call = self._first_with_grad(ctx, body, reported, function)
        if call is not None:
            self._report(ctx, call, reported)

    @staticmethod
    def _first_with_grad(
        ctx: ModuleContext,
        body: list[ast.stmt],
        reported: set[int],
        function: FunctionNode | None = None,
    ) -> ast.Call | None:
        """The first model call in `body` that runs with autograd on, unless `body` trains.

        In an evaluation function only calls repeated over data count (inside a loop or a
        comprehension): one forward in a `test()` shape check costs nothing worth reporting.
        """
        for call in model_runs(ctx, body):
            if call.lineno in reported or grad_may_be_off(ctx, call):
                continue
            if shape_check_only(ctx, call):
                continue  # `print(encoder(img).shape)`: one forward to see that it runs
            if function is not None and not _repeated(ctx, call, function):
                continue
            needs_grad = ctx.loops.backpropagates(body) or _input_gradients(ctx, body)
            return None if needs_grad else call
        return None

    def _report(self, ctx: ModuleContext, call: ast.Call, reported: set[int]) -> None:
        reported.add(call.lineno)
        ctx.report(self, call, _MESSAGE)

    @classmethod
    def _callers_turn_grad_off(cls, ctx: ModuleContext, loop: ast.For) -> bool:
        """The loop's function is called only under no_grad (FCGF's trainer: `with
        torch.no_grad(): val_dict = self._valid_epoch()`): its forwards record nothing."""
        fn = ctx.enclosing_function(loop)
        return fn is not None and fn.name in cls._grad_off_call_sites(ctx, {fn.name})

    @staticmethod
    def _grad_off_call_sites(ctx: ModuleContext, names: set[str]) -> set[str]:
        """Those of `names` every call of which already runs under no_grad/inference_mode."""
        sites: dict[str, list[bool]] = {}
        for node in nodes_of(ctx, ast.Call):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if name in names:
                    sites.setdefault(name, []).append(grad_may_be_off(ctx, node))
        return {name for name, flags in sites.items() if flags and all(flags)}


_MESSAGE = (
    "the model runs for evaluation with autograd on: activations are kept for a backward "
    "pass that never happens"
)


def _grad_off_calls(ctx: ModuleContext) -> dict[str, list[bool]]:
    """Per function imported from another file of the project, whether each call of it here
    runs with autograd off; and per evaluation method called on an object (`self.task_helper
    .eval_step(batch)`: PET's wrapper, the helper's class in another file), under
    `METHOD_CALLS.<name>`, the same for each call by that name."""
    found: dict[str, list[bool]] = {}
    for symbol, site in project_function_calls(ctx):
        found.setdefault(symbol, []).append(grad_may_be_off(ctx, site))
    if "eval" in ctx.source or "valid" in ctx.source or "pred" in ctx.source:
        evaluating: dict[str, bool] = {}  # per method name, searched once
        for site in ctx.flow.nodes(ast.Call):
            func = site.func
            if not isinstance(func, ast.Attribute) or (
                isinstance(func.value, ast.Name) and func.value.id == "self"
            ):
                continue
            named = evaluating.get(func.attr)
            if named is None:
                named = evaluating[func.attr] = bool(
                    _EVAL_FUNCTION.search(func.attr.lstrip("_"))
                ) and not func.attr.startswith("test_")
            if named:
                key = f"{METHOD_CALLS}.{func.attr}"
                found.setdefault(key, []).append(grad_may_be_off(ctx, site))
    return found


def _serving_functions(ctx: ModuleContext) -> list[FunctionNode]:
    """Web request handlers (`@app.post("/predict")`) and the local functions they call."""
    handlers = [
        fn
        for fn in functions(ctx)
        if any(
            isinstance(d, ast.Call)
            and isinstance(d.func, ast.Attribute)
            and d.func.attr in _ROUTE_DECORATORS
            for d in fn.decorator_list
        )
    ]
    found = list(handlers)
    for handler in handlers:
        for node in walk_tree(handler):
            if isinstance(node, ast.Call):
                found += [fn for fn in ctx.calls.resolve(node) if fn not in found]
    return found


def _evaluation_script(ctx: ModuleContext) -> bool:
    """A script named for evaluation or prediction (`detect.py`, `test.py`) that never
    back-propagates: every forward it runs over data is evaluation, whatever its function is
    called (`detect()`, `extract_feature()`)."""
    name = ctx.path.rsplit("/", 1)[-1]
    if name.startswith("test_") or not _EVALUATION_SCRIPT.match(name):
        return False
    return "backward" not in ctx.source and ".step(" not in ctx.source


_EXPORTS = frozenset({"export", "trace", "script", "dynamo_export"})


def _forward_after_own_eval(ctx: ModuleContext, fn: FunctionNode) -> ast.Call | None:
    """The model call of a function that switches that model to eval mode itself and runs it
    on one of its own parameters, or on a value built from them, with autograd on
    (`model.eval()`, then `model(img)` in `do_detect(model, img)`; `self.net_g(self.var_L)`
    in a method); None when it back-propagates, differentiates, exports, or first stops its
    parameters from requiring grad, and for the `forward` of a network (Lightning Bolts'
    detectors: `self.model.eval(); return self.model(x)`), whose callers own the grad mode."""
    owner = ctx.calls.owner(fn)
    if fn.name == "forward" and owner is not None and owner.name in ctx.flow.module_classes:
        return None
    evals = {
        identifier(call.func.value): call.lineno
        for call in mode_call_receivers(fn.body, "eval")
        if isinstance(call.func, ast.Attribute)
    }
    if not evals or ctx.loops.backpropagates(fn.body) or _input_gradients(ctx, fn.body):
        return None
    if any(ctx.enclosing_function(call) is fn for call in ctx.flow.calls_named(("zero_grad",))):
        # `model.zero_grad()` before the forward: the caller takes gradients of what it
        # returns (a forward function handed to Captum's attribution methods)
        return None
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    for node in walk_tree(fn):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _EXPORTS
        ):
            return None
    frozen = _frozen_parameters(fn)
    forwards = [*model_calls(ctx, fn.body), *_own_forwards(ctx, fn)]
    seen = {id(c) for c in forwards}
    inference = [c for c in _inference_methods(fn, evals) if id(c) not in seen]
    methods = {id(c) for c in inference}
    forwards += inference
    trained = _run_in_train_mode(fn, forwards)
    for call in forwards:
        runs = id(call) in methods or (
            isinstance(call.func, ast.Attribute) and call.func.attr == "forward"
        )
        model = call.func.value if isinstance(call.func, ast.Attribute) and runs else call.func
        switched = evals.get(identifier(model))
        if switched is None or call.lineno < switched or grad_may_be_off(ctx, call):
            continue
        if identifier(model) in trained:
            continue  # the function sets the mode from a flag: it serves training too
        if any(line < call.lineno for line in frozen.get(identifier(model), ())):
            continue  # its parameters no longer require grad: nothing is recorded
        given = [*call.args, *(k.value for k in call.keywords)]
        if any(isinstance(n, ast.Name) and n.id in params for arg in given for n in walk_tree(arg)):
            return call
        if any(_parameters_data(ctx, arg, params, 3) for arg in given):
            return call  # NCF's `test_users = evaluate_data[0]`, moved, then `self.model(...)`
        # or, batch after batch, on batches built from them (`files` read, stacked and moved
        # into `batch`); a single forward on a tensor shaped from an argument is a warm-up
        if _in_loop(ctx, call, fn) and any(
            ctx.flow.derives_from(arg, lambda n: _is_param(n, params)) for arg in given
        ):
            return call
    return None


def _runs_the_model(method: str) -> bool:
    """A model method that runs it: `forward` and names ending in it (`incremental_forward`),
    or an inference entry point (`predict_proba`, `sample`, `decode_greedy`)."""
    return method.endswith("forward") or method.startswith(INFERENCE_METHOD_PREFIXES)


def _inference_methods(fn: FunctionNode, evals: dict[str, int]) -> list[ast.Call]:
    """Calls in `fn` of an inference method of a model `fn` switched to eval mode
    (`model.eval()`, then `model.incremental_forward(x, c=c, T=length)` to synthesise a
    sample): whatever loop the method runs inside, it runs the model."""
    return [
        node
        for node in walk_scope(fn.body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr != "forward"
        and _runs_the_model(node.func.attr)
        and identifier(node.func.value) in evals
    ]


def _run_in_train_mode(fn: FunctionNode, forwards: list[ast.Call]) -> set[str]:
    """Models the function also runs after switching them to train mode, with no eval switch
    in between (a score model's `model_fn`: `if not train: model.eval(); return model(x)`,
    `else: model.train(); return model(x)`, used by the training loss and the sampler alike);
    a `model.train()` that only restores the mode after the forward does not count."""
    switches: dict[str, list[tuple[int, bool]]] = {}
    for node in walk_scope(fn.body):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if switches_to_eval(node):
            switches.setdefault(identifier(node.func.value), []).append((node.lineno, False))
        elif node.func.attr == "train" and not node.keywords and not node.args:
            switches.setdefault(identifier(node.func.value), []).append((node.lineno, True))
    trained: set[str] = set()
    for call in forwards:
        func = call.func
        forward = isinstance(func, ast.Attribute) and func.attr == "forward"
        model = identifier(func.value if isinstance(func, ast.Attribute) and forward else func)
        earlier = [s for s in switches.get(model, []) if s[0] < call.lineno]
        if earlier and max(earlier)[1]:
            trained.add(model)
    return trained


_NOT_FORWARDS = frozenset(
    {"train", "eval", "state_dict", "load_state_dict", "parameters", "named_parameters",
     "modules", "children", "named_modules", "buffers", "to", "cuda", "cpu", "half", "float",
     "zero_grad", "requires_grad_", "apply", "save_pretrained", "register_buffer"}
)  # fmt: skip
"""Methods of a module that run no forward: calling them after `eval()` records nothing."""


def _run_between_eval_and_train(ctx: ModuleContext) -> list[ast.Call]:
    """In a loop of a training module (an epoch), a model switched to eval mode by a
    statement of the loop's body and then run by a later one, before the body switches it
    back, with autograd on and nothing back-propagated in between: samples drawn or images
    generated after each epoch (`ddpm.eval()`, then `xh = ddpm.sample(8, ...)`). One finding
    per loop: its first such forward."""
    found: list[ast.Call] = []
    for loop in nodes_of(ctx, ast.For):
        if not isinstance(loop, ast.For | ast.While):
            continue
        body = loop.body
        evaluating: set[str] = set()
        for index, statement in enumerate(body):
            model = _switched_to_eval(statement)
            if model is not None:
                evaluating.add(model)
                continue
            evaluating = {m for m in evaluating if not _switched_to(statement, m, "train")}
            if not evaluating or ctx.loops.backpropagates(body[index:]):
                continue
            if _input_gradients(ctx, [statement]):
                break
            call = next(
                (c for m in sorted(evaluating) if (c := _first_run_of(ctx, [statement], m))),
                None,
            )
            if call is not None:
                found.append(call)
                break
    return found


def _switched_to_eval(statement: ast.stmt) -> str | None:
    if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
        return None
    func = statement.value.func
    if isinstance(func, ast.Attribute) and func.attr == "eval" and not statement.value.args:
        return identifier(func.value) or None
    return None


def _switched_to(statement: ast.stmt, model: str, mode: str) -> bool:
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == mode
        and identifier(n.func.value) == model
        for n in walk_tree(statement)
    )


def _first_run_of(ctx: ModuleContext, statements: list[ast.stmt], model: str) -> ast.Call | None:
    """The first call of `model` itself, or of a method of it that runs a forward
    (`sample`, `generate`), with autograd on."""
    for statement in statements:
        for node in walk_tree(statement):
            if not isinstance(node, ast.Call) or grad_may_be_off(ctx, node):
                continue
            func = node.func
            if identifier(func) == model and ctx.flow.is_model_call(node):
                return node
            if (
                isinstance(func, ast.Attribute)
                and func.attr not in _NOT_FORWARDS
                and not func.attr.startswith("_")
                and identifier(func.value) == model
                and ctx.flow.is_module_value(func.value)
                and isinstance(ctx.parents.get(node), ast.Assign)
            ):
                return node
    return None


_GRAD_MODE_CALLS = frozenset({"set_grad_enabled", "no_grad", "inference_mode", "enable_grad"})


def _evaluated_through_flag(
    ctx: ModuleContext, fn: FunctionNode
) -> tuple[str, ast.Call, str] | None:
    """(guard, call, what it passes) for an epoch helper shared by training and evaluation
    (DeepRank's `_epoch(self, data_loader, train_model)`, pytorch-GAT's `main_loop(phase,
    epoch)`): every backward it runs sits under `if flag:` or `if phase == <constant>:`,
    nothing in it sets the grad mode, and `call`, a call of it outside no_grad, passes the
    flag as False or the phase as another constant (by keyword or at its position): that
    call's forwards record graphs."""
    params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    backwards = _backward_calls(ctx, fn)
    if not backwards or not params:
        return None
    if any(
        isinstance(n, ast.Call) and identifier(n.func) in _GRAD_MODE_CALLS for n in walk_tree(fn)
    ):
        return None
    guards = {_guarding_flag(ctx, call, fn) for call in backwards}
    if len(guards) != 1:
        return None
    (guard,) = guards
    if guard is None or guard[0] not in params:
        return None
    flag, training = guard
    method = bool(params) and params[0] in ("self", "cls")
    index = params.index(flag) - (1 if method else 0)
    sites = sorted(ctx.calls.call_sites(fn), key=lambda site: not _in_loop(ctx, site, None))
    for site in sites:  # one repeated by a loop first: its forwards recur
        passed = next((k.value for k in site.keywords if k.arg == flag), None)
        if passed is None and 0 <= index < len(site.args):
            passed = site.args[index]
        if passed is None or grad_may_be_off(ctx, site):
            continue
        if training is None and is_false(passed):
            return flag, site, f"{flag}=False"
        if training is not None and phase_constant(passed) and ast.unparse(passed) != training:
            return f"{flag} == {training}", site, f"{flag}={ast.unparse(passed)}"
    return None


def _loops_shared_by_phase(
    ctx: ModuleContext,
) -> list[tuple[ast.For | ast.While, ast.Call, str]]:
    """(loop, forward, guard) for a batch loop shared by every phase of a run (pytorch-kaldi's
    `run_nn.py`, one loop for `to_do` in train, valid and forward): every backward of the loop
    sits under one `if phase == <constant>:` on a name the loop does not iterate, the call
    whose result that backward reads runs before it outside the guard, and the function (or
    script) compares that name to another constant elsewhere (`if to_do == 'forward':`): the
    loop also runs for phases that never back-propagate. Grad-mode calls anywhere in the
    scope leave it alone."""
    found: list[tuple[ast.For | ast.While, ast.Call, str]] = []
    for loop in [*nodes_of(ctx, ast.For), *nodes_of(ctx, ast.While)]:
        if not isinstance(loop, ast.For | ast.While):
            continue
        backwards = [
            n
            for n in walk_scope(loop.body)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "backward"
        ]
        if not backwards:
            continue
        scope = ctx.enclosing_function(loop)
        guards = {_phase_guard(ctx, call, loop) for call in backwards}
        if len(guards) != 1 or (guard := guards.pop()) is None:
            continue
        flag, phase = guard
        targets = (
            {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
            if isinstance(loop, ast.For)
            else set()
        )
        if flag in targets:
            continue  # `for phase in ("train", "val")`: the phase loops' own rules judge it
        body = scope.body if scope is not None else ctx.tree.body
        if any(
            isinstance(n, ast.Call) and identifier(n.func).rsplit(".", 1)[-1] in _GRAD_MODE_CALLS
            for n in walk_scope(body)
        ):
            continue
        if not _other_phase_compared(body, flag, phase):
            continue
        forward = _producer_outside_guard(ctx, backwards[0], loop)
        if forward is not None and not grad_may_be_off(ctx, forward):
            found.append((loop, forward, f"{flag} == {phase}"))
    return found


def _phase_guard(ctx: ModuleContext, node: ast.AST, loop: ast.AST) -> tuple[str, str] | None:
    """(name, constant) of the innermost `if name == constant:` around `node` inside `loop`."""
    child = node
    for anc in ctx.ancestors(node):
        if anc is loop:
            return None
        if isinstance(anc, ast.If) and any(child is s for s in anc.body):
            equality = phase_equality(anc.test)
            if equality is not None:
                return equality
        child = anc
    return None


def _other_phase_compared(body: list[ast.stmt], flag: str, phase: str) -> bool:
    """`flag == other` (or `!=`) for another constant somewhere in `body`."""
    for node in walk_scope(body):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == flag
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.Eq | ast.NotEq)
            and phase_constant(node.comparators[0])
            and ast.unparse(node.comparators[0]) != phase
        ):
            return True
    return False


def _producer_outside_guard(
    ctx: ModuleContext, backward: ast.Call, loop: ast.For | ast.While
) -> ast.Call | None:
    """The call, in `loop` and outside every `if` of it, whose result the backward reads
    (`outs_dict = forward_model(...)`, then `outs_dict['loss_final'].backward()`)."""
    assert isinstance(backward.func, ast.Attribute)
    root: ast.expr = backward.func.value
    while isinstance(root, ast.Subscript | ast.Attribute):
        root = root.value
    if not isinstance(root, ast.Name):
        return None
    for value in ctx.flow.definitions(root):
        if not isinstance(value, ast.Call) or not any(a is loop for a in ctx.ancestors(value)):
            continue
        guarded = False
        for anc in ctx.ancestors(value):
            if anc is loop:
                break
            if isinstance(anc, ast.If):
                guarded = True
        if not guarded:
            return value
    return None


def _guarding_flag(
    ctx: ModuleContext, node: ast.AST, fn: FunctionNode
) -> tuple[str, str | None] | None:
    """The parameter-like name an enclosing `if` of `fn` tests before `node` runs, with the
    phase constant it must equal (`if phase == LoopPhase.TRAIN:` -> ('phase',
    'LoopPhase.TRAIN')) or None when its truth is tested (`if train_model:`, `if is_train
    and ...:`)."""
    child = node
    for anc in ctx.ancestors(node):
        if anc is fn:
            return None
        if isinstance(anc, ast.If) and child is not anc.test and any(child is s for s in anc.body):
            tests = anc.test.values if isinstance(anc.test, ast.BoolOp) else [anc.test]
            if isinstance(anc.test, ast.BoolOp) and not isinstance(anc.test.op, ast.And):
                tests = []
            for test in tests:
                if isinstance(test, ast.Name):
                    return test.id, None
                if (equality := phase_equality(test)) is not None:
                    return equality
        child = anc
    return None


def _runs_a_model_in_a_loop(ctx: ModuleContext, fn: FunctionNode) -> bool:
    own = {id(call) for call in _own_forwards(ctx, fn)}
    return any(
        isinstance(n, ast.Call)
        and _in_loop(ctx, n, fn)
        and (id(n) in own or ctx.flow.is_model_call(n))
        for n in walk_tree(fn)
    )


def _own_forwards(ctx: ModuleContext, fn: FunctionNode) -> list[ast.Call]:
    """`self.forward(x)` and `self(x)` in a method of a local `nn.Module` class (a
    `predict` that switches the network to eval mode and runs it): the module runs itself."""
    owner = ctx.calls.owner(fn)
    if owner is None or owner.name not in ctx.flow.module_classes:
        return []
    return [
        node
        for node in walk_tree(fn)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "self")
            or (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "forward"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
            )
        )
    ]


def _frozen_parameters(fn: FunctionNode) -> dict[str, list[int]]:
    """Models whose parameters `fn` stops requiring grad, by name, with the lines where it
    does: `for k, v in self.netG.named_parameters(): v.requires_grad = False` or
    `net.requires_grad_(False)`. A forward after that records no graph (no input requires
    grad either), the other way to run inference without one."""
    found: dict[str, list[int]] = {}
    for node in walk_tree(fn):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "requires_grad_"
            and node.args
            and is_false(node.args[0])
        ):
            found.setdefault(identifier(node.func.value), []).append(node.lineno)
        if not (
            isinstance(node, ast.For)
            and isinstance(node.iter, ast.Call)
            and isinstance(node.iter.func, ast.Attribute)
            and node.iter.func.attr in ("parameters", "named_parameters")
        ):
            continue
        if any(
            isinstance(stmt, ast.Assign)
            and is_false(stmt.value)
            and any(
                isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in stmt.targets
            )
            for stmt in node.body
        ):
            found.setdefault(identifier(node.iter.func.value), []).append(node.lineno)
    return found


_CARRY = frozenset({"cuda", "to", "cpu", "float", "long", "int", "double", "contiguous"})


def _parameters_data(
    ctx: ModuleContext,
    value: ast.expr,
    params: set[str],
    hops: int,
    seen: frozenset[str] = frozenset(),
) -> bool:
    """`value` is a parameter's own data, reached through names bound only to its elements
    (`test_users, test_items = evaluate_data[0], evaluate_data[1]`) and moves or casts
    (`test_users = test_users.cuda()`): the data the function was given, not a tensor shaped
    from it (`torch.randn(x.shape)`, a warm-up)."""
    if isinstance(value, ast.Name):
        if value.id in params or value.id in seen:
            return value.id in params or bool(seen)  # a re-binding of itself carries it
        if hops == 0:
            return False
        bound = ctx.flow.definitions(value)
        inner = seen | {value.id}
        return bool(bound) and all(
            _parameters_data(ctx, element, params, hops - 1, inner)
            for b in bound
            for element in (b.elts if isinstance(b, ast.Tuple) else [b])
        )
    if isinstance(value, ast.Subscript):
        return _parameters_data(ctx, value.value, params, hops, seen)
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _CARRY
    ):
        return _parameters_data(ctx, value.func.value, params, hops, seen)
    return False


def _is_param(node: ast.AST, params: set[str]) -> bool:
    return isinstance(node, ast.Name) and node.id in params


def _input_gradients(ctx: ModuleContext, body: list[ast.stmt]) -> bool:
    """`body` differentiates with `torch.autograd.grad` (a PGD attack in a robust-accuracy
    evaluation: the forward needs autograd for the input's gradient)."""
    if "autograd.grad" not in ctx.source:
        return False
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "grad"
        and identifier(node.func.value).endswith("autograd")
        for stmt in body
        for node in walk_tree(stmt)
    )


def _trained_through(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """A method that a function of the module calls on training data for the loss it
    back-propagates: a `predict`/`infer` called before the caller's `backward()` (DomainBed's
    `loss = F.cross_entropy(self.predict(x), y)` in `update`), or any evaluation-named one
    whose results the backward's loss is computed from (PPO's `logprobs, values, entropy =
    self.policy.evaluate(states, actions)`): the model's forward under another name, whose
    grad mode each caller decides. A `fit` that calls `self.predict(X_val)` after its
    training loop, or an update that logs what `evaluate` returns, still evaluates."""
    forward_name = bool(_FORWARD_NAME.match(fn.name.lstrip("_")))
    for site in ctx.calls.call_sites(fn):
        caller = ctx.enclosing_function(site)
        if caller is None or caller is fn:
            continue
        if any(ctx.flow.held_out_kind(arg, _HELD_OUT) is not None for arg in site.args):
            continue
        backwards = _backward_calls(ctx, caller)
        if forward_name and any(node.lineno > site.lineno for node in backwards):
            return True
        if any(_feeds_backward(caller, site, node) for node in backwards):
            return True
    return False


def _backward_calls(ctx: ModuleContext, caller: FunctionNode) -> list[ast.Call]:
    """The `x.backward()` calls anywhere inside `caller`, taken from the module's call index
    (a function is asked once per call site it holds)."""
    memo = ctx.memo_table("validation_with_grad.backward_calls")
    found = memo.get(id(caller))
    if found is None:
        found = memo[id(caller)] = [
            call
            for call in ctx.flow.calls_named(("backward",))
            if isinstance(call.func, ast.Attribute)
            and any(owner is caller for owner in ctx.ancestors(call))
        ]
    return found


def _feeds_backward(caller: FunctionNode, site: ast.Call, backward: ast.Call) -> bool:
    """`site` is computed into the tensor `backward` differentiates: it sits in the
    backward's own expression or in the value of an assignment, in `caller`, to a name the
    backward's loss is computed from (`loss = -torch.min(ratios * adv, ...)`, `ratios =
    torch.exp(logprobs - old)`, `logprobs, values, entropy = <site>`)."""
    assert isinstance(backward.func, ast.Attribute)
    receiver = backward.func.value
    if any(node is site for node in walk_tree(receiver)):
        return True
    needed = {n.id for n in walk_tree(receiver) if isinstance(n, ast.Name)}
    assignments = [
        node
        for node in walk_tree(caller)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign)
        and node.value is not None
        and node.lineno <= backward.lineno  # `loss = evaluate(...)` after training is no input
    ]
    grew = True
    while grew:
        grew = False
        for node in assignments:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = {identifier(t) for target in targets for t in _bound_names(target)}
            if not bound & needed:
                continue
            assert node.value is not None
            if any(n is site for n in walk_tree(node.value)):
                return True
            read = {n.id for n in walk_tree(node.value) if isinstance(n, ast.Name)}
            if not read <= needed:
                needed |= read
                grew = True
    return False


def _bound_names(target: ast.expr) -> list[ast.expr]:
    """The names an assignment target binds or writes into: `a, b` -> a, b; `risks[i]` and
    `self.total` -> risks, self.total."""
    if isinstance(target, ast.Tuple | ast.List):
        return [n for element in target.elts for n in _bound_names(element)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, ast.Subscript):
        return _bound_names(target.value)
    return [target]


def _in_network(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside a method of an `nn.Module` (`forward`): loops there iterate layers, not data."""
    fn = ctx.enclosing_function(node)
    owner = ctx.calls.owner(fn) if fn is not None else None
    return owner is not None and owner.name in ctx.flow.module_classes


def _names_in(expr: ast.expr) -> list[str]:
    """Identifiers an iterable expression mentions: `enumerate(self.val_loader)` -> names."""
    return [
        n.id if isinstance(n, ast.Name) else n.attr
        for n in walk_tree(expr)
        if isinstance(n, ast.Name | ast.Attribute)
    ]


def _repeated(ctx: ModuleContext, node: ast.AST, function: FunctionNode) -> bool:
    """Whether `node` sits in a loop or comprehension inside `function`, or `function`, with
    no loop of its own that runs the model, is called from one in this module (CRAFT's
    `test_net(net, image, ...)`, one forward per call, run for every image of the folder).
    A function with its own data loop repeats that loop; a forward outside it is a warm-up
    (yolov7's `model(torch.zeros(...))  # run once` before the no_grad loop)."""
    if _in_loop(ctx, node, function):
        return True
    if any(
        isinstance(n, ast.Call) and _in_loop(ctx, n, function) and ctx.flow.is_model_call(n)
        for n in walk_tree(function)
    ):
        return False
    return any(_in_loop(ctx, site, None) for site in ctx.calls.call_sites(function))


def _in_loop(ctx: ModuleContext, node: ast.AST, function: FunctionNode | None) -> bool:
    """Whether `node` sits in a loop or comprehension inside `function` (its own function
    when None)."""
    for anc in ctx.ancestors(node):
        if anc is function or (
            function is None and isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef)
        ):
            return False
        if isinstance(anc, ast.For | ast.AsyncFor | ast.While | ast.comprehension):
            return True
        if isinstance(anc, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            return True
    return False


_TRAIN_FLAG = re.compile(r"^(is_)?(train|training|eval|evaluate|evaluating|phase|mode)$", re.I)


def _evaluating_branch_calls(ctx: ModuleContext) -> list[tuple[ast.Call, ast.If]]:
    """`if train: loss = loss_fn(model, batch); loss.backward(); ... else: loss =
    loss_fn(model, batch)` (score_sde's `step_fn` with its `no_grad` lost): a test of a
    training flag whose one branch back-propagates what a call computes and whose other
    branch makes the same call with autograd on and back-propagates nothing. (the call in
    the evaluating branch, the test)"""
    found: list[tuple[ast.Call, ast.If]] = []
    for test in ctx.flow.nodes(ast.If):
        if not test.orelse or not any(
            _TRAIN_FLAG.match(identifier(n))
            for n in walk_tree(test.test)
            if isinstance(n, ast.Name | ast.Attribute)
        ):
            continue
        for trains, evaluates in ((test.body, test.orelse), (test.orelse, test.body)):
            if not _backpropagates(trains) or _backpropagates(evaluates):
                continue
            trained = {
                ast.dump(n.func)
                for n in walk_scope(trains)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name | ast.Attribute)
            }
            call = next(
                (
                    n
                    for n in walk_scope(evaluates)
                    if isinstance(n, ast.Call)
                    and ast.dump(n.func) in trained
                    and (ctx.flow.is_model_call(n) or _computes_a_loss(ctx, n))
                    and not grad_may_be_off(ctx, n)
                ),
                None,
            )
            if call is not None:
                found.append((call, test))
            break
    return found


def _backpropagates(branch: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Call) and is_backward_call(n) for n in walk_scope(branch))


def _computes_a_loss(ctx: ModuleContext, call: ast.Call) -> bool:
    """A loss function or criterion (`loss_fn(model, batch)`, `criterion(out, y)`) by its
    callee, or by the name its result is bound to (`loss = compute(model, batch)`)."""
    if ctx.flow.is_loss_callee(call.func) or "loss" in identifier(call.func).lower():
        return True
    parent = ctx.parents.get(call)
    return isinstance(parent, ast.Assign) and any(
        isinstance(t, ast.Name) and "loss" in t.id.lower() for t in parent.targets
    )
