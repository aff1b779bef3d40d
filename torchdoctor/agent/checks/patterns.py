"""Recognisers shared by the training, performance and idiom rules (points 4-10).

Each answers one question about a node using the module context: is this a grad-disabling
context, is this expression a model, is this code guarded to run only every N steps. They are
heuristics with a bias towards silence: when unsure they answer "no", so the rules built on
them stay precise.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from collections.abc import Callable, Iterator
from functools import cache

from torchdoctor.agent.checks.analysis.model_facts import bound_to_function_or_import
from torchdoctor.agent.checks.analysis.reachability import mode_switch
from torchdoctor.agent.checks.analysis.vocabulary import (
    DROPOUT_LAYERS,
    PARAMETER_FREE_LAYERS,
    builds_network,
)
from torchdoctor.agent.checks.base import ModuleContext
from torchdoctor.agent.checks.loops import (
    FunctionNode,
    enclosing_ifs,
    is_periodic_guard,
    nodes_of,
    statement_named_calls,
    walk_scope,
    walk_tree,
)

_MODEL_NAME = re.compile(
    r"(^|_)(model|net|network|encoder|decoder|classifier|backbone|generator|discriminator|"
    r"policy|transformer|detector|segmenter)s?$|^(model|net)(_?[a-z0-9]{0,6})$",
    re.IGNORECASE,
)
# `trainer.get_model()`, `build_model(cfg)`, `unwrap_model(m)`: a verb before the model noun
# names a function that fetches, builds or handles a model, not the model's forward pass; so
# do a serving controller's `list_models()` and `show_available_models()` (names of models).
_MODEL_ACCESSOR = re.compile(
    r"^(get|build|create|make|load|init|initialize|setup|prepare|instantiate|construct|wrap|"
    r"unwrap|save|export|copy|clone|freeze|unfreeze|set|reset|update|sync|print|log|count|"
    r"list|show|register|unregister|refresh|add|remove|delete|find|select|lookup)_",
    re.IGNORECASE,
)
_MODE_METHODS = frozenset(
    {"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "train", "eval", "requires_grad_"}
)
INFERENCE_FUNCTION = re.compile(
    r"^(infer|run_inference|serve|classify)$|(^|_)(predict|inference|serving)($|_)|_infer$",
    re.IGNORECASE,
)
_CUDA_USE = (
    ".cuda(",
    "'cuda",
    '"cuda',
    "torch.cuda.is_available",
    "device_count(",
    "torch.cuda.amp",
)
"""Text that targets a CUDA device; each asked of the module's text (`ModuleText` answers
from its words what it can, where one search of a pattern with these alternatives reads
every line)."""
ACCELERATOR_USE = "torch.accelerator."
"""The device-generic API (`torch.accelerator.current_accelerator()`, torch >= 2.6) that
pytorch/examples now target their GPU with: CUDA on an NVIDIA machine."""


def kwarg(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def has_star_kwargs(call: ast.Call) -> bool:
    return any(keyword.arg is None for keyword in call.keywords)


def argument(call: ast.Call, name: str, position: int) -> ast.expr | None:
    """The argument passed as keyword `name` or at `position`, if any."""
    found = kwarg(call, name)
    if found is not None:
        return found
    if position < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args):
        return call.args[position]
    return None


def constant_number(node: ast.expr | None) -> float | None:
    """The value of a numeric literal (including `-x` and `1e-3`), else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = constant_number(node.operand)
        return None if inner is None else -inner
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def constant_int(node: ast.expr | None) -> int | None:
    """The value of an integer literal (`-1` included), else None: a dim or an axis (a bool
    is none, though `True == 1`)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = constant_int(node.operand)
        return None if inner is None else -inner
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, 0) and node.value is not None


_MAX_ALIAS_DEPTH = 3


def peel_mode_calls(expr: ast.expr) -> ast.expr:
    """`Net().to(dev).eval()` -> `Net()`: the constructor behind device/mode chains."""
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in _MODE_METHODS
    ):
        expr = expr.func.value
    return expr


def module_classes(ctx: ModuleContext) -> set[str]:
    """Names of the module's classes that are `nn.Module`s (directly or through local bases)."""
    return ctx.flow.module_classes


