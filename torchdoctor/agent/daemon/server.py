"""The daemon: torchdoctor and the Python peers imported once, one fork per audit request.

`python -P -m torchdoctor.agent.daemon.server` (what the client and `torchdoctor daemon start`
run). It takes the runtime folder's lock (one daemon per user and folder), warms up (the CLI,
the peers' entry points and the modules they load late, one audit of a small sample), then
listens on a 0600 unix socket. Each request is checked (same user, by the kernel's peer
credentials; same code, by fingerprint) and served by a forked worker that takes the client's
streams, working folder and environment and runs `torchdoctor audit --static-only` exactly as
the CLI does, so the findings are the normal path's; the daemon itself reads no audited file.
Configuration is read by each worker, so an edited `pyproject.toml` counts at once; changed
code (an upgrade, an edited checkout, a peer installed) makes the daemon answer `stale` and
exit, and the client starts a fresh one. It exits after `TORCHDOCTOR_DAEMON_IDLE_S` (900 s)
without a request, or when its socket is removed or replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import locale
import os
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from torchdoctor.agent.daemon import runtime, wire
from torchdoctor.agent.daemon.messages import Request

LOCK_WAIT_S = 10.0
POLL_S = 2.0
REQUEST_TIMEOUT_S = 10.0
REFUSED_PREFIXES = ("--resume",)
"""Options the daemon leaves to a process of the user's own: resuming an audit replays its
stored options (runs included), which a static hook never asks for."""


def main() -> None:
    sys.path[:] = [entry for entry in sys.path if entry and os.path.isabs(entry)]
    try:
        folder = runtime.runtime_dir()
    except runtime.UnsafeRuntimeDir as err:
        sys.exit(f"torchdoctor daemon: {err}")
    with _folder_lock(folder) as held:
        if not held:
            return  # another daemon serves this folder
        fingerprint = runtime.code_fingerprint()
        try:
            warm_up()
        except Exception as err:
            failure = f"{fingerprint}\nthe warm-up failed: {type(err).__name__}: {err}\n"
            Path(runtime.failure_path(folder)).write_text(failure, encoding="utf-8")
            raise  # its traceback goes to the log
        with contextlib.suppress(FileNotFoundError):
            os.unlink(runtime.failure_path(folder))
        serve(folder, fingerprint, runtime.idle_seconds())


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[bool]:
    """Whether this process holds the folder's lock (waiting a little for a stale daemon that
    is on its way out)."""
    with open(runtime.lock_path(folder), "a", encoding="utf-8") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True


def warm_up() -> None:
    """Import what an audit and its peers import, and fill the caches a first audit fills."""
    from torchdoctor.agent.checks.linters.warm_up import SAMPLE, warm_peers

    with tempfile.TemporaryDirectory(prefix="td-daemon-warm-") as scratch:
        project = Path(scratch)
        (project / "train.py").write_text(SAMPLE, encoding="utf-8")
        with _quiet_streams():
            _run_cli(["audit", "train.py", "--no-ledger", "--no-linters", "-q", *_HOOK], project)
        warm_peers(project)
    # What is loaded now lives as long as the daemon: out of the collector's sight, a worker's
    # collections neither walk it (CPU) nor touch its pages (copy-on-write faults).
    gc.collect()
    gc.freeze()


_HOOK = ["--static-only"]


@contextlib.contextmanager
def _quiet_streams() -> Iterator[None]:
    saved = [os.dup(fd) for fd in (1, 2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _run_cli(args: list[str], folder: Path) -> int:
    """`torchdoctor ARGS` in `folder`, in this process; its exit status."""
    from torchdoctor.agent.cli import main as cli_main

    previous = os.getcwd()
    sys.argv = ["torchdoctor", *args]
    try:
        os.chdir(folder)
        cli_main()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(previous)
    return 0


def serve(folder: str, fingerprint: str, idle_s: float) -> None:
    path = runtime.socket_path(folder)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket is born 0600
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(POLL_S)
    own = os.stat(path).st_ino
    workers: set[int] = set()
    last_request = time.monotonic()
    try:
        while _still_ours(path, own):
            _reap(workers)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if not workers and time.monotonic() - last_request > idle_s:
                    break
                continue
            last_request = time.monotonic()
            with conn:
                if not _handle(conn, listener, fingerprint, workers):
                    break
    finally:
        listener.close()
        if _still_ours(path, own):
            os.unlink(path)
        while workers:
            _reap(workers, block=True)


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.lstat(path).st_ino == inode
    except OSError:
        return False


def _reap(workers: set[int], block: bool = False) -> None:
    for pid in list(workers):
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            workers.discard(pid)


def _handle(
    conn: socket.socket, listener: socket.socket, fingerprint: str, workers: set[int]
) -> bool:
    """Answer one connection; False when the daemon should stop."""
    from pydantic import TypeAdapter, ValidationError

    client_pid, uid = _peer(conn)
    if uid != os.getuid():
        return True
    conn.settimeout(REQUEST_TIMEOUT_S)
    try:
        data, fds = wire.receive(conn)
    except (OSError, wire.WireError):
        return True
    try:
        request = TypeAdapter(Request).validate_python(data)
        if request["kind"] == "ping":
            wire.send(conn, wire.reply("pong", pid=os.getpid(), fingerprint=fingerprint))
            return True
        if request["kind"] == "stop":
            wire.send(conn, wire.reply("stopping", pid=os.getpid()))
            return False
        if request["fingerprint"] != fingerprint:
            wire.send(conn, wire.reply("stale", reason="torchdoctor's code changed"))
            return False
        refused = _refusal(request, fds)
        if refused:
            wire.send(conn, wire.reply("refused", reason=refused))
            return True
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker ends in os._exit
            listener.close()
            _work(conn, fds, request, client_pid)
        workers.add(pid)
    except (OSError, ValidationError):
        return True  # a client gone or a malformed request: nothing to answer
    except Exception:  # a daemon bug costs this request (the client audits itself), not the daemon
        traceback.print_exc()
        return True
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return True


def _peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the connected process, as the kernel saw them at connect()."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _refusal(request: Request, fds: list[int]) -> str:
    if len(fds) != wire.MAX_FDS:
        return "an audit request carries stdin, stdout, stderr and the working folder"
    if any(arg.startswith(REFUSED_PREFIXES) for arg in request["argv"]):
        return "--resume runs in the client's own process"
    return ""


def _work(  # pragma: no cover - runs in the forked worker only
    conn: socket.socket, fds: list[int], request: Request, client_pid: int
) -> None:
    """In the worker: become the client's audit (its streams, folder, environment), answer
    with the exit status; never returns."""
    code = 2
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        wire.send(conn, wire.reply("accepted"))
        stdin, stdout, stderr, here = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        os.fchdir(here)
        os.environ.clear()
        os.environ.update(request["env"])
        _watch_client(client_pid)
        _fresh_streams()
        code = _run_cli(["audit", *request["argv"], *_HOOK], Path.cwd())
    except BaseException as err:  # the client gets a line, the daemon goes on
        with contextlib.suppress(OSError):
            os.write(2, f"torchdoctor daemon: {type(err).__name__}: {err}\n".encode())
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError, wire.WireError):
            wire.send(conn, wire.reply("exit", code=code))
        os._exit(code)


def _watch_client(pid: int) -> None:
    """End this worker (and the peers it forked, which die with it) when the client goes
    (Ctrl-C in the hook): the audit has no one left to answer."""
    from torchdoctor.sandbox.lifeline import die_with

    die_with(pid)


def _fresh_streams() -> None:
    """Python's text streams and the CLI's stderr console made again for the client's
    descriptors and environment, as the interpreter makes them at start-up (encoding, line
    buffering on a terminal, colour, width)."""
    from rich.console import Console

    from torchdoctor.agent import cli

    named = os.environ.get("PYTHONIOENCODING", "").partition(":")
    encoding = named[0] or locale.getpreferredencoding(False)
    errors = named[2] or "strict"
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = open(  # noqa: SIM115 - lives as long as the worker
            fd,
            "w",
            encoding=encoding,
            errors="backslashreplace" if fd == 2 else errors,
            closefd=False,
            buffering=1 if os.isatty(fd) else -1,  # line-buffered on a terminal
        )
        setattr(sys, name, stream)
    cli.stderr = Console(stderr=True, soft_wrap=True)


if __name__ == "__main__":
    main()
