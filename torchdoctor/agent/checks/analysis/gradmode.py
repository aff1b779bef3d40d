"""Is autograd recording here? One answer for every rule: 'on', 'off' or 'maybe'.

A `with` block or decorator (`no_grad`, `inference_mode`, `enable_grad`, `set_grad_enabled`),
such a context entered on the exit stack of a `with ExitStack() as stack:` block
(`stack.enter_context(torch.no_grad())`, detectron2's `inference_on_dataset`), a bare
`torch.set_grad_enabled(False)` statement earlier in the same function or script, and the
function's call sites (a helper every local call of which runs under `no_grad` runs without
grad too) decide; a closure never called by name but only handed to calls inside its
enclosing function (a `sample_fn` given to a feature extractor) runs in that function's mode,
unless it escapes (returned, stored, registered as a hook). `set_grad_enabled(phase ==
"train")` and `inference_mode(flag)` are 'maybe': rules that fire when grad is on treat
'maybe' as off, rules that fire when it is off treat it as on, so both stay silent where the
code decides at run time.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Literal

from torchdoctor.agent.checks.analysis.vocabulary import GRAD_OFF, SET_GRAD_ENABLED

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

GradMode = Literal["on", "off", "maybe"]
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_ENABLE_GRAD = frozenset({"torch.enable_grad", "torch.autograd.enable_grad"})
_EXIT_STACKS = frozenset({"contextlib.ExitStack", "contextlib.AsyncExitStack"})
_MAX_CALLER_DEPTH = 3


def _flag(node: ast.expr | None) -> bool | None:
    """A literal True/False (or 1/0), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int):
        return bool(node.value)
    return None


def context_mode(ctx: ModuleContext, expr: ast.expr) -> GradMode | None:
    """What entering `expr` (a `with` item or a decorator) does to autograd; None when it is
    not a grad-mode context."""
    target = expr.func if isinstance(expr, ast.Call) else expr
    qual = ctx.qualname(target)
    if qual in GRAD_OFF:
        if not isinstance(expr, ast.Call):
            return "off"
        switch = (
            expr.args[0]
            if expr.args
            else next((k.value for k in expr.keywords if k.arg == "mode"), None)
        )
        if switch is None:
            return "off"
        flag = _flag(switch)
        return "maybe" if flag is None else ("off" if flag else "on")
    if qual in SET_GRAD_ENABLED and isinstance(expr, ast.Call):
        switch = (
            expr.args[0]
            if expr.args
            else next((k.value for k in expr.keywords if k.arg == "mode"), None)
        )
        flag = _flag(switch)
        return "maybe" if flag is None else ("on" if flag else "off")
    if qual in _ENABLE_GRAD:
        return "on"
    if isinstance(target, ast.Name) and _local_grad_off_wrapper(ctx, target.id):
        return "off"
    if _named_like_grad_off(target) and (qual is None or not qual.startswith("torch.")):
        return "maybe"
    return None


def _local_grad_off_wrapper(ctx: ModuleContext, name: str) -> bool:
    """`name` is a function of this module that runs what it wraps without grad (`def
    nograd(f): def new_f(*args): with t.no_grad(): return f(*args)`, simple-faster-rcnn's
    `@nograd`): a `with` it enters, or a decorator it applies by hand, turns autograd off."""
    memo = ctx.memo_table("gradmode.local_wrappers")
    if name not in memo:
        memo[name] = False  # a wrapper that enters itself says nothing
        memo[name] = any(
            isinstance(node, ast.FunctionDef)
            and node.name == name
            and any(
                (
                    isinstance(inner, ast.With)
                    and any(context_mode(ctx, item.context_expr) == "off" for item in inner.items)
                )
                or (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Call)
                    and context_mode(ctx, inner.func) == "off"
                )
                for inner in ast.walk(node)
            )
            for node in ctx.tree.body
        )
    return bool(memo[name])


def _named_like_grad_off(target: ast.expr) -> bool:
    """A project's own wrapper named for what it does (`@smart_inference_mode()`,
    `with maybe_no_grad(cfg):`): it may choose either mode, so 'maybe'."""
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name.endswith(("inference_mode", "no_grad"))


def function_mode(ctx: ModuleContext, fn: FunctionNode) -> GradMode | None:
    """The mode a function's decorators set for its whole body; None when they set none."""
    modes = [m for d in fn.decorator_list if (m := context_mode(ctx, d)) is not None]
    return modes[-1] if modes else None


