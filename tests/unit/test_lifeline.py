"""A process forked from a long-lived one (the API's fork server, a worker forking its peers)
sets its death signal with the C library its parent found: no `ldconfig` run per fork. A tool
started by a worker gets it from `setpriv`, without a fork of the worker, where it can."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from pathlib import Path

import pytest

from torchdoctor.agent.checks.linters import process
from torchdoctor.agent.checks.linters.process import ToolMissing, run_tool
from torchdoctor.sandbox.lifeline import death_signal_prefix, die_with_parent, libc

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


READ_DEATH_SIGNAL = (
    "import ctypes, ctypes.util\n"
    "libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')\n"
    "value = ctypes.c_int(0)\n"
    f"libc.prctl({PR_GET_PDEATHSIG}, ctypes.byref(value), 0, 0, 0)\n"
    "print(value.value)\n"
)


def test_a_started_tool_gets_its_death_signal_without_a_fork_of_the_audit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not death_signal_prefix():
        pytest.skip("setpriv --pdeathsig is not available here")

    def in_a_fork() -> None:
        raise AssertionError("preexec_fn ran: the tool was started by a fork of the caller")

    monkeypatch.setattr(process, "die_with_parent", in_a_fork)
    output = run_tool([sys.executable, "-c", READ_DEATH_SIGNAL], tmp_path, 60)
    assert (output.returncode, output.stdout.strip()) == (0, str(int(signal.SIGKILL)))


def test_without_setpriv_a_started_tool_still_gets_its_death_signal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(process, "death_signal_prefix", lambda: ())
    output = run_tool([sys.executable, "-c", READ_DEATH_SIGNAL], tmp_path, 60)
    assert (output.returncode, output.stdout.strip()) == (0, str(int(signal.SIGKILL)))


def test_a_missing_tool_is_missing_whether_or_not_setpriv_starts_tools(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing):
        run_tool([str(tmp_path / "no-such-tool"), "--version"], tmp_path, 60)
