"""Input validation at the model's boundary (item 2.1): a function next to the model class,
generated from the inputs the instrumented runs fed it (rank, fixed sizes, a batch size shared
by every input, dtype, finite values; for integer inputs that go straight into an embedding,
the embedding's index range), called at the top of `forward` behind
`__debug__ and not torch.compiler.is_compiling()`, so compiled code and `python -O` skip it.

Offered only when, in the sandbox, the audit's run command passes with the checks in place
(they accept the real data) and each check rejects an input built to break it."""

from __future__ import annotations

import re

from torchdoctor.agent.artifacts.batch_checks import (
    CHECK,
    BatchChecks,
    batch_checks,
    wire_collate,
)
from torchdoctor.agent.artifacts.checked_run import checked_run, run_of
from torchdoctor.agent.artifacts.forward_edit import (
    ForwardEdit,
    edit_forward,
    forward_body,
    imports_name,
    read_forward,
    tidy,
)
from torchdoctor.agent.artifacts.models import Artifact, ModelTarget
from torchdoctor.agent.artifacts.ranges import Bound, merged, range_lines, value_bound
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.signature import BATCH, ObservedTensor, observed_signature
from torchdoctor.agent.artifacts.target import NoTarget
from torchdoctor.agent.evidence.probe_schema import TensorValues
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace

ITEMS = ["2.1"]
_EMBEDDINGS = ("Embedding", "EmbeddingBag")
_SUBMODULE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
"""A submodule path as named_modules() writes it: the run's document comes from the audited
code, so anything else is not put into generated code."""
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def validation_artifact(
    target: ModelTarget | NoTarget,
    workspace: Workspace,
    runs: list[RunSummary],
    harness: Harness,
    runner: SandboxedRun,
    base: str | None = None,
) -> Artifact:
    """`base`: the model file's text to start from when another artifact changes the same
    file first (the types artifact's annotations, when both are asked for): the checks are
    then verified together with that change, and written after it."""

    def not_checked(reason: str) -> Artifact:
        return Artifact(kind="validation", state="not-checked", items=ITEMS, reason=reason)

    if isinstance(target, NoTarget):
        return not_checked(target.reason)
    text = base or workspace.text_of(target.file)
    run = run_of(target.class_name, runs)
    if text is None or run is None:
        return not_checked(f"no run of the audit observed {target.class_name}")
    shape = read_forward(text, target.class_name)
    if isinstance(shape, str):
        return not_checked(shape)
    inputs = observed_signature(target, runs).inputs
    if len(shape.params) < len(inputs):
        return not_checked("forward's positional parameters do not match its observed tensors")
    names = shape.params[: len(inputs)]
    embeddings = embedding_inputs(target, runs)
    bounds = input_bounds(target.class_name, inputs, embeddings, runs)
    edit = checks_edit(text, target.class_name, names, inputs, embeddings, bounds)
    batches, wired, at_loader = _data_boundary(
        target, runs, workspace.text_of(target.file) or text, text
    )
    if batches is not None:
        edit = edit.model_copy(update={"before_class": batches.helpers + edit.before_class})
    edited = tidy(workspace.root, text, edit_forward(wired, target.class_name, edit))
    accepted = checked_run(
        harness,
        workspace,
        run,
        {target.file: edited},
        (target.file, forward_body(edited, target.class_name)),
        "the run passes with the checks in place",
    )  # the wired collate needs no line trace: the run drew batches from that very loader
    # (in worker processes too, where no line is traced; a check that raises there fails it)
    checks = [accepted]
    if accepted.passed:
        tests = _rejection_tests(target, names, inputs, bounds)
        if batches is not None:
            tests += _batch_tests(batches)
        rejecting = runner.pytest("test_torchdoctor_rejects.py", tests, {target.file: edited})
        if isinstance(rejecting, str):
            return not_checked(rejecting)
        checks += rejecting
    if all(c.passed for c in checks):
        rejected = sum(c.name.startswith("test_rejects") for c in checks)
        state, reason = (
            "offered",
            (
                f"input checks for {target.class_name}.forward ({', '.join(names)}){at_loader}: "
                f"they pass the run's data and reject {rejected} broken input(s) in the sandbox"
            ),
        )
    else:
        failed = next(c for c in checks if not c.passed)
        state, reason = (
            "failed",
            f"the generated checks did not hold: {failed.name}: {failed.detail}",
        )
    return Artifact(
        kind="validation",
        state=state,
        items=ITEMS,
        reason=reason,
        path=target.file,
        content=edited,
        original=text,
        checks=checks,
    )


