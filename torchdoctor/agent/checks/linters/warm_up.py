"""Make a long-lived process that forks audits (the hook's daemon, the API's fork server) a warm
home for the Python peers: their entry points imported, and the modules a run of each loads
late (plugins found at run time) imported too. Every audit forked from it then forks its peers
instead of starting them: ~1.2 s of CPU less per audit, most of a one-file audit's cost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torchdoctor.agent.checks.linters import flake8_setup, torchfix_setup, warm
from torchdoctor.agent.checks.linters.process import resolve_executable, tool_environment
from torchdoctor.agent.checks.linters.runner import default_adapters

SAMPLE = """\
import torch
from torch import nn
from torch.utils.data import DataLoader


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=-1)


def train(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(loss.item())
    torch.save(model.state_dict(), "model.pt")
"""
"""A small model and training loop: what the warm-up runs read (the peers', the fork
server's audit, `torchdoctor.api.worker.warm_audit`)."""

WARM_UP_TIMEOUT_S = 60.0


def warm_peers(project: Path | None = None) -> list[str]:
    """Preload the Python peers, then run each once (in a fork, on `project`'s `train.py`, or
    on `SAMPLE` in a scratch folder) and import what that run loaded late, and do TorchFix's
    per-file set-up once (`torchfix_setup`) and flake8's plugin search once, its unselected
    bundled checkers skipped (`flake8_setup`), and run detect-secrets once here
    (`warm.run_in_process`); the peers preloaded.
    """
    loaded = warm.preload()
    if project is None:
        with tempfile.TemporaryDirectory(prefix="td-warm-peers-") as scratch:
            (Path(scratch) / "train.py").write_text(SAMPLE, encoding="utf-8")
            _import_late_modules(Path(scratch))
    else:
        _import_late_modules(project)
    if "flake8" in loaded:
        flake8_setup.prepare()
        torchfix_setup.prepare(SAMPLE)
    _run_here([name for name in warm.IN_PROCESS_WARM_UP if name in loaded])
    return loaded


def _run_here(scripts: list[str]) -> None:
    """One run of each of `scripts` in this process, on `SAMPLE` (`warm.run_in_process`)."""
    with tempfile.TemporaryDirectory(prefix="td-warm-peers-") as scratch:
        sample = Path(scratch) / "train.py"
        sample.write_text(SAMPLE, encoding="utf-8")
        for adapter in default_adapters(offline=True):
            executable = getattr(adapter, "executable", "")
            path = resolve_executable(executable) if executable in scripts else None
            command = getattr(adapter, "command", None)
            if path is not None and command is not None:
                warm.run_in_process(path, command(path, [str(sample)], Path(scratch)))


def _import_late_modules(project: Path) -> None:
    for adapter in default_adapters(offline=True):
        executable = getattr(adapter, "executable", "")
        path = resolve_executable(executable) if executable else None
        command = getattr(adapter, "command", None)
        if path is None or command is None or warm.entry_for(path) is None:
            continue
        argv = command(path, ["train.py"], project)
        late = warm.late_imports(path, argv, project, tool_environment(), WARM_UP_TIMEOUT_S)
        warm.import_modules(late)
