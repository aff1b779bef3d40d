"""Fresh private copies of audited code: jobs run on copies, never on the user's files.

A symlink is copied only when it points inside the tree it belongs to (as a relative link);
one that leads outside would let a job read or overwrite host files through its workspace, so
the copy is refused. Devices, sockets and FIFOs are refused for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchdoctor.sandbox.tmpfs import mount_tmpfs, unmount

_STAGED = re.compile(r"^td-ws-(\d+)-")
SKIPPED_NAMES = frozenset({".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


class WorkspaceError(ValueError):
    """A source cannot be copied safely into a workspace."""


def stage_workspace(
    sources: Path | Sequence[Path],
    root: Path | None = None,
    *,
    prefix: str = "td-ws-",
    quota_mb: int | None = None,
) -> Path:
    """Copy a folder, a file, or several of them into a new directory and return it.

    A single folder is copied as the workspace itself; a file, or each entry of a list, is
    copied under its own name. On any refusal the partial copy is removed. The folder's name
    carries this process's id, so a copy left by a killed process is found and removed by
    `sweep_stale_copies` on the next start. With `quota_mb`, the folder is a tmpfs of that size
    where the host allows mounting one (`kernel_quota` tells), so the kernel holds the quota.
    """
    workspace = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    if quota_mb is not None:
        mount_tmpfs(workspace, quota_mb)
    try:
        if isinstance(sources, Path) and sources.is_dir() and not sources.is_symlink():
            _copy_tree(sources, workspace, sources)
        else:
            for source in [sources] if isinstance(sources, Path) else sources:
                _copy_entry(source, workspace / source.name, source.parent)
    except FileNotFoundError as exc:
        remove_workspace(workspace)
        raise WorkspaceError(f"no such source: {exc.filename}") from exc
    except OSError as exc:
        remove_workspace(workspace)
        if exc.errno == errno.ENOSPC:
            raise WorkspaceError(f"the code does not fit in the {quota_mb} MB disk quota") from exc
        raise
    except BaseException:
        remove_workspace(workspace)
        raise
    return workspace


def sweep_stale_copies(folders: Iterable[Path]) -> list[str]:
    """Remove the workspace copies (`td-ws-<pid>-*`) that a process of this user left in
    `folders` before it died without cleaning up (kill -9, power loss)."""
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _STAGED.match(entry.name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                remove_workspace(Path(entry.path))
                removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kernel_quota(workspace: Path) -> bool:
    """Whether the workspace is a size-capped tmpfs (the kernel refuses writes past it)."""
    return os.path.ismount(workspace)


def remove_workspace(workspace: Path) -> None:
    """Delete a workspace even where a job removed its own permissions on sub-folders."""
    if workspace.is_symlink():
        workspace.unlink()
        return
    if not workspace.exists():
        return
    if kernel_quota(workspace):
        unmount(workspace)
        workspace.rmdir()
        return
    for folder, dirs, _files in os.walk(workspace):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(path, stat.S_IRWXU)
    # a concurrent remover (another process's start-up sweep) may be taking it too
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(workspace)


def hand_over(workspace: Path, uid: int, gid: int) -> None:
    """Make a staged copy the job user's own and private to it."""
    for folder, dirs, files in os.walk(workspace):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)
    os.chown(workspace, uid, gid)
    os.chmod(workspace, 0o700)


@dataclass(frozen=True)
class TreeUsage:
    bytes: int
    entries: int


def tree_usage(root: Path, stop_after: int = 1_000_000) -> TreeUsage:
    """Disk blocks and entries under `root`, symlinks not followed; vanished entries count
    zero. Stops counting after `stop_after` entries (a job making millions of empty files is
    over any quota already)."""
    total = entries = 0
    stack = [str(root)]
    while stack and entries <= stop_after:
        try:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    entries += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
    return TreeUsage(total, entries)


def over_quota(usage: TreeUsage, disk_mb: int, max_files: int) -> bool:
    return usage.bytes > disk_mb * 2**20 or usage.entries > max_files


def remove_owned_files(roots: Iterable[str], uid: int) -> list[str]:
    """Delete what `uid` left in shared scratch folders (used when no private /tmp exists).

    Only folders that uid could write to are searched: it cannot have created anything else.
    """
    removed = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if _writable_by(os.path.join(folder, d), uid)]
            for name in files + dirs:
                path = os.path.join(folder, name)
                if os.lstat(path).st_uid == uid:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                    removed.append(path)
    return removed


def _writable_by(path: str, uid: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and (info.st_uid == uid or bool(info.st_mode & stat.S_IWOTH))


def _entries(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in SKIPPED_NAMES)


def _copy_entry(source: Path, destination: Path, tree_root: Path) -> None:
    mode = source.lstat().st_mode
    if stat.S_ISLNK(mode):
        _copy_symlink(source, destination, tree_root)
    elif stat.S_ISDIR(mode):
        destination.mkdir()
        _copy_tree(source, destination, tree_root)
    elif stat.S_ISREG(mode):
        shutil.copyfile(source, destination, follow_symlinks=False)
        os.chmod(destination, (mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
    else:
        raise WorkspaceError(f"refusing to copy a special file: {source}")


def _copy_tree(source: Path, destination: Path, tree_root: Path) -> None:
    for entry in _entries(source):
        _copy_entry(entry, destination / entry.name, tree_root)


def _copy_symlink(source: Path, destination: Path, tree_root: Path) -> None:
    root = tree_root.resolve()
    target = source.resolve()
    if target != root and root not in target.parents:
        raise WorkspaceError(f"refusing a symlink that leaves the tree: {source} -> {target}")
    destination.symlink_to(os.path.relpath(target, source.parent.resolve()))
