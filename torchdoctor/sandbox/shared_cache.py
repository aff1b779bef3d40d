"""A compiler cache that the sandbox jobs of one audit share.

A fix verification runs the patched script several times (the smoke run, the timing runs, each
torch.compile mode of the ladder), each in a fresh sandbox: without a shared cache every run
compiles from nothing (a minute for a GPT-2 with the default mode, several with max-autotune).
With one, later runs read the first one's Inductor graphs, Triton kernels and autotuning
choices, so the compile's cost is paid once per audit rather than once per run.

The cache is written by the audited code, so it is as untrusted as that code and only that
audit's jobs see it: the host never reads its files, only hands them to each job's user (links
not followed) and removes the folder; it is emptied when it outgrows its cap. Its folder is
named like a workspace copy (`td-ws-<pid>-`), so one left by a killed audit is swept.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchdoctor.sandbox.environment import JOB_USER
from torchdoctor.sandbox.workspace import hand_over, remove_workspace, tree_usage

ENV_NAMES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
INDUCTOR_TMP = "inductor-tmp"
"""Inductor's folder under the job's temporary folder (`$TMPDIR/torchinductor_<user>`), which
TORCHINDUCTOR_CACHE_DIR does not move: its precompiled C++ headers (8 CPU-s to build for CPU
kernels) live there. Each job's private temporary folder links it into the cache
(`tmp_links`), so the audit's later jobs read the first one's headers."""


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / f"torchdoctor-compile-cache-{os.getuid()}"


@contextmanager
def compile_cache() -> Iterator[Path | None]:
    """A private cache folder for one audit's jobs, removed afterwards; None (no cache) when
    its parent folder is not this user's own (someone else made it first)."""
    root = cache_root()
    try:
        root.mkdir(mode=0o711, exist_ok=True)
        info = os.lstat(root)
    except OSError:
        yield None
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix=f"td-ws-{os.getpid()}-cc-", dir=root))
    try:
        yield folder
    finally:
        remove_workspace(folder)


def cache_environment(folder: Path) -> dict[str, str]:
    """The variables that point a job's compilers at the cache."""
    return {name: str(folder / sub) for name, sub in ENV_NAMES.items()}


def prepare_cache(folder: Path, uid: int | None, cap_mb: int) -> Path | None:
    """Before a job: empty the cache if it has outgrown `cap_mb`, then make it that job's
    user's own (the previous job's user left its files). None when the folder is not here (a
    job sent to another machine of a cluster): the job then compiles without it."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    if tree_usage(folder).bytes > cap_mb * 2**20:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
    (folder / INDUCTOR_TMP).mkdir(exist_ok=True)
    if uid is not None:
        hand_over(folder, uid, uid)
    return folder


def tmp_links(folder: Path | None, tmpdir: str) -> tuple[tuple[str, str], ...]:
    """The links a job with the cache `folder` gets in its temporary folder `tmpdir` (link,
    target): Inductor's own folder there points into the cache."""
    if folder is None:
        return ()
    return ((f"{tmpdir}/torchinductor_{JOB_USER}", str(folder / INDUCTOR_TMP)),)
