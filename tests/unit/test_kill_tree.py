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
    alive = [
        pid
        for pid in children
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
