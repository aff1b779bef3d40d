"""The types and validation artifacts without a sandbox run: the signature read from observed
data-flow calls (symbolic batch, dims that varied, dtypes that varied), the edits made to a
forward (annotations, checks, imports; the rest of the file untouched), the generated code run
here with jaxtyping + beartype on to see that it accepts the observed inputs and rejects broken
ones, the writing of a change to an existing file, and the sandbox job a generated file's run
asks for (a module, resolved by the backend: no host interpreter, no host import path)."""

from __future__ import annotations

import os
import re
import stat
import types
from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError

from tests.conftest import EXAMPLES
from torchdoctor.agent.artifacts.approval import apply_approved
from torchdoctor.agent.artifacts.coverage import accepted_coverage
from torchdoctor.agent.artifacts.forward_edit import ForwardEdit, edit_forward, read_forward, tidy
from torchdoctor.agent.artifacts.models import Artifact, ModelTarget, TensorSpec
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.signature import observed_signature
from torchdoctor.agent.artifacts.types import CHECKING, annotations_edit
from torchdoctor.agent.artifacts.validation import checks_edit, embedding_inputs
from torchdoctor.agent.evidence.probe_schema import DataFlow, FlowCall, RootSignature, TensorInfo
from torchdoctor.agent.fixes.apply import undo
from torchdoctor.agent.models import CoverageEntry
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.models import Isolation, Job, RunResult

MODEL = '''"""A model file as people write them."""
import torch
from torch import nn

VOCAB = 100


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, tokens: torch.Tensor, weights, mask=None):
        """Per-token scores."""
        # the user's own comment stays
        return self.head(self.embed(tokens) * weights)
'''


