"""Runs one external tool as a real subprocess, bounded in time, never raising on its failure.

Each tool gets its own session (process group) so a timeout kills it and every worker it
spawned (flake8 -j forks), dies with the audit (`PR_SET_PDEATHSIG`, set by `setpriv` where it
can be, so the tool starts without a fork of the audit's process), and inherits only an
allow-listed environment (no service secret reaches a tool reading hostile code).
Executables are looked up on PATH first, then next to the running
interpreter, so a virtualenv's tools are found without activating it. In a warm process (the
pre-commit daemon) a Python tool already imported is forked instead of started (`warm`); under
a server's fork server, it runs in the warm worker that serves it (`pool`).
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

from torchdoctor.agent.checks.linters import pool, warm
from torchdoctor.sandbox.lifeline import death_signal_prefix, die_with_parent

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


ALLOWED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "XDG_CACHE_HOME",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "NO_COLOR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "PIP_INDEX_URL",
        "PIP_CACHE_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
"""What a host-side tool may inherit: enough to find executables, write caches and reach an
index through a proxy; never a service secret (LLM key, database URL), never PYTHONPATH (a
relative entry would let the audited project's `types.py` shadow the tool's standard
library), never a variable that makes an interpreter run code at start-up."""


def minimal_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `base` (default: our environment)."""
    source = os.environ if base is None else base
    return {key: value for key, value in source.items() if key in ALLOWED_ENV}


def tool_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment plus what the caller sets for this tool."""
    return {**minimal_environment(), **(overrides or {})}


def run_tool(
    argv: Sequence[str],
    cwd: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> ToolOutput:
    started = time.perf_counter()
    entry = warm.entry_for(argv[0])
    if entry is not None:
        peers = pool.current()
        try:
            served = peers.run(argv, cwd, timeout_s, tool_environment(env)) if peers else None
            if served is None:  # no pool, none free at once, or it died mid-run: a fork
                left = timeout_s - (time.perf_counter() - started)
                served = warm.run_forked(entry, argv, cwd, left, tool_environment(env))
        except warm.WarmToolTimeout as err:
            raise ToolTimeout(f"stopped after the {timeout_s:g}s limit") from err
        code, stdout, stderr = served
        return ToolOutput(code, stdout, stderr, time.perf_counter() - started)
    # The death signal set by `setpriv` in the tool itself, where it can be and the tool is
    # there (else as before: an executable that is missing raises `ToolMissing`), lets the
    # tool start without a fork of this process.
    prefix = death_signal_prefix() if shutil.which(argv[0]) else ()
    try:
        process = subprocess.Popen(
            [*prefix, *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=tool_environment(env),
            start_new_session=True,
            preexec_fn=None if prefix else die_with_parent,
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
