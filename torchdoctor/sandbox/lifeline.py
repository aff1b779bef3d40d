"""Children that die with their parent, so a `kill -9` of an audit leaves no process behind.

`PR_SET_PDEATHSIG` asks the kernel to send SIGKILL to the calling process when the thread
that forked it exits; set in a child between fork and exec (`preexec_fn`) or first thing in a
pool worker. It is cleared when the child changes uid (the sandbox's jobs are swept by uid
instead) and does nothing outside Linux.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Arrange SIGKILL for this process when its parent dies (best effort, Linux only);
    exits at once if the parent is already gone (re-parented to init before the call)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
