"""Across files: what each module exports, and the questions rules leave for the project pass.

Each file is parsed and walked once (in any worker process). A module publishes a summary of
what other files may import from it — its `nn.Module` classes with the activation their
`forward` ends in, its functions that step an optimizer — as picklable facts. A rule that meets
a call into another file (`model = Net()` imported from `models.py`, `train_one_epoch(...)`
imported from `engine.py`) records a `Pending` finding naming the symbol and the property that
would confirm it; the rule's `check_project` keeps those the project index confirms.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.meters import accumulating_methods
from torchdoctor.agent.checks.analysis.mode_layers import MODE_WORDS, class_mode_free, mode_layer
from torchdoctor.agent.checks.analysis.reachability import mode_switch
from torchdoctor.agent.checks.analysis.schedules import hand_written_schedules
from torchdoctor.agent.checks.analysis.vocabulary import LOG_SOFTMAX, SIGMOID, SOFTMAX
from torchdoctor.agent.checks.base import RawFinding, SourceSite, related_place
from torchdoctor.agent.checks.catalogue import suppressed_inline
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import may_name
from torchdoctor.agent.checks.patterns import builds_conv2d, self_attribute

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

Output = Literal["softmax", "log_softmax", "sigmoid", "linear"]
Property = Literal[
    "output:softmax",
    "output:log_softmax",
    "output:sigmoid",
    "output:linear",
    "steps-optimizer",
    "splits-data",
    "mode-dependent",
    "left-in-train-mode-by-a-caller",
    "called-in-train-mode",
    "run-with-grad-by-a-caller",
    "differentiated-by-a-caller",
    "given-parameters-by-a-caller",
    "not-mode-free",
    "mode-layers-in-project",
    "cpu-device-in-project",
    "convolutional",
    "accumulates-argument",
    "returns-backpropagated-loss",
    "returns-backpropagated-loss-first",
    "clips-gradients",
    "leaves-model-in-eval",
    "not-returned-in-eval",
    "attribute-not-evaluated-by-base",
    "argument-used-whole",
    "clears-no-gradients",
    "not-a-hand-written-schedule",
]
_REMOVABLE_OUTPUTS: frozenset[Property] = frozenset(
    {"output:softmax", "output:log_softmax", "output:sigmoid"}
)
"""Activations a loss applies again, fixed by removing them where `forward` applies them."""
FACTS_KEY = "semantic"
PASSES_KEY = "model-passes"
MODE_CALLS_KEY = "mode-calls"
GRAD_CALLS_KEY = "grad-calls"
DIFFERENTIATED_CALLS_KEY = "differentiated-calls"
PARAMETER_CALLS_KEY = "parameter-calls"
_PARAMETER_ITERATORS = frozenset({"parameters", "named_parameters"})
MODE_LAYERS_KEY = "may-hold-mode-layers"
CPU_DEVICE_KEY = "offers-cpu-device"
ATTRIBUTE_READS_KEY = "attribute-reads"
# Identifiers a module uses when a layer that acts differently in training mode may come from
# it (names, attributes, keywords, parameters: comments and docstrings do not count).
_MODE_LAYER_WORDS = (
    "dropout",
    "Dropout",
    "BatchNorm",
    "batch_norm",
    "InstanceNorm",
    "instance_norm",
    "DropPath",
    "drop_path",
)
_MODE_IDENTIFIERS = re.compile("|".join(_MODE_LAYER_WORDS) + "|^training$")
_TRANSFORMER = re.compile(r"^Transformer")
_MODEL_ZOOS = ("torchvision", "timm", "transformers", "diffusers", "open_clip")
_MAX_IMPORT_DEPTH = 4
_LIBRARIES = ("torch.", "torchvision.", "timm.", "transformers.", "lightning.", "numpy.")
_ACTIVATIONS: dict[str, Output] = {
    **{name: "softmax" for name in SOFTMAX},
    **{name: "log_softmax" for name in LOG_SOFTMAX},
    **{name: "sigmoid" for name in SIGMOID},
}
# A final layer whose output is raw logits (what `nn.NLLLoss` must not receive).
_LINEAR_LAYERS = frozenset({"torch.nn.Linear", "torch.nn.LazyLinear"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassSummary(_Model):
    """An `nn.Module` class: where it is, the activation its `forward` returns, if any, and
    its first layer that acts differently in training mode (dropout, batch norm), if seen."""

    line: int
    output: Output | None = None
    output_site: SourceSite | None = None
    """Where `forward` computes that activation: a problem it causes in a caller's file (a
    loss that applies it again) is reported there, where it is fixed."""
    mode_layer: str | None = None
    mode_free: bool = False
    """Every layer it builds is seen and none acts differently in training mode."""
    submodules: list[str] = Field(default_factory=list)
    """Classes imported from other files that it builds (`self.inc = DoubleConv(3, 64)`)."""
    convolutional: bool = False
    """It builds a 2-D convolution itself (`nn.Conv2d`, a torchvision or timm network)."""
    clears_gradients: bool = False
    """A method calls `self.zero_grad()` (a model that clears its gradients in forward)."""


class FunctionSummary(_Model):
    """A module-level function: its parameters, whether it steps an optimizer, and whether
    it splits data it is given into train and test parts (`train_test_split(X, y)`)."""

    line: int
    params: list[str] = Field(default_factory=list)
    steps_optimizer: bool = False
    splits_data: bool = False
    accumulates: bool = False
    returns_loss: bool = False
    """Runs `backward()` on a loss and returns that loss, graph and all (a training step
    `return loss` rather than `loss.item()`): what its caller sums keeps every graph."""
    returns_loss_first: bool = False
    """Runs `backward()` on a loss and returns it, graph and all, first in a tuple (`return
    loss, mape, rmse`): what its caller sums of that element keeps every graph."""
    """A method (keyed `Class.method`) that adds its first argument into its object's state
    (a meter's `update(val, n)`)."""
    leaves_eval: bool = False
    """Puts a model it is given in eval mode and returns without setting it back to train."""
    returns_eval: bool = False
    """Returns a model it put in eval mode (a loader's `model.eval(); return model`)."""
    evaluates: list[str] = Field(default_factory=list)
    """A constructor (keyed `Class.__init__`): the attributes of `self` it leaves in eval
    mode (`self.model = model; self.model.eval()`), which its subclasses' methods inherit."""
    clips_grad: bool = False
    """Clips or clamps the gradients it reaches (`clip_grad_norm_`, `p.grad.data.clamp_(-c,
    c)`) and neither back-propagates nor steps: a clipping helper its callers order."""
    hand_written_schedule: bool = False
    """A schedule class's `step` (keyed `Class.step`) that is not torch's: it sets the
    optimizer's values for the step it is called at, before `optimizer.step()` on purpose."""
    element_params: list[str] = Field(default_factory=list)
    """Parameters it reads only one element at a time (`n_channels[0]`): a one-element
    tensor passed for one meets no other tensor, whatever its device."""


class ModuleSummary(_Model):
    module: str
    path: str = ""
    classes: dict[str, ClassSummary] = Field(default_factory=dict)
    functions: dict[str, FunctionSummary] = Field(default_factory=dict)
    reexports: dict[str, str] = Field(default_factory=dict)
    """A package's `__init__.py`: the project names it imports to offer them under its own
    (`from .evaluator import SSLEvaluator` -> 'SSLEvaluator': 'pkg.evaluator.SSLEvaluator')."""


class Pending(_Model):
    """A finding that holds only if `symbol` (a qualified import) has `needs` (and each
    property of `also`)."""

    symbol: str
    needs: Property
    finding: RawFinding
    also: list[Property] = Field(default_factory=list)
    parameter: str | None = None
    """Set when the model arrives through this parameter of the function `symbol` names:
    the property is then asked of the classes other files pass for it."""
    position: int | None = None
    """The parameter's position among the arguments a caller writes (no `self`)."""
    attribute: str | None = None
    """Set with `attribute-not-evaluated-by-base`: the model is `self.<attribute>` of a class
    built on `symbol`, another file's class, whose constructor may put it in eval mode."""
    unless: list[str] = Field(default_factory=list)
    """Symbols whose having `needs` drops the finding (calls made earlier on the same path:
    when one of them steps the optimizer, a scheduler stepped after it is in order)."""


class ModelPass(_Model):
    """A call into another file's function or method with a model for one of its parameters
    (`LocalUpdate(args).train(net=copy.deepcopy(net_glob))`, `test_img(net_glob, ...)`)."""

    callee: str
    keyword: str | None = None
    position: int | None = None
    classes: list[str] = Field(default_factory=list)


def _module_and_function(qualified: str) -> tuple[str, str]:
    """'models.test.test_img' -> ('models.test', 'test_img'); a method keeps its class:
    'models.Update.LocalUpdate.train' -> ('models.Update', 'LocalUpdate.train')."""
    module, _, name = qualified.rpartition(".")
    if "." in module and module.rpartition(".")[2][:1].isupper():
        module, _, owner = module.rpartition(".")
        name = f"{owner}.{name}"
    return module, name


@lru_cache(maxsize=4096)
def module_name(path: str) -> str:
    """`src/pkg/models.py` -> 'src.pkg.models'; `pkg/__init__.py` -> 'pkg' (remembered per
    path: asked of each module many times)."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_symbol(ctx: ModuleContext, name: str) -> str | None:
    """The qualified name a local name was imported as, relative imports resolved."""
    absolute = ctx.imports.aliases.get(name)
    if absolute is not None:
        return absolute
    return _relative_imports_memo(ctx).get(name)


def _relative_imports(ctx: ModuleContext) -> dict[str, str]:
    found: dict[str, str] = {}
    package = module_name(ctx.path).split(".")
    if PurePosixPath(ctx.path).name != "__init__.py":
        package = package[:-1]
    for node in ctx.nodes_by_type().get(ast.ImportFrom, ()):
        assert isinstance(node, ast.ImportFrom)
        if node.level == 0:
            continue
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        prefix = ".".join([*base, *([node.module] if node.module else [])])
        for alias in node.names:
            if alias.name != "*":
                found[alias.asname or alias.name] = f"{prefix}.{alias.name}".lstrip(".")
    return found


def callee_symbol(ctx: ModuleContext, expr: ast.expr) -> str | None:
    """`Net` / `models.Net` / `m.train_one_epoch` -> the qualified name it was imported as."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    base = imported_symbol(ctx, expr.id)
    return ".".join([base, *reversed(parts)]) if base else None


def imported_models(ctx: ModuleContext, value: ast.expr) -> list[str]:
    """Qualified names of classes imported from other files whose instance produced `value`
    (`logits = model(x)` with `model = Net().to(dev)` and `from models import Net`)."""
    found: list[str] = []
    for producer in ctx.flow.producers(value):
        func = producer.func
        if isinstance(func, ast.Attribute) and func.attr == "forward":
            func = func.value
        for obj in [func, *passed_for_parameter(ctx, func)]:
            found += [s for s in imported_classes(ctx, obj) if s not in found]
    return found


def passed_for_parameter(ctx: ModuleContext, obj: ast.expr) -> list[ast.expr]:
    """What this module's calls of a module-level function pass for its parameter `obj`
    (`def fit(model, ...)` called as `fit(net, ...)` with `net = arch.Net()`)."""
    fn = ctx.enclosing_function(obj) if isinstance(obj, ast.Name) else None
    if (
        fn is None
        or not isinstance(obj, ast.Name)
        or not isinstance(ctx.parents.get(fn), ast.Module)
    ):
        return []
    positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if obj.id not in positional and obj.id not in {a.arg for a in fn.args.kwonlyargs}:
        return []
    if any(v is not obj for v in ctx.flow.definitions(obj)):
        return []  # rebound in the function: its own bindings say what it holds
    index = positional.index(obj.id) if obj.id in positional else len(positional)
    passed: list[ast.expr] = []
    for site in ctx.flow.callers.get(fn.name, []):
        keyword = next((k.value for k in site.keywords if k.arg == obj.id), None)
        if keyword is not None:
            passed.append(keyword)
        elif index < len(site.args) and not any(
            isinstance(a, ast.Starred) for a in site.args[: index + 1]
        ):
            passed.append(site.args[index])
    return passed


def parameter_of(
    ctx: ModuleContext, obj: ast.expr, hops: int = 3
) -> tuple[str, str, int | None] | None:
    """(qualified function, parameter, position a caller writes it at) when `obj` is a
    parameter, never rebound, of a module-level function or of a method of a module-level
    class (`def train(self, net)` in `models/Update.py` -> 'models.Update.LocalUpdate.train').
    A parameter this file's calls only fill with a parameter of one other function
    (`forward_step(model, ...)` inside `def train_model(model, ...)`) is that function's:
    the callers in other files give it."""
    forwarded = _forwarded_parameter(ctx, obj) if hops > 0 else None
    if forwarded is not None:
        return parameter_of(ctx, forwarded, hops - 1)
    fn = ctx.enclosing_function(obj) if isinstance(obj, ast.Name) else None
    if fn is None or not isinstance(obj, ast.Name):
        return None
    owner = ctx.parents.get(fn)
    name = fn.name
    positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if isinstance(owner, ast.ClassDef) and isinstance(ctx.parents.get(owner), ast.Module):
        name = f"{owner.name}.{fn.name}"
        positional = positional[1:]  # self
    elif not isinstance(owner, ast.Module):
        return None
    keywords = {a.arg for a in fn.args.kwonlyargs}
    if obj.id not in positional and obj.id not in keywords:
        return None
    if any(v is not obj for v in ctx.flow.definitions(obj)):
        return None
    position = positional.index(obj.id) if obj.id in positional else None
    return f"{module_name(ctx.path)}.{name}", obj.id, position


def _forwarded_parameter(ctx: ModuleContext, obj: ast.expr) -> ast.Name | None:
    """The one parameter of another function that every call of `obj`'s function in this
    file passes for it (the value `obj` holds comes through it), if there is one."""
    fn = ctx.enclosing_function(obj) if isinstance(obj, ast.Name) else None
    if fn is None or not isinstance(obj, ast.Name):
        return None
    if any(v is not obj for v in ctx.flow.definitions(obj)):
        return None  # rebound in the function: its own bindings say what it holds
    sites = ctx.calls.call_sites(fn)
    passed: list[ast.Name] = []
    for site in sites:
        value = ctx.calls.bind(site, fn).get(obj.id)
        outer = ctx.enclosing_function(site)
        if not isinstance(value, ast.Name) or outer is None or outer is fn:
            return None
        if value.id not in {a.arg for a in [*outer.args.args, *outer.args.kwonlyargs]}:
            return None
        passed.append(value)
    first = passed[0] if passed else None
    if first is None or any(
        p.id != first.id or ctx.enclosing_function(p) is not ctx.enclosing_function(first)
        for p in passed
    ):
        return None
    return first


def publish_cpu_device(ctx: ModuleContext) -> None:
    """Record that this module offers the CPU (a device option or fallback), with the project
    modules it imports: their checkpoint loads run on CPU when it does."""
    modules = {module_name(ctx.path), *star_modules(ctx)}
    for name in project_imports(ctx):
        symbol = imported_symbol(ctx, name) or ""
        modules |= {symbol, symbol.rpartition(".")[0]}
    ctx.facts[CPU_DEVICE_KEY] = sorted(m for m in modules if m)


def publish_attribute_reads(ctx: ModuleContext) -> None:
    """Record every attribute name this module reads (`.entrop`, `.num_sample`): a name no
    file reads is dead in the whole project (once per module, whichever rule asks first)."""
    if ATTRIBUTE_READS_KEY not in ctx.facts:
        ctx.facts[ATTRIBUTE_READS_KEY] = sorted(
            {n.attr for n in ctx.flow.nodes(ast.Attribute) if not isinstance(n.ctx, ast.Store)}
        )


def attribute_reads(facts: dict[str, dict[str, Any]]) -> set[str]:
    """The attribute names some module of the project reads (`publish_attribute_reads`)."""
    return {name for module in facts.values() for name in module.get(ATTRIBUTE_READS_KEY, [])}


_HOLDER_EXPRS = (ast.Name, ast.Attribute, ast.Call)
"""The arguments that may hold a model: a name, `obj.attr`, a call building or copying one."""


def publish_model_passes(ctx: ModuleContext) -> None:
    """Record the calls of other files' functions and methods given a model of a known class
    (imported, or this module's own) for one of their parameters."""
    if not project_imports(ctx) or not (ctx.flow.module_classes or _project_constructions(ctx)):
        return  # builds no model of the project's own classes: passes none
    if not _any_project_construction(ctx):
        return  # no call here builds one: no value can hold one (`_model_classes`)
    passes: list[dict[str, Any]] = []
    may_hold = _project_class_holders(ctx)
    for call in ctx.flow.nodes(ast.Call):
        assert isinstance(call, ast.Call)
        if not any(isinstance(a, _HOLDER_EXPRS) and may_hold(a) for a in call.args) and not any(
            k.arg and isinstance(k.value, _HOLDER_EXPRS) and may_hold(k.value)
            for k in call.keywords
        ):
            continue  # given no model of a project class: passes none, whoever it calls
        arguments: list[tuple[str | None, int | None, ast.expr]] = [
            (None, i, a) for i, a in enumerate(call.args) if isinstance(a, _HOLDER_EXPRS)
        ]
        arguments += [
            (k.arg, None, k.value)
            for k in call.keywords
            if k.arg and isinstance(k.value, _HOLDER_EXPRS)
        ]
        callee = _project_callee(ctx, call)
        if not callee:
            continue  # no function of another file: whatever it is given, passes nothing
        for keyword, position, value in arguments:
            classes = _model_classes(ctx, value)
            if classes:
                found = ModelPass(
                    callee=callee, keyword=keyword, position=position, classes=classes
                )
                passes.append(found.model_dump())
    if passes:
        ctx.facts[PASSES_KEY] = passes


def _project_callee(ctx: ModuleContext, call: ast.Call) -> str | None:
    """`test_img` -> 'models.test.test_img'; `local.train` with `local = LocalUpdate(...)`
    imported -> 'models.Update.LocalUpdate.train'."""
    func = call.func
    if isinstance(func, ast.Name):
        symbol = project_symbol(ctx, func)
        return symbol if symbol and func.id[:1].islower() else None
    if isinstance(func, ast.Attribute):
        owners = imported_classes(ctx, func.value)
        if len(owners) == 1:
            return f"{owners[0]}.{func.attr}"
        symbol = project_symbol(ctx, func)
        return symbol if symbol and func.attr[:1].islower() else None
    return None


def _any_project_construction(ctx: ModuleContext) -> bool:
    """`_builds_project_class` of some call of the module, asked only of the calls whose
    callee could name a project class: a name of this module's classes, or a name (or
    attribute chain) rooted in an imported name (`callee_symbol` resolves nothing else)."""
    classes = ctx.flow.module_classes
    imported = ctx.imports.aliases.keys() | _relative_imports_memo(ctx).keys()
    for call in ctx.flow.nodes(ast.Call):
        root = call.func
        while isinstance(root, ast.Attribute):
            root = root.value
        if not isinstance(root, ast.Name):
            continue
        named = root.id in imported or (root is call.func and root.id in classes)
        if named and _builds_project_class(ctx, call):
            return True
    return any(chosen_class_symbol(ctx, call.func) for call in _chosen_constructions(ctx))


def _chosen_constructions(ctx: ModuleContext) -> Iterator[ast.Call]:
    """Calls whose callee may be a class chosen by name (`getattr(models, arch)(...)`,
    `x.Model(config)` with `x = import_module(...)`): asked only where the module names
    `getattr`, `__dict__` or `import_module` at all."""
    if not any(word in ctx.source for word in ("getattr", "__dict__", "import_module")):
        return
    for call in ctx.flow.nodes(ast.Call):
        assert isinstance(call, ast.Call)
        if isinstance(call.func, ast.Call | ast.Subscript | ast.Attribute):
            yield call


CHOSEN = "*"
"""Stands, in a class symbol, for the name a program picks at run time: `models.*` is any
class of `models`, `models.*.Model` the class `Model` of any module of the package `models`."""


def chosen_class_symbol(ctx: ModuleContext, func: ast.expr) -> str | None:
    """The class a constructor's callee picks by name from a project module, as a symbol
    with `CHOSEN` for the name: `getattr(model, args.model)` / `models.__dict__[args.arch]`
    with `import model` -> 'model.*'; `x.Model` with `x = import_module('models.' + name)`
    -> 'models.*.Model' (a model zoo whose file the command line names). Library modules
    (torchvision's `models.__dict__[arch]`) and the standard library give None."""
    module: ast.expr | None = None
    if (
        isinstance(func, ast.Call)
        and isinstance(func.func, ast.Name)
        and func.func.id == "getattr"
        and len(func.args) == 2
        and not isinstance(func.args[1], ast.Constant)
    ):
        module = func.args[0]
    elif (
        isinstance(func, ast.Subscript)
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "__dict__"
        and not isinstance(func.slice, ast.Constant)
    ):
        module = func.value.value
    if module is not None:
        symbol = callee_symbol(ctx, module)
        if (
            symbol is None
            or symbol.startswith(_LIBRARIES)
            or symbol.partition(".")[0] in sys.stdlib_module_names
            or symbol.rpartition(".")[2][:1].isupper()  # a class's attribute, not a module's
        ):
            return None
        return f"{symbol}.{CHOSEN}"
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.attr[:1].isupper()
        and "import_module" in ctx.source
    ):
        for bound in ctx.flow.sources(func.value):
            if (
                isinstance(bound, ast.Call)
                and ctx.flow.qualname_of(bound) == "importlib.import_module"
                and len(bound.args) == 1
            ):
                prefix = _constant_prefix(bound.args[0])
                if prefix is None:
                    return None
                return f"{prefix}{CHOSEN}.{func.attr}"
    return None