def constructed_model(ctx: ModuleContext, expr: ast.expr, depth: int = 0) -> bool:
    """Whether `expr` may hold a network: a local nn.Module class, a model factory, etc., or
    another model moved or switched (`m = model.to(device)`: `Module.to` returns the model)."""
    classes = module_classes(ctx)
    for source in ctx.flow.sources(expr):
        call = peel_mode_calls(source)
        alias = source is not expr and call is not source and depth < _MAX_ALIAS_DEPTH
        if alias and _names_a_model(ctx, call, depth):  # `m = model.to(device)`, asked of `m`
            return True
        if not isinstance(call, ast.Call):
            continue
        if isinstance(call.func, ast.Name) and call.func.id in classes:
            return True
        qual = ctx.call_qualname(call) or ""
        if builds_network(qual) or qual.endswith("Sequential"):
            return True
    return False


def _names_a_model(ctx: ModuleContext, expr: ast.expr, depth: int) -> bool:
    return isinstance(expr, ast.Name) and bool(
        _MODEL_NAME.search(expr.id) or constructed_model(ctx, expr, depth + 1)
    )


def self_attribute(node: ast.AST) -> str | None:
    """`self.NAME` -> 'NAME'; None for anything else."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def root_name(expr: ast.expr) -> str:
    """`a` of `a.b.c`; '' when the chain does not start from a name."""
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else ""


def terminal_name(expr: ast.expr) -> str:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return ""


def is_model_expr(ctx: ModuleContext, expr: ast.expr) -> bool:
    """A model by construction, or by a name that says so (`model`, `net`, `self.encoder`)."""
    if isinstance(expr, ast.Name) and expr.id == "self":
        return False
    name = terminal_name(expr)
    if not name or (isinstance(expr, ast.Name) and bound_to_function_or_import(ctx, name)):
        return False
    # `_own_method` last: for `obj.method` it asks the call graph what `obj` holds, and most
    # attribute calls (`torch.cat`, `x.view`) are no model by name and untraceable anyway
    if _MODEL_NAME.search(name):
        return not _own_method(ctx, expr)
    traceable = isinstance(expr, ast.Name) or (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "self"
    )
    return (
        traceable
        and not _own_method(ctx, expr)
        and (constructed_model(ctx, expr) or ctx.flow.module_by_use(expr))
    )


def _own_method(ctx: ModuleContext, expr: ast.expr) -> bool:
    """`self.name` where `name` is a plain method of the enclosing class: Real-ESRGAN's cog
    predictor calls `self.choose_model(scale, version)`, which builds the upsampler; a
    `@property` may return a model. Also `agent.name` where `agent` holds an instance of a
    local class that is no `nn.Module` (a PPO agent's `model.train_net()`, its update)."""
    if not (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)):
        return False
    if expr.value.id == "self":
        cls = next((a for a in ctx.ancestors(expr) if isinstance(a, ast.ClassDef)), None)
        method = class_methods(cls).get(expr.attr) if cls is not None else None
    else:
        owner = ctx.calls.instance_class(expr.value)
        plain = owner is not None and owner not in module_classes(ctx)
        method = ctx.calls.method(owner, expr.attr) if plain and owner is not None else None
    return method is not None and not any(
        "property" in ast.unparse(decorator) for decorator in method.decorator_list
    )


def model_calls(ctx: ModuleContext, body: list[ast.stmt]) -> Iterator[ast.Call]:
    """Calls of a model object (`model(x)`, `self.net(x)`, `model.forward(x)`) in `body`.

    Constructor calls (`Net()`, capitalised names) are not model calls.
    """
    if not may_run_models(ctx):
        return
    yield from _statements_calls(ctx, body, "patterns.model_calls", _runs_a_model_memoised)