def _data_boundary(
    target: ModelTarget, runs: list[RunSummary], source: str, text: str
) -> tuple[BatchChecks | None, str, str]:
    """The batch checks when they can be wired into the loader the run drew from (None when
    not), `text` with the loader's collate_fn set, and what the reason says of the loader.
    `source`: the file as audited, where the run's line numbers hold."""
    batches = batch_checks(target, runs)
    if isinstance(batches, str):
        return None, text, f" (not at the DataLoader: {batches})"
    wired = wire_collate(source, text, int(batches.where.rpartition(":")[2]))
    if wired is None:
        return (
            None,
            text,
            f" (not at the DataLoader at {batches.where}: it has a collate_fn of its own, "
            "or is no plain DataLoader(...) call)",
        )
    return batches, wired, f" and on the batches of the DataLoader at {batches.where}"


def checks_edit(
    text: str,
    class_name: str,
    names: list[str],
    inputs: list[ObservedTensor],
    embeddings: dict[int, str],
    bounds: dict[int, Bound] | None = None,
) -> ForwardEdit:
    """The checks as a function before the class, called at the top of forward."""
    helper = "_check_" + _CAMEL.sub("_", class_name).lower() + "_inputs"
    return ForwardEdit(
        before_class=_render(helper, class_name, names, inputs, embeddings, bounds or {}),
        prologue=[
            f"if __debug__ and not torch.compiler.is_compiling():\n"
            f"    {helper}(self, {', '.join(names)})\n"
        ],
        imports=[] if imports_name(text, "torch") else ["import torch"],
    )


def input_bounds(
    class_name: str,
    inputs: list[ObservedTensor],
    embeddings: dict[int, str],
    runs: list[RunSummary],
) -> dict[int, Bound]:
    """Per input position (an embedding's input excepted: it has its own range), the value
    range the sampled forward calls support."""
    observed = merged("model-input", class_name, runs)
    bounds: dict[int, Bound] = {}
    for index, tensor in enumerate(inputs):
        values = observed.get(index)
        if values is None or index in embeddings or tensor.kind not in ("float", "int"):
            continue
        bound = value_bound(values, tensor.kind == "float")
        if bound is not None:
            bounds[index] = bound
    return bounds


def embedding_inputs(target: ModelTarget, runs: list[RunSummary]) -> dict[int, str]:
    """Input index -> the submodule path of the embedding it goes into unchanged (the first
    call of the root's first observed forward that read the input straight from the data)."""
    found: dict[int, str] = {}
    for run in runs:
        calls = run.dataflow.calls
        root = next((c for c in calls if c.depth == 0 and c.type == target.class_name), None)
        if root is None:
            continue
        inside = [c for c in calls if c.depth > 0 and root.index < c.index <= (root.end or 0)]
        for call in inside:
            if call.type not in _EMBEDDINGS or call.sources or not call.inputs:
                continue
            path = call.module.removeprefix(f"{root.module}.")
            if not _SUBMODULE.match(path):
                continue
            for index, tensor in enumerate(root.inputs):
                if tensor.shape == call.inputs[0].shape and tensor.dtype == call.inputs[0].dtype:
                    found.setdefault(index, path)
                    break
        break
    return found