def _info(*shape: int, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(shape=list(shape), dtype=dtype, device="cpu")


def _run(*calls: FlowCall, signatures: list[RootSignature] | None = None) -> RunSummary:
    return RunSummary(
        command="python tag.py",
        script="tag.py",
        outcome="completed-steps",
        summary="",
        dataflow=DataFlow(step=0, calls=list(calls)),
        root_signatures=signatures or [],
    )


def _root(batch: int, length: int, *, weights_dtype: str = "float32") -> FlowCall:
    return FlowCall(
        index=0,
        module="model",
        type="Tagger",
        depth=0,
        inputs=[_info(batch, length, dtype="int64"), _info(batch, length, 1, dtype=weights_dtype)],
        outputs=[_info(batch, length, 5)],
        end=1,
    )


def _target(call: FlowCall) -> ModelTarget:
    def spec(info: TensorInfo) -> TensorSpec:
        return TensorSpec(shape=info.shape, dtype=info.dtype)

    return ModelTarget(
        file="tag.py",
        module="tag",
        class_name="Tagger",
        constructor="Tagger()",
        inputs=[spec(t) for t in call.inputs],
        outputs=[spec(t) for t in call.outputs],
        script="tag.py",
    )


def test_one_observation_gives_a_symbolic_batch_and_fixed_sizes() -> None:
    call = _root(4, 7)
    signature = observed_signature(_target(call), [_run(call)])
    assert [t.shape_text for t in signature.inputs] == ["batch 7", "batch 7 1"]
    assert [t.shape_text for t in signature.outputs] == ["batch 7 5"]
    assert [t.dtype for t in signature.inputs] == ["int64", "float32"]


def test_sizes_that_varied_share_a_name_and_a_dtype_that_varied_keeps_its_kind() -> None:
    first, second = _root(4, 7), _root(2, 9, weights_dtype="float16")
    signature = observed_signature(_target(first), [_run(first), _run(second)])
    assert [t.shape_text for t in signature.inputs] == ["batch d1", "batch d1 1"]
    assert signature.outputs[0].shape_text == "batch d1 5"
    assert (signature.inputs[1].dtype, signature.inputs[1].kind) == (None, "float")
    assert signature.observations == 2
    other = FlowCall(index=0, module="m", type="Tagger", depth=0, inputs=[_info(3)], outputs=[])
    assert observed_signature(_target(first), [_run(first), _run(other)]).observations == 1


def test_the_signatures_of_later_steps_count_and_the_first_is_not_counted_twice() -> None:
    first, later = _root(4, 7), _root(4, 11)
    signatures = [
        RootSignature(type="Tagger", inputs=c.inputs, outputs=c.outputs, calls=3)
        for c in (first, later)
    ]
    signature = observed_signature(_target(first), [_run(first, signatures=signatures)])
    assert signature.observations == 2
    assert [t.shape_text for t in signature.inputs] == ["batch d1", "batch d1 1"]
    forged = RootSignature(type="Tagger", inputs=[_info(4, 7, dtype="int64; import os")])
    again = observed_signature(_target(first), [_run(first, signatures=[*signatures, forged])])
    assert again == signature  # a dtype torch does not have is left out, not put into code


def _module(text: str) -> types.ModuleType:
    module = types.ModuleType("tag")
    exec(compile(text, "tag.py", "exec"), module.__dict__)  # our own fixture, not audited code
    return module


def test_annotations_land_on_the_forward_and_are_checked_at_run_time() -> None:
    call = _root(4, 7)
    signature = observed_signature(_target(call), [_run(call)])
    shape = read_forward(MODEL, "Tagger")
    assert not isinstance(shape, str) and shape.annotated == {"tokens": "torch.Tensor"}
    edit = annotations_edit(shape, signature.inputs, signature.outputs, MODEL)
    assert isinstance(edit, ForwardEdit)
    annotated = edit_forward(MODEL, "Tagger", edit)
    assert 'tokens: Int64[torch.Tensor, "batch 7"]' in annotated
    assert 'weights: Float32[torch.Tensor, "batch 7 1"]' in annotated
    assert ', mask=None) -> Float32[torch.Tensor, "batch 7 5"]:' in annotated
    assert "from torch import nn\nfrom jaxtyping import Float32, Int64\n" in annotated
    assert '"""Per-token scores."""\n        # the user\'s own comment stays' in annotated
    checked = edit_forward(annotated, "Tagger", ForwardEdit(decorator=CHECKING))
    model = _module(checked).Tagger()
    tokens = torch.randint(0, 100, (3, 7))
    assert model(tokens, torch.ones(3, 7, 1)).shape == (3, 7, 5)  # another batch size passes
    with pytest.raises(TypeCheckError, match="batch"):
        model(tokens, torch.ones(2, 7, 1))  # the batch names disagree
    with pytest.raises(TypeCheckError, match=r"Int64\["):
        model(tokens.float(), torch.ones(3, 7, 1))


def test_a_tuple_result_and_what_is_left_alone() -> None:
    two = MODEL.replace("return self.head(", "return tokens, self.head(")
    call = _root(4, 7)
    call = call.model_copy(update={"outputs": [call.inputs[0], *call.outputs]})
    target = _target(call)
    signature = observed_signature(target, [_run(call)])
    shape = read_forward(two, "Tagger")
    assert not isinstance(shape, str)
    edit = annotations_edit(shape, signature.inputs, signature.outputs, two)
    assert isinstance(edit, ForwardEdit) and edit.returns is not None
    assert edit.returns.startswith('tuple[Int64[torch.Tensor, "batch 7"], Float32[')
    own = MODEL.replace("tokens: torch.Tensor", "tokens: 'TokenBatch'")
    own_shape = read_forward(own, "Tagger")
    assert not isinstance(own_shape, str)
    own_edit = annotations_edit(own_shape, signature.inputs, signature.outputs, own)
    assert isinstance(own_edit, ForwardEdit) and "tokens" not in own_edit.params
    assert read_forward(MODEL, "Other") == "Other is not a module-level class"
    inherited = "import torch\n\n\nclass Tagger(torch.nn.Linear):\n    pass\n"
    assert "inherits its forward()" in str(read_forward(inherited, "Tagger"))


def test_generated_checks_pass_observed_inputs_and_reject_broken_ones() -> None:
    call = _root(4, 7)
    embedding = FlowCall(
        index=1, module="model.embed", type="Embedding", depth=1, inputs=[call.inputs[0]]
    )
    target = _target(call)
    signature = observed_signature(target, [_run(call, embedding)])
    embeddings = embedding_inputs(target, [_run(call, embedding)])
    assert embeddings == {0: "embed"}
    forged = embedding.model_copy(update={"module": "model.x'); import os; ('"})
    assert embedding_inputs(target, [_run(call, forged)]) == {}  # never put into the code
    edit = checks_edit(MODEL, "Tagger", ["tokens", "weights"], signature.inputs, embeddings)
    checked = edit_forward(MODEL, "Tagger", edit)
    assert checked.index("def _check_tagger_inputs(") < checked.index("class Tagger(")
    assert "if __debug__ and not torch.compiler.is_compiling():" in checked
    model = _module(checked).Tagger()
    tokens, weights = torch.randint(0, 100, (2, 7)), torch.ones(2, 7, 1)
    assert model(tokens, weights).shape == (2, 7, 5)
    broken = {
        "must have shape (batch, 7)": (tokens[:, :6], weights),
        "differ in batch size": (tokens, torch.ones(3, 7, 1)),
        "must be torch.float32": (tokens, weights.double()),
        "NaN or infinite": (tokens, torch.full((2, 7, 1), float("nan"))),
        "must index embed: 0 to 99": (tokens + 100, weights),
    }
    for message, args in broken.items():
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            model(*args)


def test_a_long_changed_line_is_wrapped_unless_the_project_formats_its_own_way(
    tmp_path: Path,
) -> None:
    before = "def f(a, b):\n    return a\n"
    header = (
        'def f(a: Float32[torch.Tensor, "batch 20 30 40"], b: Int64[torch.Tensor, "batch 7 8 9"])'
    )
    after = header + ' -> Float32[torch.Tensor, "batch 20"]:\n    return a\n'
    wrapped = tidy(tmp_path, before, after)
    assert wrapped.startswith("def f(\n") and wrapped.endswith("    return a\n")
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 160\n")
    assert tidy(tmp_path, before, after) == after  # the project's own width: it fits


def _changed(path: str, original: str, content: str, kind: str = "types") -> Artifact:
    return Artifact(
        kind=kind,
        state="offered",
        items=["1.2"] if kind == "types" else ["2.1"],
        reason="annotations",
        path=path,
        content=content,
        original=original,
    )


def test_a_change_to_an_existing_file_is_written_onto_its_current_text(tmp_path: Path) -> None:
    before = "".join(f"line {n}\n" for n in range(30))
    after = before.replace("line 3\n", "line 3 annotated\n")
    artifact = _changed("m.py", before, after)
    (tmp_path / "m.py").write_text(before.replace("line 25\n", "line 25 fixed\n"))
    written = apply_approved(tmp_path, [], [artifact], {"artifact-types"})[1]
    assert written.paths == ["m.py"] and written.ids == ["artifact-types"]
    assert (tmp_path / "m.py").read_text() == after.replace("line 25\n", "line 25 fixed\n")
    (tmp_path / "m.py").write_text(before.replace("line 3\n", "mine\n"))
    clash = apply_approved(tmp_path, [], [artifact], {"artifact-types"})[1]
    assert not clash.paths and "changed since the audit" in clash.skipped["artifact-types"]
    assert (tmp_path / "m.py").read_text() == before.replace("line 3\n", "mine\n")


def _new_suite() -> Artifact:
    return Artifact(
        kind="tests",
        state="offered",
        items=["5.2"],
        reason="ML tests",
        path="test_m_ml.py",
        content="def test_x():\n    assert True\n",
    )


def test_undo_takes_back_the_artifacts_with_the_fixes_and_removes_the_files_they_made(
    tmp_path: Path,
) -> None:
    before = "".join(f"line {n}\n" for n in range(30))
    (tmp_path / "m.py").write_text(before)
    os.chmod(tmp_path / "m.py", 0o640)
    annotations = _changed("m.py", before, before.replace("line 3\n", "line 3 annotated\n"))
    checks = _changed(
        "m.py", before, before.replace("line 9\n", "line 9 checked\n"), kind="validation"
    )
    suite = _new_suite()
    approved = {"artifact-types", "artifact-validation", "artifact-tests"}
    result, written = apply_approved(tmp_path, [], [annotations, checks, suite], approved)
    assert sorted(written.ids) == sorted(approved) and result.journal is not None
    assert "line 3 annotated" in (tmp_path / "m.py").read_text()
    assert "line 9 checked" in (tmp_path / "m.py").read_text()
    assert (tmp_path / "test_m_ml.py").exists()
    taken_back = undo(tmp_path)
    assert taken_back.restored == ["m.py"] and taken_back.removed == ["test_m_ml.py"]
    assert (tmp_path / "m.py").read_text() == before
    assert stat.S_IMODE((tmp_path / "m.py").stat().st_mode) == 0o640
    assert not (tmp_path / "test_m_ml.py").exists()
    assert undo(tmp_path).refused is not None  # one apply, one undo


def test_undo_keeps_a_created_file_the_user_edited_since_unless_forced(tmp_path: Path) -> None:
    suite = _new_suite()
    apply_approved(tmp_path, [], [suite], {"artifact-tests"})
    (tmp_path / "test_m_ml.py").write_text("mine\n")
    refused = undo(tmp_path)
    assert refused.refused is not None and "test_m_ml.py" in refused.refused
    assert (tmp_path / "test_m_ml.py").read_text() == "mine\n"
    assert undo(tmp_path, force=True).removed == ["test_m_ml.py"]


def test_only_the_artifacts_written_settle_their_items() -> None:
    entries = [
        CoverageEntry(item=item, verdict="not-checked", how="h", reason="r")
        for item in ("1.2", "2.1")
    ]
    kinds = [_changed("m.py", "a\n", "b\n"), _changed("m.py", "b\n", "c\n", "validation")]
    settled = {c.item: c.verdict for c in accepted_coverage(entries, kinds, ["artifact-types"])}
    assert settled == {"1.2": "pass", "2.1": "not-checked"}


class _Recording:
    """A sandbox that records the job it is given (the job's shape is what is tested)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def run(self, job: Job) -> RunResult:
        self.jobs.append(job)
        isolation = Isolation(
            backend="recording", mechanism="none", user="nobody", network="none", filesystem="-"
        )
        return RunResult.sandbox_error("recorded only", isolation)


def test_generated_files_run_as_a_module_job_the_backend_resolves() -> None:
    sandbox = _Recording()
    workspace = load_workspace(EXAMPLES / "train_small.py", [], 2_000_000)
    runner = SandboxedRun(sandbox, workspace)  # type: ignore[arg-type]
    runner.pytest("test_x.py", "def test_x():\n    pass\n")
    (job,) = sandbox.jobs
    assert (job.module, job.command) == ("pytest", [])
    assert job.args[0] == "test_x.py" and "PYTHONPATH" not in job.env
    assert job.argv("/opt/conda/bin/python")[:3] == ["/opt/conda/bin/python", "-m", "pytest"]