def _statements_calls(
    ctx: ModuleContext,
    body: list[ast.stmt],
    key: str,
    test: Callable[[ModuleContext, ast.Call], bool],
) -> Iterator[ast.Call]:
    """`named_calls(ctx, body)` that pass `test`, in its order, kept per statement in the memo
    table `key`: loops nested in loops and several rules ask about the same statements, and
    each asks a statement's list once instead of every call of it again."""
    memo = ctx.memo_table(key)
    for stmt in body:
        found = memo.get(id(stmt))
        if found is None:
            listed = statement_named_calls(ctx, stmt)
            found = memo[id(stmt)] = [call for call in listed if test(ctx, call)]
        yield from found


def _runs_a_model_memoised(ctx: ModuleContext, node: ast.Call) -> bool:
    """`_runs_a_model`, remembered per call (several rules, and `model_runs`, ask)."""
    memo = ctx.memo_table("patterns.runs_a_model")
    found = memo.get(id(node))
    if found is None:
        found = memo[id(node)] = _runs_a_model(ctx, node)
    return bool(found)


def shape_check_only(ctx: ModuleContext, call: ast.Call) -> bool:
    """The call's output is read only for its shape (`print(encoder(img).shape)` in a loop
    over one batch that then `break`s; `out = net(x)` then `print(out.size())`; a helper that
    runs a dummy input to size a layer, `return tuple(module(dummy).shape)`,
    `features(zeros(1, *shape)).view(1, -1).size(1)`): a look at what the model returns,
    not a pass whose values are used."""
    parent = ctx.parents.get(call)
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and isinstance(target := parent.targets[0], ast.Name)
    ):
        return _reads_only_its_shape(ctx, call)
    scope = ctx.enclosing_function(call)
    uses = [
        n
        for n in walk_scope(scope.body if scope is not None else ctx.tree.body)
        if isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Load)
    ]
    return bool(uses) and all(_reads_only_its_shape(ctx, n) for n in uses)