def _render(
    helper: str,
    class_name: str,
    names: list[str],
    inputs: list[ObservedTensor],
    embeddings: dict[int, str],
    bounds: dict[int, Bound],
) -> str:
    typed = ", ".join(f"{name}: torch.Tensor" for name in names)
    lines = [
        f"def {helper}(model: torch.nn.Module, {typed}) -> None:",
        f'    """Checks of what {class_name}.forward is fed, generated by torchdoctor from the',
        "    inputs an instrumented run gave it (item 2.1); forward skips them under",
        '    torch.compile and `python -O`."""',
    ]
    first_batch: str | None = None
    for index, (name, tensor) in enumerate(zip(names, inputs, strict=True)):
        lines += _shape_checks(class_name, name, tensor)
        if tensor.dims[:1] == [BATCH]:
            if first_batch is None:
                first_batch = name
            else:
                lines += [
                    f"    if {name}.shape[0] != {first_batch}.shape[0]:",
                    f"        raise ValueError(f'{class_name}: {name} and {first_batch} differ in"
                    f" batch size: {{{name}.shape[0]}} vs {{{first_batch}.shape[0]}}')",
                ]
        if tensor.dtype is not None:
            lines += [
                f"    if {name}.dtype != torch.{tensor.dtype}:",
                f"        raise TypeError(f'{class_name}: {name} must be torch.{tensor.dtype},"
                f" got {{{name}.dtype}}')",
            ]
        if tensor.kind in ("float", "complex"):
            lines += [
                f"    if not bool(torch.isfinite({name}).all()):",
                f"        raise ValueError('{class_name}: {name} has NaN or infinite values')",
            ]
        if index in embeddings and tensor.kind == "int":
            path = embeddings[index]
            lines += [
                f"    rows = model.get_submodule({path!r}).num_embeddings",
                f"    if {name}.numel() and bool(({name} < 0).any() or ({name} >= rows).any()):",
                f"        raise ValueError(f'{class_name}: {name} must index {path}: "
                f"0 to {{rows - 1}}')",
            ]
        if index in bounds:
            lines += range_lines(class_name, name, name, bounds[index])
    return "\n".join(lines) + "\n\n\n"


def _shape_checks(class_name: str, name: str, tensor: ObservedTensor) -> list[str]:
    fixed = [(d, size) for d, size in enumerate(tensor.dims) if size.isdigit()]
    tests = [f"{name}.dim() != {len(tensor.dims)}"]
    tests += [f"{name}.shape[{d}] != {size}" for d, size in fixed]
    expected = "(" + ", ".join(tensor.dims) + ("," if len(tensor.dims) == 1 else "") + ")"
    return [
        f"    if {' or '.join(tests)}:",
        f"        raise ValueError(f'{class_name}: {name} must have shape {expected},"
        f" got {{tuple({name}.shape)}}')",
    ]


def _rejection_tests(
    target: ModelTarget,
    names: list[str],
    inputs: list[ObservedTensor],
    bounds: dict[int, Bound],
) -> str:
    """One pytest test per broken input: a fixed size changed, a NaN, another dtype, a value
    out of the observed range; each must raise the generated check's error, naming the class.
    The other inputs hold values inside their ranges, so only the broken one can raise."""
    good = [_make(tensor, fill=_inside(bounds.get(i))) for i, tensor in enumerate(inputs)]
    cases: list[tuple[str, int, str]] = []
    for index, (name, tensor) in enumerate(zip(names, inputs, strict=True)):
        fixed = [d for d, size in enumerate(tensor.dims) if size.isdigit()]
        if fixed:
            dims = [_size(s) + (1 if d == fixed[-1] else 0) for d, s in enumerate(tensor.dims)]
            cases.append((f"wrong_shape_{name}", index, _make(tensor, dims=dims)))
        if tensor.kind == "float":
            cases.append((f"nan_in_{name}", index, f"{_make(tensor)}.fill_(float('nan'))"))
        if tensor.dtype is not None:
            other = "float64" if tensor.kind != "float" or tensor.dtype != "float64" else "float32"
            cases.append((f"wrong_dtype_{name}", index, _make(tensor, dtype=other)))
        if index in bounds:
            cases.append(
                (f"out_of_range_{name}", index, _make(tensor, fill=bounds[index].breaking))
            )
    lines = [
        "import pytest",
        "import torch",
        "",
        f"from {target.module} import {target.class_name}",
        "",
        "",
        "def inputs():",
        f"    return [{', '.join(good)}]",
    ]
    for case, index, broken in cases:
        lines += [
            "",
            "",
            f"def test_rejects_{case}():",
            f"    model = {target.constructor}",
            "    args = inputs()",
            f"    args[{index}] = {broken}",
            f"    with pytest.raises((ValueError, TypeError), match={target.class_name + ':'!r}):",
            "        model(*args)",
        ]
    return "\n".join(lines) + "\n"