def _constant_prefix(name: ast.expr) -> str | None:
    """'models.' for `'models.' + model_name` or `f'models.{name}'`; '' for a name wholly
    computed; None for a constant (an import of one known module, not a choice)."""
    if isinstance(name, ast.BinOp) and isinstance(name.op, ast.Add):
        left = name.left
        if isinstance(left, ast.Constant) and isinstance(left.value, str):
            return left.value if left.value.endswith(".") else None
        return ""
    if isinstance(name, ast.JoinedStr):
        first = name.values[0] if name.values else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value if first.value.endswith(".") else None
        return ""
    if isinstance(name, ast.Constant):
        return None
    return ""


def _builds_project_class(ctx: ModuleContext, call: ast.Call) -> bool:
    """`call` constructs one of the project's classes, as `_model_classes` names them."""
    return bool(_project_class(ctx, call.func))


def _project_class(ctx: ModuleContext, func: ast.expr) -> str | None:
    """The project class `func` (a constructor's callee) names: this module's own
    `nn.Module`, or a capitalised symbol imported from another file (not the stdlib's)."""
    if isinstance(func, ast.Name) and func.id in ctx.flow.module_classes:
        return f"{module_name(ctx.path)}.{func.id}"
    chosen = chosen_class_symbol(ctx, func)
    if chosen is not None:
        return chosen
    symbol = project_symbol(ctx, func)
    if symbol is not None and (
        not symbol.rpartition(".")[2][:1].isupper()
        or symbol.partition(".")[0] in sys.stdlib_module_names
    ):
        return None
    return symbol


