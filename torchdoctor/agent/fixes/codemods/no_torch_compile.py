"""no-torch-compile: compile the model, and the loss the training loop computes from its
output, before the loop, on GPU runs."""

from __future__ import annotations

import ast
from collections import Counter

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    dotted_name,
    method_call,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.common import (
    defined_functions,
    flagged_loop,
    is_wrapped,
    iteration_loop,
    models_called_in,
    named_like_model,
)
from torchdoctor.agent.fixes.codemods.step_graph import step_graph
from torchdoctor.agent.fixes.models import FixKind, FixTarget

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
"""torch.compile's modes in order of cost (compile time, then CUDA-graph memory); the last is
autotuning and CUDA graphs together, which can win where each alone stays in the noise."""
COMPILE_SCOPES = ("model", "step")
"""What one compiled graph holds: the model (`model.compile()`, the loss compiled apart), or
the training step's forward and loss as one function (`step_graph`)."""
COMPILER_HOST_MB = 16384
"""Host memory for Inductor's compile workers on top of the script's own limit: one worker per
core, each importing torch and Triton (about 0.3-0.5 GB); max-autotune benchmarks kernels in
them too. The verification runs report the peak they reached."""
FUNCTIONAL_LOSSES = frozenset(
    f"torch.nn.functional.{name}"
    for name in (
        "cross_entropy",
        "nll_loss",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "mse_loss",
        "l1_loss",
        "smooth_l1_loss",
        "huber_loss",
        "kl_div",
    )
)
"""Pure functions of their arguments: compiling one changes nothing but its kernels."""


class NoTorchCompileFix(Codemod):
    """Inserts `model.compile()` (in place, so `state_dict()` keys keep their names, unlike
    `model = torch.compile(model)`) before the outermost loop that trains it, guarded by
    `torch.cuda.is_available()`: compilation pays on GPU kernels; CPU runs stay eager.
    `target.data["compile_mode"]` (set by the compile ladder) picks a mode other than the
    default."""

    rule = "no-torch-compile"
    kind = FixKind.PERFORMANCE
    summary = "model.compile() before the training loop on CUDA"
    rtol = BF16_RTOL
    extra_host_memory_mb = COMPILER_HOST_MB
    cuda_only = True  # the compile is guarded by torch.cuda.is_available()

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        plan = _plan(ctx, target)
        if isinstance(plan, str):
            return ctx.decline(plan)
        loop, models = plan
        outer: cst.CSTNode = loop
        for anc in ctx.ancestors(loop):
            if isinstance(anc, cst.FunctionDef | cst.ClassDef):
                break
            if isinstance(anc, cst.For | cst.While):
                outer = anc
        mode = target.data.get("compile_mode", "default")
        arguments = "" if mode == "default" else f'mode="{mode}"'
        torch = ctx.require_module("torch")
        compiled = [f"{model}.compile({arguments})" for model in models]
        step = target.data.get("compile_scope", "model") == "step"
        if step:
            function = _compile_step(ctx, loop, outer, models, f"{torch}.compile", arguments)
            if function is None:
                return False
            compiled.append(function)
        else:
            compiled.extend(_compile_losses(ctx, loop, outer, torch))
        block = "".join(f"    {line}\n" for line in compiled)
        guarded = f"if {torch}.cuda.is_available():\n{block}"
        ctx.insert_before(outer, [_after_blank_line(guarded)] if step else guarded)
        return True


def _compile_step(
    ctx: SourceContext,
    loop: cst.For | cst.While,
    outer: cst.CSTNode,
    models: list[str],
    compile_call: str,
    arguments: str,
) -> str | None:
    """Moves the step's forward and loss into one function before `outer` (`step_graph`);
    the line that compiles it, or None once it declined on `ctx`."""
    if len(models) != 1:
        ctx.decline("the step trains several models: each compiles on its own")
        return None
    graph = step_graph(ctx, loop, outer, models[0], _names_in_use(ctx.source))
    if isinstance(graph, str):
        ctx.decline(graph)
        return None
    ctx.insert_before(outer, [_after_blank_line(graph.function)])
    first, *rest = graph.statements
    ctx.substitute(first, cst.parse_statement(graph.call))
    for statement in rest:
        ctx.remove(statement)
    compiling = ", ".join(filter(None, [graph.name, arguments]))
    return f"{graph.name} = {compile_call}({compiling})"


def _plan(ctx: SourceContext, target: FixTarget) -> tuple[cst.For | cst.While, list[str]] | str:
    """The training loop to compile before and the models it trains, or why there is none."""
    if any(
        method_call(c, "compile") or ctx.qualname(c.func) == "torch.compile"
        for c in ctx.find(cst.Call)
    ):
        return "something in this file is compiled already: one compile plan per file"
    if target.data.get("compile_mode", "default") not in COMPILE_MODES:
        return f"unknown compile mode {target.data.get('compile_mode')!r}"
    if target.data.get("compile_scope", "model") not in COMPILE_SCOPES:
        return f"unknown compile scope {target.data.get('compile_scope')!r}"
    loop = flagged_loop(ctx, target)
    if loop is None:
        return "no training loop this fix can follow at the finding (its step is in a helper)"
    loop = iteration_loop(ctx, loop)
    models = _trained_models(ctx, loop, target)
    if not models:
        return (
            "the loop calls no model this fix can name (none, or several handed to a "
            "helper): compile each model where it is built"
        )
    for model in models:
        builder = _rebuilt_by(ctx, loop, model)
        if builder is not None:
            function, method = builder
            return (
                f"`{model}` is built anew by `self.{method}(...)` every time `{function}` runs: "
                "compiled here, each new module would compile again on every call; keep one "
                "clone (copy the weights into it) and compile that once"
            )
    if len(models) > 1 and any(is_wrapped(ctx, m) for m in models):
        return (
            "the loop trains several models, some wrapped (DDP, DataParallel): compile each "
            "where it is built, before wrapping"
        )
    return loop, models


