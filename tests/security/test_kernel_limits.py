"""Limits that hold because the kernel holds them, on every backend the tests can start:
pages a job puts in its private tmpfs count against its memory limit; the disk quota is a
size-capped tmpfs (writes past it fail with ENOSPC, nothing to overshoot between polls); no
host Unix socket is reachable from the job, even under unshare where the host filesystem
stays visible. Where the host cannot give a kernel limit, the test skips saying which."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.attack_harness import Arena
from torchdoctor.sandbox.models import Job, Limits, Outcome
from torchdoctor.sandbox.protocol import Sandbox

FILL_TMPFS = """
import sys
written = 0
with open('/tmp/fill', 'wb') as out:
    for _ in range(int(sys.argv[1])):
        out.write(b'x' * 2**20)
        out.flush()
        written += 1
print('wrote', written, 'MB to /tmp')
"""
FILL_WORKSPACE = """
import errno
written = 0
try:
    with open('fill.bin', 'wb') as out:
        for _ in range(200):
            out.write(b'x' * 2**20)
            out.flush()
            written += 1
except OSError as exc:
    print('stopped', errno.errorcode.get(exc.errno), 'after', written, 'MB')
else:
    print('wrote all', written, 'MB')
"""
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print('refused', type(exc).__name__)
else:
    print('CONNECTED', s.recv(16))
"""


def _job(arena: Arena, code: str, args: list[str], limits: Limits) -> Job:
    (arena.origin / "probe_limits.py").write_text(code)
    return Job(workspace=arena.origin, command=["python3", "probe_limits.py", *args], limits=limits)


def _held(result_isolation_lines: list[str], word: str) -> bool:
    return any(line.startswith(word) and "kernel" in line for line in result_isolation_lines)


def test_tmpfs_pages_count_against_the_memory_limit(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    _name, sandbox = backend
    limits = Limits(wall_s=60, cpu_s=30, memory_mb=160, disk_mb=1024, file_size_mb=1024)
    result = sandbox.run(_job(arena, FILL_TMPFS, ["600"], limits))
    if not _held(result.isolation.limits_held, "memory"):
        pytest.skip(f"memory is not kernel-held here: {result.isolation.limits_held}")
    # 600 MB into the private tmpfs /tmp with a 160 MB limit: the job's resident set stays
    # small, only the tmpfs grows; the kernel charges those pages to the job and stops it
    assert result.outcome is Outcome.MEMORY_LIMIT, (result.outcome, result.reason, result.stdout)
    assert "wrote 600 MB" not in result.stdout


def test_the_disk_quota_is_a_kernel_limit(backend: tuple[str, Sandbox], arena: Arena) -> None:
    _name, sandbox = backend
    limits = Limits(wall_s=60, cpu_s=30, memory_mb=1024, disk_mb=24, file_size_mb=512)
    result = sandbox.run(_job(arena, FILL_WORKSPACE, [], limits))
    if not _held(result.isolation.limits_held, "disk"):
        pytest.skip(f"the disk quota is not kernel-held here: {result.isolation.limits_held}")
    words = result.stdout.split()
    assert words[:2] == ["stopped", "ENOSPC"], result.stdout
    assert int(words[3]) <= 24  # not one megabyte past the quota


@pytest.fixture
def host_socket() -> Iterator[str]:
    """A world-connectable Unix socket outside every folder a sandbox hides by name."""
    folder = Path("/var/cache") / f"torchdoctor-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(mode=0o777)
    except OSError as exc:
        pytest.skip(f"cannot place a host socket outside the hidden folders: {exc}")
    folder.chmod(0o777)
    path = folder / "service.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(4)
        yield str(path)
    finally:
        server.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def test_no_host_socket_is_reachable(
    backend: tuple[str, Sandbox], arena: Arena, host_socket: str
) -> None:
    _name, sandbox = backend
    assert os.path.exists(host_socket)
    result = sandbox.run(_job(arena, CONNECT, [host_socket], Limits(wall_s=30, cpu_s=10)))
    assert result.outcome is Outcome.OK, (result.reason, result.stderr[-400:])
    assert result.stdout.startswith("refused"), result.stdout
