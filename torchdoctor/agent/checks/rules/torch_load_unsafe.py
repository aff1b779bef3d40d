"""torch-load-unsafe: `torch.load` may unpickle arbitrary code (no `weights_only=True`)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.model_facts import SELF_RETURNING
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule, related_place
from torchdoctor.agent.checks.data.torch_api import format_version, target_torch, torch_api
from torchdoctor.agent.checks.dataflow import first_argument, kwarg
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.safe_globals import within_safe_globals
from torchdoctor.agent.models import Severity


class TorchLoadUnsafe(Rule):
    """Detects `torch.load(...)` (also imported as `from torch import load as L`) called
    without `weights_only=True`, or with a custom `pickle_module`. The advice depends on how
    the module's own `torch.save` wrote the same path (literal, expression or variable):

    - written from tensors or a `state_dict()` (or a dict of those): `weights_only=True`
      loads it unchanged, so adding it is safe (`data["fix_safe"]` is True);
    - written from a whole module (`torch.save(model, path)`): `weights_only=True` would fail;
      save `model.state_dict()` (or use safetensors) and load that instead;
    - unknown provenance: pass `weights_only=True` if the file holds only tensors, otherwise
      load only files you trust.

    Why it matters: without `weights_only=True`, `torch.load` runs the pickle machinery,
    which can execute arbitrary code from a crafted checkpoint downloaded or shared by
    someone else. PyTorch 2.6 made `weights_only=True` the default: on the targeted torch
    (`target_torch`, else the installed one) a missing argument is then a portability issue
    (older torch is unsafe) or, for pickled modules, a load failure. When the project's
    manifests allow no torch older than that release (`torch>=2.7`), the default already
    holds wherever the code runs: a load without `weights_only` is not reported, unless it
    reads a pickled module or passes a `pickle_module`.

    Example:
        torch.save(model.state_dict(), "ckpt.pt")
        state = torch.load("ckpt.pt")

    Fix: `torch.load("ckpt.pt", weights_only=True)`; save state_dicts (or safetensors) rather
    than whole modules.
    """

    id = "torch-load-unsafe"
    point = 11
    severity = Severity.HIGH
    severity_note = (
        "high when the file may hold pickled code (unknown provenance, a whole module, a "
        "custom pickle_module); medium when the file is known to hold only weights but "
        "weights_only=False is passed; low when it holds only weights and the target "
        "torch already defaults to weights_only=True, or when weights_only=False is passed "
        "for a file of unknown provenance"
    )
    title = "torch.load without weights_only=True"
    items: ClassVar[tuple[str, ...]] = ("11.2",)
    triggers = Triggers(("load(",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "load(" in ctx.source and "torch" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        calls = ctx.flow.calls_to({"torch.load"})
        found = [(call, f) for call in calls if (f := self._finding(ctx, call)) is not None]
        groups: dict[tuple[int, str, str] | int, list[RawFinding]] = {}
        for call, finding in found:
            branch = _branch_load(ctx, call)
            key = (*branch, finding.message) if branch is not None else id(finding)
            groups.setdefault(key, []).append(finding)
        for first, *others in groups.values():
            ctx.findings.append(_naming_the_others(first, others))

    def _finding(self, ctx: ModuleContext, call: ast.Call) -> RawFinding | None:
        if any(k.arg is None for k in call.keywords):
            return None
        weights_only = kwarg(call, "weights_only")
        pickle_module = kwarg(call, "pickle_module")
        if isinstance(weights_only, ast.Constant) and weights_only.value is True:
            return None
        path = first_argument(call, "f")
        provenance = ctx.flow.saved_kind(path) if path is not None else None
        use = _module_use(ctx, call) if provenance in (None, "unknown") else None
        if use is not None:
            provenance = "module"
        into = _whole_into_load_state_dict(ctx, call) if provenance in (None, "unknown") else None
        if into is not None and weights_only is None:
            provenance = "weights"  # a state_dict: nothing else goes whole into load_state_dict
        if weights_only is not None and provenance != "weights" and pickle_module is None:
            if provenance in (None, "unknown") and _is_false(weights_only):
                return ctx.finding(self, call, _EXPLICIT_FALSE, severity=Severity.LOW)
            return None  # a variable, or a module that needs the pickler: a documented choice
        flip = torch_api().default_change("torch.load", "weights_only").changed
        floor = ctx.config.torch_floor
        unset = weights_only is None and pickle_module is None and provenance != "module"
        if unset and floor is not None and floor >= flip:
            return None  # every torch the project allows loads weights-only by default
        target = target_torch(ctx.config)
        safe_default = target is not None and target >= flip and pickle_module is None
        if safe_default and weights_only is None and within_safe_globals(call, ctx.parents):
            return None  # the safe_globals allowlist is for the weights-only load this is
        data: dict[str, object] = {
            "provenance": provenance or "unknown",
            "fix_safe": provenance == "weights" and pickle_module is None,
            "target_torch": format_version(target) if target else None,
        }
        message, severity = _advice(provenance, weights_only, pickle_module, safe_default, flip)
        if use is not None:  # known from how the object is used, not from a save
            message = message.replace(
                "(torch.save(model, ...))", f"(`{ast.unparse(use)}` on line {use.lineno})"
            )
        if into is not None and provenance == "weights":
            message = message.replace(
                "this file was written from a state_dict/tensors",
                f"what it loads goes whole into `{ast.unparse(into.func)}(...)` on line "
                f"{into.lineno} (a state_dict)",
            )
        return ctx.finding(self, call, message, severity=severity, data=data)


# Methods only modules and optimizers have: a loaded object (or an entry of it) that runs one
# was pickled whole, and a weights-only load refuses it.
_MODULE_METHODS = frozenset(
    {"eval", "train", "parameters", "named_parameters", "modules", "children", "zero_grad",
     "step", "forward", "state_dict", "load_state_dict"}
)  # fmt: skip


def _module_use(ctx: ModuleContext, call: ast.Call) -> ast.Call | None:
    """Where the object `call` loads is used as a module or optimizer: called, or running a
    module's method, itself or an entry of it, moved or not (`checkpoint = torch.load(path);
    decoder = checkpoint["decoder"].to(device); decoder.eval()`, `model = torch.load(path)`
    then `model(x)`), through the bindings that may reach the use."""
    loaded = _chain_top(ctx, call)
    parent = ctx.parents.get(loaded)
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return None
    scope = ctx.enclosing_function(call) or ctx.tree
    for node in walk_tree(scope):
        if not isinstance(node, ast.Call) or node.lineno <= call.lineno:
            continue
        func = _module_receiver(node)
        if isinstance(func, ast.Name) and _holds_loaded(ctx, func, loaded):
            return node
        for callee in ctx.calls.resolve(node):  # `train(model=model, ...)`, one call deep
            for parameter, argument in ctx.calls.bind(node, callee).items():
                if isinstance(argument, ast.Name) and _holds_loaded(ctx, argument, loaded):
                    use = _used_as_module_in(callee, parameter)
                    if use is not None:
                        return use
    return None


def _whole_into_load_state_dict(ctx: ModuleContext, call: ast.Call) -> ast.Call | None:
    """The `load_state_dict(...)` call that receives what `call` loads, whole: as its
    argument (`model.load_state_dict(torch.load(path))`), or through a name every read of
    which is that argument (`sd = torch.load(f); sam.load_state_dict(sd)`). The file then
    holds a state_dict, which weights_only=True loads (a strict load raises on anything
    else); an entry of a checkpoint (`ckpt["model"]`) says nothing of the other entries."""
    parent = ctx.parents.get(call)
    if _loads_state_dict(parent, call):
        assert isinstance(parent, ast.Call)
        return parent
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and isinstance(name := parent.targets[0], ast.Name)
    ):
        return None
    scope = ctx.enclosing_function(call)
    reads = [r for r in ctx.flow.reads_of(name.id) if ctx.enclosing_function(r) is scope]
    reads = [
        r
        for r in reads
        if (r.lineno, r.col_offset) > (call.lineno, call.col_offset)
        and ctx.flow.reaching(r) in (call, None)  # this binding, or one where branches meet
    ]
    users = [ctx.parents.get(r) for r in reads]
    if not reads or not all(_loads_state_dict(u, r) for u, r in zip(users, reads, strict=True)):
        return None
    first = users[0]
    assert isinstance(first, ast.Call)
    return first


def _loads_state_dict(node: ast.AST | None, argument: ast.expr) -> bool:
    """`node` is `x.load_state_dict(argument)`, strict: with `strict=False` any dict passes
    (a whole checkpoint loads nothing, silently), so it shows nothing of the file."""
    strict = kwarg(node, "strict") if isinstance(node, ast.Call) else None
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load_state_dict"
        and bool(node.args)
        and node.args[0] is argument
        and (strict is None or (isinstance(strict, ast.Constant) and strict.value is True))
    )


def _module_receiver(call: ast.Call) -> ast.expr:
    """`model` for `model(x)` or `model.eval()`; the callee itself otherwise."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in _MODULE_METHODS:
        return func.value
    return func


def _used_as_module_in(function: ast.AST, parameter: str) -> ast.Call | None:
    """The first call in `function` that uses its parameter as a module (`model.train()`)."""
    for node in walk_tree(function):
        if isinstance(node, ast.Call):
            receiver = _module_receiver(node)
            if isinstance(receiver, ast.Name) and receiver.id == parameter:
                return node
    return None


def _chain_top(ctx: ModuleContext, node: ast.expr) -> ast.expr:
    """`torch.load(p)["model"].to(device)` for the load call in it: what it hands on."""
    while True:
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.Subscript) and parent.value is node:
            node = parent
        elif (
            isinstance(parent, ast.Attribute)
            and parent.attr in SELF_RETURNING
            and isinstance(call := ctx.parents.get(parent), ast.Call)
        ):
            node = call
        else:
            return node


def _holds_loaded(ctx: ModuleContext, name: ast.Name, loaded: ast.expr, hops: int = 4) -> bool:
    """`name` may hold what `loaded` evaluates to, or an entry of it, moved or switched on
    the way (`decoder.to(device)`): through the binding that reaches it, or, where branches
    meet, any earlier one."""
    if hops == 0:
        return False
    reached = ctx.flow.reaching(name)
    values = [reached] if reached is not None else _earlier_bindings(ctx, name)
    for value in values:
        if value is loaded:
            return True
        inner = _moved_from(value)
        while inner is not None:
            value, inner = inner, _moved_from(inner)
        if (
            isinstance(value, ast.Name)
            and value is not name
            and _holds_loaded(ctx, value, loaded, hops - 1)
        ):
            return True
    return False


def _moved_from(value: ast.expr) -> ast.expr | None:
    """`x` for `x["key"]` or `x.to(device)`; None for anything else."""
    if isinstance(value, ast.Subscript):
        return value.value
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in SELF_RETURNING
    ):
        return value.func.value
    return None


def _earlier_bindings(ctx: ModuleContext, name: ast.Name) -> list[ast.expr]:
    return [v for v in ctx.flow.definitions(name) if v.lineno < name.lineno]


def _branch_load(ctx: ModuleContext, call: ast.Call) -> tuple[int, str] | None:
    """(the `if`, the path) when `call` loads in one branch of an `if` whose other branch
    loads the same path: pytorch/examples' resume, `torch.load(args.resume)` when no GPU is
    given, else the same with `map_location`. One file, one concern: one finding naming both."""
    path = first_argument(call, "f")
    branch = next((a for a in ctx.ancestors(call) if isinstance(a, ast.If)), None)
    if path is None or branch is None:
        return None
    return branch.lineno, ast.unparse(path)


_EXPLICIT_FALSE = (
    "weights_only=False runs the pickle machinery on this file, which can execute code from a "
    "crafted checkpoint: load only files you trust; a checkpoint of tensors, dicts and numbers "
    "loads with weights_only=True"
)


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _advice(
    provenance: str | None,
    weights_only: ast.expr | None,
    pickle_module: ast.expr | None,
    safe_default: bool,
    flip: tuple[int, int],
) -> tuple[str, Severity]:
    since = format_version(flip)
    if pickle_module is not None:
        return (
            "torch.load with a custom pickle_module unpickles arbitrary objects: load "
            "state_dicts with weights_only=True (or safetensors) instead",
            Severity.HIGH,
        )
    if provenance == "weights":
        if weights_only is not None:
            return (
                "this file was written from a state_dict/tensors by this module: "
                "weights_only=False is unnecessary and unsafe; pass weights_only=True",
                Severity.MEDIUM,
            )
        if safe_default:
            return (
                "this file was written from a state_dict/tensors: pass weights_only=True "
                f"explicitly (default only since torch {since}; older torch unpickles code)",
                Severity.LOW,
            )
        return (
            "torch.load without weights_only=True unpickles arbitrary code; this file was "
            "written from a state_dict/tensors, so weights_only=True loads it unchanged",
            Severity.HIGH,
        )
    if provenance == "module":
        if safe_default:
            return (
                "this file holds a whole pickled module (torch.save(model, ...)): it fails to "
                f"load under the weights_only=True default of torch {since}+; save "
                "model.state_dict() (or safetensors) and load that",
                Severity.HIGH,
            )
        return (
            "torch.load unpickles a whole module here (torch.save(model, ...)), which can "
            "run arbitrary code; weights_only=True would fail: save model.state_dict() "
            "(or safetensors) and load that with weights_only=True",
            Severity.HIGH,
        )
    if safe_default:
        return (
            "torch.load without an explicit weights_only: safe by default only on torch "
            f"{since}+; pass weights_only=True if the file holds tensors/state_dicts only",
            Severity.LOW,
        )
    return (
        "torch.load without weights_only=True unpickles arbitrary code: pass "
        "weights_only=True if the file holds only tensors/state_dicts, otherwise load only "
        "files you trust",
        Severity.HIGH,
    )


def _naming_the_others(first: RawFinding, others: list[RawFinding]) -> RawFinding:
    if not others:
        return first
    related = [related_place(other, "the same file loaded in the other branch") for other in others]
    lines = ", ".join(str(other.line) for other in others)
    return first.model_copy(
        update={
            "message": f"{first.message} (also line {lines}, the same file in another branch)",
            "data": {**first.data, "related": related},
        }
    )
