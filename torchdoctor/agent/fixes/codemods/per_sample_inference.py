"""per-sample-inference: replay a one-sample forward as a CUDA graph."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    dotted_name,
    method_call,
    not_parsed,
)
from torchdoctor.agent.fixes.codemods.common import ancestors_below
from torchdoctor.agent.fixes.codemods.no_torch_compile import COMPILER_HOST_MB
from torchdoctor.agent.fixes.models import FixKind, FixTarget

BATCHING = (
    "batching the samples does more than CUDA graphs but moves the loop's per-sample logic: "
    "needs a human"
)


class PerSampleInferenceFix(Codemod):
    """Inserts `model = torch.compile(model, mode="reduce-overhead")` before the loop,
    guarded by `torch.cuda.is_available()`: the one-sample forward, launch-bound, is replayed
    as one CUDA graph. The name is rebound rather than compiled in place, so a harness that
    hooks module calls still sees the wrapper run (a `state_dict()` taken from it gains an
    `_orig_mod.` prefix, rarely wanted in an inference loop). A replay reuses its output
    memory, so every `y = model(x)` in the loop becomes `y = model(x).clone()` (outputs kept
    across iterations stay valid). Applied only where each model call in the loop is the
    whole value of an assignment; elsewhere (a view of the output kept,
    `outputs.append(model(x)[0])`) the clone's place is not mechanical. Batching is the
    larger gain and is left to a human."""

    rule = "per-sample-inference"
    kind = FixKind.PERFORMANCE
    summary = 'torch.compile(model, mode="reduce-overhead") before a one-sample inference loop'
    rtol = BF16_RTOL
    extra_host_memory_mb = COMPILER_HOST_MB

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        plan = self._plan(ctx, target)
        if isinstance(plan, str):
            return False
        loop, model, calls = plan
        for call in calls:
            ctx.replace(call, _cloned)
        torch = ctx.require_module("torch")
        ctx.insert_before(
            loop,
            f"if {torch}.cuda.is_available():\n"
            f'    {model} = {torch}.compile({model}, mode="reduce-overhead")\n',
        )
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
        plan = self._plan(ctx, target)
        return f"{plan}; {BATCHING}" if isinstance(plan, str) else None

    def _plan(
        self, ctx: SourceContext, target: FixTarget
    ) -> tuple[cst.For, str, list[cst.Call]] | str:
        """(loop, model, the model calls to clone), or why not."""
        if any(
            method_call(c, "compile") or ctx.qualname(c.func) == "torch.compile"
            for c in ctx.find(cst.Call)
        ):
            return "the module already compiles something"
        loops = [loop for loop in ctx.find(cst.For) if ctx.line(loop) == target.line]
        model = target.data.get("model")
        if not loops or not isinstance(model, str):
            return "the flagged loop is not where the finding says"
        loop = loops[0]
        calls = [
            c
            for c in ctx.find(cst.Call, inside=loop.body)
            if dotted_name(c.func) in (model, f"{model}.forward")
        ]
        if not calls:
            return f"{model} is not called in the loop"
        handed = _handed_to(ctx, loop, model)
        if handed is not None:
            return (
                f"{model} is also handed to `{handed}(...)`, which may hold one output while it "
                "makes the next (a CUDA graph replay overwrites it): compile a copy for the "
                "direct call only, or clone in the helper"
            )
        if _global_in_function(ctx, loop, model):
            return (
                f"{model} is a module-level name used in a function: rebound there, it would "
                "turn local (UnboundLocalError); compile it where it is built"
            )
        for call in calls:
            parent = ctx.parent(call)
            if not (isinstance(parent, cst.Assign) and parent.value is call):
                return f"`{ctx.code(call)}` is not the whole value of an assignment"
            if any(
                isinstance(a, cst.FunctionDef | cst.Lambda)
                for a in ancestors_below(ctx, call, loop)
            ):
                return f"`{ctx.code(call)}` runs in a function defined in the loop"
            if any(isinstance(t.target, cst.Tuple | cst.List) for t in parent.targets):
                fed_back = _fed_back(ctx, parent, call)
                if fed_back is not None:
                    return (
                        f"`{fed_back}`, an output of `{ctx.code(call.func)}(...)`, goes back "
                        "into it on the next step (a KV cache grows every step, and a CUDA "
                        "graph replays one shape)"
                    )
                return (
                    f"`{ctx.code(parent.targets[0].target)} = ...` unpacks several outputs: "
                    "`.clone()` is a tensor's; clone each output by hand"
                )
            output = dotted_name(parent.targets[0].target) if len(parent.targets) == 1 else None
            if output is not None and _read_as_structure(ctx, loop, output):
                return (
                    f"`{output}` is read by key or attribute (a dict or a model output "
                    "object): `.clone()` is a tensor's; copy each field by hand"
                )
        return loop, model, calls


_TENSOR_ATTRIBUTES = frozenset(
    {"shape", "dtype", "device", "ndim", "T", "mT", "H", "data", "grad", "is_cuda", "real", "imag"}
)
"""Attributes a tensor has (SRGAN's `out.data[0]`): reading one says nothing of a structure."""


def _handed_to(ctx: SourceContext, loop: cst.For, model: str) -> str | None:
    """The call in the loop that takes `model` as an argument (`sliding_predict(model, x)`):
    rebound to its compiled form, the model runs there too, where no output is cloned."""
    for call in ctx.find(cst.Call, inside=loop.body):
        if any(dotted_name(arg.value) == model for arg in call.args):
            return ctx.code(call.func)
    return None


def _global_in_function(ctx: SourceContext, loop: cst.For, model: str) -> bool:
    """`model` is read in the loop's function without being bound there (SRGAN's
    `upscale(frames)` calling the module's `model`)."""
    function = next((a for a in ctx.ancestors(loop) if isinstance(a, cst.FunctionDef)), None)
    if function is None or "." in model:
        return False
    if model in _parameters_of(ctx, loop):
        return False
    bound = {
        dotted_name(t.target)
        for assign in ctx.find(cst.Assign, inside=function)
        for t in assign.targets
    }
    return model not in bound


def _parameters_of(ctx: SourceContext, node: cst.CSTNode) -> set[str]:
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef):
            params = anc.params
            every = [*params.posonly_params, *params.params, *params.kwonly_params]
            return {p.name.value for p in every}
    return set()