def _project_class_holders(ctx: ModuleContext) -> Callable[[ast.expr], bool]:
    """A test that is true of every value `_model_classes` finds a class for (and of some
    others): it follows the same ways (`DefUse.sources`: bindings, local functions' returns,
    both arms of a conditional; `.to()`-style chains and deep copies, as `constructors` and
    `_model_classes` do) backwards from the module's constructions of project classes, once
    for the whole module, the bindings of a name in every scope taken together."""
    held: set[str] = set()  # names, `obj.attr`s and (as `name()`) local functions that may hold one
    waiting: dict[str, list[str]] = {}  # what holds one as soon as a name or a function does
    found: list[str] = []
    for key, values in ctx.flow.bound_values():
        for value in values:
            _note_holder(ctx, key, value, held, waiting, found)
    for name, values in ctx.flow.local_returns().items():
        for value in values:
            _note_holder(ctx, f"{name}()", value, held, waiting, found)
    while found:
        for dependent in waiting.pop(found.pop(), ()):
            if dependent not in held:
                held.add(dependent)
                found.append(dependent)

    def holds(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Name):  # most arguments: `_holder_needs`'s answer, inlined
            return expr.id in held
        outright, needed = _holder_needs(ctx, expr)
        return outright or any(key in held for key in needed)

    return holds


def _note_holder(
    ctx: ModuleContext,
    key: str,
    value: ast.expr,
    held: set[str],
    waiting: dict[str, list[str]],
    found: list[str],
) -> None:
    """`key` holds a project class if `value` does: now, or once what it needs does."""
    outright, needed = _holder_needs(ctx, value)
    if outright:
        if key not in held:
            held.add(key)
            found.append(key)
        return
    for name in needed:
        waiting.setdefault(name, []).append(key)


def _holder_needs(ctx: ModuleContext, expr: ast.expr) -> tuple[bool, list[str]]:
    """(`expr` builds a project class itself, the names, `obj.attr`s and local functions
    (`name()`) any of which holding one would make `expr` hold one too)."""
    if isinstance(expr, ast.IfExp):
        body, orelse = _holder_needs(ctx, expr.body), _holder_needs(ctx, expr.orelse)
        return body[0] or orelse[0], body[1] + orelse[1]
    if isinstance(expr, ast.Name):
        return False, [expr.id]
    if isinstance(expr, ast.Attribute):
        if isinstance(expr.value, ast.Name):
            return False, [f"{expr.value.id}.{expr.attr}"]
        return False, []
    if not isinstance(expr, ast.Call):
        return False, []
    needed = [f"{expr.func.id}()"] if isinstance(expr.func, ast.Name) else []
    call: ast.expr = expr
    while (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in ("to", "cuda", "cpu", "eval", "train", "float", "half")
    ):
        call = call.func.value
    if not isinstance(call, ast.Call):
        return False, needed
    if _deep_copied(ctx, call):
        outright, inner = _holder_needs(ctx, call.args[0])
        return outright, needed + inner
    return bool(_project_class(ctx, call.func)), needed


def _model_classes(ctx: ModuleContext, value: ast.expr) -> list[str]:
    """Project classes `value` may be an instance of, through `copy.deepcopy(...)` (each
    value looked at once: `net = copy.deepcopy(net)` rebinds a name to a copy of itself)."""
    found: list[str] = []
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ast.Call) and _deep_copied(ctx, current):
            pending.append(current.args[0])
            continue
        for call in ctx.flow.constructors(current):
            if _deep_copied(ctx, call):
                pending.append(call.args[0])
                continue
            symbol = _project_class(ctx, call.func)
            if symbol and symbol not in found:
                found.append(symbol)
    return found


def _deep_copied(ctx: ModuleContext, call: ast.Call) -> bool:
    return bool(call.args) and ctx.flow.qualname_of(call) == "copy.deepcopy"


def project_symbol(ctx: ModuleContext, expr: ast.expr) -> str | None:
    """The qualified name `expr` was imported as, when it comes from the project's own
    files rather than a library."""
    symbol = callee_symbol(ctx, expr)
    return symbol if symbol and not symbol.startswith(_LIBRARIES) else None


def imported_classes(ctx: ModuleContext, obj: ast.expr) -> list[str]:
    """Qualified names of classes imported from other files that `obj` may be an instance of
    (`model` with `model = Net().to(dev)` and `from models import Net`)."""
    found: list[str] = []
    for constructor in ctx.flow.constructors(obj):
        for symbol in class_symbols(ctx, constructor.func):
            if not symbol.startswith(_LIBRARIES) and symbol not in found:
                found.append(symbol)
    return found