_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim"})
_SHAPE_METHODS = frozenset({"size", "numel", "nelement", "dim"})
_SHAPE_KEEPING = frozenset(
    {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous"}
)
"""Methods whose result has the values' count, so a shape read through them reads the
output's shape only (`out.view(1, -1).size(1)`)."""


def _reads_only_its_shape(ctx: ModuleContext, node: ast.expr) -> bool:
    """`node` is read for its shape and nothing else: `.shape`, `.ndim`, `.size()`,
    `.numel()`, `.dim()` or `len(...)`, through reshaping methods."""
    holder: ast.expr = node
    for _ in range(8):
        parent = ctx.parents.get(holder)
        if isinstance(parent, ast.Call) and any(a is holder for a in parent.args):
            return isinstance(parent.func, ast.Name) and parent.func.id == "len"
        if not isinstance(parent, ast.Attribute) or parent.value is not holder:
            return False
        if parent.attr in _SHAPE_ATTRIBUTES:
            return True
        called = ctx.parents.get(parent)
        if not (isinstance(called, ast.Call) and called.func is parent):
            return False
        if parent.attr in _SHAPE_METHODS:
            return True
        if parent.attr not in _SHAPE_KEEPING:
            return False
        holder = called
    return False


def model_runs(ctx: ModuleContext, body: list[ast.stmt]) -> Iterator[ast.Call]:
    """`model_calls`, and, in source order with them, the calls in `body` of the module's own
    helpers (functions, or methods of a class that is not a network) that call a model in
    their own body and never back-propagate: Informer-style `pred, true =
    self._process_one_batch(data, batch_x, batch_y)` runs `self.model(batch_x)` for its
    caller, in the caller's grad mode. A helper whose model calls all run with autograd off
    in it (its own `no_grad`) is not one."""
    if not may_run_models(ctx):
        return  # no call of the module runs a model: no helper's call does either
    yield from _statements_calls(ctx, body, "patterns.model_runs", _runs_a_model_or_helper)


def _runs_a_model_or_helper(ctx: ModuleContext, node: ast.Call) -> bool:
    """`model_runs`' answer for one call (a model's, or a model-running helper's)."""
    from torchdoctor.agent.checks.analysis.gradmode import grad_off_in_function

    if _runs_a_model_memoised(ctx, node):
        return True
    networks = ctx.flow.module_classes
    helpers = ctx.memo_table("patterns.model_running_helpers")
    for fn in ctx.calls.resolve(node):
        owner = ctx.calls.owner(fn)
        if owner is not None and owner.name in networks:
            continue  # a network's own methods: `forward` and friends are the model
        runs = helpers.get(id(fn))
        if runs is None:
            runs = helpers[id(fn)] = not ctx.loops.backpropagates(fn.body) and any(
                not grad_off_in_function(ctx, inner) for inner in model_calls(ctx, fn.body)
            )
        if runs:
            return True
    return False


_MODEL_WORDS = (
    "model",
    "net",
    "encoder",
    "decoder",
    "classifier",
    "backbone",
    "generator",
    "discriminator",
    "policy",
    "transformer",
    "detector",
    "segmenter",
)
"""A word of every name `_MODEL_NAME` matches, and of every model factory's qualified name
(`timm.create_model`, `torchvision.models.*`, `transformers.*`), lower-cased."""


def may_run_models(ctx: ModuleContext) -> bool:
    """Whether a call of the module can run a model (`_runs_a_model`): its text names one
    (`_MODEL_WORDS`), a `Sequential` or a `from_pretrained` loader, or it defines an
    `nn.Module` class. A text that is not ASCII may spell names in characters the parser
    normalises: not judged. Most modules of a library do none of these (two in three of
    torch's own), and their loops need no walk for model calls."""
    memo = ctx.memo_table("patterns.may_run_models")
    if "" not in memo:
        source = ctx.source
        lowered = source.lower()
        memo[""] = (
            not source.isascii()
            or any(word in lowered for word in _MODEL_WORDS)
            or "Sequential" in source
            or "from_pretrained" in source
            or bool(module_classes(ctx))
        )
    return bool(memo[""])


_PYDANTIC_METHODS = frozenset({"model_dump", "model_copy", "model_construct"})
"""Methods of pydantic models named like a torch model (`response.model_dump()`)."""


def _runs_a_model(ctx: ModuleContext, node: ast.Call) -> bool:
    assert isinstance(node.func, ast.Name | ast.Attribute)
    name = terminal_name(node.func)
    if name[:1].isupper() or _MODEL_ACCESSOR.match(name) or ctx.qualname(node.func):
        return False
    if isinstance(node.func, ast.Attribute) and name in _PYDANTIC_METHODS:
        return False
    func: ast.expr = node.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        func = func.value  # `model.forward(x)` runs the model too
    return is_model_expr(ctx, func)


def on_a_cpu_branch(ctx: ModuleContext, node: ast.AST) -> bool:
    """`node` runs only when the script is not on CUDA: the `else` of `if self.cuda:` (or of
    `if use_gpu`, `if torch.cuda.is_available()`), or the body of `if not cuda:`."""
    child = node
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.If):
            test = ancestor.test
            negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
            text = ast.unparse(test.operand if negated else test).lower()  # type: ignore[attr-defined]
            if "cuda" in text or "gpu" in text:
                in_body = any(child is stmt for stmt in ancestor.body)
                return in_body == negated
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        child = ancestor
    return False


def module_level(tree: ast.Module) -> Iterator[ast.AST]:
    """Nodes that run at import time: the module body outside functions and classes."""
    top = [s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)]
    return walk_scope([s for s in top if not isinstance(s, ast.ClassDef)])