def _rebuilt_by(
    ctx: SourceContext, loop: cst.For | cst.While, model: str
) -> tuple[str, str] | None:
    """(the loop's method, the method it calls before the loop that assigns `model`) when a
    method of the class rebuilds `self.<model>` on each call of the loop's own method
    (DomainBed's Fish: `update` calls `self.create_clone(...)`, which builds
    `self.network_inner` anew, then trains it over the step's minibatches)."""
    if not model.startswith("self."):
        return None
    function = next((a for a in ctx.ancestors(loop) if isinstance(a, cst.FunctionDef)), None)
    block = ctx.parent(function) if function is not None else None
    owner = ctx.parent(block) if block is not None else None
    if function is None or not isinstance(owner, cst.ClassDef):
        return None
    builders = {
        method.name.value
        for method in ctx.find(cst.FunctionDef, inside=owner.body)
        if method.name.value != "__init__"
        and any(
            dotted_name(t.target) == model
            for assign in ctx.find(cst.Assign, inside=method)
            for t in assign.targets
        )
    }
    for call in ctx.find(cst.Call, inside=function.body):
        if ctx.line(call) >= ctx.line(loop):
            break
        name = dotted_name(call.func)
        if name is not None and name.startswith("self.") and name[5:] in builders:
            return function.name.value, name[5:]
    return None


def _trained_models(ctx: SourceContext, loop: cst.For | cst.While, target: FixTarget) -> list[str]:
    """The model the loop calls, else every model the module builds that the loop calls (a
    GAN's generator and discriminator), else the one model-like name it hands to a helper
    (`loss = compute_loss(model, x, y)`, `train_step(model, batch)`)."""
    hint = target.data.get("model")
    called = models_called_in(ctx, loop.body, hint)
    if called:
        return called
    functions = defined_functions(ctx)
    handed = {
        name
        for call in ctx.find(cst.Call, inside=loop.body)
        for arg in call.args
        if (name := dotted_name(arg.value)) is not None
        and (name == hint or named_like_model(name))
        and name not in functions
    }
    return [handed.pop()] if len(handed) == 1 else []


def _compile_losses(
    ctx: SourceContext, loop: cst.CSTNode, outer: cst.CSTNode, torch: str
) -> list[str]:
    """The lines that compile the losses the loop computes outside the model: a loss module
    built in the same scope (`criterion.compile()`), or a functional loss bound to a local
    name the loop then calls (`cross_entropy = F.cross_entropy` before the loop, compiled on
    CUDA). Left eager, a cross-entropy over a large vocabulary upcasts and materialises the
    logits several times per step (the GPT-2 trainer's eager loss was among its top kernels
    on an H200); compiled, its softmax and gradient fuse into a few passes."""
    lines: list[str] = []
    modules = _loss_modules(ctx, scope_of(ctx, loop))
    functions: dict[str, list[cst.Call]] = {}
    for call in ctx.find(cst.Call, inside=loop):
        name = dotted_name(call.func)
        if name in modules and f"{name}.compile()" not in lines:
            lines.append(f"{name}.compile()")
        elif ctx.qualname(call.func) in FUNCTIONAL_LOSSES and name is not None:
            functions.setdefault(name, []).append(call)
    bound = _names_in_use(ctx.source)
    for written, calls in functions.items():
        local = written.rsplit(".", 1)[-1]
        if local in bound:
            continue  # the name is taken: that loss stays eager rather than shadow anything
        ctx.insert_before(outer, f"{local} = {written}\n")
        for call in calls:
            ctx.substitute(call.func, cst.Name(local))
        lines.append(f"{local} = {torch}.compile({local})")
    return lines


def _names_in_use(source: str) -> set[str]:
    """Every name the module binds or reads (attributes and keywords aside)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _loss_modules(ctx: SourceContext, scope: cst.CSTNode) -> set[str]:
    """Names bound once in `scope` to a `torch.nn` loss module (`nn.CrossEntropyLoss()`), and
    to nothing else."""
    losses: Counter[str] = Counter()
    others: set[str] = set()
    for assign in ctx.find(cst.Assign, inside=scope):
        for target in assign.targets:
            name = dotted_name(target.target)
            value = assign.value
            qualified = ctx.qualname(value.func) if isinstance(value, cst.Call) else None
            if name is None:
                continue
            if qualified and qualified.startswith("torch.nn.") and qualified.endswith("Loss"):
                losses[name] += 1
            else:
                others.add(name)
    return {name for name, count in losses.items() if count == 1 and name not in others}


def _after_blank_line(code: str) -> cst.BaseStatement:
    """One statement that a blank line sets apart from the code above it."""
    return cst.parse_statement(code).with_changes(leading_lines=[cst.EmptyLine(indent=False)])