def class_symbols(ctx: ModuleContext, func: ast.expr) -> list[str]:
    """The qualified names a constructor's callee may stand for: its import, or, for a class
    name a star import brings (`from utils import *`, then `AverageMeter()`), that name in
    each module star-imported."""
    symbol = callee_symbol(ctx, func) or chosen_class_symbol(ctx, func)
    if symbol is not None:
        return [symbol]
    if isinstance(func, ast.Name) and _star_brought(ctx, func.id):
        return [f"{module}.{func.id}" for module in star_modules(ctx)]
    return []


def _star_brought(ctx: ModuleContext, name: str) -> bool:
    """A class name this module neither defines nor imports by name: a star import of one
    of the project's files may bring it (`from model import *`, then `RNN(...)`)."""
    if not name[:1].isupper() or not star_modules(ctx):
        return False
    defined: set[str] = set()
    for stmt in ctx.tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            defined.update(identifier(target) for target in stmt.targets)
    return name not in defined


def project_function_calls(ctx: ModuleContext) -> list[tuple[str, ast.Call]]:
    """Calls of functions imported from the project's other files (`evaluate(model, loader)`
    with `from evaluate import evaluate`), with the qualified name each was imported as.
    Computed once per module (five analyses and rules ask): the list is shared, never changed."""
    memo = ctx.memo_table("project.project_function_calls")
    if "" not in memo:
        memo[""] = _project_function_calls(ctx)
    found: list[tuple[str, ast.Call]] = memo[""]
    return found


def _project_function_calls(ctx: ModuleContext) -> list[tuple[str, ast.Call]]:
    imported = project_imports(ctx)
    if not imported:
        return []
    found = []
    for node in ctx.flow.nodes(ast.Call):
        root = node.func
        while isinstance(root, ast.Attribute):
            root = root.value
        if not isinstance(root, ast.Name) or root.id not in imported:
            continue
        if not identifier(node.func)[:1].islower():
            continue  # a class: built, not run
        symbol = callee_symbol(ctx, node.func)
        if (
            symbol
            and not symbol.startswith(_LIBRARIES)
            and symbol.partition(".")[0] not in sys.stdlib_module_names
        ):
            found.append((symbol, node))
    return found


def publish_mode_layers(ctx: ModuleContext) -> None:
    """Record whether a layer that acts differently in training mode may come from this
    module (its text names one, or it imports a model zoo): a project where none does has
    only mode-free models, whatever a helper is given."""
    ctx.facts[MODE_LAYERS_KEY] = (
        ctx.flow.imports(*_MODEL_ZOOS)
        or "hub.load" in ctx.source
        or (_may_name_mode_layers(ctx.source) and _names_mode_layers(ctx))
        or any(  # torch's transformer layers have dropout (a project's own `Transformer` may not)
            (ctx.flow.qualname_of(call) or "").startswith("torch.nn.Transformer")
            for call in ctx.flow.calls_matching(_TRANSFORMER)
        )
    )


def _may_name_mode_layers(source: str) -> bool:
    """An identifier `_MODE_IDENTIFIERS` matches holds a layer word or is `training` (a whole
    word, not `self.training_step`): a module whose text shows neither has none, and its
    identifiers need not be listed (identifiers are the text's own unless NFKC-normalised)."""
    return (
        not source.isascii()
        or any(word in source for word in _MODE_LAYER_WORDS)
        or may_name(source, "training")
    )


def _names_mode_layers(ctx: ModuleContext) -> bool:
    """Stops at the first identifier that names one (each distinct one tested once)."""
    tested: set[str] = set()
    for name in _identifiers(ctx):
        if name not in tested:
            if _MODE_IDENTIFIERS.search(name):
                return True
            tested.add(name)
    return False


def _identifiers(ctx: ModuleContext) -> Iterator[str]:
    flow = ctx.flow
    yield from (n.id for n in flow.nodes(ast.Name))
    yield from (n.attr for n in flow.nodes(ast.Attribute))
    yield from (k.arg for k in flow.nodes(ast.keyword) if k.arg)
    yield from (a.arg for a in flow.nodes(ast.arg))
    yield from (a.asname or a.name for a in flow.nodes(ast.alias))


def publish_grad_calls(ctx: ModuleContext, calls: dict[str, list[bool]]) -> None:
    """Record, per imported project function, whether each call of it here runs with autograd
    off (`with torch.no_grad(): validate(...)`, for the project pass of validation-with-grad)."""
    if calls:
        ctx.facts[GRAD_CALLS_KEY] = calls


def publish_differentiated_calls(ctx: ModuleContext) -> None:
    """Record, per imported project function, whether each call of it here hands it a
    model's output with autograd on (`mel_spectrogram(y_g_hat.squeeze(1), ...)` in a GAN's
    generator step): what the function computes from it is back-propagated through."""
    calls: dict[str, list[bool]] = {}
    for symbol, site in project_function_calls(ctx):
        arguments = [*site.args, *(k.value for k in site.keywords)]
        calls.setdefault(symbol, []).append(
            not grad_may_be_off(ctx, site)
            and any(ctx.flow.graph_origin(a) == "output" for a in arguments)
        )
    if any(any(flags) for flags in calls.values()):
        ctx.facts[DIFFERENTIATED_CALLS_KEY] = calls


def publish_parameter_calls(ctx: ModuleContext) -> None:
    """Record, per imported project function, whether each call of it here hands it a
    model's parameters (`update_ema(ema.parameters(), model.parameters())`) with autograd on:
    what it updates in place from them records a graph."""
    calls: dict[str, list[bool]] = {}
    for symbol, site in project_function_calls(ctx):
        arguments = [*site.args, *(k.value for k in site.keywords)]
        calls.setdefault(symbol, []).append(
            not grad_may_be_off(ctx, site) and any(passes_parameters(a) for a in arguments)
        )
    if any(any(flags) for flags in calls.values()):
        ctx.facts[PARAMETER_CALLS_KEY] = calls


def passes_parameters(argument: ast.expr) -> bool:
    """`model.parameters()`, `self.net.named_parameters()`."""
    return (
        isinstance(argument, ast.Call)
        and isinstance(argument.func, ast.Attribute)
        and argument.func.attr in _PARAMETER_ITERATORS
    )


def publish_mode_calls(ctx: ModuleContext, calls: dict[str, list[bool]]) -> None:
    """Record, per imported project function, whether each call of it here runs after an
    `.eval()` (for the project pass of the rules on evaluation and inference paths)."""
    if calls:
        ctx.facts[MODE_CALLS_KEY] = calls


GRAD_CLIPS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grad_value"})
_IN_PLACE_ON_GRAD = frozenset({"clamp_", "clip_", "mul_", "div_"})


