"""The compile ladder's step graph (`compile_scope: step`): the training step's forward and loss
moved into one function computes exactly what the inline statements did: eagerly without CUDA
(the compile is guarded by `torch.cuda.is_available()`), within float32 tolerance compiled on a
GPU (the `gpu` test; GPT-2's timing: benchmarks/fix_bench.py)."""

from __future__ import annotations

import ast

import pytest
import torch

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

# A word-level LSTM language model in the shape of pytorch/examples' trainer: the hidden state
# comes back from the step and is carried to the next batch, the outputs feed an accuracy after
# the optimizer step, and the loss is divided for accumulation in the same statement.
SCRIPT = """\
import torch
from torch import nn


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.rnn = nn.LSTM(16, 16)
        self.head = nn.Linear(16, 50)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.embed(x), hidden)
        return torch.log_softmax(self.head(out), dim=-1), hidden


def train(data, steps, accumulation):
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = data.to(device)
    model = LM().to(device)
    criterion = nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    hidden = (torch.zeros(1, 4, 16, device=device), torch.zeros(1, 4, 16, device=device))
    record = []
    for i in range(steps):
        x, y = data[i, :-1], data[i, 1:]
        hidden = tuple(h.detach() for h in hidden)
        output, hidden = model(x, hidden)
        loss = criterion(output.view(-1, 50), y.reshape(-1)) / accumulation
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        correct = (output.argmax(-1) == y).sum().item()
        record.append((loss.item(), correct))
    return record
"""


def _run(source: str) -> list[tuple[float, int]]:
    namespace: dict[str, object] = {}
    exec(compile(source, "script.py", "exec"), namespace)  # our own fixture, not audited code
    data = torch.randint(0, 50, (6, 9, 4), generator=torch.Generator().manual_seed(1))
    train = namespace["train"]
    assert callable(train)
    return train(data, 6, 2)  # type: ignore[no-any-return]


def _step_graph(source: str) -> str:
    codemod = codemod_for("no-torch-compile")
    assert codemod is not None
    line = source.splitlines().index("    for i in range(steps):") + 1
    target = FixTarget(
        rule="no-torch-compile",
        file="s.py",
        line=line,
        end_line=line,
        data={"compile_scope": "step"},
    )
    fixed = codemod.transform(source, target)
    assert fixed is not None
    ast.parse(fixed)
    return fixed


def test_the_step_graph_carries_hidden_state_and_outputs_and_computes_the_same_losses() -> None:
    fixed = _step_graph(SCRIPT)
    # the batch and the carried state go in; the loss, the new state and the outputs come back
    assert "def model_and_loss(x, hidden, y):" in fixed
    assert "loss, output, hidden = model_and_loss(x, hidden, y)" in fixed
    assert "model_and_loss = torch.compile(model_and_loss)" in fixed
    assert _run(fixed) == _run(SCRIPT)


def test_a_name_already_taken_is_not_shadowed() -> None:
    fixed = _step_graph(SCRIPT.replace("record = []", "record = []\n    model_and_loss = None"))
    assert "def _model_and_loss(x, hidden, y):" in fixed
    assert _run(fixed) == _run(SCRIPT)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_step_graph_compiled_on_the_gpu_trains_as_the_eager_step() -> None:
    eager, compiled = _run(SCRIPT), _run(_step_graph(SCRIPT))
    assert [c for _, c in compiled] == [c for _, c in eager]
    assert [loss for loss, _ in compiled] == pytest.approx([loss for loss, _ in eager], rel=1e-4)