def _batch_tests(checks: BatchChecks) -> str:
    """A batch built from the observed shapes and ranges passes the batch check; the same batch
    with one tensor broken (out of its range, a NaN) is rejected."""
    good = [_made(t, _inside(checks.bounds.get(t.index))) for t in checks.tensors]
    cases: list[tuple[str, int, str]] = []
    for tensor in checks.tensors:
        bound = checks.bounds.get(tensor.index)
        if bound is not None:
            cases.append(
                (f"out_of_range_tensor_{tensor.index}", tensor.index, _made(tensor, bound.breaking))
            )
        if tensor.dtype.startswith(("float", "bfloat")) and tensor.finite:
            cases.append(
                (f"nan_in_tensor_{tensor.index}", tensor.index, _made(tensor, float("nan")))
            )
    module = checks_module(checks)
    lines = [
        "",
        "",
        f"from {module} import {CHECK}",
        "",
        "",
        "def batch():",
        f"    return [{', '.join(good)}]",
        "",
        "",
        "def test_accepts_a_batch_like_the_observed_ones():",
        f"    {CHECK}(batch())",
    ]
    for case, index, broken in cases:
        lines += [
            "",
            "",
            f"def test_rejects_batch_{case}():",
            "    broken = batch()",
            f"    broken[{index}] = {broken}",
            "    with pytest.raises((ValueError, TypeError), match='batch:'):",
            f"        {CHECK}(broken)",
        ]
    return "\n".join(lines) + "\n"


def checks_module(checks: BatchChecks) -> str:
    """The importable name of the file holding the loader (and the model)."""
    path = checks.where.rpartition(":")[0]
    return path.removesuffix(".py").replace("/", ".")


def _inside(bound: Bound | None) -> float | None:
    """A value the bound accepts (its middle, or its low end when open above)."""
    if bound is None or bound.low is None:
        return None if bound is None or bound.high is None else bound.high - 1
    if bound.high is None:
        return bound.low
    return bound.low if bound.high_exclusive else (bound.low + bound.high) / 2


def _size(dim: str) -> int:
    return int(dim) if dim.isdigit() else 2


def _make(
    tensor: ObservedTensor,
    dims: list[int] | None = None,
    dtype: str | None = None,
    fill: float | None = None,
) -> str:
    shape = tuple(dims if dims is not None else [_size(d) for d in tensor.dims])
    chosen = dtype or tensor.dtype or {"float": "float32", "int": "int64"}.get(tensor.kind, "bool")
    return _full(shape, chosen, fill)


def _made(tensor: TensorValues, fill: float | None) -> str:
    shape = tuple([2, *tensor.shape[1:]]) if tensor.shape else ()
    return _full(shape, tensor.dtype, fill)


def _full(shape: tuple[int, ...], dtype: str, fill: float | None) -> str:
    if fill is None:
        return f"torch.zeros({shape}, dtype=torch.{dtype})"
    value = "float('nan')" if fill != fill else repr(int(fill) if "int" in dtype else fill)
    return f"torch.full({shape}, {value}, dtype=torch.{dtype})"
