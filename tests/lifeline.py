"""Servers the tests start die with the test process that started them (an xdist worker), so an
interrupted run (Ctrl-C, a worker killed or crashed, its fixtures never torn down) leaves no
PostgreSQL, Ray cluster or `torchdoctor serve` behind.

A server started as our own child gets the kernel's parent-death signal (the sandbox's
`die_with_parent`). A server that daemonizes (`pg_ctl start`, `ray start`) has no such parent:
a watcher (`Sweeper`), in a session of its own so that it outlives us, waits for this process to
exit and then ends every process whose command line names the server's private folder (its data
or temporary folder: `pg_ctl`'s postmaster, Ray's GCS, raylets and agents) and everything under
them, and removes the folder. A fixture that stops its server normally cancels its sweeper first.

    python -m tests.lifeline PID FOLDER   # the watcher itself
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 5.0
"""How long the folder's processes get to end on SIGQUIT (PostgreSQL's immediate shutdown, which
also releases its shared memory) before SIGKILL."""


class Sweeper:
    """Watches this process from outside; when it exits, ends `folder`'s processes and removes
    the folder (`cancel` once the server was stopped normally)."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lifeline", str(os.getpid()), str(folder)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # neither Ctrl-C nor a kill of our process group reaches it
        )

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def processes_of(folder: str) -> list[psutil.Process]:
    """Every process whose command line names `folder`, and their descendants."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if any(folder in part for part in process.info["cmdline"] or []):
            try:
                family = [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            found.update((member.pid, member) for member in family)
    found.pop(os.getpid(), None)  # this watcher names the folder too
    return list(found.values())


def sweep(folder: str) -> None:
    """SIGQUIT to the folder's processes, SIGKILL to whatever is left after `GRACE_S`, then
    remove the folder."""
    family = processes_of(folder)
    for process in family:
        try:
            process.send_signal(signal.SIGQUIT)
        except psutil.NoSuchProcess:
            continue
    alive = wait_dead(family, GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    wait_dead(alive, GRACE_S)
    shutil.rmtree(folder, ignore_errors=True)


def dead(process: psutil.Process) -> bool:
    """Gone, or a zombie (an orphan's reaper, this machine's init, may be late)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still alive after at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if not dead(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not dead(p)]
    return alive


def wait_for_exit(pid: int) -> None:
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (Linux before 5.3): poll
        while psutil.pid_exists(pid):
            time.sleep(0.5)
        return
    select.select([watched], [], [])
    os.close(watched)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid, folder = int(argv[0]), argv[1]
    wait_for_exit(pid)
    sweep(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
