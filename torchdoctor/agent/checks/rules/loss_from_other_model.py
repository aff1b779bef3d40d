"""loss-from-other-model: an optimizer steps after backpropagating losses that never went
through its model, only through another optimizer's."""

from __future__ import annotations

import ast
from collections import deque
from typing import ClassVar

from torchdoctor.agent.checks.analysis.optimizers import (
    model_key,
    model_root,
    optimizer_constructions,
    synced_copies,
)
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    is_backward_call,
    is_optimizer_step,
    local_callee,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_MAX_EXPRESSIONS = 3000  # a closure larger than this is not followed to the end: no report
_SELF_ANY = "self.*"  # `self(x)`, `f(self)`: any model the instance holds may be reached
_BUILTIN_TAKERS = frozenset({"range", "int", "float", "len"})
# callees a training function's setting goes to (a latent size, a number of steps)
_SETTING_TAKERS = _BUILTIN_TAKERS | {
    "randn",
    "rand",
    "randint",
    "zeros",
    "ones",
    "full",
    "empty",
    "arange",
    "normal",
}


class _Unknown(Exception):
    """The analysis cannot be sure what the loss reaches."""


class LossFromOtherModel(Rule):
    """Detects an `optimizer.step()` whose gradients come only from losses (the `.backward()`
    calls since that optimizer's `zero_grad()`) that never touch the model it was built over
    (`optimizer_D_LR = Adam(D_LR.parameters())`), while they call another model and reach
    another optimizer's (`loss_D_LR = D_VAE.compute_loss(real_B, valid) + ...`). Reported
    where the loss backpropagated last before the step is computed.

    Why it matters: the stepped model receives no gradient at all (its `.grad` stays None or
    zero and the step leaves it unchanged, or only weight decay moves it), and the other
    model accumulates gradients of a loss meant for another network. Training runs and
    losses are logged, so nothing fails: one network simply never learns. PyTorch-GAN's
    BicycleGAN trained its cLR discriminator on the cVAE discriminator's loss until
    `b2c1838` ("Fix LR discriminator training").

    Also reported with one optimizer: a loss that reaches only a lagging copy of the stepped
    model that the module syncs from it (`soft_update(self.qnetwork_local,
    self.qnetwork_target, tau)`, `target.load_state_dict(model.state_dict())`,
    `copy.deepcopy(model)`): a DQN whose expected Q-values come from the target network
    trains nothing, and its target network collects the gradients.

    Not reported: a loss that reaches the model in any way the module shows (called,
    passed to a helper or a wrapper object, by keyword, through chained parameters of
    several models, a model built from or bound to the stepped one, values its method calls
    or subscript stores collected, a nested helper that reads it); a loss computed from a
    parameter of the training function whose callers are not in the module (their
    arguments are followed when they are; a parameter read as the loop's data or as a size,
    device or index is no model output); steps with no `zero_grad()` of that optimizer (or
    of a helper that calls it) before them in the loop or function; backward calls inside
    other functions; `.grad` set by hand; optimizers over anything but `.parameters()` of
    named models; models shared by two optimizers; closures too large to follow. (A target
    network made by `deepcopy` has parameters of its own: a loss through it alone does not
    reach the original.)

    Example:
        optimizer_D_VAE = torch.optim.Adam(D_VAE.parameters(), lr=lr)
        optimizer_D_LR = torch.optim.Adam(D_LR.parameters(), lr=lr)
        ...
        optimizer_D_LR.zero_grad()
        loss_D_LR = D_VAE.compute_loss(real_B, valid) + D_VAE.compute_loss(fake_B.detach(), fake)
        loss_D_LR.backward()
        optimizer_D_LR.step()

    Fix: compute the loss with the stepped optimizer's model (`D_LR.compute_loss(...)`), or
    step the optimizer of the model the loss went through.
    """

    id = "loss-from-other-model"
    point = 4
    severity = Severity.HIGH
    title = "Optimizer steps on a loss that never went through its model"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("backward",), ("zero_grad",), ("parameters",)))

    def finish(self, ctx: ModuleContext) -> None:
        constructions = optimizer_constructions(ctx).sure
        copies = synced_copies(ctx) if constructions else {}
        if len(constructions) < 2 and not copies:
            return  # another model is what the loss must be shown to reach
        optimizers = {name: keys for name, (keys, _) in constructions.items()}
        for step in ctx.flow.calls_named(("step",)):
            if not is_optimizer_step(step) or not isinstance(step.func, ast.Attribute):
                continue
            receiver = ast.unparse(step.func.value)
            keys = optimizers.get(receiver)
            if not keys:
                continue
            others = {k for name, ks in optimizers.items() if name != receiver for k in ks}
            # a lagging copy synced from the stepped model (a DQN's target network) has
            # parameters of its own that no optimizer here steps
            lagging = {c for k in keys for c in copies.get(k, ())} - keys
            others = (others | lagging) - keys
            stepped = _model_names(ctx, constructions[receiver][1])
            if not others or stepped is None or stepped & others:
                continue  # a model built from another optimizer's: they share parameters
            try:
                losses = _losses_before(ctx, step, receiver, keys)
                if not losses:
                    continue
                closure = _Closure(ctx, step)
                reached = closure.reach(losses)
            except _Unknown:
                continue
            if stepped & reached.keys() or (_SELF_ANY in reached and any(map(_on_self, stepped))):
                continue
            through = [k for k in closure.called if k not in stepped]  # the nearest first
            through += [k for k in reached if k in lagging and k not in through]
            if not through or not others & reached.keys():
                continue
            model = " and ".join(f"`{k}`" for k in sorted(keys))
            ctx.report(
                self,
                _computed_at(ctx, losses[0]) or step,
                f"`{receiver}.step()` (line {step.lineno}) updates {model}, but the losses "
                f"backpropagated since its zero_grad() never go through {model}: they go "
                f"through `{through[0]}`, so the step gets no gradient from its model's loss "
                "(and the other model accumulates one meant for it); compute the loss with "
                "the model it steps",
                data={"optimizer": receiver, "models": sorted(keys), "through": through},
            )