def mode_call_receivers(body: list[ast.stmt] | ast.AST, mode: str) -> list[ast.Call]:
    """`.eval()` / `.train(False)` calls (mode='eval') in `body`."""
    found: list[ast.Call] = []
    for node in walk_scope(body):
        if isinstance(node, ast.Call) and mode == "eval" and switches_to_eval(node):
            found.append(node)
    return found


def switches_to_eval(call: ast.Call) -> bool:
    """`x.eval()`, `x.train(False)` (or `mode=False`), `policy.set_training_mode(False)`: what
    `mode_call_receivers(..., "eval")` collects."""
    return mode_switch(call) == "eval"


def under_periodic_guard(
    ctx: ModuleContext, node: ast.AST, stop: ast.AST | None, *, beside_the_step: bool = False
) -> bool:
    """Whether an `if` between `node` and `stop` (a loop or function; without one, the
    enclosing function) runs it only periodically: `step % N == 0` itself, or a flag bound to
    one earlier (`is_log_step = step % log_every == 0 or last_batch`, then `if is_log_step:`);
    an earlier periodic exit in its block (`if not should_log(step): return`); or a branch
    that ends the run (`if not math.isfinite(loss.item()): ...; raise`), entered once.
    With `beside_the_step`, a guard around the backward pass itself does not count: it makes
    the training step periodic (cleanrl's `if global_step % args.train_frequency == 0:`), not
    what runs in it."""
    bound = stop if stop is not None else ctx.enclosing_function(node)
    if any(
        part != "test"
        and (
            (
                holds_through_flags(ctx, guard.test, is_periodic_guard, (ast.Name,))
                and not (beside_the_step and _holds_backward(guard.body))
            )
            or (part == "body" and _ends_the_run(guard.body))
        )
        for guard, part in enclosing_ifs(ctx, node, bound)
    ):
        return True
    return _after_a_periodic_exit(ctx, node, bound, beside_the_step)


def _after_a_periodic_exit(
    ctx: ModuleContext, node: ast.AST, bound: ast.AST | None, beside_the_step: bool
) -> bool:
    """An earlier statement of a block around `node` leaves on most steps: `if not
    should_log(step): return` or `if step % k: continue` before the logging (torchtitan's
    `train_step`). With `beside_the_step`, not when the rest of the block still runs the
    backward pass (a periodic training step, not periodic logging)."""
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(anc, field, None)
            if not isinstance(block, list) or not any(s is child for s in block):
                continue
            index = next(i for i, s in enumerate(block) if s is child)
            for i, stmt in enumerate(block[:index]):
                if (
                    isinstance(stmt, ast.If)
                    and not stmt.orelse
                    and isinstance(stmt.body[-1], ast.Return | ast.Continue)
                    and holds_through_flags(ctx, stmt.test, is_periodic_guard, (ast.Name,))
                    and not (beside_the_step and _holds_backward(block[i + 1 :]))
                ):
                    return True
        if anc is bound or isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        child = anc
    return False


def _ends_the_run(body: list[ast.stmt]) -> bool:
    """A branch that stops the run: it raises, exits or leaves the loop (a last `if`/`else`
    whose arms each raise, exit or return, one of them raising), as a non-finite-loss check
    does: what it reads is read once, not every step. A plain `return` may end only this
    step (a per-step function's AMP arm), so it does not count alone."""
    return _leaves(body, raised=False)


def _leaves(body: list[ast.stmt], raised: bool) -> bool:
    last = body[-1]
    if isinstance(last, ast.If):
        if not last.orelse:
            return False
        arms = [_leaves(last.body, raised=True), _leaves(last.orelse, raised=True)]
        return all(arms) and (_raises(last.body) or _raises(last.orelse))
    if isinstance(last, ast.Return):
        return raised  # beside an arm that raises: the error path
    return _raises(body) or isinstance(last, ast.Break)


def _raises(body: list[ast.stmt]) -> bool:
    last = body[-1]
    if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
        return ast.unparse(last.value.func) in ("sys.exit", "exit", "quit", "os._exit")
    if isinstance(last, ast.If) and last.orelse:
        return _raises(last.body) or _raises(last.orelse)
    return isinstance(last, ast.Raise)


