"""Long-lived warm peer workers that every audit of a server shares.

A Python peer forked from the audit's worker (`warm`) is spared its imports, but each run still
pays the fork of a ~100 MB process, its copy-on-write faults and teardown, and the tool's own
per-run set-up: ~0.2 CPU-s of the ~0.7 that five cold audits of the bundled examples spend on
their peers. The API's fork server starts one `PeerPool` once it is warm: a supervisor process,
forked from that warm state, forks one worker per Python peer and replaces any that ends. An
audit hands a run (argv, folder, environment) to its tool's worker and gets back the exit status
and output the forked run would have given.

Isolation: a worker runs one request at a time, in the request's folder, with the request's
allow-listed environment, argv, standard streams and warning filters, all restored after, and
with no line of an earlier run's files in `linecache`; the tools read the files they are named
(they never import or run them), relative to that folder, as the forked run does. A worker is
replaced after `MAX_RUNS` runs, so what a tool leaves in its process is bounded. A worker that
dies during a run (a tool crashing on hostile input) is replaced, and its caller runs the
request as a fork instead (the verdict it gave before). One that runs past the caller's time
limit is killed with its process group by the caller, like a forked tool, or by its own alarm
if the caller is gone (a cancelled audit), and replaced. A request that no worker takes at once
(its worker busy with another audit's run) is forked by its caller instead: one audit's slow
run never holds up another's.

Requests reach the workers without a path in the filesystem: each tool has a SOCK_SEQPACKET
socket pair; the callers (the fork server's descendants) hold one end, the tool's workers the
other, and each request passes the worker one end of a fresh socket pair (SCM_RIGHTS) on which
it answers. No other process can reach a worker: every one of these sockets is close-on-exec,
so a program an audit executes (a sandbox job running the audited code) holds none.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import math
import os
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from torchdoctor.agent.checks.linters import warm
from torchdoctor.sandbox.lifeline import die_with_parent

MAX_RUNS = 200
"""Runs a worker serves before it is replaced by a fresh fork of the warm supervisor."""
PICKUP_S = 1.0
"""How long a request waits for its tool's worker (busy with another audit's run) before its
caller forks the tool instead."""
GRACE_S = 1
"""A worker still running a request this long past the request's limit ends itself (its
caller, which kills it at the limit, may be gone: a cancelled audit)."""
RESTART_BACKOFF_S = (0.0, 0.1, 0.5, 2.0)
"""Pause before replacing a worker that failed on its own, by how many did so in a row (one
that cannot serve must not make the supervisor spin)."""
_SIZE = struct.Struct("!Q")
_SERVED, _FAILED, _NO_CALLERS = 0, 1, 2
"""A worker's exit codes: its share of runs served, an error of its own, no caller left."""


class PeerRequest(BaseModel):
    """One run of a tool, as `run_tool` would start it."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str]
    cwd: str
    env: dict[str, str]
    timeout_s: float


class PeerReply(BaseModel):
    """What the run gave: its exit status and output."""

    model_config = ConfigDict(extra="forbid")

    code: int
    stdout: str
    stderr: str


class PeerPool:
    """A supervisor process and `per_tool` warm workers for each preloaded Python peer
    (`warm.preload`); a tool's workers take its requests from one queue."""

    def __init__(self, executables: Sequence[str], per_tool: int = 1) -> None:
        """Fork the supervisor (and through it the workers) from this process, which must have
        the peers preloaded and no other thread running; `executables` are the tools' paths."""
        self._callers: dict[str, socket.socket] = {}
        served: dict[str, tuple[socket.socket, warm.Entry]] = {}
        for executable in executables:
            entry = warm.entry_for(executable)
            if entry is None:
                continue
            caller, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._callers[os.path.realpath(executable)] = caller
            served[os.path.realpath(executable)] = (worker_end, entry)
        self.supervisor = os.fork()
        if self.supervisor == 0:  # pragma: no cover - ends in os._exit, coverage cannot see it
            try:
                for caller in self._callers.values():
                    caller.close()
                _supervise(served, per_tool)
            finally:
                os._exit(1)
        for worker_end, _ in served.values():
            worker_end.close()  # the workers' own: end of file for callers once they are gone

    def run(
        self, argv: Sequence[str], cwd: Path, timeout_s: float, env: Mapping[str, str]
    ) -> tuple[int, str, str] | None:
        """(exit status, stdout, stderr) of `argv` run by its tool's worker; None when no
        worker could give an answer (no pool for the tool, the pool gone, no worker free within
        `PICKUP_S`, or the worker ended during the run): the caller forks the tool instead.
        Raises `warm.WarmToolTimeout`, the worker and its process group killed, at
        `timeout_s`."""
        caller = self._callers.get(os.path.realpath(argv[0]))
        if caller is None:
            return None
        now = time.monotonic()
        deadline = now + timeout_s
        mine, theirs = socket.socketpair()
        with mine:
            request = PeerRequest(argv=list(argv), cwd=str(cwd), env=dict(env), timeout_s=timeout_s)
            try:
                mine.settimeout(min(PICKUP_S, timeout_s))
                with theirs:
                    socket.send_fds(caller, [b"r"], [theirs.fileno()])
                _send(mine, request.model_dump_json().encode())
                pid = _SIZE.unpack(_receive(mine, _SIZE.size, now + min(PICKUP_S, timeout_s)))[0]
            except (OSError, EOFError):  # not taken in time (a worker it waits for skips it)
                return None
            try:
                reply = PeerReply.model_validate_json(_receive_message(mine, deadline))
            except TimeoutError:
                _kill_worker(int(pid))
                raise warm.WarmToolTimeout from None
            except (OSError, EOFError, ValidationError):
                return None
        return reply.code, reply.stdout, reply.stderr

    def close(self) -> None:
        """End the supervisor (its workers die with it) and close the callers' ends."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.supervisor, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.supervisor, 0)
        for caller in self._callers.values():
            caller.close()
        self._callers.clear()


_pool: PeerPool | None = None


def start(per_tool: int = 1) -> PeerPool | None:
    """Start this process's pool for the preloaded peers (`warm.preload`); its descendants'
    `run_tool` then hand those tools' runs to it. None when no peer is preloaded."""
    global _pool
    executables = warm.preloaded()
    if _pool is None and executables:
        _pool = PeerPool(executables, per_tool)
    return _pool


