"""jaxtyping annotations for the model's forward (item 1.2), from the shapes and dtypes the
instrumented runs observed: symbolic dims where sizes vary (the batch), sizes where they are
fixed. Offered only when the audit's run command passes again with runtime checking on: the
checked copy's forward carries `@jaxtyped(typechecker=beartype)`, what jaxtyping's import hook
adds, so every call checks its arguments and results against the annotations (and the
dimension names against each other)."""

from __future__ import annotations

from torchdoctor.agent.artifacts.checked_run import MissingModule, checked_run, run_of
from torchdoctor.agent.artifacts.forward_edit import (
    ForwardEdit,
    ForwardShape,
    edit_forward,
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
_DTYPES = {
    "float16": "Float16",
    "bfloat16": "BFloat16",
    "float32": "Float32",
    "float64": "Float64",
    "int8": "Int8",
    "int16": "Int16",
    "int32": "Int32",
    "int64": "Int64",
    "uint8": "UInt8",
    "bool": "Bool",
    "complex64": "Complex64",
    "complex128": "Complex128",
}
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
    edit = annotations_edit(shape, signature.inputs, signature.outputs, text)
    if isinstance(edit, str):
        return Artifact(kind="types", state="not-applicable", items=ITEMS, reason=edit)
    annotated = tidy(workspace.root, text, edit_forward(text, target.class_name, edit))
    checked = edit_forward(annotated, target.class_name, ForwardEdit(decorator=CHECKING))
    try:
        outcome = checked_run(
            harness,
            workspace,
            run,
            {target.file: checked},
            (target.file, forward_body(checked, target.class_name)),
            "the run passes with jaxtyping + beartype checking the annotated forward",
            needs=("jaxtyping", "beartype"),
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
        state, reason = (
            "offered",
            (
                f"jaxtyping annotations of {target.class_name}.forward ({what}) from "
                f"{signature.observations} observed signature(s), checked at run time in the "
                "sandbox"
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
    shape: ForwardShape, inputs: list[ObservedTensor], outputs: list[ObservedTensor], text: str
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
    names = sorted({dtype_class(t) for t in [*inputs, *outputs]})
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
    return _DTYPES.get(tensor.dtype or "") or _KINDS.get(tensor.kind, "Shaped")