def _holds_backward(body: list[ast.stmt]) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
        for stmt in body
        for n in ast.walk(stmt)
    )


FLAG_DEPTH = 2
"""Bindings followed from a test's flags: `if ok:` with `ok = a and b`, then `b = ...`."""


def holds_through_flags(
    ctx: ModuleContext,
    test: ast.expr,
    holds: Callable[[ast.expr], bool],
    flags: tuple[type[ast.expr], ...] = (ast.Name, ast.Attribute),
    bound: Callable[[ast.expr], bool] = lambda _value: True,
    depth: int = 0,
) -> bool:
    """Whether `holds(test)`, or holds of a value one of the test's flags (names, attributes)
    was bound to earlier and that `bound` accepts, up to `FLAG_DEPTH` bindings away: the
    guards people write as `is_log_step = step % n == 0` or `args.save = is_master(args)`."""
    if holds(test):
        return True
    if depth >= FLAG_DEPTH:
        return False
    return any(
        holds_through_flags(ctx, value, holds, flags, bound, depth + 1)
        for flag in walk_tree(test)
        if isinstance(flag, flags)
        for value in ctx.flow.definitions(flag)
        if bound(value)
    )


def has_main_guard(tree: ast.Module) -> bool:
    return any(is_main_guard(stmt) for stmt in tree.body)


