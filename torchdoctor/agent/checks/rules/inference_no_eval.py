"""inference-no-eval: a predict/serve path runs the model in training mode."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.eval_mode import (
    builds_pretrained_network,
    mode_calls,
    model_anchor,
    model_put_in_eval,
)
from torchdoctor.agent.checks.analysis.mode_layers import mode_independent
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_classes,
    is_package_init,
    module_name,
    project_symbol,
    publish,
    publish_mode_calls,
)
from torchdoctor.agent.checks.analysis.vocabulary import MODEL_RUN_METHODS
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import FunctionNode, nodes_of, position, walk_scope
from torchdoctor.agent.checks.patterns import (
    INFERENCE_FUNCTION,
    functions,
    has_main_guard,
    is_main_guard,
    is_model_expr,
    mode_call_receivers,
    model_calls,
    module_level,
    root_name,
    switches_to_eval,
    terminal_name,
)
from torchdoctor.agent.checks.rules.eval_without_eval_mode import project_loader
from torchdoctor.agent.checks.smoke_tests import (
    is_model_smoke_test,
    loads_weights,
    loads_weights_text,
)
from torchdoctor.agent.models import Severity

_LIGHTNING_HOOKS = frozenset({"predict_step", "forward"})
_SAMPLING_METHODS = frozenset({"generate", "sample"})
_MAX_HELPER_DEPTH = 3


class InferenceNoEval(Rule):
    """Detects an inference path — a function named like `predict`/`infer`/`serve`, the
    `if __name__ == "__main__":` block of a script that does not train (and the module-level
    function it calls, `main()`, when that function loads weights and trains nothing), or the
    module-level statements of a sampling script that loads weights — that calls the model
    (`model(x)`; or
    `model.generate(...)`, which runs the forward in whatever mode the model is in, in a
    sampling script or a module that also trains the model, since hub loaders return models
    in eval mode) without a preceding `.eval()` (in that function, a local helper it calls,
    or, for a model passed in as a parameter, anywhere in the module; for a helper called
    only from other files, before one of those calls: reported when a caller there calls it
    without one).

    Why it matters: in training mode dropout stays active and BatchNorm normalises with the
    current batch's statistics (and updates its running averages), so predictions are noisy,
    depend on the other samples in the batch and differ from the validated model.

    Example:
        def predict(image):
            model = Net()
            model.load_state_dict(torch.load("net.pt", weights_only=True))
            return model(image).argmax(1)

    A model whose variable is not named like one (`clf = Classifier()`) counts when its
    class, defined in another file of the project, has dropout, batch norm or a
    `self.training` branch.

    Also reported: a pretrained network from a model zoo (torchvision's `inception_v3(weights=
    ...)` or `resnet50(pretrained=True)`, `timm.create_model(name, pretrained=True)`) that a
    module which trains nothing builds and runs, directly or through one of its own functions
    it hands the network to, and never switches to eval mode: the frozen feature extractor of
    an embedding or FID metric (bioval's `ConditionalEvaluation`), at its first run. Not
    reported there: a submodule of an `nn.Module` (`self.enc = resnet18(pretrained=True)`,
    in the mode of the network it belongs to), a network switched by `.eval()`/`.train(False)`
    anywhere in the module
    (also under the name a helper receives it by), one handed to a function of another
    module (which may switch it), and modules that back-propagate or build an optimizer
    (fine-tuning).

    An entry function's model also runs through its own running methods (`encode`, `decode`,
    `infer`, `sample`) on the model it loads weights into: a translation script's
    `baseline_transformer.encode(src, mask)` after `load_state_dict`, the decoding handed to
    helpers of another file.

    Not reported: models known to act the same in both modes (every layer seen, none with
    dropout or batch statistics, no `self.training` branch), models built in eval mode
    (`Net().eval()`, a transformers/diffusers `from_pretrained`, which returns the model in
    eval mode), `predict_*` methods of an `nn.Module` itself (they run inside the model,
    in its mode), a helper given the model (or an ensemble it loops over) by callers in
    other files that put it in eval mode first, directly or through functions of its own
    module that pass it on (a task run in threads included), the call of a constructor
    whose result the code loads or puts in eval mode (`model = model_fn(resolution=r)` with
    `model_fn = eval(args.model)`; the network's own forward is still checked), and methods
    named for handling models rather than running one (`service.show_available_models()`,
    `list_models()`).

    Fix: call `model.eval()` once after loading (and run under `torch.inference_mode()`).
    """

    id = "inference-no-eval"
    point = 7
    severity = Severity.HIGH
    title = "Inference without model.eval()"
    items: ClassVar[tuple[str, ...]] = ("7.4",)

    def finish(self, ctx: ModuleContext) -> None:
        if (
            "forward" in ctx.source
            or is_package_init(ctx)
            or "from_pretrained" in ctx.source  # a loader that may return a model in eval mode
        ):
            publish(ctx)  # its classes' dropout/batch norm, for the modules importing them
        publish_mode_calls(ctx, mode_calls(ctx))  # the mode each imported helper runs in
        for call, model in _sampling_after_training(ctx):
            if mode_independent(ctx, model) or model_put_in_eval(ctx, model):
                continue
            found = ctx.finding(
                self,
                call,
                f"`{ast.unparse(call.func)}(...)` samples after training with the model still "
                "in training mode (the training loop leaves it there): dropout and batch norm "
                "behave as in training while it generates",
            )
            if found is not None:
                ctx.findings.append(found)
        candidates = [
            fn
            for fn in functions(ctx)
            if fn.name not in _LIGHTNING_HOOKS
            and not fn.name.startswith("test_")
            and INFERENCE_FUNCTION.search(fn.name)
            and not ctx.flow.module_method(fn)
        ]
        if candidates or has_main_guard(ctx.tree) or _script_body(ctx):
            self._inference_paths(ctx, candidates)
        self._pretrained_extractors(ctx)

    def _pretrained_extractors(self, ctx: ModuleContext) -> None:
        """Pretrained networks a module that trains nothing only runs, never in eval mode
        (`_pretrained_extractors_in_train_mode`), unless an inference path was reported at
        the same call."""
        reported = {f.line for f in ctx.findings if f.rule == self.id}
        for call, name, line in _pretrained_extractors_in_train_mode(ctx):
            if call.lineno in reported:
                continue
            found = ctx.finding(
                self,
                call,
                f"`{name}` is a pretrained network this module builds (line {line}) and only "
                "runs, never switched to eval mode: its "
                "batch norm normalises with each batch's statistics (and dropout stays on), so "
                "what it computes depends on the batch",
                data=model_anchor(ast.parse(name, mode="eval").body),
            )
            if found is not None:
                ctx.findings.append(found)

    def _inference_paths(
        self,
        ctx: ModuleContext,
        candidates: list[ast.FunctionDef | ast.AsyncFunctionDef],
    ) -> None:
        holding = _calls_holding_an_eval(ctx)
        module_evals = [
            c for c in nodes_of(ctx, ast.Call) if isinstance(c, ast.Call) and id(c) in holding
        ]
        local_evals = {
            fn.name for c in module_evals if (fn := ctx.enclosing_function(c)) is not None
        }
        for fn in candidates:
            params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
            self._check(ctx, fn.body, params, local_evals, module_evals, owner=fn)
        checked = {id(fn) for fn in candidates}
        for stmt in ctx.tree.body:
            if is_main_guard(stmt) and not ctx.loops.training_loops:
                assert isinstance(stmt, ast.If)
                smoke = is_model_smoke_test(ctx, stmt)
                if not smoke:
                    self._check(ctx, stmt.body, set(), local_evals, [])
                for fn in _entry_functions(ctx, stmt):
                    if id(fn) not in checked:
                        checked.add(id(fn))
                        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
                        params = {a.arg for a in args}
                        self._check(
                            ctx,
                            fn.body,
                            params,
                            local_evals,
                            module_evals,
                            owner=fn,
                            loaded=_loaded_models(fn),
                        )
        top = _script_body(ctx)
        if top:
            self._check(ctx, top, set(), local_evals, [], sampling=True)

    def _check(
        self,
        ctx: ModuleContext,
        body: list[ast.stmt],
        params: set[str],
        local_evals: set[str],
        module_evals: list[ast.Call],
        sampling: bool = False,
        owner: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
        loaded: set[str] | None = None,
    ) -> None:
        if ctx.loops.backpropagates(body):
            return
        evals = [c.lineno for c in mode_call_receivers(body, "eval")]
        evals += [
            c.lineno
            for c in walk_scope(body)
            if isinstance(c, ast.Call) and _callee(c) in local_evals
        ]
        calls = _model_runs(ctx, body, sampling or bool(ctx.loops.training_loops))
        if loaded:
            calls = _with_loaded_model_methods(body, loaded, calls)
        named = {id(call) for call in calls}
        imported = {id(call): call for call in _imported_instance_calls(ctx, body, named)}
        calls = sorted([*calls, *imported.values()], key=lambda c: (c.lineno, c.col_offset))
        for call in calls:
            if any(line <= _runs_at(ctx, body, call) for line in evals):
                return
            if _builds_network(body, call):
                continue  # `model = model_fn(resolution=r)`, then `model.eval()`: a constructor
            root = root_name(call.func)
            if loaded is not None and root not in loaded:
                continue  # an entry function's model calls count on the weights it loads
            if root == "self" and module_evals:
                return
            if owner is not None:
                root = _parameter_iterated(owner, root, params)
            if (
                root in params
                and owner is not None
                and _may_be_put_in_eval(ctx, owner, root, module_evals)
                and not _fresh_model_passed(ctx, owner, root)
            ):
                return
            if (
                owner is not None
                and root not in params
                and root in _evaluated_globals(ctx)
                and not _binds(owner, root)
            ):
                return  # `net.eval()` at import time, `net(x)` in a request handler
            if id(call) in imported:
                self._defer(ctx, call)
                return
            injected = _injected_class(ctx, call) if root == "self" else None
            if injected is not None:
                self._defer(ctx, call, injected)
                return
            if mode_independent(ctx, _model_of(call)):
                continue  # no dropout, no batch norm: eval() would change nothing
            if model_put_in_eval(ctx, _model_of(call)):
                continue  # built in eval mode (`.eval()` chained, a Hugging Face loader)
            found = ctx.finding(
                self,
                call,
                "the model is used for inference without .eval(): dropout and batch-norm "
                "still behave as in training",
                data=model_anchor(_model_of(call)),
            )
            if found is None:
                return
            entry = _entry_called_elsewhere(ctx, owner, root) if root in params else None
            if entry is not None:
                symbol = f"{module_name(ctx.path)}.{entry.name}"
                needs = "left-in-train-mode-by-a-caller"
                defer(ctx, self.id, Pending(symbol=symbol, needs=needs, finding=found))
            elif (loader := project_loader(ctx, owner, call)) is not None:
                # `model = attempt_load(weights)` from another file: it may return the model
                # in eval mode (the project pass knows)
                needs = "not-returned-in-eval"
                defer(ctx, self.id, Pending(symbol=loader, needs=needs, finding=found))
            else:
                ctx.findings.append(found)
            return

    def _defer(self, ctx: ModuleContext, call: ast.Call, symbol: str | None = None) -> None:
        """An instance of a class from another file: reported if that class has a layer
        that acts differently in training mode (the project pass knows)."""
        symbol = symbol or _imported_class(ctx, call)
        if symbol is not None:
            found = ctx.finding(
                self,
                call,
                f"`{ast.unparse(_model_of(call))}`, a `{symbol.rsplit('.', 1)[-1]}` (it has "
                "dropout or batch norm), is used for inference without .eval(): they still "
                "behave as in training",
                data={"model_class": symbol, **model_anchor(_model_of(call))},
            )
            if found is not None:
                defer(ctx, self.id, Pending(symbol=symbol, needs="mode-dependent", finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _parameter_iterated(owner: FunctionNode, name: str, params: set[str]) -> str:
    """The parameter a loop of `owner` walks when `name` is its loop variable (`for model in
    models`, `for i, model in enumerate(models)`): an ensemble's members come from the
    caller, in whatever mode it left them. Else `name`."""
    if name in params:
        return name
    for loop in walk_scope(owner.body):
        if not isinstance(loop, ast.For):
            continue
        iterated = loop.iter
        if isinstance(iterated, ast.Call) and identifier(iterated.func) == "enumerate":
            iterated = iterated.args[0] if iterated.args else iterated
        targets = {t.id for t in ast.walk(loop.target) if isinstance(t, ast.Name)}
        if name in targets and isinstance(iterated, ast.Name) and iterated.id in params:
            return iterated.id
    return name


def _entry_called_elsewhere(
    ctx: ModuleContext, owner: FunctionNode | None, param: str
) -> FunctionNode | None:
    """The module-level function whose callers in other files hand over the model `owner`
    receives as `param`: `owner` itself when this module never calls it (`predict(model,
    x)`), or the function of this module that passes its own parameter through to it, up
    to three calls up (dfdc's `predict_on_video_set(..., models)` calling
    `predict_on_video(..., models)` from a task it runs in threads), itself called nowhere
    here. The project pass reads
    whether those callers call `.eval()` first."""
    fn = owner
    for _ in range(4):
        if fn is None or not isinstance(ctx.parents.get(fn), ast.Module):
            return None
        calls = ctx.flow.callers.get(fn.name, [])
        if not calls:
            return fn
        passed = _arguments_for(ctx, fn, param)
        callers = {ctx.enclosing_function(argument) for argument in passed}
        if len(passed) < len(calls) or len(callers) != 1:
            return None
        caller = callers.pop()
        names = {a.id for a in passed if isinstance(a, ast.Name)}
        if caller is None or len(names) != 1 or len(passed) != len(calls):
            return None
        param = names.pop()
        while param not in _parameters(caller):  # a closure's free name (a thread's task)
            outer = ctx.enclosing_function(caller)
            if outer is None:
                return None
            caller = outer
        fn = caller
    return None


def _evaluated_globals(ctx: ModuleContext) -> frozenset[str]:
    """Names the module puts in eval mode at import time (CodeFormer's demo: `codeformer_net
    .eval()` at the top, then `codeformer_net(...)` in `inference`)."""
    memo = ctx.memo_table("inference-no-eval.globals")
    if "" not in memo:
        memo[""] = frozenset(
            root_name(call.func.value)
            for call in module_level(ctx.tree)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and switches_to_eval(call)
        )
    return memo[""]  # type: ignore[no-any-return]


def _entry_functions(
    ctx: ModuleContext, guard: ast.If
) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The module-level functions that a `__main__` block of a script that never trains
    calls as statements (`if __name__ == "__main__": main()`, `main(args)`) and that load
    trained weights (`torch.load`, `load_state_dict`, ...) without training anything
    themselves (no optimizer, no backward, no `trainer.fit`): the script's body lives there,
    so its model calls are the inference path (the C3D demo's `main()` loads the checkpoint,
    calls `model.train()` and classifies clips)."""
    found: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    if not loads_weights_text(ctx.source):
        return found
    for node in walk_scope(guard.body):
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
        ):
            continue
        found += [
            fn
            for fn in ctx.loops.functions.get(node.value.func.id, [])
            if isinstance(ctx.parents.get(fn), ast.Module)
            and loads_weights(fn)
            and not any(marker in ast.unparse(fn) for marker in _TRAINS_ELSEWHERE)
        ]
    return found


def _loaded_models(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names `fn` loads trained weights into (`model.load_state_dict(...)`) or binds to a
    loaded object (`model = torch.load(path)`): the models its inference runs."""
    found: set[str] = set()
    for node in walk_scope(fn.body):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load_state_dict"
        ):
            found.add(root_name(node.func.value))
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) in ("torch.load", "load")
        ):
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return found


# Text of an entry that trains through a framework or an optimizer (Lightning's
# `trainer.fit(model, ...)`): its model calls build or train the model, not infer.
_TRAINS_ELSEWHERE = (".fit(", "optim.", ".backward(", "Trainer(")


def _binds(fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
        for node in walk_scope(fn.body)
    )


def _script_body(ctx: ModuleContext) -> list[ast.stmt]:
    """The statements a sampling script runs at module level (nanoGPT's sample.py), in a
    module that loads trained weights and never back-propagates: an inference path like a
    `__main__` block."""
    if "backward" in ctx.source or ctx.loops.training_loops:
        return []
    if not any(w in ctx.source for w in ("load_state_dict", "torch.load(", "from_pretrained")):
        return []
    return [
        stmt
        for stmt in ctx.tree.body
        if isinstance(stmt, ast.With | ast.For | ast.While | ast.Assign | ast.Expr | ast.If)
        and not is_main_guard(stmt)
    ]


_NETWORK_ONLY = frozenset(
    {"eval", "train", "load_state_dict", "state_dict", "parameters", "named_parameters", "modules"}
)


def _builds_network(body: list[ast.stmt], call: ast.Call) -> bool:
    """`model = model_fn(resolution=r)` whose result the code then treats as the network
    (`model.load_state_dict(...)`, `model.eval()`, `model.parameters()`): `model_fn` is a
    constructor looked up by name (EfficientFormer's toolbox: `model_fn = eval(args.model)`),
    so the call builds the model rather than running one."""
    built = {
        target.id
        for node in walk_scope(body)
        if isinstance(node, ast.Assign) and node.value is call
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return bool(built) and any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _NETWORK_ONLY
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in built
        for node in walk_scope(body)
    )


def _runs_at(ctx: ModuleContext, body: list[ast.stmt], call: ast.Call) -> int:
    """The line where `call` runs: its own, or, inside a helper defined in `body` (a `__main__`
    block's `eval_split`), the helper's first call there (after a callback's `.eval()`)."""
    helper = next(
        (a for a in ctx.ancestors(call) if isinstance(a, ast.FunctionDef | ast.AsyncFunctionDef)),
        None,
    )
    if helper is None or not any(helper is node for node in walk_scope(body)):
        return call.lineno
    lines = [
        node.lineno
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == helper.name
        and helper not in ctx.ancestors(node)
    ]
    return min(lines, default=call.lineno)


def _model_runs(ctx: ModuleContext, body: list[ast.stmt], generation: bool) -> list[ast.Call]:
    """Calls that run the model, in source order: `model(x)`, and, when `generation`, also
    `model.generate(...)` (generation does not switch the mode)."""
    calls = list(model_calls(ctx, body))
    for node in walk_scope(body) if generation else ():
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "generate"
            and is_model_expr(ctx, node.func.value)
        ):
            calls.append(node)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _imported_instance_calls(
    ctx: ModuleContext, body: list[ast.stmt], seen: set[int]
) -> list[ast.Call]:
    """Calls of an object built from a class imported from the project's other files whose
    name does not say it is a model (`clf(x)` with `clf = Classifier()`)."""
    return [
        node
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and id(node) not in seen
        and _direct_call(node.func)
        and not terminal_name(node.func)[:1].isupper()
        and ctx.qualname(node.func) is None
        and _imported_class(ctx, node)
    ]


def _direct_call(func: ast.expr) -> bool:
    """`clf(x)`, `self.clf(x)`, `clf.forward(x)`: the object's forward runs."""
    if isinstance(func, ast.Attribute):
        return func.attr == "forward" or (
            isinstance(func.value, ast.Name) and func.value.id == "self"
        )
    return isinstance(func, ast.Name)


def _imported_class(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The class, imported from another file, of the object `call` calls: built in this
    function, or passed in as a parameter by this module's calls of the function
    (`predict_img(unet, img)` with `unet = UNet(...)`)."""
    model = _model_of(call)
    found = imported_classes(ctx, model)
    if not found and isinstance(model, ast.Name):
        fn = ctx.enclosing_function(call)
        if fn is not None:
            for argument in _arguments_for(ctx, fn, model.id):
                found += imported_classes(ctx, argument)
    return found[0] if found else None


def _injected_class(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The class from another file of a model handed to this object's constructor
    (`def __init__(self, sam_model: Sam): self.model = sam_model`, then
    `self.model.prompt_encoder(...)`): the parameter's annotation names it."""
    model = _model_of(call)
    while isinstance(model, ast.Attribute) and not (
        isinstance(model.value, ast.Name) and model.value.id == "self"
    ):
        model = model.value
    if not isinstance(model, ast.Attribute):
        return None
    symbols: set[str | None] = set()
    for value in ctx.flow.definitions(model) or [model]:
        fn = ctx.enclosing_function(value) if isinstance(value, ast.Name) else None
        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs] if fn else []
        arg = next((a for a in args if isinstance(value, ast.Name) and a.arg == value.id), None)
        annotation = arg.annotation if arg is not None else None
        symbols.add(project_symbol(ctx, annotation) if annotation is not None else None)
    return symbols.pop() if len(symbols) == 1 else None


def _arguments_for(
    ctx: ModuleContext, fn: ast.FunctionDef | ast.AsyncFunctionDef, param: str
) -> list[ast.expr]:
    """What this module's calls of `fn`, a module-level function, pass as its `param`."""
    if isinstance(ctx.parents.get(fn), ast.ClassDef):
        return []
    positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if param not in positional and param not in {a.arg for a in fn.args.kwonlyargs}:
        return []
    index = positional.index(param) if param in positional else None
    found = []
    for site in ctx.flow.callers.get(fn.name, []):
        leading = site.args[: index + 1] if index is not None else []
        if len(leading) == (index or 0) + 1 and not any(
            isinstance(a, ast.Starred) for a in leading
        ):
            found.append(leading[-1])
        found += [k.value for k in site.keywords if k.arg == param]
    return found


def _may_be_put_in_eval(
    ctx: ModuleContext,
    owner: ast.FunctionDef | ast.AsyncFunctionDef,
    param: str,
    module_evals: list[ast.Call],
) -> bool:
    """Whether one of the module's `.eval()` calls may switch the model `owner` receives as
    `param`: one on a name the model is passed under by this module's calls of `owner`, up
    to three callers up (`inference(loader, simclr_model)` from `get_features(simclr_model,
    ...)` from `__main__`), or one on a parameter of a helper that some call hands one of
    those names. The linear head's `model.eval()` in `test(args, loader, simclr_model,
    model)` does not switch `simclr_model`. A call not followed (another file's, `*args`,
    `self`) keeps the module-wide answer: some `.eval()` may."""
    if not module_evals:
        return False
    names = _names_passed_for(ctx, owner, param)
    if names is None:
        return True
    for call in module_evals:
        assert isinstance(call.func, ast.Attribute)
        root = root_name(call.func.value)
        fn = ctx.enclosing_function(call)
        if root in names:
            return True
        if root in ("self", ""):
            return True
        if fn is not None and root in _parameters(fn):
            passed = _names_passed_for(ctx, fn, root)
            if passed is None or passed & names:
                return True
    return False


def _fresh_model_passed(
    ctx: ModuleContext, owner: ast.FunctionDef | ast.AsyncFunctionDef, param: str
) -> bool:
    """A call of `owner` in this module hands it, as `param`, a model its caller has just
    built from a local `nn.Module` class (`model = Model(...)`, then only
    `model.load_state_dict(...)` / `model.to(device)`): no `.eval()` can have reached that
    instance, whatever the module's other functions switch by the same name (the Kaggle MoA
    scripts' `inference_fn(model, testloader, DEVICE)` after reloading the best weights)."""
    for argument in _arguments_for(ctx, owner, param):
        if not isinstance(argument, ast.Name):
            continue
        bound = ctx.flow.reaching(argument)
        if not (
            isinstance(bound, ast.Call)
            and isinstance(bound.func, ast.Name)
            and bound.func.id in ctx.flow.module_classes
        ):
            continue
        caller = ctx.enclosing_function(argument)
        if caller is None or ctx.enclosing_function(bound) is not caller:
            continue
        if not _only_loaded_or_moved(ctx, caller, argument.id, bound.lineno, argument.lineno):
            continue
        return True
    return False


_LOADS_OR_MOVES = frozenset({"load_state_dict", "to", "cuda", "cpu", "float", "half", "double"})


def _only_loaded_or_moved(
    ctx: ModuleContext, caller: ast.AST, name: str, after: int, before: int
) -> bool:
    """Between lines `after` and `before` of `caller`, `name` is only loaded into or moved
    (`name.load_state_dict(...)`, `name.to(device)`): never switched, nor handed to a call."""
    for node in walk_scope(getattr(caller, "body", [])):
        if not (isinstance(node, ast.Call) and after < node.lineno <= before):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and root_name(func.value) == name:
            if func.attr not in _LOADS_OR_MOVES:
                return False
        elif node.lineno < before and any(
            isinstance(a, ast.Name) and a.id == name
            for a in [*node.args, *(k.value for k in node.keywords)]
        ):
            return False
    return True


def _names_passed_for(
    ctx: ModuleContext, owner: ast.FunctionDef | ast.AsyncFunctionDef, param: str
) -> set[str] | None:
    """`param` and the names this module's calls pass for it, up to three callers up; None
    when a call cannot be followed (none in this module, `*args`, an expression)."""
    names = {param}
    frontier: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]] = [(owner, param)]
    for _ in range(3):
        following: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]] = []
        for fn, name in frontier:
            passed = _arguments_for(ctx, fn, name)
            if not passed or len(passed) < len(ctx.flow.callers.get(fn.name, [])):
                return None
            for argument in passed:
                root = root_name(argument)
                if not root:
                    return None
                names.add(root)
                caller = ctx.enclosing_function(argument)
                if caller is not None and root in _parameters(caller):
                    following.append((caller, root))
        frontier = following
    return names


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    return {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}


def _callee(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def _model_of(call: ast.Call) -> ast.expr:
    """`model` in `model(x)`, `model.forward(x)`, `model.generate(x)` and `model.encode(x)`
    (a method that runs the network: `MODEL_RUN_METHODS`)."""
    func = call.func
    if isinstance(func, ast.Attribute) and (
        func.attr in ("forward", "generate") or func.attr in MODEL_RUN_METHODS
    ):
        return func.value
    return func


def _with_loaded_model_methods(
    body: list[ast.stmt], loaded: set[str], calls: list[ast.Call]
) -> list[ast.Call]:
    """`calls`, and the calls in `body` of a running method (`encode`, `decode`, `infer`,
    `sample`) of a model an entry function loads weights into (a translation script's
    `baseline_transformer.encode(src, mask)` after `load_state_dict`), in source order."""
    known = {id(c) for c in calls}
    extra = [
        node
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and id(node) not in known
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in MODEL_RUN_METHODS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in loaded
    ]
    return sorted([*calls, *extra], key=lambda c: (c.lineno, c.col_offset))


def _calls_holding_an_eval(ctx: ModuleContext) -> set[int]:
    """The ids of the calls in which `mode_call_receivers(call, "eval")` finds an `.eval()`:
    each `.eval()`/`.train(False)` call and every call around it up to the function, class or
    lambda that holds it (where `walk_scope` stops). Found upward from the module's few such
    calls, not by walking down every call of the module."""
    holding: set[int] = set()
    for switch in ctx.flow.calls_named(("eval", "train")):
        if not switches_to_eval(switch):
            continue
        node: ast.AST | None = switch
        while node is not None and not isinstance(node, _SCOPES):
            if isinstance(node, ast.Call):
                holding.add(id(node))
            node = ctx.parents.get(node)
    return holding


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
"""The nodes `walk_scope` does not enter below its root."""


def _sampling_after_training(ctx: ModuleContext) -> list[tuple[ast.Call, ast.expr]]:
    """`model.generate(...)` / `model.sample(...)` in the statements that follow a training
    loop in its own scope (ng-video-lecture's gpt.py trains, then samples at the end of the
    script), with no `.eval()` between: a model leaves the loop in training mode unless the
    last mode switch the loop makes (itself or through the helpers it calls, such as an
    `estimate_loss()` that calls `.eval()` then `.train()`) is `.eval()`. One call a scope."""
    if not any(f"{m}(" in ctx.source for m in _SAMPLING_METHODS):
        return []
    last_training: dict[int, tuple[list[ast.stmt], int]] = {}
    for loop in ctx.loops.training_loops:
        if loop.kind != "loop":
            continue
        owner = ctx.enclosing_function(loop.node)
        body = owner.body if owner is not None else ctx.tree.body
        index = next(
            (
                i
                for i, stmt in enumerate(body)
                if stmt is loop.node or stmt in ctx.ancestors(loop.node)
            ),
            None,
        )
        if index is not None and index >= last_training.get(id(body), (body, -1))[1]:
            last_training[id(body)] = (body, index)
    found: list[tuple[ast.Call, ast.expr]] = []
    for body, index in last_training.values():
        if _final_mode(ctx, body[index : index + 1], 0) == "eval":
            continue
        after = body[index + 1 :]
        for call, model in sorted(_sampling_calls(ctx, after), key=lambda c: position(c[0])):
            before = [stmt for stmt in after if stmt.lineno < call.lineno]
            if not ctx.flow.reaches_method(before, "eval"):
                found.append((call, model))
            break
    return found


def _sampling_calls(ctx: ModuleContext, body: list[ast.stmt]) -> list[tuple[ast.Call, ast.expr]]:
    """(`model.generate(...)`, `model`) for every sampling call on a model in `body`."""
    return [
        (node, node.func.value)
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _SAMPLING_METHODS
        and is_model_expr(ctx, node.func.value)
    ]


def _final_mode(ctx: ModuleContext, body: list[ast.stmt], depth: int) -> str | None:
    """The mode ('eval'/'train') the last switch in `body` leaves, following the module's own
    functions it calls (in source order), or None when nothing in it switches."""
    last: str | None = None
    calls = [n for n in walk_scope(body) if isinstance(n, ast.Call)]
    for call in sorted(calls, key=position):
        mode = ctx.flow.mode_method(call)
        if mode is None and depth < _MAX_HELPER_DEPTH and isinstance(call.func, ast.Name):
            for helper in ctx.loops.functions.get(call.func.id, []):
                mode = _final_mode(ctx, helper.body, depth + 1) or mode
        last = mode or last
    return last


_MODE_KEEPING_CALLS = frozenset({"to", "cuda", "cpu", "float", "half", "requires_grad_"})


def _scope_of(ctx: ModuleContext, node: ast.AST, name: str) -> int:
    """Where a name binds: the class of its methods for an attribute of `self`, else the
    function (or module) around it; an id to key names by."""
    if name.startswith("self."):
        owner = next((a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None)
        return id(owner)
    return id(ctx.enclosing_function(node))


def _pretrained_networks(ctx: ModuleContext) -> dict[tuple[int, str], ast.Call]:
    """Names (`self.inception` in a class, `encoder` in a function) bound to a pretrained
    model zoo network (`analysis.eval_mode.builds_pretrained_network`), keyed by their
    scope, with the call that built each."""
    built: dict[tuple[int, str], ast.Call] = {}
    for node in nodes_of(ctx, ast.Assign):
        assert isinstance(node, ast.Assign)
        target = node.targets[0] if len(node.targets) == 1 else None
        value = node.value
        while (  # `models.resnet50(pretrained=True).to(device)` keeps the mode
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in _MODE_KEEPING_CALLS
            and isinstance(value.func.value, ast.Call)
        ):
            value = value.func.value
        if (
            isinstance(target, ast.Name | ast.Attribute)
            and isinstance(value, ast.Call)
            and builds_pretrained_network(ctx, value)
        ):
            name = ast.unparse(target)
            if name.startswith("self.") and _in_a_module_class(ctx, node):
                continue  # a submodule: it runs in the mode its parent network is put in
            built.setdefault((_scope_of(ctx, node, name), name), value)
    return built


def _in_a_module_class(ctx: ModuleContext, node: ast.AST) -> bool:
    """`node` is in a class deriving from a `Module` (`nn.Module`, `LightningModule`)."""
    owner = next((a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None)
    return owner is not None and any(ast.unparse(b).endswith("Module") for b in owner.bases)


def _receiver(expr: ast.expr) -> str:
    """`self.inception` for `self.inception.to(device)`: the module a mode call reaches."""
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in _MODE_KEEPING_CALLS
    ):
        expr = expr.func.value
    return ast.unparse(expr)


def _pretrained_extractors_in_train_mode(ctx: ModuleContext) -> list[tuple[ast.Call, str, int]]:
    """(first run, name, line built) of each pretrained network a module that trains nothing
    builds and runs, directly or handed to one of its own functions, without ever switching
    it to eval mode (`.eval()`, `.train(False)`): a frozen feature extractor, such as the
    `inception_v3` of an FID or embedding metric (bioval's `ConditionalEvaluation`), left in
    training mode. Names count in their scope (a function's local, a class's `self.`
    attribute): StarGAN v2's `inception` local to `InceptionV3.__init__` is not the
    `inception = InceptionV3().eval()` of its FID function. A network stored on an
    `nn.Module` (`self.enc = resnet18(pretrained=True)`) is a submodule, in its parent's mode;
    a network handed to a function
    of another module (which may switch it) is not this; nor is a module that
    back-propagates or builds an optimizer (fine-tuning)."""
    source = ctx.source
    if ("pretrained" not in source and "weights=" not in source) or (
        ctx.loops.training_loops or ".backward(" in source or "optim." in source
    ):
        return []
    built = _pretrained_networks(ctx)
    if not built:
        return []

    def keys(expr: ast.expr) -> list[tuple[int, str]]:
        """The scoped names an expression may hold: itself, and for a parameter what the
        module's calls pass for it."""
        name = _receiver(expr)
        found = [(_scope_of(ctx, expr, name), name)]
        if isinstance(expr, ast.Name):
            found += [
                (_scope_of(ctx, a, ast.unparse(a)), ast.unparse(a))
                for a in ctx.calls.arguments_for(expr)
            ]
        return found

    switched: set[tuple[int, str]] = set()
    handed_on: set[tuple[int, str]] = set()
    runs: dict[tuple[int, str], ast.Call] = {}
    for call in nodes_of(ctx, ast.Call):
        assert isinstance(call, ast.Call)
        func = call.func
        if isinstance(func, ast.Attribute) and switches_to_eval(call):
            switched.update(keys(func.value))
            continue
        for key in keys(func):
            if key in built:
                runs.setdefault(key, call)
        if not ctx.calls.resolve(call):
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                handed_on.update(keys(arg))
    found = [
        (call, key[1], built[key].lineno)
        for key, call in runs.items()
        if key not in switched and key not in handed_on
    ]
    return sorted(found, key=lambda item: (item[0].lineno, item[0].col_offset))