def _computed_at(ctx: ModuleContext, loss: ast.expr) -> ast.stmt | None:
    """The statement that computed the loss backpropagated last before the step: where the
    wrong model is called, and where the fix goes."""
    if not isinstance(loss, ast.Name):
        return None
    value = ctx.flow.reaching(loss)
    statement = ctx.parents.get(value) if value is not None else None
    return statement if isinstance(statement, ast.Assign) else None


def _on_self(key: str) -> bool:
    return key.startswith("self.")


def _model_names(ctx: ModuleContext, params: list[ast.expr]) -> set[str] | None:
    """The stepped models and the models they are bound to or built from (`net = model`,
    `head = Head(backbone)`): a loss through any of them reaches the optimizer's
    parameters. None when a model is not named."""
    names: set[str] = set()
    roots: list[ast.Name | ast.Attribute] = []
    for expr in params:
        for node in walk_tree(expr):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "parameters"
            ):
                model = model_root(node.func.value)
                if model is None:
                    return None
                roots.append(model)
    seen: set[int] = set()
    while roots:
        root = roots.pop()
        names.add(ast.unparse(root))
        for value in ctx.flow.definitions(root):
            if id(value) in seen or len(seen) > _MAX_EXPRESSIONS:
                continue
            seen.add(id(value))
            for node in walk_tree(value):
                if not isinstance(node, ast.Name | ast.Attribute):
                    continue
                found = model_root(node)
                if (
                    found is not None
                    and ast.unparse(found) not in names
                    and ctx.flow.is_module_value(found)
                ):
                    roots.append(found)
    return names


