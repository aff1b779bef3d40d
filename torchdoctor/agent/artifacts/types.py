"""jaxtyping annotations for the model's forward (item 1.2), from the shapes and dtypes the
instrumented runs observed: symbolic dims where sizes vary (the batch), sizes where they are
fixed. Offered only when the audit's run command passes again with runtime checking on: the
checked copy's forward carries `@jaxtyped(typechecker=beartype)`, what jaxtyping's import hook
adds, so every call checks its arguments and results against the annotations (and the
dimension names against each other)."""

from __future__ import annotations

import ast

from torchdoctor.agent.artifacts.checked_run import MissingModule, checked_run, run_of
from torchdoctor.agent.artifacts.data_types import (
    DTYPE_CLASSES,
    DataAnnotation,
    data_annotations,
    describe,
)
from torchdoctor.agent.artifacts.forward_edit import (
    ForwardEdit,
    ForwardShape,
    edit_forward,
    edit_function,
    forward_body,
    imports_name,
    read_forward,
    tidy,
)
from torchdoctor.agent.artifacts.models import Artifact, ModelTarget
from torchdoctor.agent.artifacts.signature import ObservedTensor, observed_signature
from torchdoctor.agent.artifacts.target import NoTarget
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace

ITEMS = ["1.2"]
CHECKING = "__import__('jaxtyping').jaxtyped(typechecker=__import__('beartype').beartype)"
"""The checked copy's decorator: no import line, so the offered file's imports stay its own."""
_KINDS = {"float": "Float", "int": "Int", "bool": "Bool", "complex": "Complex"}


def types_artifact(
    target: ModelTarget | NoTarget,
    workspace: Workspace,
    runs: list[RunSummary],
    harness: Harness,
) -> Artifact:
    def not_checked(reason: str) -> Artifact:
        return Artifact(kind="types", state="not-checked", items=ITEMS, reason=reason)

    if isinstance(target, NoTarget):
        return not_checked(target.reason)
    text = workspace.text_of(target.file)
    run = run_of(target.class_name, runs)
    if text is None or run is None:
        return not_checked(f"no run of the audit observed {target.class_name}")
    shape = read_forward(text, target.class_name)
    if isinstance(shape, str):
        return not_checked(shape)
    signature = observed_signature(target, runs)
    data = data_annotations(runs, target.file, text)
    extra = sorted({n for a in data for n in a.names})
    edit = annotations_edit(shape, signature.inputs, signature.outputs, text, extra)
    if isinstance(edit, str):
        return Artifact(kind="types", state="not-applicable", items=ITEMS, reason=edit)
    edited = edit_forward(text, target.class_name, edit)
    for function in data:
        edited = edit_function(
            edited, function.owner, function.name, ForwardEdit(returns=function.returns)
        )
    annotated = tidy(workspace.root, text, edited)
    checked = edit_forward(annotated, target.class_name, ForwardEdit(decorator=CHECKING))
    for function in data:
        checked = edit_function(
            checked, function.owner, function.name, ForwardEdit(decorator=CHECKING)
        )
    try:
        outcome = checked_run(
            harness,
            workspace,
            run,
            {target.file: checked},
            (target.file, forward_body(checked, target.class_name)),
            "the run passes with jaxtyping + beartype checking the annotated "
            + ("functions" if data else "forward"),
            needs=("jaxtyping", "beartype"),
            reached_too=tuple((target.file, _body(checked, f)) for f in data),
        )
    except MissingModule as missing:
        return not_checked(
            f"{missing} is not installed where the sandbox runs the code "
            "(install torchdoctor[artifacts] there)"
        )
    if not outcome.passed:
        state, reason = (
            "failed",
            (f"the annotated {target.class_name}.forward failed its checked run: {outcome.detail}"),
        )
    else:
        what = ", ".join(edit.params) + (" and the result" if edit.returns else "")
        verb = "returns" if len(data) == 1 else "return"
        returns = f", and of what {describe(data)} {verb}" if data else ""
        state, reason = (
            "offered",
            (
                f"jaxtyping annotations of {target.class_name}.forward ({what}) from "
                f"{signature.observations} observed signature(s){returns}, checked at run "
                "time in the sandbox"
            ),
        )
    return Artifact(
        kind="types",
        state=state,
        items=ITEMS,
        reason=reason,
        path=target.file,
        content=annotated,
        original=text,
        checks=[outcome],
    )


def annotations_edit(
    shape: ForwardShape,
    inputs: list[ObservedTensor],
    outputs: list[ObservedTensor],
    text: str,
    more_names: list[str] | None = None,
) -> ForwardEdit | str:
    """The edit that annotates each observed tensor parameter and, where the returns show
    the observed results one to one, the result; a reason when there is nothing to annotate."""
    if len(shape.params) < len(inputs):
        return "forward's positional parameters do not match the tensors it was called with"
    params = {
        name: annotation(tensor)
        for name, tensor in zip(shape.params, inputs, strict=False)
        if shape.annotated.get(name, "Tensor").endswith("Tensor")  # not the user's own types
    }
    returns = _return_annotation(shape, outputs)
    if not params and returns is None:
        return "forward takes and returns no tensor the runs observed"
    names = sorted({dtype_class(t) for t in [*inputs, *outputs]} | set(more_names or []))
    imports = [f"from jaxtyping import {', '.join(names)}"]
    if not imports_name(text, "torch"):
        imports.insert(0, "import torch")
    return ForwardEdit(params=params, returns=returns, imports=imports)


def _return_annotation(shape: ForwardShape, outputs: list[ObservedTensor]) -> str | None:
    if shape.has_return_annotation or not outputs or not shape.returns:
        return None
    if len(outputs) == 1 and set(shape.returns) == {1}:
        return annotation(outputs[0])
    if len(outputs) > 1 and set(shape.returns) == {len(outputs)}:
        return f"tuple[{', '.join(annotation(t) for t in outputs)}]"
    return None


def annotation(tensor: ObservedTensor) -> str:
    """`Float32[torch.Tensor, "batch 20"]` (the dtype's kind when it varied)."""
    return f'{dtype_class(tensor)}[torch.Tensor, "{tensor.shape_text}"]'


def dtype_class(tensor: ObservedTensor) -> str:
    """jaxtyping's dtype class: the observed dtype's, its kind's when it varied."""
    return DTYPE_CLASSES.get(tensor.dtype or "") or _KINDS.get(tensor.kind, "Shaped")


def _body(text: str, function: DataAnnotation) -> range:
    """The lines of a data function's body in `text`."""
    body = ast.parse(text).body
    if function.owner is not None:
        body = next(
            n.body for n in body if isinstance(n, ast.ClassDef) and n.name == function.owner
        )
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == function.name)
    return range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1)
