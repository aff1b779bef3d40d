"""batch-input-not-moved judges the module's helper functions (those that make host tensors,
those that move an argument) only once a scope moves a model: a module that never moves one
pays nothing for its functions, and a module that does gets the same findings as before."""

from __future__ import annotations

import textwrap

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_source
from torchdoctor.agent.checks.rules import batch_input_not_moved
from torchdoctor.agent.checks.rules.batch_input_not_moved import BatchInputNotMoved

HELPERS = """
import torch

def encode(text):
    return torch.tensor([ord(c) for c in text]).unsqueeze(0)

def place(batch, device):
    return batch.to(device)
"""
NO_MODEL_MOVED = (
    HELPERS
    + """
def collate(items, device):
    stacked = torch.stack(items)
    return stacked.to(device)
"""
)
MODEL_MOVED = (
    HELPERS
    + """
def generate(model, text, device):
    model = model.to(device)
    prompt = encode(text)
    return model(prompt)
"""
)


def judged(source: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    asked: list[str] = []
    for name in ("_returns_host_tensor", "_moves_an_argument"):
        real = getattr(batch_input_not_moved, name)

        def counted(function: object, real: object = real, name: str = name) -> bool:
            asked.append(name)
            return real(function)  # type: ignore[operator,no-any-return]

        monkeypatch.setattr(batch_input_not_moved, name, counted)
    result = analyse_source(
        "infer.py", textwrap.dedent(source), (BatchInputNotMoved,), EngineConfig()
    )
    return asked, [f.message for f in result.findings]


def test_a_module_that_moves_no_model_never_judges_its_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked, findings = judged(NO_MODEL_MOVED, monkeypatch)
    assert asked == [] and findings == []


def test_a_moved_model_judges_every_function_once_and_reports_the_host_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked, findings = judged(MODEL_MOVED, monkeypatch)
    assert sorted(asked) == sorted(["_returns_host_tensor", "_moves_an_argument"] * 3)
    assert len(findings) == 1 and "`prompt` is made on the CPU" in findings[0]