def _clears(ctx: ModuleContext, stmt: ast.stmt, receiver: str, keys: set[str]) -> bool:
    """`opt.zero_grad()` (or the model's own `zero_grad()`) as a statement of its own, or a
    call of a module function that makes it one of its statements (`reset_grad()`)."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    if isinstance(func, ast.Name):
        helpers = [
            fn
            for fn in ctx.flow.functions.get(func.id, [])
            if isinstance(ctx.parents.get(fn), ast.Module)
        ]
        return len(helpers) == 1 and any(
            _clears_directly(s, receiver, keys) for s in helpers[0].body
        )
    return _clears_directly(stmt, receiver, keys)


def _clears_directly(stmt: ast.stmt, receiver: str, keys: set[str]) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    if not (isinstance(func, ast.Attribute) and func.attr == "zero_grad"):
        return False
    owner = ast.unparse(func.value)
    return owner == receiver or owner in keys


def _losses_before(
    ctx: ModuleContext, step: ast.Call, receiver: str, keys: set[str]
) -> list[ast.expr]:
    """What the backward calls since the optimizer's last `zero_grad()` backpropagate: the
    statements before the step, in its block and the blocks around it, back to that
    `zero_grad()` (through the end of the loop body when it clears after stepping)."""
    statement = ctx.parents.get(step)
    if not isinstance(statement, ast.Expr):
        raise _Unknown
    between: list[ast.stmt] = []
    current: ast.stmt = statement
    while True:
        block, index = _position(ctx, current)
        for earlier in reversed(block[:index]):
            if _clears(ctx, earlier, receiver, keys):
                return _backpropagated(ctx, between, receiver, keys)
            between.append(earlier)
        owner = ctx.parents.get(current)
        if isinstance(owner, ast.For | ast.AsyncFor | ast.While) and block is owner.body:
            for later in reversed(block[block.index(current) + 1 :]):
                if _clears(ctx, later, receiver, keys):
                    return _backpropagated(ctx, between, receiver, keys)
                between.append(later)
            raise _Unknown  # gradients may pile up across iterations
        if not isinstance(owner, ast.If | ast.With | ast.AsyncWith | ast.Try):
            raise _Unknown  # the function's start: the caller may have backpropagated
        current = owner


def _position(ctx: ModuleContext, stmt: ast.stmt) -> tuple[list[ast.stmt], int]:
    owner = ctx.parents.get(stmt)
    for field in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(owner, field, None)
        if isinstance(block, list):
            for index, candidate in enumerate(block):
                if candidate is stmt:
                    return block, index
    raise _Unknown


def _backpropagated(
    ctx: ModuleContext, statements: list[ast.stmt], receiver: str, keys: set[str]
) -> list[ast.expr]:
    """The expressions the statements' backward calls backpropagate; `_Unknown` when the
    statements step or clear this optimizer again, set `.grad` by hand, or call a local
    function that backpropagates."""
    losses: list[ast.expr] = []
    effects = ctx.loops.function_effects
    for statement in statements:
        for node in walk_scope(statement):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "grad"
                and isinstance(node.ctx, ast.Store)
            ):
                raise _Unknown  # gradients set by hand
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("step", "zero_grad"):
                owner = ast.unparse(func.value)
                if owner == receiver or owner in keys:
                    raise _Unknown
            if is_backward_call(node):
                assert isinstance(func, ast.Attribute)
                losses.append(func.value)
                losses.extend(node.args)
                losses.extend(k.value for k in node.keywords)
            elif (callee := local_callee(node)) in effects and effects[callee].backward:
                raise _Unknown  # a local function backpropagates too
    return losses


class _Closure:
    """Every name and `self.x` an expression may be computed from, through the module's
    bindings, functions, classes, the calls that fill containers and the arguments callers
    pass to the training function, in the order they are reached."""

    def __init__(self, ctx: ModuleContext, step: ast.Call) -> None:
        self.ctx = ctx
        self.home: set[int] = set()
        self._enter(step)
        self.reached: dict[str, None] = {}
        self.called: dict[str, None] = {}
        """Models the closure calls (or calls a method of), nearest first."""
        self.seen: set[int] = set()
        self.queue: deque[tuple[ast.AST, bool]] = deque()

    def _enter(self, node: ast.AST) -> None:
        """Make the functions around `node` ones whose parameters come from their callers."""
        fn = self.ctx.enclosing_function(node)
        while fn is not None:
            self.home.add(id(fn))
            fn = self.ctx.enclosing_function(fn)

    def reach(self, roots: list[ast.expr]) -> dict[str, None]:
        self.queue.extend((root, False) for root in roots)
        while self.queue:
            node, foreign = self.queue.popleft()
            if id(node) in self.seen:
                continue
            self.seen.add(id(node))
            if len(self.seen) > _MAX_EXPRESSIONS:
                raise _Unknown
            for sub in walk_tree(node):
                self._visit(sub, foreign)
        return self.reached

    def _push(self, node: ast.AST, foreign: bool) -> None:
        if id(node) not in self.seen and not _independent_copy(node):
            self.queue.append((node, foreign))

    def _visit(self, node: ast.AST, foreign: bool) -> None:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            self._name(node, foreign)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self":
                if not foreign:
                    self._self_attribute(node)
            elif isinstance(node.ctx, ast.Load):
                for value in self.ctx.flow.definitions(node):  # `trainer.model = G`
                    self._push(value, foreign)
        elif isinstance(node, ast.Call):
            self._call(node, foreign)

    def _name(self, node: ast.Name, foreign: bool) -> None:
        name = node.id
        if name == "self":
            parent = self.ctx.parents.get(node)
            if not foreign and not (isinstance(parent, ast.Attribute) and parent.value is node):
                self.reached[_SELF_ANY] = None
            return
        self.reached[name] = None
        scope = self.ctx.enclosing_function(node)
        if scope is not None and name in _parameters(scope):
            if id(scope) in self.home and not foreign and not self._data_or_setting(node):
                self._passed(scope, name)
            return  # a helper's parameter (its callers' arguments are followed), or batches
        values = self.ctx.flow.definitions(node)
        for value in values:
            self._push(value, foreign)
        if values:
            self._filled(name, scope, foreign)  # a variable: what its methods put in it
        for fn in self.ctx.flow.functions.get(name, []):
            if not isinstance(self.ctx.parents.get(fn), ast.ClassDef):  # a module's or nested
                self._push(fn, foreign)
        cls = self.ctx.flow.classes.get(name)
        if cls is not None:
            self._push(cls, True)

    def _data_or_setting(self, node: ast.Name) -> bool:
        """A parameter read as what a loop draws from (`for batch in loader`, `enumerate(
        tqdm(loader))`): the data; or as a setting (a size given to a tensor factory or
        `range`, a `device=`, a `.to(...)` target, an index, a comparison): no value a
        model computed."""
        parent = self.ctx.parents.get(node)
        if isinstance(parent, ast.keyword):
            return parent.arg in ("device", "dtype")
        if isinstance(parent, ast.Compare) or (
            isinstance(parent, ast.Subscript) and parent.slice is node
        ):
            return True
        if isinstance(parent, ast.Call) and node in parent.args:
            callee = parent.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            qualname = self.ctx.call_qualname(parent) or ""
            if name in _SETTING_TAKERS and (
                qualname.startswith("torch.") or name in _BUILTIN_TAKERS
            ):
                return True
            if name in ("to", "cuda") and isinstance(callee, ast.Attribute):
                return True
        child: ast.AST = node
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, ast.For | ast.AsyncFor):
                return ancestor.iter is child
            if not isinstance(ancestor, ast.Call):
                return False
            child = ancestor
        return False

    def _passed(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> None:
        """What the module's calls of `fn` pass as its parameter `name` (the default when a
        call passes nothing); `_Unknown` when nothing in the module calls it, or a call
        passes `*args`/`**kwargs`."""
        calls = self.ctx.flow.callers.get(fn.name, [])
        if not calls:
            raise _Unknown  # called from another file, or by a framework: any value
        arguments = fn.args
        positional = [a.arg for a in [*arguments.posonlyargs, *arguments.args]]
        if isinstance(self.ctx.parents.get(fn), ast.ClassDef) and positional:
            positional = positional[1:]  # `self`
        every = [a.arg for a in [*arguments.posonlyargs, *arguments.args]]
        defaults = dict(
            zip(every[len(every) - len(arguments.defaults) :], arguments.defaults, strict=True)
        )
        for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
            if default is not None:
                defaults[arg.arg] = default
        for call in calls:
            if any(isinstance(a, ast.Starred) for a in call.args) or any(
                k.arg is None for k in call.keywords
            ):
                raise _Unknown
            given = next((k.value for k in call.keywords if k.arg == name), None)
            if given is None and name in positional:
                index = positional.index(name)
                given = call.args[index] if index < len(call.args) else None
            if given is None:
                given = defaults.get(name)
            if given is None:
                raise _Unknown  # `*args`, `**kwargs`, or a call the parameters do not match
            self._enter(call)
            self._push(given, False)

    def _filled(self, name: str, scope: ast.AST | None, foreign: bool) -> None:
        """What `name.append(x)`, `name[k] = x`, `name.attr = x` put into the value."""
        for read in self.ctx.flow.reads_of(name):
            if self.ctx.enclosing_function(read) is not scope:
                continue  # another function's variable of the same name
            parent = self.ctx.parents.get(read)
            if not isinstance(parent, ast.Attribute | ast.Subscript) or parent.value is not read:
                continue
            holder = self.ctx.parents.get(parent)
            stored: list[ast.expr] = []
            if isinstance(parent.ctx, ast.Store) and isinstance(holder, ast.Assign):
                stored = [holder.value]
            elif isinstance(holder, ast.Call) and holder.func is parent:
                stored = [*holder.args, *(k.value for k in holder.keywords)]
            if not stored:
                continue
            if any(isinstance(a, ast.Lambda) for a in self.ctx.ancestors(read)):
                raise _Unknown  # filled by a hook: from a model the analysis does not see
            for value in stored:
                self._push(value, foreign)

    def _self_attribute(self, node: ast.Attribute) -> None:
        key = f"self.{node.attr}"
        self.reached[key] = None
        values = self.ctx.flow.definitions(node)
        for value in values:
            self._push(value, False)
        methods = [
            fn
            for fn in self.ctx.flow.functions.get(node.attr, [])
            if self.ctx.enclosing_class(fn) is self.ctx.enclosing_class(node)
        ]
        for fn in methods:
            self._push(fn, False)
        if not values and not methods:
            parent = self.ctx.parents.get(node)
            called = isinstance(parent, ast.Call) and parent.func is node
            if not called and not _receiver(parent, node):
                raise _Unknown  # set outside this module (a base class): anything

    def _call(self, node: ast.Call, foreign: bool) -> None:
        func = node.func
        if not foreign and isinstance(func, ast.Name | ast.Attribute):
            if self.ctx.flow.is_model_call(node):
                key = model_key(func)
            else:  # `D_VAE.compute_loss(...)`: a method of a model
                key = model_key(func.value) if isinstance(func, ast.Attribute) else None
                owner = func.value if isinstance(func, ast.Attribute) else None
                if owner is None or not self.ctx.flow.is_module_value(owner):
                    key = None
            if key is not None:
                self.called.setdefault(key, None)
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
            return
        if func.value.id == "self":
            return  # `self.method(...)`: resolved by `_self_attribute`
        cls = self.ctx.flow.local_class(func.value)
        if cls is not None:
            self._push(cls, True)  # its methods may read the module's names
        elif (callee := local_callee(node)) and callee in self.ctx.flow.functions:
            for fn in self.ctx.flow.functions[callee]:
                self._push(fn, True)


def _independent_copy(node: ast.AST) -> bool:
    """`copy.deepcopy(self.q2)`: a target network with parameters of its own, which no
    gradient through it reaches."""
    return (
        isinstance(node, ast.Call)
        and (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        == "deepcopy"
    )


def _receiver(parent: ast.AST | None, node: ast.Attribute) -> bool:
    """`self.net.forward(x)`, `self.net.module(x)`: an attribute whose own attribute is
    called, the way a model held by the instance is."""
    return isinstance(parent, ast.Attribute) and parent.value is node


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    arguments = fn.args
    names = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    names |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
    return names
