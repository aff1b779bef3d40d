"""Device-bound rules stand down where no device is touched; torch.load inside safe_globals is
a weights-only load. Shapes from pytorch/examples (time_sequence_prediction trains on CPU)."""

from __future__ import annotations

from torchdoctor.agent.checks.engine import analyse_files

CPU_ONLY_TRAINING = """
import torch
import torch.nn as nn
import torch.optim as optim

model = nn.Linear(4, 1)
criterion = nn.MSELoss()
optimizer = optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    optimizer.zero_grad()
    loss = criterion(model(torch.randn(8, 4)), torch.randn(8, 1))
    loss.backward()
    optimizer.step()
    print("loss:", loss.item())
"""

HELPER = """
def train(model, criterion, optimizer, batches):
    for x, y in batches:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        print("loss:", loss.item())
"""


def _rules(source: str) -> set[str]:
    return {f.rule for f in analyse_files([("train.py", source)]).all_findings()}


def _severity(source: str, rule: str) -> str:
    found = analyse_files([("train.py", source)]).all_findings()
    return next(f.severity.value for f in found if f.rule == rule)


def test_host_sync_drops_to_info_in_a_script_that_never_touches_a_device() -> None:
    assert _severity(CPU_ONLY_TRAINING, "host-sync-in-step") == "info"
    on_gpu = CPU_ONLY_TRAINING.replace("model = nn.Linear(4, 1)", "model = nn.Linear(4, 1).cuda()")
    assert _severity(on_gpu, "host-sync-in-step") != "info"
    assert _severity(HELPER, "host-sync-in-step") != "info"  # a helper: callers may use a GPU


def test_the_device_generic_accelerator_api_is_a_gpu_script() -> None:
    """pytorch/examples pick their device with `torch.accelerator` (word_language_model,
    dcgan): their GPU training got no mixed-precision or compile advice."""
    accelerated = CPU_ONLY_TRAINING.replace(
        "model = nn.Linear(4, 1)",
        "device = torch.accelerator.current_accelerator()\nmodel = nn.Linear(4, 1).to(device)",
    )
    assert {"no-amp", "no-torch-compile"} <= _rules(accelerated)
    assert _severity(accelerated, "host-sync-in-step") != "info"
    assert not {"no-amp", "no-torch-compile"} & _rules(CPU_ONLY_TRAINING)


LOAD = """
import torch
from argparse import Namespace

def restore(path, model):
{body}
    model.load_state_dict(state["model"])
"""


def test_torch_load_inside_safe_globals_is_a_weights_only_load() -> None:
    inside = (
        "    with torch.serialization.safe_globals([Namespace]):\n        state = torch.load(path)"
    )
    assert "torch-load-unsafe" not in _rules(LOAD.format(body=inside))
    bare = "    state = torch.load(path)"
    assert "torch-load-unsafe" in _rules(LOAD.format(body=bare))
