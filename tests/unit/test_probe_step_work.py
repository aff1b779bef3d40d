"""What the harness does on an ordinary step (neither sampled, nor a flush, nor a graph scan):
on a launch-bound GPU loop every call it makes there is step time. Counted, not timed: the
tensor operations it issues, the class attributes it swaps and the Python calls it makes.
`benchmarks/probe_host_cost.py` gives the time these cost."""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import torchdoctor.sandbox.probes as probes_package  # noqa: E402
from torchdoctor.sandbox.probes.config import ProbeConfig  # noqa: E402
from torchdoctor.sandbox.probes.frames import UserFiles  # noqa: E402
from torchdoctor.sandbox.probes.session import Session  # noqa: E402
from torchdoctor.sandbox.probes.tensors import read_together  # noqa: E402

PROBES_DIR = os.path.dirname(os.path.realpath(probes_package.__file__))
SAMPLE_EVERY, FLUSH_EVERY = 10, 25
PYTHON_CALLS_MAX = 52
"""Python calls in the probes package on one ordinary step of the loop below (49 when this
was written, 59 before: hooks on the root and the loss, the backward wrapper, the optimizer's
hooks)."""


def _loop() -> Callable[[], None]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    criterion = nn.CrossEntropyLoss()
    # foreach AdamW, as on a GPU: `.item()` of every parameter's step count in each step
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=True)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def _calls_on_ordinary_steps(steps: int) -> tuple[Session, collections.Counter[str], int]:
    """Per-step calls made from the probes' code on `steps` ordinary steps."""
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == "is_available" and "cuda" in code.co_filename:
            counts["torch.cuda.is_available"] += 1
        if not code.co_filename.startswith(PROBES_DIR):
            return
        if event == "call":
            counts[f"python {code.co_name}"] += 1
        elif event == "c_call":
            owner = getattr(arg, "__self__", None)
            name = getattr(arg, "__name__", "?")
            if isinstance(owner, torch.Tensor):
                counts[f"tensor.{name}"] += 1
            elif name == "setattr":
                counts["setattr"] += 1

    config = ProbeConfig(
        script=__file__, steps=10**6, sample_every=SAMPLE_EVERY, flush_every=FLUSH_EVERY
    )
    session = Session(config, UserFiles(__file__))
    session.install()
    seen = 0
    try:
        step = _loop()  # built under the harness, as a script's are
        while seen < steps:
            if session.next_step_kind != "ordinary":
                step()
                continue
            sys.setprofile(profile)
            try:
                step()
            finally:
                sys.setprofile(None)
            seen += 1
        session.flush()
    finally:
        session.uninstall()
    return session, counts, seen


def test_an_ordinary_step_copies_the_loss_once_and_swaps_one_method_in_and_out() -> None:
    session, counts, steps = _calls_on_ordinary_steps(5)
    per_step = {name: count / steps for name, count in counts.items()}

    # the loss kept on the device: one detached copy, its shape and dtype left to the flush,
    # and no copy of the backward's tensor beside the criterion's
    tensor_ops = {n: c for n, c in per_step.items() if n.startswith("tensor.")}
    assert tensor_ops == {
        "tensor.numel": 1,
        "tensor.is_floating_point": 1,
        "tensor.detach": 1,
        "tensor.clone": 1,
    }
    # `.item()` swapped for the optimizer's step and back; `.cpu()`, `.numpy()`, `.tolist()`
    # stay wrapped (each swap invalidates the attribute caches of every tensor class)
    assert per_step.get("setattr") == 2
    # a known root is not asked again whether it holds parameters; CUDA's availability is
    # remembered on a machine without it
    assert "python _stateless" not in per_step
    assert "torch.cuda.is_available" not in per_step
    python_calls = sum(c for n, c in per_step.items() if n.startswith("python "))
    assert python_calls <= PYTHON_CALLS_MAX
    # and the evidence is whole: a loss for every step, from the criterion
    assert sorted(session.loss.values) == list(range(session.step))
    assert session.loss.sources == {"criterion"}


def test_losses_waiting_for_a_flush_are_read_in_one_vector_whatever_their_shape() -> None:
    """Kept as the script gave them (0-d, one-element, half precision): one stack at the
    flush when they share a device and a dtype, one read each otherwise."""
    from torchdoctor.sandbox.probes.numerics import LossProbe

    probe = LossProbe()
    for step, value in enumerate([torch.tensor(1.5), torch.tensor([2.5]), torch.tensor(3.5)]):
        probe.on_criterion(value.requires_grad_())
        probe.end_step(step)
    assert len(probe.on_device()) == 1
    read_together([probe])
    assert probe.values == {0: 1.5, 1: 2.5, 2: 3.5}

    probe.on_criterion(torch.tensor(4.5, dtype=torch.bfloat16))
    probe.end_step(3)
    probe.on_criterion(torch.tensor([[5.5]]))
    probe.end_step(4)
    assert len(probe.on_device()) == 2
    read_together([probe])
    assert probe.values[3] == 4.5 and probe.values[4] == 5.5
    assert probe.sources == {"criterion", "criterion-no-grad"}


def test_a_step_whose_loss_only_backward_saw_keeps_the_mean_of_its_backwards() -> None:
    """No criterion (a loss made of plain operations): each backward's tensor is copied, and
    the step's loss is their mean, as before the copies were skipped beside a criterion."""
    from torchdoctor.sandbox.probes.numerics import LossProbe

    probe = LossProbe()
    probe.on_backward(torch.tensor(1.0))
    probe.on_backward(torch.tensor([3.0], dtype=torch.bfloat16))
    probe.end_step(0)
    probe.on_backward(torch.tensor(7.0))
    probe.end_step(1)
    read_together([probe])
    assert probe.values == {0: 2.0, 1: 7.0}
    assert probe.sources == {"backward"}
