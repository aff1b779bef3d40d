"""frozen-model-in-train-mode: a network that is not trained runs inside a training step in
training mode."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.eval_mode import model_put_in_eval
from torchdoctor.agent.checks.analysis.gradmode import grad_surely_off
from torchdoctor.agent.checks.analysis.mode_layers import model_mode_layer
from torchdoctor.agent.checks.analysis.optimizers import (
    model_key,
    optimizer_constructions,
    synced_copies,
)
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_classes,
)
from torchdoctor.agent.checks.analysis.reachability import mode_switch
from torchdoctor.agent.checks.analysis.vocabulary import MODULE_WRAPPERS
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import FunctionNode
from torchdoctor.agent.checks.loops import is_backward_call, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
# Calls given a model that leave its mode alone: moves, casts, wrappers, printing.
_MODE_KEEPING_CALLS = frozenset({"print", "len", "id", "type", "isinstance", "getattr", "str"})
_FREEZE_CALLS = frozenset({"requires_grad_"})
_MAX_CALLERS = 3


class FrozenModelInTrainMode(Rule):
    """Detects a network that the training step runs but does not train, left in training
    mode: a knowledge-distillation teacher (`teacher_output = teacher_model(data)` then
    `.detach()`), a frozen pretrained feature extractor or perceptual network called under
    `torch.no_grad()` or with its parameters' `requires_grad` switched off, while the
    optimizers of the module are built over other models and nothing in the module calls
    `.eval()` (or `.train(False)`) on it. Reported at its first call in the training step when
    its construction shows a layer that acts differently in training mode (dropout, batch
    norm, a `self.training` branch; a torchvision ResNet/DenseNet/MobileNet/... factory).

    Why it matters: `torch.no_grad()` and `requires_grad=False` stop gradients, not training
    behaviour. In training mode the frozen network's dropout keeps dropping units (the
    teacher's soft targets are noisy, a different network each step) and its BatchNorm
    layers normalise with each batch's statistics and overwrite the pretrained running
    averages with the student's data, so the "frozen" model drifts and its outputs depend on
    the batch size. haitongli/knowledge-distillation-pytorch's MNIST distillation calls
    `teacher_model.eval()` at the top of `train()` for this reason.

    Not reported: a model any optimizer of the module is built over (a GAN's discriminator
    called on detached fakes), a copy the module syncs from a trained model (EMA, momentum and
    target networks, kept in training mode on purpose by MoCo, BYOL and Mean Teacher), a model
    put in eval mode anywhere in the module or built in it (`from_pretrained`,
    `Net().eval()`), one switched to `.train()` explicitly, one handed to a call that may set
    its mode (a helper of another file, `freeze(teacher)`), a model loaded whole with
    `torch.load` (its mode is the one it was saved in), models whose layers are not seen or
    have no mode-dependent layer, and modules whose optimizers are built over parameters the
    analysis cannot name.

    Example:
        teacher = ResNet18().to(device)
        teacher.load_state_dict(torch.load("teacher.pth"))
        optimizer = optim.SGD(student.parameters(), lr=0.1)
        for x, y in loader:
            with torch.no_grad():
                soft = teacher(x)
            loss = kd_loss(student(x), y, soft)
            loss.backward()

    Fix: call `teacher.eval()` once after building or loading it (and after any `.train()`
    of a container that holds it).
    """

    id = "frozen-model-in-train-mode"
    point = 3
    severity = Severity.HIGH
    title = "Frozen network runs in training mode inside the training step"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(
        all_of=(("backward",), ("no_grad", "detach", "requires_grad", "inference_mode"))
    )

    def finish(self, ctx: ModuleContext) -> None:
        regions = _training_regions(ctx)
        if not regions:
            return
        trained = _trained_models(ctx)
        copies = set().union(*synced_copies(ctx).values())
        reported: set[str] = set()
        for body in regions:
            calls = _model_calls(ctx, body)
            for call in calls:
                key = model_key(call.func)
                if key is None or key in reported or not _frozen_at(ctx, call, body, key):
                    continue
                if trained is None and not _only_frozen_beside_a_trained_one(ctx, calls, body, key):
                    continue
                identities = _identities(ctx, call.func)
                if not identities:
                    continue
                verdict = _layers_seen(ctx, identities, (trained or set()) | copies)
                if verdict is None:
                    continue
                layers, imported = verdict
                found = ctx.finding(
                    self,
                    call,
                    f"`{key}` is not trained here (no optimizer of this module is built over "
                    "it and its output is cut from the graph) but nothing puts it in eval "
                    f"mode, so {_layers_text(layers)} in it acts as in training: its outputs "
                    "change from batch to batch and its batch-norm running statistics drift "
                    "from the pretrained ones; call `.eval()` on it after building or loading it",
                    data=_anchor(ctx, identities),
                )
                if found is None:
                    continue
                reported.add(key)
                if imported:  # a class of another file: the project pass knows its layers
                    pending = Pending(symbol=imported, needs="mode-dependent", finding=found)
                    defer(ctx, self.id, pending)
                else:
                    ctx.findings.append(found)

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A frozen model built from another file's class: reported when that class has a
        mode-dependent layer."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _layers_seen(
    ctx: ModuleContext, identities: list[ast.expr], excluded: set[str]
) -> tuple[set[str], str] | None:
    """(the mode-dependent layers seen in the model's constructions, the one class of another
    file it is built from where none is seen), or None when one of its identities is trained
    or synced (`excluded`), may have its mode set, or shows no such layer here or in one
    project class."""
    layers: set[str] = set()
    imported: set[str] = set()
    for model in identities:
        known_as = model_key(model)
        if known_as is None or known_as in excluded or _mode_may_be_set(ctx, model, known_as):
            return None
        layer = model_mode_layer(ctx, model)
        if layer is not None:
            layers.add(layer)
            continue
        built = imported_classes(ctx, model)
        if len(built) != 1:
            return None
        imported.update(built)
    if len(imported) > 1:
        return None
    return layers, next(iter(imported), "")


def _layers_text(layers: set[str]) -> str:
    return min(layers) if layers else "the dropout or batch norm of its class"


def _anchor(ctx: ModuleContext, identities: list[ast.expr]) -> dict[str, object]:
    """Where the codemod puts `.eval()`: after the last statement binding the model (one
    model, bound by plain assignments); nothing when it is built in several places."""
    if len(identities) != 1:
        return {}
    model = identities[0]
    bindings = [
        parent
        for source in ctx.flow.sources(model)
        if isinstance(parent := ctx.parents.get(source), ast.Assign)
        and any(ast.unparse(t) == ast.unparse(model) for t in parent.targets)
    ]
    if not bindings:
        return {}
    last = max(bindings, key=lambda stmt: stmt.lineno)
    return {"model": ast.unparse(model), "bound_line": last.end_lineno or last.lineno}


def _identities(ctx: ModuleContext, model: ast.expr, depth: int = 0) -> list[ast.expr]:
    """What the model is known as where it is built: itself, or, for a parameter of the
    training function, what every call of that function in the module passes (`train(
    student, teacher_model, loader)`), followed up to three callers; [] when a call passes
    nothing for it or none is seen."""
    fn = ctx.enclosing_function(model)
    if not isinstance(model, ast.Name) or fn is None:
        return [model]
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    if model.id not in params:
        return [model]
    if depth >= _MAX_CALLERS:
        return []
    sites = ctx.calls.call_sites(fn)
    passed = [ctx.calls.bind(site, fn).get(model.id) for site in sites]
    if not passed or any(p is None or isinstance(p, ast.Starred) for p in passed):
        return []
    found: list[ast.expr] = []
    for value in passed:
        assert value is not None
        further = _identities(ctx, value, depth + 1)
        if not further:
            return []
        found.extend(further)
    return found


def _trained_models(ctx: ModuleContext) -> set[str] | None:
    """The models the module's optimizers are built over; None when an optimizer's models
    cannot be named (built by a helper, over a list built elsewhere) or none is built here."""
    constructions = optimizer_constructions(ctx)
    if constructions.unsure or not constructions.sure or _untracked_optimizers(ctx):
        return None
    return set().union(*(keys for keys, _ in constructions.sure.values()))


def _only_frozen_beside_a_trained_one(
    ctx: ModuleContext, calls: list[ast.Call], body: list[ast.stmt], key: str
) -> bool:
    """Without the optimizers' models: the model's parameters are frozen, or every call of it
    in the training body is cut from the graph while another model there runs with grad (the
    student beside its teacher)."""
    if _parameters_frozen(ctx, key):
        return True
    own = [c for c in calls if model_key(c.func) == key]
    others = [c for c in calls if model_key(c.func) not in (key, None)]
    return all(_output_cut(ctx, c, body) for c in own) and any(
        not _output_cut(ctx, c, body) for c in others
    )


def _untracked_optimizers(ctx: ModuleContext) -> bool:
    """An optimizer built where `optimizer_constructions` cannot see which models it trains:
    not bound to a name (`opts.append(Adam(...))`), or by a helper (`build_optimizer(model)`)."""
    for call in ctx.flow.nodes(ast.Call):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        qual = ctx.flow.qualname_of(call) or ""
        if qual.startswith("torch.optim.") and "lr_scheduler" not in qual:
            parent = ctx.parents.get(call)
            if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1):
                return True
        elif "optim" in name.lower() and name[:1].islower() and "zero_grad" not in name:
            return True  # `make_optimizer(cfg, model)`, `get_optim(...)`
    return False


def _training_regions(ctx: ModuleContext) -> list[list[ast.stmt]]:
    """The bodies that back-propagate: functions, and the script's own statements (found
    from the module's `backward` calls, not by walking every body)."""
    regions: dict[int, list[ast.stmt]] = {}
    for call in ctx.flow.calls_named(("backward",)):
        if not is_backward_call(call):
            continue
        fn = ctx.enclosing_function(call)
        if fn is not None:
            regions[id(fn)] = fn.body
        elif ctx.enclosing_class(call) is None:
            regions[id(ctx.tree)] = [s for s in ctx.tree.body if not isinstance(s, _NESTED_SCOPES)]
    return list(regions.values())


