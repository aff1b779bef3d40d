"""The model's forward signature as the instrumented runs observed it: for each tensor argument
and result, its dtype and, per dimension, a fixed size or a symbolic name.

Every depth-0 call of the target class in the runs' data-flow maps (one step) and every
distinct forward signature the runs recorded for it (all their steps) is an observation. A
dimension whose size varied between observations is symbolic (dimensions that varied together
share a name); the leading dimension that every input shares is the batch (`batch`), symbolic
even when one batch size was seen, since a last partial batch or a serving request changes it.
Every other dimension keeps the size observed. A dtype seen in several precisions is named by
its kind only (floating, integer).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchdoctor.agent.artifacts.models import ModelTarget, TensorSpec
from torchdoctor.agent.evidence.probe_schema import TensorInfo
from torchdoctor.agent.probing import RunSummary

BATCH = "batch"


class ObservedTensor(BaseModel):
    """One tensor argument or result: its dtype (None when it varied) and kind, its dims."""

    model_config = ConfigDict(extra="forbid")

    dtype: str | None = Field(description="torch dtype without prefix; None: it varied")
    kind: str = Field(description="float | int | bool | complex | other")
    dims: list[str] = Field(description="a size ('20') or a symbolic name ('batch')")

    @property
    def shape_text(self) -> str:
        """The dims as jaxtyping writes them: `"batch 20"`."""
        return " ".join(self.dims)


class ObservedSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[ObservedTensor]
    outputs: list[ObservedTensor]
    observations: int = Field(description="distinct observed signatures it comes from")


def observed_signature(target: ModelTarget, runs: list[RunSummary]) -> ObservedSignature:
    """The target's signature from every observed call shaped like the first one."""
    seen = _observations(target, runs)
    seen = [s for s in seen if _same_layout(s, (target.inputs, target.outputs))]
    seen = seen or [(target.inputs, target.outputs)]
    tensors = [[*inputs, *outputs] for inputs, outputs in seen]
    names = _dim_names(tensors, len(target.inputs))
    described = [
        ObservedTensor(
            dtype=_one([t[i].dtype for t in tensors]),
            kind=_kind(tensors[0][i].dtype),
            dims=names[i],
        )
        for i in range(len(tensors[0]))
    ]
    split = len(target.inputs)
    return ObservedSignature(
        inputs=described[:split], outputs=described[split:], observations=len(seen)
    )


def _observations(
    target: ModelTarget, runs: list[RunSummary]
) -> list[tuple[list[TensorSpec], list[TensorSpec]]]:
    found = [
        (call.inputs, call.outputs)
        for run in runs
        for call in run.dataflow.calls
        if call.depth == 0 and call.type == target.class_name
    ]
    found += [
        (signature.inputs, signature.outputs)
        for run in runs
        for signature in run.root_signatures
        if signature.type == target.class_name
    ]
    distinct = {repr((inputs, outputs)): (inputs, outputs) for inputs, outputs in found}
    observed: list[tuple[list[TensorSpec], list[TensorSpec]]] = []
    for inputs, outputs in distinct.values():
        try:
            observed.append(([_spec(t) for t in inputs], [_spec(t) for t in outputs]))
        except ValidationError:
            continue  # a dtype torch does not have: the document is the audited code's
    return observed


def _spec(info: TensorInfo) -> TensorSpec:
    return TensorSpec(shape=list(info.shape), dtype=info.dtype, device=info.device)


def _same_layout(
    seen: tuple[list[TensorSpec], list[TensorSpec]],
    first: tuple[list[TensorSpec], list[TensorSpec]],
) -> bool:
    """Same number of tensors, each of the same rank and dtype kind."""
    return all(
        len(a) == len(b)
        and all(
            len(x.shape) == len(y.shape) and _kind(x.dtype) == _kind(y.dtype)
            for x, y in zip(a, b, strict=True)
        )
        for a, b in zip(seen, first, strict=True)
    )


def _dim_names(tensors: list[list[TensorSpec]], inputs: int) -> list[list[str]]:
    """Per tensor, per dim: the name. `tensors[o][t]`: tensor t of observation o."""
    count = len(tensors[0])
    sizes = {
        (t, d): tuple(obs[t].shape[d] for obs in tensors)
        for t in range(count)
        for d in range(len(tensors[0][t].shape))
    }
    batch = _batch_sizes(sizes, inputs)
    symbols: dict[tuple[int, ...], str] = {} if batch is None else {batch: BATCH}
    names: list[list[str]] = []
    for t in range(count):
        row: list[str] = []
        for d in range(len(tensors[0][t].shape)):
            values = sizes[(t, d)]
            if d == 0 and values == batch:
                row.append(BATCH)
            elif len(set(values)) > 1:
                numbered = sum(name != BATCH for name in symbols.values())
                row.append(symbols.setdefault(values, f"d{numbered + 1}"))
            else:
                row.append(str(values[0]))
        names.append(row)
    return names


def _batch_sizes(
    sizes: dict[tuple[int, int], tuple[int, ...]], inputs: int
) -> tuple[int, ...] | None:
    """The sizes of the leading dim every input shares, if they all have one."""
    leading = [sizes.get((t, 0)) for t in range(inputs)]
    if not leading or any(s is None for s in leading) or len(set(leading)) != 1:
        return None
    return leading[0]


def _one(values: list[str]) -> str | None:
    return values[0] if len(set(values)) == 1 else None


def _kind(dtype: str) -> str:
    if dtype.startswith(("float", "bfloat")):
        return "float"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("complex"):
        return "complex"
    return "bool" if dtype == "bool" else "other"
