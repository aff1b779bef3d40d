"""layer-built-in-forward's codemod on the rule's real-shape fixtures: each layer is built
once in `__init__`, the fixed module owns its weights (more parameters, the same output on
two calls), and what cannot move (a loop, a size read from the input, no `__init__`) is
declined with the reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_source
from torchdoctor.agent.checks.registry import enabled_rules
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

RULE = "layer-built-in-forward"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules" / RULE


def _lines(source: str) -> list[int]:
    rules = tuple(r for r in enabled_rules() if r.id == RULE)
    found = analyse_source("m.py", source, rules, EngineConfig()).findings
    return sorted(f.line for f in found if f.rule == RULE)


def _target(line: int) -> FixTarget:
    return FixTarget(rule=RULE, file="m.py", line=line, end_line=line)


def _fixed_all(source: str) -> str:
    """Every finding fixed, one after the other, as the audit stacks verified fixes."""
    codemod = codemod_for(RULE)
    assert codemod is not None
    while lines := _lines(source):
        fixed = codemod.transform(source, _target(lines[0]))
        assert fixed is not None, codemod.explain(source, _target(lines[0]))
        source = fixed
    return source


def _namespace(source: str) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(compile(source, "m.py", "exec"), namespace)  # the fixture's own classes, no I/O
    return namespace


def test_the_transformer_builds_each_layer_once() -> None:
    source = (FIXTURES / "positive_transformer_sublayers.py").read_text()
    fixed = _fixed_all(source)
    ast.parse(fixed)
    assert "self.linear = nn.Linear(n_heads * d_v, d_model)" in fixed
    assert "output = self.linear(context)" in fixed
    assert "return self.layer_norm(output + residual), attn" in fixed
    assert "return self.layer_norm(x)" in fixed  # the helper forward calls
    before, after = _namespace(source), _namespace(fixed)
    for name, extra in (
        ("MultiHeadAttention", 512 * 512 + 512 + 2 * 512),
        ("PoswiseFeedForwardNet", 2 * 512),
    ):
        old, new = before[name](), after[name]()  # type: ignore[operator]
        assert (
            sum(p.numel() for p in new.parameters())
            == sum(p.numel() for p in old.parameters()) + extra
        )
    torch.manual_seed(0)
    attention = after["MultiHeadAttention"]()  # type: ignore[operator]
    x = torch.randn(2, 5, 512)
    mask = torch.zeros(2, 5, 5, dtype=torch.bool)
    first, _ = attention(x, x, x, mask)
    second, _ = attention(x, x, x, mask)
    assert torch.equal(first, second)  # the same weights at every call


def test_an_attribute_rebuilt_in_forward_moves_to_init_and_a_dropout_follows_eval() -> None:
    source = (FIXTURES / "positive_rebuilt_attribute_and_dropout.py").read_text()
    fixed = _fixed_all(source)
    init = fixed.split("def forward", 1)[0]
    assert "self.head = nn.Linear(self.hidden, self.classes)" in init
    assert "self.dropout = Dropout(0.3)" in init
    assert "feats = self.dropout(out[:, -1])" in fixed
    assert "return self.embedding(t)" in fixed
    classifier = _namespace(fixed)["Classifier"](8, 3)  # type: ignore[operator]
    classifier.eval()
    x = torch.randn(4, 6, 8)
    assert torch.equal(classifier(x), classifier(x))  # eval mode reaches the dropout now


LOOP = """\
import torch
import torch.nn as nn
import torch.nn.functional as F


class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(9, 2)

    def forward(self, x):
        pooled = []
        for size in (2, 3, 4):
            h = F.relu(nn.Conv2d(1, 3, (size, 8))(x))
            pooled.append(h.amax(dim=(2, 3)))
        return self.fc(torch.cat(pooled, 1))


class Lazy(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(nn.Linear(x.size(-1), 4)(x))


class NoInit(nn.Module):
    def forward(self, x):
        return nn.LayerNorm(8)(x)


class MuseBranchWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.dy_paras = nn.Parameter(torch.ones(3))
        self.softmax = nn.Softmax(-1)

    def forward(self, x):
        self.dy_paras = nn.Parameter(self.softmax(self.dy_paras))
        return self.dy_paras[0] * x
"""


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (14, "built in a loop, one per iteration"),  # graykode/nlp-tutorial's TextCNN, #33
        (25, "its arguments read x, known only inside forward()"),
        (30, "no __init__ of its own"),
        # ZhugeKongan/torch-template-for-deep-learning's MUSEAttention: moved to __init__,
        # the softmax would run once instead of at every call
        (40, "re-wraps the attribute's own value at every call"),
    ],
)
def test_what_cannot_move_is_declined_with_the_reason(line: int, reason: str) -> None:
    assert _lines(LOOP) == [14, 25, 30, 40]
    codemod = codemod_for(RULE)
    assert codemod is not None
    assert codemod.transform(LOOP, _target(line)) is None
    assert reason in (codemod.explain(LOOP, _target(line)) or "")