def _model_calls(ctx: ModuleContext, body: list[ast.stmt]) -> list[ast.Call]:
    """`teacher(x)` / `self.teacher(x)` calls of values that hold a module or are built by a
    constructor call (what it builds is judged later: its layers must show)."""
    return [
        node
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name | ast.Attribute)
        and (
            isinstance(node.func, ast.Name)
            or (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")
        )
        and (
            ctx.flow.is_module_value(node.func)
            or any(True for _ in ctx.flow.constructors(node.func))  # `model_t = WRN(...)`
        )
    ]


def _frozen_at(ctx: ModuleContext, call: ast.Call, body: list[ast.stmt], key: str) -> bool:
    """The call's output carries no graph, or the model's parameters stop requiring grad."""
    return _output_cut(ctx, call, body) or _parameters_frozen(ctx, key)


def _output_cut(ctx: ModuleContext, call: ast.Call, body: list[ast.stmt]) -> bool:
    """Autograd is off at the call, or its output is detached (`teacher(x).detach()`, or
    the name it is bound to detached in the same body)."""
    if grad_surely_off(ctx, call):
        return True
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Attribute) and parent.attr == "detach":
        return True
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        bound = parent.targets[0]
        return isinstance(bound, ast.Name) and any(
            isinstance(n, ast.Attribute)
            and n.attr == "detach"
            and isinstance(n.value, ast.Name)
            and n.value.id == bound.id
            for n in walk_scope(body)
        )
    return False


