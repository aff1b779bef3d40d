"""The integer-tensor-requires-grad codemod on each factory shape, then run: the leaves the
fixed lines make require gradients (the originals raise)."""

from __future__ import annotations

import pytest
import torch

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

RULE = "integer-tensor-requires-grad"
CASES = {
    "scalar": (
        "t = torch.tensor(-3, requires_grad=True)",
        "t = torch.tensor(-3.0, requires_grad=True)",
    ),
    "nested": (
        "t = torch.tensor([[1, 2], [3, 4]], requires_grad=True)",
        "t = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)",
    ),
    "full": (
        "t = torch.full((2,), 7, requires_grad=True)",
        "t = torch.full((2,), 7.0, requires_grad=True)",
    ),
    "arange": (
        "t = torch.arange(0, 10, requires_grad=True)",
        "t = torch.arange(0, 10, requires_grad=True, dtype=torch.float32)",
    ),
}


def _target(source: str) -> FixTarget:
    (found,) = [
        f for f in analyse_files([("m.py", source)], workers=1).all_findings() if f.rule == RULE
    ]
    return FixTarget(
        rule=RULE, file="m.py", line=found.line, end_line=found.end_line, data=found.data
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_leaf_requires_grad(case: str) -> None:
    before, after = (f"import torch\n{line}\n" for line in CASES[case])
    with pytest.raises(RuntimeError, match="floating point"):
        exec(compile(before, "m.py", "exec"), {})
    codemod = codemod_for(RULE)
    assert codemod is not None
    fixed = codemod.transform(before, _target(before))
    assert fixed == after
    namespace: dict[str, object] = {}
    exec(compile(fixed, "m.py", "exec"), namespace)
    leaf = namespace["t"]
    assert isinstance(leaf, torch.Tensor) and leaf.requires_grad and leaf.is_floating_point()


def test_an_integer_dtype_asked_for_is_left_to_a_human() -> None:
    source = "import torch\nt = torch.zeros(3, dtype=torch.long, requires_grad=True)\n"
    codemod = codemod_for(RULE)
    assert codemod is not None
    assert codemod.transform(source, _target(source)) is None
