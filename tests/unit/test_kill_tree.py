"""Cancelling an audit kills every process it started, even one forked while the family is
being looked up (a busy worker starts sandbox jobs all the time)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from torchdoctor.api.processes import kill_tree

# Starts a child in a session of its own every few milliseconds and notes its pid.
SPAWNER = """
import subprocess, sys, time
with open(sys.argv[1], "a") as pids:
    while True:
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        pids.write(f"{child.pid}\\n")
        pids.flush()
        time.sleep(0.002)
"""


def test_a_family_that_keeps_forking_is_killed_to_the_last_child(tmp_path: Path) -> None:
    noted = tmp_path / "pids"
    noted.touch()
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER, str(noted)])
    deadline = time.monotonic() + 30
    while len(noted.read_text().split()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_tree(spawner.pid)
    spawner.wait(timeout=10)
    children = [int(pid) for pid in noted.read_text().split()]
    assert len(children) >= 20
    assert _alive(children) == []


# A worker ending itself when its server dies: it kills its own family, itself last.
SELF_KILLER = """
import os, subprocess, sys, time
from torchdoctor.api.processes import kill_tree
children = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(3)]
with open(sys.argv[1], "w") as pids:
    pids.write("\\n".join(str(child.pid) for child in children))
kill_tree(os.getpid())
time.sleep(60)
"""


def test_a_process_can_kill_its_own_family_and_then_itself(tmp_path: Path) -> None:
    noted = tmp_path / "pids"
    worker = subprocess.Popen([sys.executable, "-c", SELF_KILLER, str(noted)])
    assert worker.wait(timeout=30) == -9  # killed, not stopped by its own freeze
    children = [int(pid) for pid in noted.read_text().split()]
    assert len(children) == 3
    assert _alive(children) == []


def _alive(pids: list[int], within_s: float = 10.0) -> list[int]:
    """The pids still running (not dead nor a zombie) once `within_s` has passed: SIGKILL is
    sent at once, but a killed process ends when the kernel next schedules it, which on a
    loaded machine can be a moment after its killer has died."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
