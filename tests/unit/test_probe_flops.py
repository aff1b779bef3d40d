"""The FLOP count of a step leaves the script's own autograd alone."""

from __future__ import annotations

import torch
from torch import autograd, nn

from torchdoctor.sandbox.probes.flops import FlopProbe


def test_a_gradient_penalty_through_autograd_grad_runs_while_flops_are_counted() -> None:
    """Held-out mnist-gans (WGAN-GP): `autograd.grad(net_d(interpolates), interpolates, ...)`
    raised 'A leaf node was passed to _will_engine_execute_node' under the harness alone:
    FlopCounterMode's module tracker hooks every module's inputs with multi-grad hooks."""
    critic = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    probe = FlopProbe()
    probe.start(0)
    try:
        interpolates = torch.rand(3, 4)
        interpolates.requires_grad = True
        (grad,) = autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
        ((grad.norm(2, dim=1) - 1) ** 2).mean().backward()
    finally:
        probe.stop()
    assert probe.error is None
    assert probe.flops is not None and probe.flops >= 2 * 3 * 4 * 8  # the first layer alone
