"""jaxtyping return annotations for the project's own data functions (item 1.2): a
`Dataset.__getitem__` (one item) and a `collate_fn` (one batch), from what the instrumented
runs saw them return. Dimensions that varied between observations are symbolic, a batch's
leading dimension always (`batch`: a last partial batch changes it); Python scalars keep their
type. Only functions the runs observed, defined at module level or in a module-level class,
and returning a tuple or a single value are annotated."""

from __future__ import annotations

import ast

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.evidence.probe_schema import DataFunctionSignature
from torchdoctor.agent.probing import RunSummary

BATCH = "batch"
DTYPE_CLASSES = {
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
"""torch dtype -> jaxtyping's class for it."""
_SCALARS = ("int", "float", "bool", "str")


class DataAnnotation(BaseModel):
    """The return annotation of one data function and the jaxtyping names it uses."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None
    name: str
    role: str
    returns: str
    names: list[str]
    observations: int


def data_annotations(runs: list[RunSummary], file: str, text: str) -> list[DataAnnotation]:
    """One annotation per observed data function of `file` that has no return annotation."""
    by_function: dict[tuple[str, str], list[DataFunctionSignature]] = {}
    for run in runs:
        for signature in run.data_functions:
            if signature.file == file:
                by_function.setdefault((signature.role, signature.name), []).append(signature)
    found: list[DataAnnotation] = []
    for (role, qualname), seen in by_function.items():
        parts = qualname.split(".")
        if len(parts) > 2 or "<" in qualname:
            continue
        owner, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        if not _unannotated(text, owner, name):
            continue
        annotation = _annotation(seen, batch=role == "collate")
        if annotation is not None:
            returns, names = annotation
            found.append(
                DataAnnotation(
                    owner=owner,
                    name=name,
                    role=role,
                    returns=returns,
                    names=names,
                    observations=len(seen),
                )
            )
    return found


def _unannotated(text: str, owner: str | None, name: str) -> bool:
    """The function exists where the qualified name says, with no return annotation."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError, RecursionError):
        return False
    if owner is not None:
        cls = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == owner), None)
        body = cls.body if cls is not None else []
    function = next((n for n in body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    return function is not None and function.returns is None and not function.decorator_list


def _annotation(seen: list[DataFunctionSignature], batch: bool) -> tuple[str, list[str]] | None:
    first = seen[0]
    if first.container not in ("tuple", "single") or not first.elements:
        return None
    layout = [(e.kind, len(e.shape or []), e.dtype) for e in first.elements]
    same = [
        s
        for s in seen
        if s.container == first.container
        and [(e.kind, len(e.shape or []), e.dtype) for e in s.elements] == layout
    ]
    if len(same) != len(seen) or any(kind == "other" for kind, _, _ in layout):
        return None  # returns of several layouts: no single annotation states them
    numbered: dict[tuple[int, ...], str] = {}
    parts: list[str] = []
    names: set[str] = set()
    for index, (kind, rank, dtype) in enumerate(layout):
        if kind in _SCALARS:
            parts.append(kind)
            continue
        dtype_class = DTYPE_CLASSES.get(dtype or "")
        if dtype_class is None:
            return None
        dims = []
        for d in range(rank):
            sizes = tuple((s.elements[index].shape or [])[d] for s in same)
            if batch and d == 0:
                dims.append(BATCH)
            elif len(set(sizes)) > 1:
                dims.append(numbered.setdefault(sizes, f"d{len(numbered) + 1}"))
            else:
                dims.append(str(sizes[0]))
        names.add(dtype_class)
        parts.append(f'{dtype_class}[torch.Tensor, "{" ".join(dims)}"]')
    if first.container == "single":
        return parts[0], sorted(names)
    return f"tuple[{', '.join(parts)}]", sorted(names)


def describe(annotations: list[DataAnnotation]) -> str:
    """`RandomTokens.__getitem__ and pad`, for the artifact's reason."""
    return " and ".join(f"{a.owner}.{a.name}" if a.owner else a.name for a in annotations)