def _parameters_frozen(ctx: ModuleContext, key: str) -> bool:
    """`teacher.requires_grad_(False)`, or `for p in teacher.parameters(): p.requires_grad =
    False`."""
    memo = ctx.memo_table("frozen_model_in_train_mode.frozen")
    if "" not in memo:
        memo[""] = _frozen_keys(ctx)
    return key in memo[""]


def _frozen_keys(ctx: ModuleContext) -> frozenset[str]:
    found: set[str | None] = set()
    for call in ctx.flow.calls_named(_FREEZE_CALLS):
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and call.args[0].value is False
        ):
            found.add(model_key(func.value))
    for loop in ctx.flow.nodes(ast.For):
        assert isinstance(loop, ast.For)
        source = loop.iter
        if not (
            isinstance(source, ast.Call)
            and isinstance(source.func, ast.Attribute)
            and source.func.attr in ("parameters", "named_parameters")
        ):
            continue
        for node in walk_scope(loop.body):
            if (
                isinstance(node, ast.Assign)
                and any(
                    isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in node.targets
                )
                and isinstance(node.value, ast.Constant)
                and node.value.value is False
            ):
                found.add(model_key(source.func.value))
                break
    return frozenset(k for k in found if k is not None)


def _mode_may_be_set(ctx: ModuleContext, model: ast.expr, key: str) -> bool:
    """Built in eval mode, loaded whole, switched to either mode anywhere in the module, or
    handed to a call that may switch it."""
    if model_put_in_eval(ctx, model) or _loaded_whole(ctx, model):
        return True
    for call in ctx.flow.nodes(ast.Call):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        if isinstance(func, ast.Attribute) and mode_switch(call) and model_key(func.value) == key:
            return True  # `teacher.eval()`, `teacher.train(False)`, `teacher.train()`
        if _hands_over(ctx, call, key):
            return True
    return False


