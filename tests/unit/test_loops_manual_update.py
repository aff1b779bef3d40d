"""Training loops that update the parameters by hand (no optimizer): the update from each
parameter's own gradient is the step (Zaremba's LSTM LM, pytorch/examples'
word_language_model, d2l's `sgd`); loops that only read gradients or move an EMA copy of
the weights take no step."""

from __future__ import annotations

import ast
import textwrap

import pytest

from torchdoctor.agent.checks.base import ModuleContext
from torchdoctor.agent.checks.engine import _walk


def training_loop_lines(source: str) -> list[int]:
    """The first line of every training loop the engine finds in `source`."""
    text = textwrap.dedent(source)
    ctx = ModuleContext(path="m.py", source=text, tree=ast.parse(text))
    _walk(ctx, {}, float("inf"), [], {})
    return [loop.node.lineno for loop in ctx.loops.training_loops]


ZAREMBA = """
import torch
import torch.nn as nn

def train(trn, model, lr, max_norm):
    for x, y in trn:
        model.zero_grad()
        scores, states = model(x, states)
        loss = nll_loss(scores, y)
        loss.backward()
        with torch.no_grad():
            norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            for param in model.parameters():
                param -= lr * param.grad
"""

WORD_LANGUAGE_MODEL = """
import torch

def train(model, train_data, lr, clip):
    for batch, i in enumerate(range(0, train_data.size(0) - 1, 35)):
        data, targets = get_batch(train_data, i)
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
"""

D2L_HELPER = """
import torch

def sgd(params, lr, batch_size):
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()

def train(net, loss, train_iter, params, lr):
    for X, y in train_iter:
        l = loss(net(X, params), y)
        l.sum().backward()
        sgd(params, lr, X.shape[0])
"""

NAMED_DATA_UPDATE = """
def train(model, loader, lr):
    for x, y in loader:
        loss = model(x, y)
        loss.backward()
        for name, p in model.named_parameters():
            d_p = p.grad.data
            p.data = p.data - lr * d_p
            p.grad = None
"""

FROM_SCRATCH_TENSORS = """
import torch

W1 = torch.randn(784, 128, requires_grad=True)
b1 = torch.zeros(128, requires_grad=True)
for epoch in range(10):
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(x @ W1 + b1, y)
        loss.backward()
        with torch.no_grad():
            for t in [W1, b1]:
                t.sub_(0.1 * t.grad)
                t.grad.zero_()
"""


@pytest.mark.parametrize(
    ("source", "line"),
    [
        (ZAREMBA, 6),
        (WORD_LANGUAGE_MODEL, 5),
        (D2L_HELPER, 11),
        (NAMED_DATA_UPDATE, 3),
        (FROM_SCRATCH_TENSORS, 7),
    ],
    ids=["zaremba", "word-language-model", "d2l-sgd-helper", "named-parameters-data", "tensors"],
)
def test_a_manual_update_from_the_gradient_is_the_step(source: str, line: int) -> None:
    assert training_loop_lines(source) == [line]


GRADIENT_LOGGING = """
def train(model, loader, writer):
    for x, y in loader:
        loss = model(x, y)
        loss.backward()
        total = 0.0
        for p in model.parameters():
            total += p.grad.norm() ** 2
            p.grad.data.div_(4)
        writer.add_scalar("grad_norm", total ** 0.5)
"""

EMA_COPY = """
import torch

def train(model, ema_model, loader, decay):
    for x, y in loader:
        loss = model(x, y)
        loss.backward()
        with torch.no_grad():
            for ema_p, p in zip(ema_model.parameters(), model.parameters()):
                ema_p.mul_(decay).add_(p.data, alpha=1 - decay)
"""

ADVERSARIAL_INPUT = """
def attack(model, x, y, alpha, steps):
    delta = x.new_zeros(x.shape, requires_grad=True)
    for _ in range(steps):
        loss = model(x + delta, y)
        loss.backward()
        delta.data = delta.data + alpha * delta.grad.sign()
        delta.grad.zero_()
"""


@pytest.mark.parametrize(
    "source",
    [GRADIENT_LOGGING, EMA_COPY, ADVERSARIAL_INPUT],
    ids=["gradient-norm-logging", "ema-copy", "adversarial-input"],
)
def test_reading_gradients_or_moving_other_tensors_is_no_step(source: str) -> None:
    assert training_loop_lines(source) == []
