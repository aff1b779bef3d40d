"""A pool worker killed mid-pass (the kernel's OOM killer, a crash on a hostile file) must
not take the audit with it: the static pass redoes what that worker left, file by file; nor
may a worker that cannot exit hang the pass when its pool is left. The kills here are real:
SIGKILL to a live forkserver worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import _analyse_chunk, _worker_pool, analyse_files

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
    child), while the pass is running. Grandchildren older than the pass (a server an earlier
    test of this process started, another pool's workers) are not the pass's: left alone."""
    me = psutil.Process(os.getpid())
    older = {process.pid for process in me.children(recursive=True)}
    while not stop.is_set():
        for child in me.children(recursive=True):
            if child.pid in older:
                continue
            try:
                parent = child.ppid()
            except psutil.NoSuchProcess:
                continue
            if parent != os.getpid():  # the forkserver's children are the workers
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


def test_a_worker_that_cannot_exit_does_not_hang_the_pass_when_its_pool_is_left() -> None:
    """The pool's own shutdown asks each worker to exit through the task queue they share; a
    worker killed as the pool shuts down can die holding that queue's lock, and its sibling
    then never reads its exit message (CPython's `ProcessPoolExecutor.shutdown(wait=True)`
    waited for it forever). A stopped worker stands for one that cannot read it: leaving the
    pool must end it, not wait for it."""
    config = EngineConfig()
    workers: list[int] = []
    left = threading.Event()

    def use_the_pool() -> None:
        with _worker_pool(config, 1) as pool:
            (result,) = pool.submit(_analyse_chunk, ([("a.py", "x = 1\n")], config)).result()
            assert result.path == "a.py" and result.note is None
            workers.extend(pool._processes or {})
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
        left.set()

    thread = threading.Thread(target=use_the_pool, daemon=True)
    thread.start()
    try:
        assert left.wait(60), "leaving the pool waited on a worker that cannot exit"
    finally:
        for pid in workers:  # a hung shutdown is released, so this process can still exit
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        thread.join(timeout=30)
    assert workers
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
