"""`torchdoctor-hook FILE...`: the pre-commit hook's entry, `torchdoctor audit --static-only`
answered by the warm daemon when there is one.

Stdlib only, so the hook costs an interpreter start and a socket round trip. The request
carries the arguments, the environment, and the client's stdin, stdout, stderr and working
folder as descriptors: the daemon's forked worker writes the report straight to them. With no
daemon (first use, code changed since it started, runtime folder not private, or
`TORCHDOCTOR_DAEMON=0`) the audit runs here as `torchdoctor audit` would, and a daemon is
started in the background for the next call (not with `TORCHDOCTOR_DAEMON=0`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

from torchdoctor.agent.daemon import runtime, wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from torchdoctor.agent.daemon.messages import Reply, Request, RequestKind

HOOK_ARGS = ["--static-only"]
START_WAIT_S = 60.0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if runtime.enabled():
        try:
            code = through_daemon(args)
        except KeyboardInterrupt:  # the worker sees this process go and stops too
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    in_process(args)


def in_process(args: list[str]) -> None:
    """The audit in this process: the normal path, which the daemon's answer must equal."""
    from torchdoctor.agent.cli import main as cli_main

    sys.argv = ["torchdoctor", "audit", *args, *HOOK_ARGS]
    cli_main()


def through_daemon(args: list[str]) -> int | None:
    """The audit's exit status from the daemon, or None when this process must audit itself
    (a daemon is then started for the next call, if none is usable)."""
    try:
        folder = runtime.runtime_dir()
    except runtime.UnsafeRuntimeDir:
        return None
    fingerprint = runtime.code_fingerprint()
    request = wire.request("audit", fingerprint, args, dict(os.environ))
    try:
        sock = connect(folder)
    except OSError:
        if not (runtime.failed_before(folder, fingerprint) or runtime.starting_or_serving(folder)):
            start_daemon(folder)
        return None
    with sock:
        try:
            return _ask(sock, request, folder)
        except (OSError, wire.WireError):
            return None


def _ask(sock: socket.socket, request: Request, folder: str) -> int | None:
    streams = [_usable(fd) for fd in (0, 1, 2)]
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        wire.send(sock, request, [*streams, here])
    finally:
        os.close(here)
        for fd, stream in zip((0, 1, 2), streams, strict=True):
            if stream != fd:
                os.close(stream)
    reply = wire.receive_reply(sock)
    if reply["status"] == "stale":
        start_daemon(folder)
        return None
    if reply["status"] != "accepted":
        return None
    try:
        final = wire.receive_reply(sock)
    except wire.WireError:
        sys.stderr.write("torchdoctor: the daemon stopped in the middle of the audit\n")
        return 2
    return final["code"]


def _usable(fd: int) -> int:
    """`fd` when it is open, else a new descriptor on /dev/null (a closed stdin)."""
    try:
        os.fstat(fd)
    except OSError:
        return os.open(os.devnull, os.O_RDWR)
    return fd


def connect(folder: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(runtime.socket_path(folder))
    except OSError:
        sock.close()
        raise
    return sock


def start_daemon(folder: str) -> None:
    """A detached daemon (its own session, output to the runtime folder's log); it exits by
    itself when another one already holds the folder."""
    import subprocess

    with open(runtime.log_path(folder), "ab") as log:
        subprocess.Popen(
            # -P: no script folder or working folder on sys.path, whatever the daemon imports;
            # -B: it writes nothing into its installation, which may be removed under it while
            # it idles (`pre-commit try-repo` deletes the environment it built the hook in)
            [sys.executable, "-P", "-B", "-m", "torchdoctor.agent.daemon.server"],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def ask(kind: RequestKind) -> Reply | None:
    """The running daemon's answer to `ping` or `stop`; None when none answers."""
    try:
        folder = runtime.runtime_dir()
        with connect(folder) as sock:
            wire.send(sock, wire.request(kind))
            return wire.receive_reply(sock)
    except (OSError, runtime.UnsafeRuntimeDir, wire.WireError):
        return None


def start_and_wait(timeout_s: float = START_WAIT_S) -> Reply | None:
    """Start a daemon unless one answers; its `pong` once it listens, or None at `timeout_s`."""
    reply = ask("ping")
    if reply is not None and reply["fingerprint"] == runtime.code_fingerprint():
        return reply
    if reply is not None:
        ask("stop")
    folder = runtime.runtime_dir()
    fingerprint = runtime.code_fingerprint()
    with contextlib.suppress(FileNotFoundError):  # asked by hand: try again
        os.unlink(runtime.failure_path(folder))
    start_daemon(folder)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not runtime.failed_before(folder, fingerprint):
        time.sleep(0.1)
        reply = ask("ping")
        if reply is not None:
            return reply
    return None


if __name__ == "__main__":
    main()