def current() -> PeerPool | None:
    """The pool this process inherited or started, if any."""
    return _pool


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_SIZE.pack(len(data)) + data)


def _receive_message(sock: socket.socket, deadline: float | None) -> bytes:
    size = _SIZE.unpack(_receive(sock, _SIZE.size, deadline))[0]
    return _receive(sock, int(size), deadline)


def _receive(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    """`size` bytes from `sock`; `EOFError` if it closes first, `TimeoutError` at `deadline`."""
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kill_worker(pid: int) -> None:
    """SIGKILL a worker past its caller's limit, with what it started (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _supervise(  # pragma: no cover - runs in the forked supervisor only
    served: dict[str, tuple[socket.socket, warm.Entry]], per_tool: int
) -> None:
    """Keep `per_tool` workers for each tool: fork them, and fork a replacement whenever one
    ends; return once no caller is left to serve."""
    die_with_parent()
    workers: dict[int, str] = {}
    failures = dict.fromkeys(served, 0)
    for name in served:
        for _ in range(per_tool):
            workers[_fork_worker(name, served)] = name
    while workers:
        pid, status = os.wait()
        _kill_worker(pid)  # what it started (flake8 -j's processes) ends with it
        ended = workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if ended is None or code == _NO_CALLERS:
            continue
        # Killed (a run's time limit, a crash) or done with its runs: replaced at once; an
        # error of its own (it could not serve) again and again: replaced ever more slowly.
        failures[ended] = failures[ended] + 1 if code == _FAILED else 0
        time.sleep(RESTART_BACKOFF_S[min(failures[ended], len(RESTART_BACKOFF_S) - 1)])
        workers[_fork_worker(ended, served)] = ended


def _fork_worker(name: str, served: dict[str, tuple[socket.socket, warm.Entry]]) -> int:
    """A worker for tool `name` (it keeps its own tool's end only)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - ends in os._exit
        code = _FAILED
        try:
            for other, (worker_end, _) in served.items():
                if other != name:
                    worker_end.close()
            code = _serve(*served[name])
        finally:
            os._exit(code)
    return pid


def _serve(worker_end: socket.socket, entry: warm.Entry) -> int:  # pragma: no cover
    """In a worker: serve up to `MAX_RUNS` requests, one at a time; its exit code."""
    os.setsid()  # its own process group: a caller's kill takes what the tool started too
    die_with_parent()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(number, signal.SIG_DFL)
    home = os.getcwd()
    served = 0
    while served < MAX_RUNS:
        message, fds, _flags, _address = socket.recv_fds(worker_end, 1, 1)
        if not fds:
            if not message:  # every caller's end is closed: no more requests can come
                return _NO_CALLERS
            continue
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)  # recv_fds passes no MSG_CMSG_CLOEXEC
        with socket.socket(fileno=fds[0]) as conn:
            try:
                request = PeerRequest.model_validate_json(_receive_message(conn, None))
                conn.sendall(_SIZE.pack(os.getpid()))
            except (OSError, EOFError, ValidationError):
                continue  # the caller gave up, or sent no request
            served += 1
            signal.alarm(math.ceil(request.timeout_s) + GRACE_S)  # SIGALRM's default: it ends
            reply = _run(entry, request, home)
            signal.alarm(0)
            with contextlib.suppress(OSError):
                _send(conn, reply.model_dump_json().encode())
    return _SERVED


def _run(entry: warm.Entry, request: PeerRequest, home: str) -> PeerReply:  # pragma: no cover
    """One run of the tool here, as `warm._become_tool` runs it in a fork, then this process
    put back as it was (folder, environment, argv, streams, warning filters). The lines the
    tools read through `linecache` (bandit's excerpts, flake8's noqa comments) are keyed by the
    file's relative name, the same in every audit's tree: forgotten before and after each run,
    so no run reads, and no worker keeps, another audit's lines."""
    saved_env, saved_argv, saved_streams = dict(os.environ), sys.argv, (sys.stdout, sys.stderr)
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = 1
        linecache.clearcache()
        try:
            with warnings.catch_warnings():  # also re-shows a warning a run already showed
                os.chdir(request.cwd)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = _stream(1)
                sys.stderr = _stream(2)
                os.environ.clear()
                os.environ.update(request.env)
                sys.argv = list(request.argv)
                result = entry()
                code = result if isinstance(result, int) else (0 if result is None else 1)
        except SystemExit as stop:
            code = warm.exit_code(stop.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
            os.chdir(home)
            linecache.clearcache()
        out.seek(0)
        err.seek(0)
        return PeerReply(
            code=code,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def _stream(fd: int) -> io.TextIOWrapper:
    """A text stream on `fd` for one run (a tool may close it; the descriptor stays ours)."""
    return open(fd, "w", encoding="utf-8", errors="replace", closefd=False)
