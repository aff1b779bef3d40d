"""A process forked from a long-lived one (the API's fork server, a worker forking its peers)
sets its death signal with the C library its parent found: no `ldconfig` run per fork."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

from torchdoctor.sandbox.lifeline import die_with_parent, libc

PR_GET_PDEATHSIG = 2


def test_a_fork_sets_its_death_signal_without_looking_for_the_c_library_again() -> None:
    assert libc() is not None  # found here, as `preload` does before the fork server forks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and exits
        code = 1
        try:
            looked: list[str] = []

            def find_library(name: str) -> str | None:
                looked.append(name)
                return None

            ctypes.util.find_library = find_library
            die_with_parent()
            found = libc()
            assert found is not None
            signal_number = ctypes.c_int(0)
            found.prctl(PR_GET_PDEATHSIG, ctypes.byref(signal_number), 0, 0, 0)
            os.write(write_end, f"{len(looked)} {signal_number.value}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    answer = os.read(read_end, 100).decode()
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == f"0 {int(signal.SIGKILL)}"  # the signal set, the library not looked up