def _read_as_structure(ctx: SourceContext, loop: cst.For, name: str) -> bool:
    """`out["logits"]` or `out.logits` in the loop: the model returns no tensor."""
    for node in ctx.find(cst.Subscript, inside=loop.body):
        if dotted_name(node.value) == name and any(
            isinstance(e.slice, cst.Index) and isinstance(e.slice.value, cst.SimpleString)
            for e in node.slice
        ):
            return True
    return any(
        dotted_name(a.value) == name
        and a.attr.value not in _TENSOR_ATTRIBUTES
        and not isinstance(ctx.parent(a), cst.Call)
        for a in ctx.find(cst.Attribute, inside=loop.body)
    )


def _fed_back(ctx: SourceContext, assign: cst.Assign, call: cst.Call) -> str | None:
    """A name the assignment binds from the model's output that the same call also takes
    (`logits, kv_cache = model(x, past_kv=kv_cache)`): the output is the next step's input."""
    bound = {n.value for t in assign.targets for n in ctx.find(cst.Name, inside=t.target)}
    taken = (n.value for arg in call.args for n in ctx.find(cst.Name, inside=arg.value))
    return next((name for name in taken if name in bound), None)


def _cloned(node: cst.CSTNode) -> cst.CSTNode:
    if not isinstance(node, cst.Call):
        return node
    return cst.Call(func=cst.Attribute(value=node, attr=cst.Name("clone")))
