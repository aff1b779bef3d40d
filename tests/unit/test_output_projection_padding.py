"""The helper output-projection-unaligned's codemod writes gives the unpadded layer's values
and gradients (CPU, float64): the codemod's output is executed, not re-implemented here."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.codemods.output_projection_unaligned import HELPER
from torchdoctor.agent.fixes.models import FixTarget

FIXTURE = Path(__file__).parents[1] / "fixtures" / "fixes" / "output-projection-unaligned"


def _written_helper() -> Callable[[nn.Linear, torch.Tensor], torch.Tensor]:
    """The helper function out of the codemod's output for the fixture, compiled alone."""
    rule = "output-projection-unaligned"
    target = json.loads((FIXTURE / "target.json").read_text())
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = codemod.transform(
        (FIXTURE / "before.py").read_text(), FixTarget(rule=rule, file="before.py", **target)
    )
    assert fixed is not None
    tree = ast.parse(fixed)
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == HELPER)
    namespace: dict[str, object] = {"torch": torch}
    exec(compile(ast.Module(body=[helper], type_ignores=[]), "after.py", "exec"), namespace)
    function = namespace[HELPER]
    assert callable(function)
    return function  # type: ignore[return-value]


@pytest.mark.parametrize("rows", [1003, 5003, 1024])
@pytest.mark.parametrize("bias", [True, False])
def test_padded_call_matches_the_layer_in_values_and_gradients(rows: int, bias: bool) -> None:
    padded_call = _written_helper()
    torch.manual_seed(0)
    layer = nn.Linear(24, rows, bias=bias).double()
    x = torch.randn(3, 5, 24, dtype=torch.float64, requires_grad=True)
    target = torch.randint(rows, (15,))

    def loss_of(out: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out.reshape(-1, rows), target)

    expected = layer(x)
    loss_of(expected).backward()
    expected_grads = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]  # type: ignore[union-attr]
    x.grad = None
    layer.zero_grad(set_to_none=True)

    got = padded_call(layer, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    loss_of(got).backward()
    got_grads = [x.grad, *(p.grad for p in layer.parameters())]
    for want, have in zip(expected_grads, got_grads, strict=True):
        assert have is not None
        torch.testing.assert_close(have, want)
    assert layer.weight.shape == (rows, 24), "the parameter keeps its shape"