def _statement_switches(ctx: ModuleContext, scope: ast.AST) -> list[tuple[int, GradMode]]:
    """(line, mode) of bare `torch.set_grad_enabled(...)` statements directly in `scope`."""
    memo = ctx.memo_table("gradmode.switches")
    key = id(scope)
    found = memo.get(key)
    if found is None:
        found = []
        if _mentions_switch(ctx):
            body = getattr(scope, "body", [])
            for stmt in _straight_statements(body):
                call = stmt.value if isinstance(stmt, ast.Expr) else None
                if isinstance(call, ast.Call) and ctx.qualname(call.func) in SET_GRAD_ENABLED:
                    mode = context_mode(ctx, call)
                    if mode is not None:
                        found.append((stmt.lineno, mode))
        memo[key] = found
    return found


def _mentions_switch(ctx: ModuleContext) -> bool:
    memo = ctx.memo_table("gradmode.mentions_switch")
    if "" not in memo:
        memo[""] = "set_grad_enabled" in ctx.source
    return bool(memo[""])


def _straight_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements of a body and of its `if`/`try`/`with` blocks and loops (not nested defs):
    a training loop's periodic validation block that switches autograd off, validates and
    switches it back on (`if it % every == 0: torch.set_grad_enabled(False) ... True`)."""
    out: list[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.If | ast.With | ast.AsyncWith | ast.For | ast.AsyncFor | ast.While):
            out += _straight_statements(stmt.body)
            out += _straight_statements(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            out += _straight_statements(stmt.body)
    return out


def grad_mode_at(ctx: ModuleContext, node: ast.AST) -> GradMode:
    """Whether autograd records at `node`, from its blocks, its function and its callers."""
    memo = ctx.memo_table("gradmode.at")
    key = id(node)
    found = memo.get(key)
    if found is None:
        found = memo[key] = _mode_at(ctx, node, 0)
    return found


def _mode_at(ctx: ModuleContext, node: ast.AST, depth: int) -> GradMode:
    line = getattr(node, "lineno", 0)
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.With | ast.AsyncWith):
            modes = [m for i in anc.items if (m := context_mode(ctx, i.context_expr)) is not None]
            if modes == ["maybe"]:
                return _switched_by_the_branch(ctx, node, anc) or "maybe"
            if modes:
                return modes[-1]
            stacked = _entered_on_stack(ctx, anc, line)
            if stacked is not None:
                return stacked
        elif isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            decorated = function_mode(ctx, anc)
            if decorated is not None:
                return decorated
            switched = _switch_before(ctx, anc, line)
            if switched is not None:
                return switched
            return _callers_mode(ctx, anc, depth)
        elif isinstance(anc, ast.Lambda | ast.ClassDef):
            return "on"
    return _switch_before(ctx, ctx.tree, line) or "on"


def _entered_on_stack(
    ctx: ModuleContext, block: ast.With | ast.AsyncWith, line: int
) -> GradMode | None:
    """The mode a grad-mode context entered on the block's own exit stack before `line` sets
    (`with ExitStack() as stack: stack.enter_context(torch.no_grad())`): the last one entered
    by a statement of the block's body decides; one entered only under an `if` or in a loop
    of the body makes it 'maybe' (the code chooses at run time). None when the block opens no
    `ExitStack` or enters no grad-mode context on it."""
    stacks = {
        item.optional_vars.id
        for item in block.items
        if isinstance(item.optional_vars, ast.Name)
        and isinstance(item.context_expr, ast.Call)
        and ctx.qualname(item.context_expr.func) in _EXIT_STACKS
    }
    if not stacks:
        return None
    direct = {id(stmt) for stmt in block.body}
    found: GradMode | None = None
    for stmt in _straight_statements(block.body):
        if stmt.lineno >= line:
            break
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "enter_context"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in stacks
            and len(call.args) == 1
        ):
            continue
        mode = context_mode(ctx, call.args[0])
        if mode is not None:
            found = mode if id(stmt) in direct else "maybe"
    return found


def _switched_by_the_branch(
    ctx: ModuleContext, node: ast.AST, block: ast.With | ast.AsyncWith
) -> GradMode | None:
    """Under `with torch.set_grad_enabled(phase == "train"):`, a node on a branch of
    `if phase == "train":` inside the block runs with autograd on (the `else:` off): the
    branch tests the flag that switched it."""
    switch = next(
        (
            i.context_expr
            for i in block.items
            if isinstance(i.context_expr, ast.Call)
            and ctx.qualname(i.context_expr.func) in SET_GRAD_ENABLED
            and i.context_expr.args
        ),
        None,
    )
    if switch is None:
        return None
    flag = ast.dump(switch.args[0])
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if anc is block:
            return None
        if isinstance(anc, ast.If) and child is not anc.test:
            parts = [anc.test]
            if isinstance(anc.test, ast.BoolOp) and isinstance(anc.test.op, ast.And):
                parts = list(anc.test.values)  # `if phase == "train" and step % 10 == 0:`
            if any(ast.dump(part) == flag for part in parts):
                in_body = any(child is stmt for stmt in anc.body)
                if in_body:
                    return "on"
                if len(parts) == 1:
                    return "off"
        child = anc
    return None


def _switch_before(ctx: ModuleContext, scope: ast.AST, line: int) -> GradMode | None:
    earlier = [mode for at, mode in _statement_switches(ctx, scope) if at < line]
    return earlier[-1] if earlier else None


def _callers_mode(ctx: ModuleContext, fn: FunctionNode, depth: int) -> GradMode:
    """A helper runs without grad when every local call of it does ('maybe' when some do)."""
    if depth >= _MAX_CALLER_DEPTH or not _may_switch(ctx):
        return "on"
    memo = ctx.memo_table("gradmode.callers")
    found: GradMode | None = memo.get(id(fn))
    if found is None:
        memo[id(fn)] = "on"  # a recursive call finds no grad-off caller through itself
        sites = ctx.calls.call_sites(fn)
        modes = {_mode_at(ctx, site, depth + 1) for site in sites}
        if not sites and _closure_kept_within(ctx, fn):
            modes = {_mode_at(ctx, fn, depth + 1)}  # runs inside its enclosing function's call
        found = "off" if modes == {"off"} else ("on" if modes <= {"on"} else "maybe")
        memo[id(fn)] = found
    return found


def _closure_kept_within(ctx: ModuleContext, fn: FunctionNode) -> bool:
    """`fn` is defined in another function and only handed to calls there (k-diffusion's
    `sample_fn` given to `compute_features` inside an `@torch.no_grad()` evaluation): it runs
    during that function's call, in its grad mode. Not when it escapes: returned, yielded,
    stored (an attribute, a container) or handed to a `register_*`/hook call that keeps it
    for later."""
    outer = next(
        (a for a in ctx.ancestors(fn) if isinstance(a, ast.FunctionDef | ast.AsyncFunctionDef)),
        None,
    )
    if outer is None:
        return False
    handed = False
    for node in ast.walk(outer):
        if not (isinstance(node, ast.Name) and node.id == fn.name):
            continue
        if isinstance(node.ctx, ast.Store):
            continue
        holder = ctx.parents.get(node)
        if not isinstance(holder, ast.Call) or node not in holder.args:
            return False  # returned, yielded, stored, or called through another name
        func = holder.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called.startswith("register") or "hook" in called.lower():
            return False
        handed = True
    return handed


def _may_switch(ctx: ModuleContext) -> bool:
    """Whether the module can turn autograd off at all (else every caller runs with it on)."""
    memo = ctx.memo_table("gradmode.may_switch")
    if "" not in memo:
        text = ctx.source
        memo[""] = "no_grad" in text or "inference_mode" in text or "set_grad_enabled" in text
    return bool(memo[""])


def grad_off_in_function(ctx: ModuleContext, node: ast.AST) -> bool:
    """Whether the function holding `node` itself may turn autograd off around it (a `with`
    block, a decorator, a `set_grad_enabled(False)` before it), whatever its callers do: a
    helper that runs a model under its own `no_grad` for every caller."""
    line = getattr(node, "lineno", 0)
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.With | ast.AsyncWith):
            modes = [m for i in anc.items if (m := context_mode(ctx, i.context_expr)) is not None]
            if modes:
                return modes[-1] != "on"
            stacked = _entered_on_stack(ctx, anc, line)
            if stacked is not None:
                return stacked != "on"
        elif isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            mode = function_mode(ctx, anc) or _switch_before(ctx, anc, line)
            return mode is not None and mode != "on"
        elif isinstance(anc, ast.Lambda | ast.ClassDef):
            return False
    return False


def grad_may_be_off(ctx: ModuleContext, node: ast.AST) -> bool:
    """For rules that fire when autograd records: silent under 'off' and 'maybe'."""
    return grad_mode_at(ctx, node) != "on"


def grad_surely_off(ctx: ModuleContext, node: ast.AST) -> bool:
    """For rules that fire when autograd is off: silent under 'on' and 'maybe'."""
    return grad_mode_at(ctx, node) == "off"


def is_grad_off_context(ctx: ModuleContext, expr: ast.expr) -> bool:
    """A `with` item or decorator that surely turns autograd off."""
    return context_mode(ctx, expr) == "off"