def _loaded_whole(ctx: ModuleContext, model: ast.expr) -> bool:
    """`teacher = torch.load(path)`: a pickled module keeps the mode it was saved in."""
    return any(
        isinstance(source, ast.Call) and ctx.flow.qualname_of(source) == "torch.load"
        for source in ctx.flow.sources(model)
    )


def _hands_over(ctx: ModuleContext, call: ast.Call, key: str, depth: int = 0) -> bool:
    """`freeze(teacher)`, `trainer.setup(teacher)`: a call given the model that may set its
    mode. Calls of the model itself, wrappers and built-ins leave it alone; a function of
    this module is read, up to three calls deep (it hands the model over if it switches the
    mode of the parameter it gets it as, or hands that on to such a call)."""
    given = [a for a in (*call.args, *(k.value for k in call.keywords)) if model_key(a) == key]
    if not given or model_key(call.func) == key or not _may_set_mode(ctx, call):
        return False
    func = call.func
    if not (isinstance(func, ast.Name) and func.id in ctx.flow.functions):
        return True
    if depth >= _MAX_CALLERS:
        return True
    return any(_helper_hands_over(ctx, call, fn, key, depth) for fn in ctx.flow.functions[func.id])


def _helper_hands_over(
    ctx: ModuleContext, site: ast.Call, fn: FunctionNode, key: str, depth: int
) -> bool:
    params = [
        name
        for name, value in ctx.calls.bind(site, fn).items()
        if isinstance(value, ast.Name | ast.Attribute) and model_key(value) == key
    ]
    for node in walk_scope(fn.body):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and mode_switch(node):
            if model_key(func.value) in params:
                return True
            continue
        if any(_hands_over(ctx, node, param, depth + 1) for param in params):
            return True
    return False


def _may_set_mode(ctx: ModuleContext, call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    qual = ctx.flow.qualname_of(call) or ""
    return not (
        name in _MODE_KEEPING_CALLS
        or qual in MODULE_WRAPPERS
        or qual.startswith(("torch.optim.", "torch.nn.functional."))
    )
