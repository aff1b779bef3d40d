"""A pool worker killed mid-pass (the kernel's OOM killer, a crash on a hostile file) must
not take the audit with it: the static pass redoes what that worker left, file by file. The
kill here is real: SIGKILL to a live forkserver worker while the pass runs."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from torchdoctor.agent.checks.engine import analyse_files

SCRIPT = """\
import torch
from torch import nn


class Net{n}(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x))


def train(loader):
    model = Net{n}()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
"""


def _kill_a_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first pool worker seen (a grandchild of this process: the forkserver's
    child), while the pass is running."""
    me = psutil.Process(os.getpid())
    while not stop.is_set():
        for child in me.children(recursive=True):
            if child.ppid() != os.getpid():  # the forkserver's children are the workers
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(child.pid)
                return
        time.sleep(0.005)


def test_a_worker_killed_mid_pass_costs_no_file() -> None:
    files = [(f"pkg/train_{n}.py", SCRIPT.format(n=n)) for n in range(300)]
    expected = analyse_files(files[:30], workers=1)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker, args=(killed, stop), daemon=True)
    killer.start()
    try:
        result = analyse_files(files, workers=2)
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "no pool worker was seen to kill: the pass ended first"
    assert sorted(r.path for r in result.files) == sorted(path for path, _ in files)
    assert all(r.note is None for r in result.files)  # every file analysed, none lost
    by_path = {r.path: r for r in result.files}
    for want in expected.files:  # and analysed as a single process analyses them
        assert [f.rule for f in by_path[want.path].findings] == [f.rule for f in want.findings]
