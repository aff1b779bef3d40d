"""Runs one external tool as a real subprocess, bounded in time, never raising on its failure.

Each tool gets its own session (process group) so a timeout kills it and every worker it
spawned (flake8 -j forks). Executables are looked up on PATH first, then next to the running
interpreter, so a virtualenv's tools are found without activating it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CRASH_MARKERS = ("Traceback (most recent call last)", "Fatal Python error")


class ToolMissing(Exception):
    """The executable is not there, or cannot be executed."""


class ToolTimeout(Exception):
    """The tool ran past its time limit and was killed with its process group."""


@dataclass(frozen=True)
class ToolOutput:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def crashed(self) -> bool:
        """A Python traceback or interpreter failure on stderr: the exit status can't be trusted
        (flake8 exits 1 both for findings and when its interpreter fails to start)."""
        return any(marker in self.stderr for marker in CRASH_MARKERS)

    def stderr_tail(self, chars: int = 400) -> str:
        text = self.stderr.strip() or self.stdout.strip()
        return text[-chars:]


def resolve_executable(name: str) -> str | None:
    """`name` on PATH, else in the running interpreter's bin folder, else None."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def tool_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus PYTHONPATH: the tool runs inside the audited project, where a
    relative entry ('.') would let the project's `types.py` or `random.py` shadow the standard
    library in the tool's own interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, **(overrides or {})}


def run_tool(
    argv: Sequence[str],
    cwd: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> ToolOutput:
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=tool_environment(env),
            start_new_session=True,
        )
    except OSError as err:
        raise ToolMissing(f"{argv[0]}: {err.strerror or err}") from err
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ToolTimeout(f"stopped after the {timeout_s:g}s limit") from err
    return ToolOutput(process.returncode, stdout, stderr, time.perf_counter() - started)
