"""Return annotations of the project's own data functions (`Dataset.__getitem__`, a
`collate_fn`) from what the runs saw them return, without a sandbox: the annotation (dims that
varied are symbolic, a batch's first dim always), the edit, and the annotated code run here
under jaxtyping + beartype, accepting the observed returns and rejecting a broken one."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from torchdoctor.agent.artifacts.data_types import data_annotations
from torchdoctor.agent.artifacts.forward_edit import ForwardEdit, edit_function
from torchdoctor.agent.artifacts.types import CHECKING
from torchdoctor.agent.evidence.probe_schema import DataFunctionSignature, ReturnedValue
from torchdoctor.agent.probing import RunSummary

DATA = """import torch
from torch import nn


class Sentences(torch.utils.data.Dataset):
    def __init__(self, lengths):
        self.lengths = lengths

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, index):
        return torch.arange(self.lengths[index]), index % 2


def pad(items):
    longest = max(len(tokens) for tokens, _ in items)
    tokens = torch.stack([nn.functional.pad(t, (0, longest - len(t))) for t, _ in items])
    return tokens, torch.tensor([label for _, label in items])


def make_loader():  # a nested collate has no name the annotation can reach
    def nested(items):
        return items
    return nested
"""


def _tensor(*shape: int) -> ReturnedValue:
    return ReturnedValue(kind="tensor", shape=list(shape), dtype="int64")


def _seen(role: str, name: str, line: int, *elements: ReturnedValue) -> DataFunctionSignature:
    return DataFunctionSignature(
        role=role,  # type: ignore[arg-type]
        name=name,
        file="data.py",
        line=line,
        container="tuple",
        elements=list(elements),
        calls=1,
    )


def _run(*seen: DataFunctionSignature) -> RunSummary:
    return RunSummary(
        command="python data.py",
        script="data.py",
        outcome="completed-steps",
        summary="",
        data_functions=list(seen),
    )


RUN = _run(
    _seen("getitem", "Sentences.__getitem__", 12, _tensor(3), ReturnedValue(kind="int")),
    _seen("getitem", "Sentences.__getitem__", 12, _tensor(5), ReturnedValue(kind="int")),
    _seen("collate", "pad", 16, _tensor(4, 5), _tensor(4)),
    _seen("collate", "make_loader.<locals>.nested", 22, _tensor(4)),
)


def test_varying_dims_are_symbolic_and_a_batch_leads_with_batch() -> None:
    found = {(a.owner, a.name): a for a in data_annotations([RUN], "data.py", DATA)}
    assert set(found) == {("Sentences", "__getitem__"), (None, "pad")}
    assert found[("Sentences", "__getitem__")].returns == ('tuple[Int64[torch.Tensor, "d1"], int]')
    assert found[(None, "pad")].returns == (
        'tuple[Int64[torch.Tensor, "batch 5"], Int64[torch.Tensor, "batch"]]'
    )
    assert data_annotations([RUN], "other.py", DATA) == []


def test_returns_of_several_layouts_or_an_annotated_function_get_no_annotation() -> None:
    mixed = _run(
        _seen("getitem", "Sentences.__getitem__", 12, _tensor(3), ReturnedValue(kind="int")),
        _seen("getitem", "Sentences.__getitem__", 12, _tensor(3, 2), ReturnedValue(kind="int")),
    )
    assert data_annotations([mixed], "data.py", DATA) == []
    annotated = DATA.replace("def pad(items):", "def pad(items) -> tuple:")
    assert [a.name for a in data_annotations([RUN], "data.py", annotated)] == ["__getitem__"]


def test_the_annotated_functions_accept_what_was_observed_and_reject_a_broken_return() -> None:
    text = DATA
    for a in data_annotations([RUN], "data.py", DATA):
        text = edit_function(text, a.owner, a.name, ForwardEdit(returns=a.returns))
        text = edit_function(text, a.owner, a.name, ForwardEdit(decorator=CHECKING))
    assert "def __getitem__(self, index) -> tuple[Int64" in text
    namespace: dict[str, object] = {}
    exec(compile("from jaxtyping import Int64\n" + text, "data.py", "exec"), namespace)
    dataset = namespace["Sentences"]([3, 5])  # type: ignore[operator]
    items = [dataset[0], dataset[1]]
    tokens, labels = namespace["pad"](items)  # type: ignore[operator]
    assert tokens.shape == (2, 5) and labels.tolist() == [0, 1]
    with pytest.raises(TypeCheckError):  # float tokens: not the int64 batch the run saw
        namespace["pad"]([(torch.zeros(3), 0)])  # type: ignore[operator]
    with pytest.raises(TypeCheckError):  # an item of another dtype from the same dataset
        namespace["Sentences"]([2.5])[0]  # type: ignore[operator]
