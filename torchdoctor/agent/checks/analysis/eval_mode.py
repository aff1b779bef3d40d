"""Whether a model is in eval mode where it runs: an `.eval()` before a call (in its function,
around its loop, or before a call of that function up to three callers up), a model built in
eval mode, and, per function imported from another file, the mode each call of it here runs
in (the facts the project pass of the evaluation and inference rules reads)."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.project import project_function_calls
from torchdoctor.agent.checks.analysis.reachability import mode_text
from torchdoctor.agent.checks.analysis.vocabulary import MODEL_RUN_METHODS, builds_network
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import may_name
from torchdoctor.agent.checks.patterns import kwarg, peel_mode_calls

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext
    from torchdoctor.agent.checks.dataflow import FunctionNode

_MAX_CALLER_DEPTH = 3
# Libraries whose `from_pretrained` returns the model already in eval mode.
_EVAL_MODE_LOADERS = ("transformers.", "diffusers.")
# Module methods that return the module itself in the mode it was in.
_MODE_KEEPING = frozenset({"to", "cuda", "cpu", "float", "half", "bfloat16", "requires_grad_"})


def model_of(call: ast.Call) -> ast.expr:
    """`model` in `model(x)` and `model.forward(x)`, and in a method that runs it
    (`generator.module.infer(x)`: the wrapper's `.module` is the same network)."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        return func.value
    if isinstance(func, ast.Attribute) and func.attr in MODEL_RUN_METHODS:
        owner = func.value
        while isinstance(owner, ast.Attribute) and owner.attr == "module":
            owner = owner.value
        return owner
    return func


def runs_model_method(ctx: ModuleContext, call: ast.Call) -> bool:
    """`generator.module.infer(x)`, `model.generate(ids)`: a method that runs a network,
    called on a value that holds one."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in MODEL_RUN_METHODS
        and ctx.flow.is_module_value(model_of(call))
    )


def model_anchor(model: ast.expr) -> dict[str, str]:
    """A finding's `model` anchor for its codemod: the model's name (`model`, `self.net`),
    none when the model is an expression a codemod cannot name (`models[i]`, a call)."""
    return {"model": ast.unparse(model)} if isinstance(model, ast.Name | ast.Attribute) else {}


def eval_before(ctx: ModuleContext, site: ast.Call, depth: int = 0) -> bool:
    """An `.eval()` runs before `site`: earlier in its function (or around its loop), or
    before a call of that function in this module (up to three levels of callers). Memoised
    per call site and depth: callers are found by name, so a module of many same-named
    functions reaches one site along many paths (torch's sources: 230k calls for 4k asked)."""
    memo = ctx.memo_table("eval_mode.eval_before")
    key = (id(site), depth)
    if key not in memo:
        memo[key] = _eval_before(ctx, site, depth)
    return memo[key]  # type: ignore[no-any-return]


def _eval_before(ctx: ModuleContext, site: ast.Call, depth: int) -> bool:
    if "eval" in ctx.source and _under_an_eval_mode_helper(ctx, site):
        return True
    if not mode_text(ctx.source, "eval") or not ctx.flow.calls_reaching("eval"):
        return False  # no call of the module sets eval mode, here or through a local function
    caller = ctx.enclosing_function(site)
    # not through `site` itself: `main()` reaches the `.eval()` of main's other branches
    if ctx.flow.reaches_method(statements_before(ctx, caller, site), "eval", excluding=site):
        return _last_switch_before(ctx, caller, site) != "train"
    if caller is None or depth + 1 >= _MAX_CALLER_DEPTH:
        return False
    return any(eval_before(ctx, s, depth + 1) for s in ctx.flow.callers.get(caller.name, []))


# Decorators and context managers that put a model in eval mode for their extent and restore
# its mode after (k-diffusion's `K.utils.eval_mode(model)`, `evaluating(model)`).
_EVAL_MODE_HELPERS = frozenset({"eval_mode", "evaluating", "in_eval_mode", "evaluation_mode"})


def _under_an_eval_mode_helper(ctx: ModuleContext, site: ast.AST) -> bool:
    """`site` runs inside `with eval_mode(model):` or in a function decorated
    `@eval_mode(model)` (also a function nested in one: a sampling closure): the helper given
    a model switches it to eval mode for the extent and restores it after."""
    for ancestor in ctx.ancestors(site):
        helpers: list[ast.expr] = []
        if isinstance(ancestor, ast.With | ast.AsyncWith):
            helpers = [item.context_expr for item in ancestor.items]
        elif isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            helpers = list(ancestor.decorator_list)
        for helper in helpers:
            if not isinstance(helper, ast.Call) or not helper.args:
                continue
            func = helper.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _EVAL_MODE_HELPERS:
                return True
    return False


def _last_switch_before(
    ctx: ModuleContext, caller: FunctionNode | None, site: ast.Call
) -> str | None:
    """The mode the last direct `.eval()`/`.train()` of the caller sets before `site` runs:
    the latest one above it, or, with none above, the latest of the loop around it (run at
    the end of the previous iteration). A diffusion trainer's sampling block `net_model.eval()
    ... net_model.train()` earlier in the step leaves the model training when `evaluate(...)`
    runs."""
    body = caller.body if caller is not None else ctx.tree.body
    switches = [
        (node.lineno, node.col_offset, mode)
        for node in walk_scope(body)
        if isinstance(node, ast.Call)
        and node is not site
        and (mode := ctx.flow.mode_method(node)) is not None
    ]
    above = [s for s in switches if (s[0], s[1]) < (site.lineno, site.col_offset)]
    if above:
        return max(above)[2]
    loop = next(
        (a for a in ctx.ancestors(site) if isinstance(a, ast.For | ast.AsyncFor | ast.While)),
        None,
    )
    if loop is None:
        return None
    end = loop.end_lineno or loop.lineno
    inside = [s for s in switches if loop.lineno <= s[0] <= end]
    return max(inside)[2] if inside else None


def mode_calls(ctx: ModuleContext) -> dict[str, list[bool]]:
    """Per function imported from another file of the project, whether each call of it here
    runs after an `.eval()` (or is given a model built in eval mode). Computed once per
    module: both rules on evaluation and inference paths publish it."""
    memo = ctx.memo_table("eval_mode.mode_calls")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: dict[str, list[bool]] = {}
    if ctx.test_module:
        memo[""] = found  # a unit test runs the helper on a stub model: not an evaluation run
        return found
    for symbol, site in project_function_calls(ctx):
        arguments = [*site.args, *(k.value for k in site.keywords)]
        in_eval = eval_before(ctx, site) or any(
            isinstance(a, ast.Name | ast.Attribute) and model_put_in_eval(ctx, a) for a in arguments
        )
        found.setdefault(symbol, []).append(in_eval)
    memo[""] = found
    return found


def statements_before(
    ctx: ModuleContext, caller: FunctionNode | None, site: ast.Call
) -> list[ast.stmt]:
    """The caller's statements that can run before `site`: those starting before it, and
    the whole loop around it (a later statement runs before the next iteration's call).
    An `.eval()` only after the last evaluation (word_language_model's ONNX export at the
    end of the script) does not put the evaluation in eval mode."""
    limit = site.lineno
    for anc in ctx.ancestors(site):
        if anc is caller:
            break
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            limit = max(limit, anc.end_lineno or anc.lineno)
    body = caller.body if caller is not None else ctx.tree.body
    holding = {id(anc) for anc in ctx.ancestors(site)}
    return [
        reaching
        for stmt in body
        if stmt.lineno <= limit
        and not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for reaching in _reaching(stmt, holding)
    ]


def _reaching(stmt: ast.stmt, holding: set[int]) -> list[ast.stmt]:
    """What of `stmt` can run before a later call: all of it, but of an `if` whose body
    ends the function (`if opts.test_only: model.eval(); validate(...); return`, DeepLabV3+'s
    main) only its `else`, unless the call is inside it."""
    if (
        isinstance(stmt, ast.If)
        and id(stmt) not in holding
        and stmt.body
        and isinstance(stmt.body[-1], ast.Return | ast.Raise)
    ):
        return stmt.orelse
    return [stmt]


def model_put_in_eval(ctx: ModuleContext, model: ast.expr) -> bool:
    """`model = Net().eval()`, a Hugging Face `from_pretrained` (it returns the model in
    eval mode), or `.eval()` called on this very attribute (`self.model`)."""
    if not may_name(ctx.source, "eval") and "from_pretrained" not in ctx.source:
        return False  # none of the three can hold: spares the def-use chains
    for source in ctx.flow.sources(model):
        if isinstance(source, ast.Call) and _loads_in_eval_mode(ctx, source):
            return True
        if _switched_before_binding(ctx, source):
            return True
        for sub in walk_tree(source):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr == "eval"
                and not sub.args
                and not _bound_for_its_own_run(ctx, sub, model)
            ):
                return True
    if not isinstance(model, ast.Attribute):
        return False
    return ast.unparse(model) in _eval_receivers(ctx)


def _bound_for_its_own_run(ctx: ModuleContext, switch: ast.Call, model: ast.expr) -> bool:
    """`self.model = self.model.eval()` at the top of a method that then runs `self.model`
    itself (an unsupervised runner's `evaluate`), or in a method of another class than the
    one reading `self.model` (a sibling runner's): that binding puts the model in eval mode
    for that method's own run, not for every method that reads the attribute. A read in the
    binding method itself still counts as switched."""
    receiver = ast.unparse(model)
    if not receiver.startswith("self."):
        return False
    reader, binder = ctx.enclosing_class(model), ctx.enclosing_class(switch)
    if reader is not None and binder is not None and reader is not binder:
        return True
    fn = ctx.enclosing_function(switch)
    if fn is None or fn is ctx.enclosing_function(model):
        return False  # read after the switch in the same method: it is in eval mode there
    return fn.name != "__init__" and _runs_it_after(ctx, switch, receiver)


def _switched_before_binding(ctx: ModuleContext, source: ast.expr) -> bool:
    """`model.eval(); self.model = model.to(device)` (Real-ESRGAN's `RealESRGANer`): the
    value bound is a local model that its function put in eval mode before the binding (moves
    and casts keep the mode)."""
    base = peel_mode_calls(source)
    if not isinstance(base, ast.Name) or ".train(" in ast.unparse(source):
        return False
    scope = ctx.enclosing_function(source)
    return any(
        isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == base.id
        and not call.args
        and call.lineno < source.lineno
        and ctx.enclosing_function(call) is scope
        for call in ctx.flow.calls_named(("eval",))
    )


def _eval_receivers(ctx: ModuleContext) -> frozenset[str]:
    """The text of every receiver of an `.eval(...)` call in the module (once per module,
    not a scan of every call per argument asked about), but not of one made by a function
    that then runs that model itself: Time-Series-Library's `test()` switching `self.model`
    to eval mode says nothing of `vali()`, which runs it too."""
    memo = ctx.memo_table("eval_mode.eval_receivers")
    if "" not in memo:
        memo[""] = frozenset(
            receiver
            for n in ctx.flow.calls_named(("eval",))
            if isinstance(n.func, ast.Attribute)
            and not _runs_it_after(ctx, n, receiver := ast.unparse(n.func.value))
        )
    return memo[""]  # type: ignore[no-any-return]


def _runs_it_after(ctx: ModuleContext, switch: ast.Call, receiver: str) -> bool:
    """The function that calls `receiver.eval()` calls `receiver(...)` after it, itself or
    through a local helper (Informer's `test()`: `self.model.eval()`, then
    `self._process_one_batch(...)`, which runs `self.model`)."""
    fn = ctx.enclosing_function(switch)
    if fn is None:
        return False
    if _runs(fn.body, receiver, after=switch.lineno):
        return True
    return any(
        site.lineno > switch.lineno and _runs(helper.body, receiver)
        for site, helper in ctx.calls.callees(fn.body)
        if helper is not fn
    )


def _runs(body: list[ast.stmt], receiver: str, after: int = 0) -> bool:
    return any(
        isinstance(node, ast.Call)
        and node.lineno > after
        and ast.unparse(node.func) in (receiver, f"{receiver}.forward")
        for node in walk_scope(body)
    )


def builds_pretrained_network(ctx: ModuleContext, call: ast.Call) -> bool:
    """A model zoo's factory asked for trained weights: torchvision's `inception_v3(weights=
    Inception_V3_Weights.IMAGENET1K_V1)` or `resnet50(pretrained=True)`, `timm.create_model(
    name, pretrained=True)`, `torch.hub.load(repo, name, pretrained=True)`. Unlike a
    transformers `from_pretrained`, these return the network in training mode."""
    qual = ctx.flow.qualname_of(call) or ""
    if qual.startswith(_EVAL_MODE_LOADERS) or not (
        builds_network(qual) or qual == "torch.hub.load"
    ):
        return False
    weights, pretrained = kwarg(call, "weights"), kwarg(call, "pretrained")
    if weights is not None and not (isinstance(weights, ast.Constant) and weights.value is None):
        return True
    return isinstance(pretrained, ast.Constant) and pretrained.value is True


def _loads_in_eval_mode(ctx: ModuleContext, call: ast.Call) -> bool:
    """`GPT2LMHeadModel.from_pretrained(name)` (transformers, diffusers): `from_pretrained`
    calls `model.eval()` before returning; moves and casts that return the module keep its
    mode (`CLIPSegForImageSegmentation.from_pretrained(name).to(device)`), `.train()` not."""
    while (
        isinstance(call.func, ast.Attribute)
        and call.func.attr in _MODE_KEEPING
        and isinstance(call.func.value, ast.Call)
    ):
        call = call.func.value
    qual = ctx.flow.qualname_of(call) or ""
    return qual.startswith(_EVAL_MODE_LOADERS) and qual.endswith(".from_pretrained")


def train_mode_after_eval(
    ctx: ModuleContext, owner: FunctionNode | None, call: ast.Call
) -> ast.Call | None:
    """The `model.train()` that undoes an earlier `model.eval()` before `call` runs the model
    (MultiBench's validation loop: `model.eval()`, then `model.train()` before each batch).
    Only a switch on every path to the call counts (`if mc_dropout: model.train()` is a
    choice), and not when the call repeats passes over one input (`for _ in range(T)`:
    Monte-Carlo dropout keeps dropout on on purpose)."""
    model = ast.unparse(model_of(call))
    here = (call.lineno, call.col_offset)
    switches = sorted(
        (
            (node.lineno, node.col_offset, mode, node)
            for node in walk_scope(owner.body if owner is not None else ctx.tree.body)
            if isinstance(node, ast.Call)
            and (node.lineno, node.col_offset) < here
            and (mode := ctx.flow.mode_method(node)) is not None
            and isinstance(node.func, ast.Attribute)
            and ast.unparse(node.func.value) == model
        ),
        key=lambda item: item[:2],
    )
    if len(switches) < 2 or switches[-1][2] != "train":
        return None
    if not any(mode == "eval" for _, _, mode, _ in switches[:-1]):
        return None
    switch = switches[-1][3]
    if not _runs_before(ctx, switch, call) or _repeated_passes(ctx, owner, call):
        return None
    return switch


def _runs_before(ctx: ModuleContext, first: ast.AST, then: ast.AST) -> bool:
    """`first`'s statement precedes, in one block, a statement holding `then`: it runs on
    every path to it (structured code; an early `continue` aside)."""
    stmt: ast.AST | None = first
    while stmt is not None and not isinstance(stmt, ast.stmt):
        stmt = ctx.parents.get(stmt)
    parent = ctx.parents.get(stmt) if stmt is not None else None
    if stmt is None or parent is None:
        return False
    holding = {id(anc) for anc in ctx.ancestors(then)}
    for _, value in ast.iter_fields(parent):
        if isinstance(value, list) and any(item is stmt for item in value):
            index = next(i for i, item in enumerate(value) if item is stmt)
            return any(id(later) in holding for later in value[index + 1 :])
    return False


def _repeated_passes(ctx: ModuleContext, owner: FunctionNode | None, call: ast.Call) -> bool:
    """The call's innermost loop counts passes (`for _ in range(n)`) instead of batches."""
    for anc in ctx.ancestors(call):
        if anc is owner:
            return False
        if isinstance(anc, ast.For | ast.AsyncFor | ast.ListComp | ast.GeneratorExp):
            it = anc.iter if isinstance(anc, ast.For | ast.AsyncFor) else anc.generators[0].iter
            return (
                isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
            )
        if isinstance(anc, ast.While):
            return True
    return False
