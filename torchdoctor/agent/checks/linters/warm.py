"""Peer linters run from a warm process: forked, not started, when their code is loaded already.

Starting flake8 + TorchFix costs ~0.6 s of imports, bandit and detect-secrets ~0.25 s each: more
than the audit of a file. A long-lived process (the pre-commit daemon) imports each Python
tool once (`preload`); a tool run then forks that process and calls the tool's console-script
entry point with the argv, folder, allow-listed environment, stdin, time limit and process group
that `run_tool` would give its subprocess, so the report is the one the subprocess writes.
Only the tools installed in this interpreter's own environment are forked (the script sits next
to `sys.executable`); any other executable still runs as a subprocess.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import selectors
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from torchdoctor.sandbox.lifeline import death_signal_prefix, die_with_parent, libc

Entry = Callable[[], object]
PRELOADED_SCRIPTS = ("flake8", "bandit", "detect-secrets")
"""The Python peers worth keeping warm (ruff is a native binary; mypy and pip-audit are opt-in
or rarely run on a single file)."""

_entries: dict[str, Entry] = {}
_fork_lock = threading.Lock()


class WarmToolTimeout(Exception):
    """The forked tool ran past its limit and was killed with its process group."""


def preload(scripts: Sequence[str] = PRELOADED_SCRIPTS) -> list[str]:
    """Import the console-script entry points of `scripts` that this environment installs;
    their names. A tool that fails to import is left to the subprocess path."""
    # Peers fork from the runner's threads; the tool's child runs in the one thread that forked
    # it, which is all it needs (Python 3.12+ warns about any fork of a threaded process).
    warnings.filterwarnings("ignore", r".*fork\(\) may lead to deadlocks", DeprecationWarning)
    libc()  # found once here, not by each forked tool (`die_with_parent`)
    death_signal_prefix()  # nor by each audit forked from here that starts a native tool
    by_name = {ep.name: ep for ep in metadata.entry_points(group="console_scripts")}
    loaded = []
    for name in scripts:
        point = by_name.get(name)
        script = Path(sys.executable).parent / name
        if point is None or not script.is_file():
            continue
        try:
            _entries[os.path.realpath(script)] = point.load()
        except Exception:  # a broken tool costs its warm start, never the daemon
            continue
        loaded.append(name)
    return loaded


def import_modules(names: Sequence[str]) -> None:
    """Import `names` (modules a warm-up run of the tools loaded late), skipping failures."""
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # a module that cannot load here is loaded (or not) by the tool
            continue


def late_imports(
    executable: str, argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout_s: float
) -> list[str]:
    """The modules a run of the preloaded `executable` imports beyond those loaded now (plugins
    found at run time), found in a fork so this process is left as it was."""
    entry = entry_for(executable)
    if entry is None:
        return []
    before = set(sys.modules)
    handle, listing = tempfile.mkstemp(prefix="td-warm-")
    os.close(handle)

    def traced() -> object:
        try:
            return entry()
        finally:  # by path: the child closes every inherited descriptor first
            Path(listing).write_text("\n".join(sorted(set(sys.modules) - before)))

    try:
        run_forked(traced, argv, cwd, timeout_s, env)
        return Path(listing).read_text().split()
    except WarmToolTimeout:
        return []
    finally:
        os.unlink(listing)


IN_PROCESS_WARM_UP = ("detect-secrets",)
"""The tools whose per-run set-up a run in the warm process itself leaves done for the runs
forked from it: detect-secrets compiles its plugins' patterns on each run (into `re`'s cache,
which its per-run reset leaves alone), ~5 of a 15-25 ms run on a training script. What it
prints is the same (its settings and plugin caches are rebuilt by each run)."""


def run_in_process(executable: str, argv: Sequence[str]) -> bool:
    """Run the preloaded `executable` as `argv` here (not in a fork), its output discarded;
    whether it ran. `argv` names absolute paths: the working folder is not changed."""
    entry = entry_for(executable)
    if entry is None:
        return False
    saved = sys.argv
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            entry()
    except SystemExit:
        pass
    except Exception:  # a tool that fails here fails (and is reported) in its own runs
        return False
    finally:
        sys.argv = saved
    return True


def preloaded() -> list[str]:
    """The paths of the tools `preload` imported here."""
    return list(_entries)


def entry_for(executable: str) -> Entry | None:
    """The preloaded entry point behind `executable`, if it is one."""
    return _entries.get(os.path.realpath(executable)) if _entries else None


def run_forked(
    entry: Entry,
    argv: Sequence[str],
    cwd: Path,
    timeout_s: float,
    env: Mapping[str, str],
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `entry` run as `argv` in a fork of this process."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    with _fork_lock:  # one fork at a time: no sibling thread is mid-fork in the child
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit, coverage cannot see it
        os.close(out_read)
        os.close(err_read)
        _become_tool(entry, argv, cwd, env, out_write, err_write)
    os.close(out_write)
    os.close(err_write)
    deadline = time.monotonic() + timeout_s
    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}
    try:
        _drain(chunks, deadline)
    except WarmToolTimeout:
        _kill_group(pid)
        raise
    finally:
        os.close(out_read)
        os.close(err_read)
    status = os.waitpid(pid, 0)[1]
    _kill_group(pid)  # what the tool left behind (flake8 -j workers) ends with it
    return (
        os.waitstatus_to_exitcode(status),
        b"".join(chunks[out_read]).decode(errors="replace"),
        b"".join(chunks[err_read]).decode(errors="replace"),
    )


def _drain(chunks: dict[int, list[bytes]], deadline: float) -> None:
    """Read every pipe in `chunks` to its end, or raise `WarmToolTimeout` at `deadline`."""
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarmToolTimeout
            for key, _ in selector.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _become_tool(  # pragma: no cover - runs in the forked child only
    entry: Entry,
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    out_write: int,
    err_write: int,
) -> None:
    """In the child: the subprocess's session, folder, streams, argv and environment, then the
    tool; never returns."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        os.chdir(cwd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_write, 1)
        os.dup2(err_write, 2)
        # Nothing else stays open: a sibling tool's pipe held here would hide its end of file.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv)
        result = entry()
        code = result if isinstance(result, int) else (0 if result is None else 1)
    except SystemExit as stop:
        code = exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said
                stream.flush()
        os._exit(code)


def exit_code(code: object) -> int:
    """`SystemExit.code` as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