def is_main_guard(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    parts = [stmt.test.left, *stmt.test.comparators]
    names = {p.id for p in parts if isinstance(p, ast.Name)}
    consts = {p.value for p in parts if isinstance(p, ast.Constant)}
    return "__name__" in names and "__main__" in consts


def source_has(ctx: ModuleContext, token: str) -> bool:
    """`token in ctx.source`, computed once per module: cheap enough for per-node gates."""
    memo = ctx.memo_table("patterns.source_has")
    found = memo.get(token)
    if found is None:
        found = memo[token] = token in ctx.source
    return bool(found)


def uses_cuda(ctx: ModuleContext) -> bool:
    """The module targets a CUDA device (text-level: `.cuda(`, `"cuda"`, `torch.cuda`, or
    `torch.accelerator.`)."""
    memo = ctx.memo_table("patterns.uses_cuda")
    if 0 not in memo:
        source = ctx.source
        memo[0] = ("cuda" in source and any(text in source for text in _CUDA_USE)) or (
            ACCELERATOR_USE in source
        )
    return bool(memo[0])


def functions(ctx: ModuleContext) -> Iterator[FunctionNode]:
    for defs in ctx.loops.functions.values():
        yield from defs


def nn_layer(ctx: ModuleContext, node: ast.AST) -> str:
    """`nn.Conv2d(...)` -> 'Conv2d' when `node` constructs a `torch.nn` layer, else ''."""
    if not isinstance(node, ast.Call):
        return ""
    qual = ctx.call_qualname(node) or ""
    if not qual.startswith("torch.nn.") or qual.startswith("torch.nn.functional."):
        return ""
    last = qual.rsplit(".", 1)[-1]
    return last if last[:1].isupper() else ""


CONV_NET_FACTORIES = ("torchvision.models.", "timm.create_model", "timm.models.")


def builds_conv2d(ctx: ModuleContext, node: ast.AST) -> bool:
    """`node` builds a 2-D convolution: an `nn.Conv2d` layer, or a torchvision/timm model."""
    if not isinstance(node, ast.Call):
        return False
    return nn_layer(ctx, node) == "Conv2d" or (ctx.call_qualname(node) or "").startswith(
        CONV_NET_FACTORIES
    )


def sequential_layers(ctx: ModuleContext, call: ast.Call) -> list[tuple[str, ast.expr]]:
    """The layers of an `nn.Sequential(a, b, ...)` call as (layer class or '', node) pairs."""
    if nn_layer(ctx, call) != "Sequential":
        return []
    return [(nn_layer(ctx, arg), arg) for arg in call.args if not isinstance(arg, ast.Starred)]


def class_methods(cls: ast.ClassDef) -> dict[str, FunctionNode]:
    return {
        stmt.name: stmt
        for stmt in cls.body
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def registered_buffer_names(cls: ast.ClassDef) -> set[str]:
    """Names the class registers as buffers by a literal (`self.register_buffer("bank",
    None)`): an assignment to one replaces the buffer, which the module moves and saves."""
    return {
        node.args[0].value
        for node in ast.walk(cls)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "register_buffer"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def module_class_defs(ctx: ModuleContext) -> Iterator[ast.ClassDef]:
    names = module_classes(ctx)
    for node in nodes_of(ctx, ast.ClassDef):
        if isinstance(node, ast.ClassDef) and node.name in names:
            yield node


_PLAIN_MODULE_BASES = (["nn.Module"], ["torch.nn.Module"], ["Module"])


def stateless_module(ctx: ModuleContext, built: ast.expr, *, mode_free: bool = False) -> bool:
    """A module built by `built` that holds no parameter and no buffer: a parameter-free
    `torch.nn` layer (`nn.ReLU()`, `nn.AvgPool1d(k)`), or a local class whose `__init__`
    builds only such layers (Autoformer's `moving_avg`, a `Swish()` activation). Its output
    needs grad only if its input does. With `mode_free`, a dropout counts as state (it acts
    differently in eval mode)."""
    if not isinstance(built, ast.Call):
        return False
    qual = ctx.flow.qualname_of(built) or ""
    if qual.startswith("torch.nn."):
        last = qual.rsplit(".", 1)[-1]
        return last in PARAMETER_FREE_LAYERS and not (mode_free and last in DROPOUT_LAYERS)
    if not isinstance(built.func, ast.Name):
        return False
    cls = next((c for c in module_class_defs(ctx) if c.name == built.func.id), None)
    init = (
        next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        if cls is not None
        else None
    )
    if cls is None:
        return False
    if init is None and [ast.unparse(b) for b in cls.bases] not in _PLAIN_MODULE_BASES:
        return False  # no `__init__` of its own: a local base may build layers
    for node in walk_tree(init) if init is not None else ():
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if name in ("register_buffer", "register_parameter", "Parameter"):
            return False
        layer = nn_layer(ctx, node)
        local = isinstance(node.func, ast.Name) and node.func.id in module_classes(ctx)
        if (layer or local) and not stateless_module(ctx, node, mode_free=mode_free):
            return False
    return True


def target_torch(ctx: ModuleContext) -> tuple[int, int] | None:
    """The torch version the audited code targets: the configured one, else the installed one."""
    return ctx.config.target_torch or _installed_torch()


@cache
def _installed_torch() -> tuple[int, int] | None:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def visible_training_loop(ctx: ModuleContext) -> ast.stmt | None:
    """The first training loop whose run configuration this module shows.

    A Lightning `training_step` counts only next to the `Trainer(...)` that sets precision
    and compilation; otherwise those settings live in another file.
    """
    for loop in ctx.loops.training_loops:
        if loop.kind == "loop" or "Trainer(" in ctx.source:
            return loop.node
    return None


# Tensor methods ending in `_` that set a flag rather than write the receiver's values.
_FLAG_SETTERS = frozenset({"requires_grad_", "share_memory_", "retain_grad_"})


def inplace_write(node: ast.AST) -> tuple[str, int] | None:
    """(`x`, the line) for an in-place tensor method called on a name (`x.mul_(2)`,
    `x.masked_fill_(m, v)`); flag setters (`requires_grad_`) and dunders write nothing."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.attr.endswith("_")
        and not node.func.attr.startswith("_")
        and node.func.attr not in _FLAG_SETTERS
    ):
        return node.func.value.id, node.lineno
    return None
