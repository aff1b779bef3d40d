"""Children that die with the audit, so a `kill -9` of an audit leaves no process behind.

`PR_SET_PDEATHSIG` asks the kernel to send SIGKILL to the calling process when the thread
that forked it exits; set in a child between fork and exec (`preexec_fn`), or by util-linux's
`setpriv` in the program it then executes (`death_signal_prefix`). It is cleared when
the child changes uid (the sandbox's jobs are swept by uid instead) and does nothing outside
Linux. A pool worker's parent is the multiprocessing forkserver, which itself waits for its
workers to close a pipe: such a worker watches the audit process instead (`die_with`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import select
import shutil
import signal
import subprocess
import threading

PR_SET_PDEATHSIG = 1


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, found once per process and inherited by its forks: `find_library` runs
    `ldconfig -p` in a subprocess each time, which cost every forked peer and every tool
    started with `die_with_parent` a few milliseconds of CPU (a long-lived process that
    forks calls this before it forks: `preload`, `warm`). None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent() -> None:
    """Arrange SIGKILL for this process when its parent dies (best effort, Linux only);
    exits at once if the parent is already gone (re-parented to init before the call)."""
    found = libc()
    if found is None:
        return
    found.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def death_signal_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig KILL --`, an argv prefix that gives the program it starts the death
    signal `die_with_parent` gives, where it works here (util-linux 2.33 or later); () where it
    does not. A child started through it needs no `preexec_fn`, so `subprocess` starts it with
    vfork rather than fork: the parent's page tables are not copied for a child that execs at
    once (a 100 MB worker's fork costs ~5-15 ms of CPU, in the parent and in the child). Found
    once per process (a process that forks audits finds it first: `warm.preload`)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        done = subprocess.run(
            [*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if done.returncode == 0 else ()


def die_with(pid: int) -> None:
    """Kill this process as soon as process `pid` exits (a daemon thread waits on a pidfd,
    opened now, so a later reuse of the pid cannot fool it)."""
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (OSError, AttributeError):
        return
    thread = threading.Thread(target=_wait_then_die, args=(watched,), daemon=True)
    thread.start()


def _wait_then_die(watched: int) -> None:
    select.select([watched], [], [])
    os.kill(os.getpid(), signal.SIGKILL)