def clips_gradients(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """`fn` clips gradients (`clip_grad_norm_(...)`, `param.grad.data.clamp_(-c, c)`) and
    neither back-propagates nor steps: whoever calls it decides when the clip runs."""
    clips = False
    for node in walk_tree(fn):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("backward", "step"):
            return False
        if name in GRAD_CLIPS:
            clips = True
        elif name in _IN_PLACE_ON_GRAD and isinstance(func, ast.Attribute):
            target = func.value
            if isinstance(target, ast.Attribute) and target.attr == "data":
                target = target.value
            clips = clips or (isinstance(target, ast.Attribute) and target.attr == "grad")
    return clips


def summarise(ctx: ModuleContext) -> ModuleSummary:
    """What this module offers to the others (computed once per module)."""
    memo = ctx.memo_table("project.summary")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    summary = ModuleSummary(module=module_name(ctx.path), path=ctx.path)
    text = ctx.source
    activations = "oftmax" in text or "sigmoid" in text or "Linear" in text
    modes = any(word in text for word in MODE_WORDS)
    convs = "Conv2d" in text or "torchvision" in text or "timm" in text
    if "forward" in text:  # where `nn.Module` classes are
        for name in ctx.flow.module_classes:
            cls = ctx.flow.classes[name]
            output, produced_at = _forward_output(ctx, cls) if activations else (None, None)
            summary.classes[name] = ClassSummary(
                line=cls.lineno,
                output=output,
                output_site=None if produced_at is None else ctx.site(produced_at),
                mode_layer=mode_layer(ctx, cls) if modes else None,
                mode_free=class_mode_free(ctx, cls),
                submodules=_imported_submodules(ctx, cls),
                convolutional=convs and any(builds_conv2d(ctx, n) for n in walk_tree(cls)),
                clears_gradients="zero_grad" in text and clears_own_gradients(cls),
            )
    if ".step(" in text:
        effects = ctx.loops.function_effects
        for stmt in ctx.tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                eff = effects.get(stmt.name)
                if eff is not None and eff.step:
                    summary.functions[stmt.name] = FunctionSummary(
                        line=stmt.lineno,
                        params=[a.arg for a in stmt.args.args],
                        steps_optimizer=True,
                    )
    if "eval()" in text or "from_pretrained" in text:
        for stmt in ctx.tree.body:
            if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            mode_effects = {"leaves_eval": leaves_eval(stmt), "returns_eval": returns_eval(stmt)}
            if any(mode_effects.values()):
                entry = summary.functions.get(stmt.name) or FunctionSummary(
                    line=stmt.lineno, params=[a.arg for a in stmt.args.args]
                )
                summary.functions[stmt.name] = entry.model_copy(update=mode_effects)
        for cls_name, cls in ctx.flow.classes.items():
            init = next(
                (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
                None,
            )
            if init is not None and (evaluated := evaluated_attributes(init)):
                summary.functions[f"{cls_name}.__init__"] = FunctionSummary(
                    line=init.lineno, params=[a.arg for a in init.args.args], evaluates=evaluated
                )
    for cls in hand_written_schedules(ctx):
        summary.functions[f"{cls.name}.step"] = FunctionSummary(
            line=cls.lineno, hand_written_schedule=True
        )
    if "+=" in text or "append" in text:
        for cls_name, cls in ctx.flow.classes.items():
            for method, fn in accumulating_methods(ctx, cls).items():
                summary.functions[f"{cls_name}.{method}"] = FunctionSummary(
                    line=fn.lineno, params=[a.arg for a in fn.args.args], accumulates=True
                )
    if "backward" in text and "return" in text:
        backpropagating = _backward_holders(ctx)
        for key, step in _functions_and_methods(ctx):
            if id(step) not in backpropagating:
                continue
            whole = _returns_its_backpropagated_loss(ctx, step)
            first = not whole and _returns_its_backpropagated_loss(ctx, step, first=True)
            if whole or first:
                entry = summary.functions.get(key) or FunctionSummary(
                    line=step.lineno, params=[a.arg for a in step.args.args]
                )
                update = {"returns_loss": True} if whole else {"returns_loss_first": True}
                summary.functions[key] = entry.model_copy(update=update)
    if "grad" in text:
        clipping = _top_level_holders(ctx, ctx.flow.calls_named(GRAD_CLIPS | _IN_PLACE_ON_GRAD))
        for stmt in ctx.tree.body:
            if (
                id(stmt) in clipping
                and isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
                and clips_gradients(stmt)
            ):
                entry = summary.functions.get(stmt.name) or FunctionSummary(
                    line=stmt.lineno, params=[a.arg for a in stmt.args.args]
                )
                summary.functions[stmt.name] = entry.model_copy(update={"clips_grad": True})
    if "split" in text:
        for name, fn in _functions_splitting_parameters(ctx):
            entry = summary.functions.get(name) or FunctionSummary(
                line=fn.lineno, params=[a.arg for a in fn.args.args]
            )
            summary.functions[name] = entry.model_copy(update={"splits_data": True})
    if "[0]" in text:  # the one-element argument's read (`n = n_channels[0]`)
        indexing = _functions_indexing_a_name(ctx)
        for stmt in ctx.tree.body:
            if (
                isinstance(stmt, ast.FunctionDef)
                and id(stmt) in indexing
                and (elements := element_read_parameters(stmt))
            ):
                entry = summary.functions.get(stmt.name) or FunctionSummary(
                    line=stmt.lineno, params=[a.arg for a in stmt.args.args]
                )
                summary.functions[stmt.name] = entry.model_copy(update={"element_params": elements})
    if is_package_init(ctx) and "import" in text:
        summary.reexports = _reexports(ctx)
    memo[""] = summary
    return summary


def _functions_and_methods(
    ctx: ModuleContext,
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions (`name`) and methods of module-level classes (`Class.name`)."""
    for stmt in ctx.tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            yield stmt.name, stmt
        elif isinstance(stmt, ast.ClassDef):
            for item in stmt.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{stmt.name}.{item.name}", item


def _backward_holders(ctx: ModuleContext) -> set[int]:
    """The functions (by id) around a `name.backward()` call, from the call index: only they
    can return the loss they back-propagate, so the others' bodies are not walked. With the
    function around each of those: `walk_scope(fn.body)` walks a function defined as one of
    `fn.body`'s statements (an LBFGS `closure` that calls `loss.backward()`) too."""
    found: set[int] = set()
    for call in ctx.flow.calls_named(("backward",)):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            inner = ctx.enclosing_function(call)
            found.add(id(inner))
            if inner is not None:
                found.add(id(ctx.enclosing_function(inner)))
    return found


def _returns_its_backpropagated_loss(
    ctx: ModuleContext, fn: ast.FunctionDef | ast.AsyncFunctionDef, first: bool = False
) -> bool:
    """`loss.backward(); opt.step(); return loss`: the function back-propagates a name and
    every value it returns is that name (no `.item()`, no `.detach()`), outside no_grad.
    With `first`, every value it returns is a tuple that starts with that name (`return
    loss, mape, rmse`; `typing.cast(Tensor, loss)` seen through)."""
    backpropagated = {
        node.func.value.id
        for node in walk_scope(fn.body)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backward"
        and isinstance(node.func.value, ast.Name)
    }
    if not backpropagated:
        return False
    returned = [node.value for node in walk_scope(fn.body) if isinstance(node, ast.Return)]
    if first:
        returned = [
            _uncast(value.elts[0]) if isinstance(value, ast.Tuple) and value.elts else None
            for value in returned
        ]
    return bool(returned) and all(
        isinstance(value, ast.Name)
        and value.id in backpropagated
        and not grad_may_be_off(ctx, value)
        and ctx.flow.graph_origin(value) == "loss"
        for value in returned
    )


def _uncast(value: ast.expr) -> ast.expr:
    """`x` for `cast(Tensor, x)` / `typing.cast(Tensor, x)`: the same value, typed."""
    if (
        isinstance(value, ast.Call)
        and len(value.args) == 2
        and isinstance(value.func, ast.Name | ast.Attribute)
        and (value.func.id if isinstance(value.func, ast.Name) else value.func.attr) == "cast"
    ):
        return value.args[1]
    return value


def _top_level_holders(ctx: ModuleContext, nodes: list[ast.Call]) -> set[int]:
    """The top-level statements (by id) around `nodes`: only a function holding a clipping
    call can clip, so the others are not walked (most modules hold none)."""
    found: set[int] = set()
    for node in nodes:
        top: ast.AST = node
        for anc in ctx.ancestors(node):
            if isinstance(anc, ast.Module):
                break
            top = anc
        found.add(id(top))
    return found


def clears_own_gradients(cls: ast.ClassDef) -> bool:
    """A method of the class calls `self.zero_grad()`."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "zero_grad"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
        for node in walk_tree(cls)
    )


def _functions_indexing_a_name(ctx: ModuleContext) -> set[int]:
    """The functions (by id) around some `name[<int>]`, however deeply, from the engine's
    node index: only their bodies can hold an element-read parameter, so only they are
    walked for one (`walk_scope` of a body enters the functions defined in it)."""
    found: set[int] = set()
    for node in ctx.nodes_by_type().get(ast.Subscript, ()):
        assert isinstance(node, ast.Subscript)
        index = node.slice
        if (
            node.value.__class__ is ast.Name
            and index.__class__ is ast.Constant
            and type(index.value) is int
        ):
            found.update(id(a) for a in ctx.ancestors(node) if isinstance(a, ast.FunctionDef))
    return found


def element_read_parameters(fn: ast.FunctionDef) -> list[str]:
    """The parameters `fn` reads, and only as `p[<int>]`, and never rebinds
    (WaveGlow's scripted `fused_add_tanh_sigmoid_multiply(a, b, n_channels)` reads only
    `n_channels[0]`, to split the channels)."""
    if fn.args.vararg or fn.args.kwarg:
        return []
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args]}
    indexed: set[int] = set()
    whole: set[str] = set()
    read: set[str] = set()
    for node in walk_scope(fn.body):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int
        ):
            indexed.add(id(node.value))
        elif isinstance(node, ast.Name) and node.id in params:
            read.add(node.id)
            if id(node) not in indexed or not isinstance(node.ctx, ast.Load):
                whole.add(node.id)
    return sorted(read - whole)


def _reexports(ctx: ModuleContext) -> dict[str, str]:
    """The project names a package's `__init__.py` imports at its top level, resolved."""
    found: dict[str, str] = {}
    for stmt in ctx.tree.body:
        if not isinstance(stmt, ast.ImportFrom) or any(a.name == "*" for a in stmt.names):
            continue
        for alias in stmt.names:
            local = alias.asname or alias.name
            qualified = imported_symbol(ctx, local)
            if qualified and not f"{qualified}.".startswith(_LIBRARIES):
                found[local] = qualified
    return found


def evaluated_attributes(init: ast.FunctionDef) -> list[str]:
    """The `self` attributes a constructor leaves in eval mode: `self.model.eval()` or
    `self.model = model.eval()`, with no `self.model.train()` in it."""
    evaluated: list[str] = []
    trained: set[str] = set()
    for node in walk_scope(init.body):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            attr = self_attribute(node.targets[0])
            value = node.value
            if attr is not None and isinstance(value, ast.Call) and mode_switch(value) == "eval":
                evaluated.append(attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = self_attribute(node.func.value)
            mode = mode_switch(node)
            if attr is not None and mode == "eval":
                evaluated.append(attr)
            elif attr is not None and mode == "train":
                trained.add(attr)
    return sorted(set(evaluated) - trained)


def leaves_eval(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """`net.eval()` on one of the function's parameters with no `.train()` after it: the
    caller gets its model back in eval mode (`def evaluate(net, loader): net.eval(); ...`)."""
    params = {a.arg for a in fn.args.args}
    evals: list[int] = []
    trains: list[int] = []
    for node in walk_scope(fn.body):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver = node.func.value
        mode = mode_switch(node)
        if mode == "eval":
            if isinstance(receiver, ast.Name) and receiver.id in params:
                evals.append(node.lineno)
        elif mode == "train":
            trains.append(node.lineno)
    return bool(evals) and not any(line > min(evals) for line in trains)


def returns_eval(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Every `return` gives back a model put in eval mode: `return model.eval()`, a name
    whose `.eval()` ran in the function with no `.train()` on it after (a loader helper), or
    one loaded with a Hugging Face `from_pretrained` (which returns it in eval mode); of a
    returned tuple, the model among its items."""
    evals: dict[str, int] = {}
    trains: dict[str, int] = {}
    returns: list[ast.expr | None] = []
    appended: dict[str, list[ast.expr]] = {}
    for node in walk_scope(fn.body):
        if isinstance(node, ast.Return):
            returns.append(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = identifier(node.func.value)
            if node.func.attr == "append" and len(node.args) == 1 and receiver:
                appended.setdefault(receiver, []).append(node.args[0])
            mode = mode_switch(node)
            if mode == "eval":
                evals[receiver] = min(evals.get(receiver, node.lineno), node.lineno)
            elif mode == "train":
                trains[receiver] = max(trains.get(receiver, node.lineno), node.lineno)

    bindings: dict[str, list[ast.expr]] = {}
    for node in walk_scope(fn.body):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                bindings.setdefault(target.id, []).append(node.value)

    def in_eval(value: ast.expr | None) -> bool:
        if isinstance(value, ast.Tuple):
            # `return tokenizer, model, image_processor, context_len` (LLaVA's
            # `load_pretrained_model`): the model among what it returns
            return any(in_eval(item) for item in value.elts)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if mode_switch(value) == "eval":
                return True
            return value.func.attr in ("to", "cuda", "cpu", "half", "float") and in_eval(
                value.func.value
            )
        if isinstance(value, ast.Subscript):
            value = value.value  # `return model[-1]`: an element of the container
        name = identifier(value) if isinstance(value, ast.Name) else ""
        if name in appended and name not in trains:
            # a container of models each appended in eval mode (yolov7's `attempt_load`:
            # `model.append(ckpt['model'].float().fuse().eval())`, then `return model[-1]`)
            return all(in_eval(item) for item in appended[name])
        if name and name not in trains and _loaded_pretrained(name, bindings.get(name, [])):
            return True
        return name in evals and trains.get(name, 0) < evals[name]

    return bool(returns) and all(in_eval(value) for value in returns)


_PRETRAINED_MODEL_CLASS = re.compile(
    r"(Model|LM|For[A-Z]\w*|PeftModel|Transformer|Diffusion\w*Pipeline)$"
)
"""Classes whose `from_pretrained` is Hugging Face's (transformers, diffusers, peft, and the
project classes built on them: `LlavaLlamaForCausalLM`), which returns the model in eval
mode; not a tokenizer's, a config's or a processor's, nor another library's namesake
(`EfficientNet.from_pretrained` returns its network in training mode)."""


def _loaded_pretrained(name: str, values: list[ast.expr]) -> bool:
    """Every binding of `name` in the function loads a Hugging Face model with
    `from_pretrained` or transforms the model it already holds (`model =
    model.merge_and_unload()`, `.to(device)`), none switches it to `.train()`."""
    loads = False
    for value in values:
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)):
            return False
        receiver = value.func.value
        if value.func.attr == "from_pretrained":
            if not _PRETRAINED_MODEL_CLASS.search(identifier(receiver).rsplit(".", 1)[-1]):
                return False
            loads = True
        elif not (
            isinstance(receiver, ast.Name) and receiver.id == name and value.func.attr != "train"
        ):
            return False
    return loads


def _imported_submodules(ctx: ModuleContext, cls: ast.ClassDef) -> list[str]:
    """Capitalised callables a class calls that were imported from outside the libraries
    (its submodules from other files), by their qualified names; names a star import may
    have brought (`from .unet_parts import *`) under each such module."""
    end = cls.end_lineno or cls.lineno
    found: list[str] = []
    for line, symbols in _project_constructions(ctx):
        if cls.lineno <= line <= end:
            found += [s for s in symbols if s not in found]
    return found


def _project_constructions(ctx: ModuleContext) -> list[tuple[int, list[str]]]:
    """Every call in the module of a capitalised callable imported from the project (or
    possibly brought by a star import): its line and the qualified names it may mean."""
    memo = ctx.memo_table("project.constructions")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    stars = star_modules(ctx)
    imported = project_imports(ctx)
    found: list[tuple[int, list[str]]] = []
    if stars or imported:
        for node in ctx.flow.nodes(ast.Call):
            assert isinstance(node, ast.Call)
            root = node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if not isinstance(root, ast.Name) or not identifier(node.func)[:1].isupper():
                continue
            if root.id in imported:
                symbols = [callee_symbol(ctx, node.func) or ""]
            elif stars and node.func is root and root.id not in ctx.flow.classes:
                symbols = [f"{module}.{root.id}" for module in stars]
            else:
                continue
            kept = [s for s in symbols if s and not s.startswith(_LIBRARIES)]
            if kept:
                found.append((node.lineno, kept))
    memo[""] = found
    return found


def project_imports(ctx: ModuleContext) -> frozenset[str]:
    """Local names imported from outside the libraries (`from .parts import DoubleConv`)."""
    memo = ctx.memo_table("project.project_imports")
    if "" not in memo:
        names = {*ctx.imports.aliases, *_relative_imports_memo(ctx)}
        memo[""] = frozenset(
            n for n in names if not f"{imported_symbol(ctx, n)}.".startswith(_LIBRARIES)
        )
    return memo[""]  # type: ignore[no-any-return]


def _relative_imports_memo(ctx: ModuleContext) -> dict[str, str]:
    memo = ctx.memo_table("project.relative_imports")
    if not memo:
        memo[""] = _relative_imports(ctx)
    found: dict[str, str] = memo[""]
    return found


def star_modules(ctx: ModuleContext) -> list[str]:
    """Modules of this project star-imported here (`from .parts import *`), resolved."""
    memo = ctx.memo_table("project.star_modules")
    if "" not in memo:
        memo[""] = _resolve_star_imports(ctx)
    found: list[str] = memo[""]
    return found


def _resolve_star_imports(ctx: ModuleContext) -> list[str]:
    package = module_name(ctx.path).split(".")
    if PurePosixPath(ctx.path).name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ctx.nodes_by_type().get(ast.ImportFrom, ()):
        assert isinstance(node, ast.ImportFrom)
        if not any(alias.name == "*" for alias in node.names):
            continue
        if node.level == 0:
            found.append(node.module or "")
            continue
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        found.append(".".join([*base, *([node.module] if node.module else [])]))
    return [m for m in found if m and not m.startswith(_LIBRARIES)]


def _functions_splitting_parameters(ctx: ModuleContext) -> list[tuple[str, ast.FunctionDef]]:
    """Module-level functions and methods of module-level classes (named `Class.method`)
    that pass data derived from their parameters to a split (`def split_data(X, y): return
    train_test_split(X, y, test_size=0.2)`)."""
    found: list[tuple[str, ast.FunctionDef]] = []
    flow = ctx.flow
    candidates: list[tuple[str, ast.FunctionDef]] = []
    for stmt in ctx.tree.body:
        if isinstance(stmt, ast.FunctionDef):
            candidates.append((stmt.name, stmt))
        elif isinstance(stmt, ast.ClassDef):
            candidates += [
                (f"{stmt.name}.{m.name}", m) for m in stmt.body if isinstance(m, ast.FunctionDef)
            ]
    if not candidates:
        return found
    splits_in: dict[int, list[list[ast.expr]]] = {}  # function id -> its splits' inputs, in order
    for split, inputs in flow.split_inputs:
        splits_in.setdefault(id(ctx.enclosing_function(split)), []).append(inputs)
    for name, fn in candidates:
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args]} - {"self"}
        inputs = [data for split in splits_in.get(id(fn), ()) for data in split]
        if params and any(params & flow.root_names(data) for data in inputs):
            found.append((name, fn))
    return found


def _forward_output(ctx: ModuleContext, cls: ast.ClassDef) -> tuple[Output | None, ast.AST | None]:
    """What every return of `forward` ends in, and where the first return computes it; a
    tuple's first element (`return output, hidden`: what `output, hidden = model(x)` takes as
    the prediction)."""
    forward = ctx.calls.method(cls.name, "forward")
    if forward is None:
        return None, None
    kinds: set[Output | None] = set()
    first: ast.AST | None = None
    for node in walk_tree(forward):
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Tuple) and value.elts:
                value = value.elts[0]
            kind, producer = _output_activation(ctx, value)
            kinds.add(kind)
            first = first or producer
    if len(kinds) == 1 and (kind := kinds.pop()) is not None:
        return kind, first
    return None, None


def _output_activation(ctx: ModuleContext, value: ast.expr) -> tuple[Output | None, ast.AST | None]:
    """The activation that produced `value` last (through views, names and local calls:
    `return prediction.view(-1)`, `return dot_product_decode(z)` with the function ending in
    `torch.sigmoid`), and the call that applied it."""
    if isinstance(value, ast.Name) and (reached := ctx.flow.reaching(value)) is not None:
        # `out = self.fc(out); out = F.softmax(out, 1); return out`: the binding that reaches
        # the return, not the name's first one
        value = reached
    for producer in ctx.flow.producers(value):
        if ctx.flow.passes_through(producer):
            # `return prediction.view(-1)`, `return decode(z)`: the activation lies past it
            continue
        qual = ctx.flow.qualname_of(producer)
        if qual is not None:
            kind = _ACTIVATIONS.get(qual)
            if kind is None:
                kind = _ACTIVATIONS.get(ctx.flow.constructed_as(producer.func) or "")
            return kind, producer
        func = producer.func
        built = ctx.flow.constructed_as(func)
        if built in _ACTIVATIONS:  # `self.softmax = nn.LogSoftmax()`: the layer, not its name
            return _ACTIVATIONS[built], producer
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _ACTIVATIONS
            and not ctx.flow.is_module_value(func.value)
        ):
            return _ACTIVATIONS[func.attr], producer
        if built in _LINEAR_LAYERS:
            return "linear", producer
        if built == "torch.nn.Sequential":
            return _last_layer_activation(ctx, func)
        return None, None
    return None, None


def _last_layer_activation(
    ctx: ModuleContext, sequential: ast.expr
) -> tuple[Output | None, ast.AST | None]:
    """`nn.Sequential(nn.Linear(h, n), nn.Softmax(dim=-1))` -> 'softmax', and that layer."""
    for call in ctx.flow.constructors(sequential):
        if ctx.flow.qualname_of(call) == "torch.nn.Sequential" and call.args:
            last = call.args[-1]
            if isinstance(last, ast.Call):
                return _ACTIVATIONS.get(ctx.flow.qualname_of(last) or ""), last
    return None, None


def is_package_init(ctx: ModuleContext) -> bool:
    """A package's `__init__.py`: the names it re-exports are published whatever it holds."""
    return _named_init(ctx.path)


@lru_cache(maxsize=4096)
def _named_init(path: str) -> bool:
    return PurePosixPath(path).name == "__init__.py"


def publish(ctx: ModuleContext) -> None:
    """Record this module's summary in its facts (for the rules' project pass)."""
    summary = summarise(ctx)
    if summary.classes or summary.functions or summary.reexports:
        ctx.facts[FACTS_KEY] = summary.model_dump()


def defer(ctx: ModuleContext, rule_id: str, pending: Pending) -> None:
    """Leave a finding for the project pass to confirm."""
    ctx.facts.setdefault(f"pending:{rule_id}", []).append(pending.model_dump())


class ProjectIndex:
    """Every module's summary, looked up by the qualified names other modules import."""

    def __init__(
        self,
        summaries: list[ModuleSummary],
        mode_calls: dict[str, list[bool]] | None = None,
        mode_layers_importable: bool = True,
        notebook_mode_layers: dict[str, bool] | None = None,
        grad_calls: dict[str, list[bool]] | None = None,
        passes: list[ModelPass] | None = None,
        cpu_device_programs: list[str] | None = None,
        differentiated_calls: dict[str, list[bool]] | None = None,
        parameter_calls: dict[str, list[bool]] | None = None,
    ) -> None:
        self.summaries = summaries
        self.mode_calls = mode_calls or {}
        self.grad_calls = grad_calls or {}
        self.differentiated_calls = differentiated_calls or {}
        self.parameter_calls = parameter_calls or {}
        self.mode_layers_importable = mode_layers_importable
        self.notebook_mode_layers = notebook_mode_layers or {}
        self.passes = passes or []
        self.cpu_device_programs = cpu_device_programs or []

    @classmethod
    def from_facts(cls, facts: dict[str, dict[str, Any]]) -> ProjectIndex:
        mode_calls: dict[str, list[bool]] = {}
        grad_calls: dict[str, list[bool]] = {}
        differentiated: dict[str, list[bool]] = {}
        parameter_calls: dict[str, list[bool]] = {}
        for f in facts.values():
            for symbol, modes in f.get(MODE_CALLS_KEY, {}).items():
                mode_calls.setdefault(symbol, []).extend(bool(m) for m in modes)
            for symbol, offs in f.get(GRAD_CALLS_KEY, {}).items():
                grad_calls.setdefault(symbol, []).extend(bool(o) for o in offs)
            for symbol, ons in f.get(DIFFERENTIATED_CALLS_KEY, {}).items():
                differentiated.setdefault(symbol, []).extend(bool(o) for o in ons)
            for symbol, given in f.get(PARAMETER_CALLS_KEY, {}).items():
                parameter_calls.setdefault(symbol, []).extend(bool(g) for g in given)
        summaries = [
            ModuleSummary.model_validate(f[FACTS_KEY]) for f in facts.values() if FACTS_KEY in f
        ]
        # Only a project whose own models are seen can be said to have no mode layer (one
        # file audited alone, a helper without the model's file, cannot).
        published = [bool(f[MODE_LAYERS_KEY]) for f in facts.values() if MODE_LAYERS_KEY in f]
        sees_models = any(s.classes for s in summaries)
        # A notebook is imported by nothing: its layers reach no other file.
        notebook_layers = {
            path: bool(f[MODE_LAYERS_KEY])
            for path, f in facts.items()
            if MODE_LAYERS_KEY in f and path.endswith(".ipynb")
        }
        importable = [
            bool(f[MODE_LAYERS_KEY])
            for path, f in facts.items()
            if MODE_LAYERS_KEY in f and not path.endswith(".ipynb")
        ]
        passes = [
            ModelPass.model_validate(p) for f in facts.values() for p in f.get(PASSES_KEY, [])
        ]
        return cls(
            summaries,
            mode_calls,
            mode_layers_importable=not (published and sees_models) or any(importable),
            notebook_mode_layers=notebook_layers,
            grad_calls=grad_calls,
            passes=passes,
            cpu_device_programs=[m for f in facts.values() for m in f.get(CPU_DEVICE_KEY, [])],
            differentiated_calls=differentiated,
            parameter_calls=parameter_calls,
        )

    def passed_classes(self, function: str, parameter: str, position: int | None) -> list[str]:
        """Classes of the models other files pass to `function` for `parameter`."""
        module, name = _module_and_function(function)
        found: list[str] = []
        for seen in self.passes:
            where, called = _module_and_function(seen.callee)
            same_module = (
                where == module or where.endswith("." + module) or module.endswith("." + where)
            )
            matches = seen.keyword == parameter or (
                seen.keyword is None and seen.position is not None and seen.position == position
            )
            if called == name and same_module and matches:
                found += [c for c in seen.classes if c not in found]
        return found

    def _callers_in_eval_mode(self, symbol: str) -> list[bool]:
        """For every call of the function `symbol` elsewhere in the project, whether an
        `.eval()` runs before it (imports matched as modules are: a dotted suffix either way)."""
        return self._caller_flags(self.mode_calls, symbol)

    @staticmethod
    def _caller_flags(table: dict[str, list[bool]], symbol: str) -> list[bool]:
        """The flags `table` records for the calls of the function `symbol` in other files."""
        module, _, name = symbol.rpartition(".")
        found: list[bool] = []
        for called, modes in table.items():
            other, _, other_name = called.rpartition(".")
            if other_name == name and (
                other == module or other.endswith("." + module) or module.endswith("." + other)
            ):
                found += modes
        return found

    def _modules(self, dotted: str) -> list[ModuleSummary]:
        """Modules an import of `dotted` may mean: the same name, or one is a dotted suffix of
        the other (the audited folder may be a package's root or a folder above it)."""
        return [
            s
            for s in self.summaries
            if s.module == dotted
            or s.module.endswith("." + dotted)
            or dotted.endswith("." + s.module)
        ]

    def chosen_classes(self, symbol: str) -> list[str]:
        """The project's classes a symbol with `CHOSEN` may stand for: each class of the
        module (`model.*`), or each module of the package defining the class (`models.*.Model`)."""
        head, _, tail = symbol.partition(CHOSEN)
        package, name = head.rstrip("."), tail.lstrip(".")
        found: list[str] = []
        for summary in self.summaries:
            if name:
                parent = summary.module.rpartition(".")[0]
                inside = not package or parent == package or parent.endswith("." + package)
                if inside and name in summary.classes:
                    found.append(f"{summary.module}.{name}")
            elif summary.module == package or summary.module.endswith("." + package):
                found += [f"{summary.module}.{c}" for c in summary.classes]
        return found

    def has(self, symbol: str, needs: Property, near: str | None = None) -> bool:
        if CHOSEN in symbol:  # a class picked by name: any of those it may be
            return any(self.has(c, needs, near=near) for c in self.chosen_classes(symbol))
        if needs in ("left-in-train-mode-by-a-caller", "called-in-train-mode"):
            modes = self._callers_in_eval_mode(symbol)
            if needs == "left-in-train-mode-by-a-caller":
                return not modes or not all(modes)  # no caller seen, or one without .eval()
            return bool(modes) and not all(modes)
        if needs == "run-with-grad-by-a-caller":  # no caller seen, or one with autograd on
            offs = self._caller_flags(self.grad_calls, symbol)
            return not offs or not all(offs)
        if needs == "differentiated-by-a-caller":  # a caller gives it a model's output
            return any(self._caller_flags(self.differentiated_calls, symbol))
        if needs == "given-parameters-by-a-caller":  # a caller gives it `.parameters()`
            return any(self._caller_flags(self.parameter_calls, symbol))
        if needs == "mode-layers-in-project":  # `near`: the file asking (a notebook's own)
            return self.mode_layers_importable or self.notebook_mode_layers.get(
                near or symbol, False
            )
        if needs == "cpu-device-in-project":  # `symbol`: a module a CPU-capable entry imports
            return any(
                m == symbol or m.endswith("." + symbol) or symbol.endswith("." + m)
                for m in self.cpu_device_programs
            )
        if needs == "clears-no-gradients":  # no project class of that name clears its own
            name = symbol.rpartition(".")[2]
            return not any(
                cls.clears_gradients for s in self.summaries if (cls := s.classes.get(name))
            )
        if needs == "not-mode-free":  # unless the class is found and known to be mode-free
            cls = self._class(symbol, near)
            return cls is None or not cls.mode_free
        if needs == "not-a-hand-written-schedule":  # unless the class is found to be one
            step = self._function(f"{self._through_reexports(symbol)}.step", near, owner_depth=1)
            return step is None or not step.hand_written_schedule
        if needs == "not-returned-in-eval":  # unless the function is found to return eval mode
            fn = self._function(symbol, near)
            return fn is None or not fn.returns_eval
        symbol = self._through_reexports(symbol)
        module, _, name = symbol.rpartition(".")
        candidates = self._modules_near(module, near)
        if not candidates and needs in (
            "splits-data",
            "accumulates-argument",
            "returns-backpropagated-loss",
            "returns-backpropagated-loss-first",
        ):
            # `pkg.mod.Class.method`
            module, _, owner = module.rpartition(".")
            candidates = self._modules_near(module, near)
            name = f"{owner}.{name}"
        if len(candidates) != 1:
            return False
        summary = candidates[0]
        if needs.startswith("output:"):
            cls = summary.classes.get(name)
            return cls is not None and cls.output == needs.partition(":")[2]
        if needs == "mode-dependent":
            return self._builds(symbol, lambda cls: cls.mode_layer is not None)
        if needs == "convolutional":
            return self._builds(symbol, lambda cls: cls.convolutional)
        fn = summary.functions.get(name)
        if needs == "splits-data":
            return fn is not None and fn.splits_data
        if needs == "accumulates-argument":
            return fn is not None and fn.accumulates
        if needs == "returns-backpropagated-loss":
            return fn is not None and fn.returns_loss
        if needs == "returns-backpropagated-loss-first":
            return fn is not None and fn.returns_loss_first
        if needs == "clips-gradients":
            return fn is not None and fn.clips_grad
        if needs == "leaves-model-in-eval":
            return fn is not None and fn.leaves_eval
        return fn is not None and fn.steps_optimizer

    def evaluates(self, symbol: str, attribute: str, near: str | None = None) -> bool:
        """The class `symbol` names leaves `self.<attribute>` in eval mode in its constructor."""
        init = self._function(f"{symbol}.__init__", near, owner_depth=1)
        return init is not None and attribute in init.evaluates

    def _through_reexports(self, symbol: str) -> str:
        """Where a name a package re-exports is defined (`pkg.SSLEvaluator`, imported in
        `pkg/__init__.py` from `pkg.evaluator`, -> 'pkg.evaluator.SSLEvaluator')."""
        for _ in range(_MAX_IMPORT_DEPTH):
            module, _, name = symbol.rpartition(".")
            candidates = self._modules(module) if module else []
            if len(candidates) != 1:
                return symbol
            summary = candidates[0]
            target = summary.reexports.get(name)
            if target is None or name in summary.classes or name in summary.functions:
                return symbol
            symbol = target
        return symbol

    def _class(self, symbol: str, near: str | None = None) -> ClassSummary | None:
        """The class `symbol` names (see `_defining_module`)."""
        found = self._class_and_module(symbol, near)
        return found[0] if found else None

    def _class_and_module(
        self, symbol: str, near: str | None
    ) -> tuple[ClassSummary, ModuleSummary] | None:
        symbol = self._through_reexports(symbol)
        summary = self._defining_module(symbol, near)
        cls = summary.classes.get(symbol.rpartition(".")[2]) if summary else None
        return (cls, summary) if cls is not None and summary is not None else None

    def _function(
        self, symbol: str, near: str | None = None, owner_depth: int = 0
    ) -> FunctionSummary | None:
        """The module-level function `symbol` names (see `_defining_module`), or with
        `owner_depth=1` a method (`pkg.mod.Class.method`, keyed `Class.method`)."""
        parts = symbol.rsplit(".", 1 + owner_depth)
        summary = self._defining_module(parts[0] + ".", near) if len(parts) > 1 else None
        return summary.functions.get(".".join(parts[1:])) if summary else None

    def _defining_module(self, symbol: str, near: str | None) -> ModuleSummary | None:
        """The module `symbol` is defined in; several modules matching the import (a
        repository of examples, each with its own `model.py`) are told apart by the importing
        file's package when `near` gives it."""
        candidates = self._modules_near(symbol.rpartition(".")[0], near)
        return candidates[0] if len(candidates) == 1 else None

    def _modules_near(self, module: str, near: str | None) -> list[ModuleSummary]:
        """`_modules`, told apart by the importing file's folder when several match: a script
        imports the `model.py` beside it (its folder comes first on `sys.path`), not the
        `model.py` of another example."""
        candidates = self._modules(module) if module else []
        if len(candidates) > 1 and near is not None:
            package = module_name(near).rpartition(".")[0]
            sibling = f"{package}.{module}" if package else module
            candidates = [c for c in candidates if c.module == sibling]
        return candidates

    def _builds(self, symbol: str, has: Callable[[ClassSummary], bool], depth: int = 0) -> bool:
        """The class, or a submodule it imports from another file, has the layer `has` asks
        about."""
        cls = self._class(symbol)
        if cls is None or depth > _MAX_IMPORT_DEPTH:
            return False
        return has(cls) or any(self._builds(sub, has, depth + 1) for sub in cls.submodules)

    def confirmed(self, facts: dict[str, dict[str, Any]], rule_id: str) -> list[RawFinding]:
        """The pending findings of `rule_id` whose symbol has the property they need."""
        found: dict[tuple[str, int], RawFinding] = {}
        for pending, _ in self.confirmed_pendings(facts, rule_id):
            found.setdefault((pending.finding.file, pending.finding.line), pending.finding)
        return list(found.values())

    def confirmed_pendings(
        self, facts: dict[str, dict[str, Any]], rule_id: str
    ) -> Iterator[tuple[Pending, str]]:
        """Each pending finding of `rule_id` that holds, with the symbol it holds for (the
        class passed for a parameter, where the model arrives through one)."""
        for module_facts in facts.values():
            for raw in module_facts.get(f"pending:{rule_id}", []):
                pending = Pending.model_validate(raw)
                holder = self._holder(pending)
                near = pending.finding.file
                if holder is not None and not any(
                    self.has(s, pending.needs, near=near) for s in pending.unless
                ):
                    yield pending, holder

    def _holder(self, pending: Pending) -> str | None:
        """The symbol `pending` holds for, if it holds."""
        near = pending.finding.file
        if pending.needs == "argument-used-whole":  # the callee reads more of it
            fn = self._function(pending.symbol, near)
            holds = (
                fn is None
                or pending.position is None
                or pending.position >= len(fn.params)
                or fn.params[pending.position] not in fn.element_params
            )
            return pending.symbol if holds else None
        if pending.attribute is not None:  # `attribute-not-evaluated-by-base`
            holds = not self.evaluates(pending.symbol, pending.attribute, near) and all(
                self.has(pending.symbol, n, near=near) for n in pending.also
            )
            return pending.symbol if holds else None
        needs = [pending.needs, *pending.also]
        symbols = [pending.symbol]
        if pending.parameter is not None:
            symbols = self.passed_classes(pending.symbol, pending.parameter, pending.position)
        symbols = [c for s in symbols for c in (self.chosen_classes(s) if CHOSEN in s else [s])]
        return next((s for s in symbols if all(self.has(s, n, near=near) for n in needs)), None)

    def confirmed_at_outputs(
        self,
        facts: dict[str, dict[str, Any]],
        rule_id: str,
        describe: Callable[[str, str, str], str],
        related: str,
    ) -> list[RawFinding]:
        """`confirmed`, with a finding that holds because another file's model ends in a
        softmax, log-softmax or sigmoid placed on that activation, where it is fixed: one
        finding per activation (`describe(class, activation, "file:line, ...")` says it), each
        loss call that receives it a related location. Where that place is unknown, at the
        loss call."""
        at_loss: dict[tuple[str, int], RawFinding] = {}
        at_output: dict[tuple[str, int], tuple[str, SourceSite, str, list[RawFinding]]] = {}
        for pending, holder in self.confirmed_pendings(facts, rule_id):
            loss = pending.finding
            place = (
                self.output_site(holder, near=loss.file)
                if pending.needs in _REMOVABLE_OUTPUTS
                else None
            )
            if place is None:
                at_loss.setdefault((loss.file, loss.line), loss)
                continue
            path, site = place
            if suppressed_inline(site.code.partition("\n")[0], rule_id):
                continue
            kind = pending.needs.partition(":")[2]
            losses = at_output.setdefault((path, site.line), (holder, site, kind, []))[3]
            if all((f.file, f.line) != (loss.file, loss.line) for f in losses):
                losses.append(loss)
        moved_findings = [
            RawFinding(
                rule=rule_id,
                file=path,
                **site.model_dump(),
                message=describe(
                    holder.rpartition(".")[2],
                    kind,
                    ", ".join(f"{loss.file}:{loss.line}" for loss in losses),
                ),
                severity=losses[0].severity,
                data={
                    "model": holder,
                    "related": [related_place(loss, related) for loss in losses],
                },
            )
            for (path, _), (holder, site, kind, losses) in at_output.items()
        ]
        return [*at_loss.values(), *moved_findings]

    def output_site(self, symbol: str, near: str | None = None) -> tuple[str, SourceSite] | None:
        """The file of the class `symbol` names and where its `forward` computes its output
        activation, when both are known."""
        found = self._class_and_module(symbol, near)
        if found is None or found[0].output_site is None or not found[1].path:
            return None
        return found[1].path, found[0].output_site
