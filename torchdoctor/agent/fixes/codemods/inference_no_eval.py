"""inference-no-eval: put the model in eval mode before a predict/serve path uses it."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.common import model_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class InferenceNoEvalFix(Codemod):
    """Inserts `model.eval()` before the first forward of the flagged inference path. Refused
    when the name called builds the network the code then loads or puts in eval mode (a
    constructor looked up by name), or when the model is run through a helper."""

    rule = "inference-no-eval"
    kind = FixKind.CORRECTNESS
    summary = "call model.eval() before the first forward of the inference path"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        flagged = ctx.find(cst.FunctionDef, within=(target.line, target.line))
        if flagged:
            scope: cst.CSTNode = flagged[-1]
        else:
            calls = ctx.find(cst.Call, within=(target.line, target.end_line))
            if not calls:
                return ctx.decline("no call at the finding")
            scope = scope_of(ctx, calls[0])
        model = model_called_in(ctx, scope, target.data.get("model"))
        if model is None:
            return ctx.decline(
                "the model is not called by a plain name here (a helper or a container runs "
                "it): call `.eval()` on it before the inference"
            )
        built = _network_built_by(ctx, scope, model)
        if built is not None:
            return ctx.decline(
                f"`{model}(...)` builds `{built[0]}`, which this code then uses as the network "
                f"(`{built[0]}.{built[1]}(...)`): `{model}` is its constructor, and a "
                "constructor has no eval mode"
            )
        if ctx.calls_method(scope, model, "eval"):
            return ctx.decline(
                f"`{model}.eval()` is already called here, on a path that may not reach the "
                "inference: move it so that every path does"
            )
        calls = ctx.find(cst.Call, inside=scope, where=lambda c: dotted_name(c.func) == model)
        at_flag = [c for c in calls if target.line <= ctx.line(c) <= target.end_line]
        holder = _insertion_point(ctx, (at_flag or calls)[0], scope, model)
        if holder is None:
            return ctx.decline(
                f"no statement of this function can take `{model}.eval()` before the first "
                "forward (it runs in a nested function, or the statement that builds the model "
                "runs it): put it there by hand"
            )
        ctx.insert_before(holder, f"{model}.eval()\n")
        return True


_NETWORK_METHODS = ("eval", "train", "load_state_dict", "state_dict", "parameters", "modules")


def _network_built_by(ctx: SourceContext, scope: cst.CSTNode, model: str) -> tuple[str, str] | None:
    """(name, method) when `name = model(...)` in `scope` and `name.method(...)` treats the
    result as the network (EfficientFormer's toolbox: `model_fn = eval(args.model)`, `model =
    model_fn(resolution=r)`, `model.eval()`): `model` is then a constructor."""
    for assign in ctx.find(cst.Assign, inside=scope):
        value = assign.value
        if not (isinstance(value, cst.Call) and dotted_name(value.func) == model):
            continue
        for target in assign.targets:
            name = dotted_name(target.target)
            if name is None or name == model:
                continue
            for method in _NETWORK_METHODS:
                if ctx.calls_method(scope, name, method):
                    return name, method
    return None


def _insertion_point(
    ctx: SourceContext, call: cst.Call, scope: cst.CSTNode, model: str
) -> cst.CSTNode | None:
    """The outermost statement around `call` (inside `scope`) that does not bind `model`:
    the eval() goes once before it, after the model exists."""
    binds = {
        id(node)
        for assign in ctx.find(cst.Assign, inside=scope)
        if any(dotted_name(t.target) == model for t in assign.targets)
        for node in descendants(assign)
    }
    chosen: cst.CSTNode | None = None
    for node in [call, *ctx.ancestors(call)]:
        if node is scope:
            break
        if isinstance(node, cst.FunctionDef | cst.ClassDef):
            return None
        if not isinstance(node, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            continue
        if any(id(inner) in binds for inner in descendants(node)):
            break
        chosen = node
    return chosen
