"""Fresh private copies of audited code: jobs run on copies, never on the user's files.

A symlink is copied only when it points inside the tree it belongs to (as a relative link);
one that leads outside would let a job read or overwrite host files through its workspace, so
the copy is refused. Devices, sockets and FIFOs are refused for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import functools
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
MAX_COPY_MB = 4096
"""What a host copy of audited code may hold at most (the default disk quota of a run): a
single-file audit copies the file's folder, which may be a home or downloads folder, and an
audited repository may hold datasets; no copy fills the host's disk on their account."""


class CopyBudget:
    """Bytes a copy may still write; each regular file is counted before it is copied, so an
    over-large tree is refused without first writing the budget's worth (sparse files too)."""

    def __init__(self, max_mb: int = MAX_COPY_MB) -> None:
        self.max_mb = max_mb
        self.left = max_mb * 2**20

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise WorkspaceError(
                f"the code to copy holds more than {self.max_mb} MB (data files beside it?)"
            )

    def copy_file(self, source: str, destination: str) -> object:
        """`shutil.copytree`'s copy function, within the budget."""
        self.take(os.lstat(source).st_size)
        return shutil.copy2(source, destination)


class WorkspaceError(ValueError):
    """A source cannot be copied safely into a workspace."""


def stage_workspace(
    sources: Path | Sequence[Path],
    root: Path | None = None,
    *,
    prefix: str = "td-ws-",
    quota_mb: int | None = None,
    max_mb: int = MAX_COPY_MB,
    skipped: frozenset[str] = SKIPPED_NAMES,
    strict: bool = True,
) -> Path:
    """Copy a folder, a file, or several of them into a new directory and return it.

    A single folder is copied as the workspace itself; a file, or each entry of a list, is
    copied under its own name. On any refusal the partial copy is removed. The folder's name
    carries this process's id, so a copy left by a killed process is found and removed by
    `sweep_stale_copies` on the next start. With `quota_mb`, the folder is a tmpfs of that size
    where the host allows mounting one (`kernel_quota` tells), so the kernel holds the quota.
    Whatever the host allows, more than `quota_mb` (else `max_mb`) is refused before it is
    copied (`CopyBudget`). Entries named in `skipped` are left out; a link that leaves the
    tree, or a device, socket or FIFO, refuses the copy, or without `strict` is left out.
    """
    workspace = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    if quota_mb is not None:
        mount_tmpfs(workspace, quota_mb)
    budget = CopyBudget(quota_mb or max_mb)
    try:
        if isinstance(sources, Path) and sources.is_dir() and not sources.is_symlink():
            _Copier(sources, budget, skipped, strict).tree(sources, workspace)
        else:
            for source in [sources] if isinstance(sources, Path) else sources:
                copier = _Copier(source.parent, budget, skipped, strict)
                copier.entry(source, workspace / source.name)
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
    """Remove the workspace copies (`td-ws-<pid>-*`) that a process that is gone left in
    `folders` before it could clean up (kill -9 of an audit or of the API server mid-job, power
    loss).

    In a folder of this user's own that nobody else may write (the sandbox's run root, the
    compile caches' root), every entry was made by this user's processes, so a copy is removed
    whichever uid owns it now: the sandbox hands each copy over to its job's uid. In a shared
    folder (the temporary folder) only this user's own copies are. Links are never followed
    (a link named like a copy is left alone), nothing outside `folders` is touched, and a copy
    is kept while its creator lives or while a process of the uid it was handed to runs. A
    copy that cannot be removed is left for the next sweep."""
    removed = []
    uid = os.getuid()
    for folder in folders:
        try:
            info = os.stat(folder)
            entries = list(os.scandir(folder))
        except OSError:
            continue
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022
        for entry in entries:
            match = _STAGED.match(entry.name)
            if match is None:
                continue
            try:
                owner = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if _alive(int(match.group(1)), owner.st_ctime):
                continue
            if not stat.S_ISDIR(owner.st_mode) or (owner.st_uid != uid and not private):
                continue
            if owner.st_uid != uid and _uid_runs(owner.st_uid):
                continue  # its job outlived the audit: the sweep that follows its end takes it
            try:
                remove_workspace(Path(entry.path))
            except OSError:
                continue
            removed.append(entry.path)
    return removed


def _alive(pid: int, changed_at: float) -> bool:
    """Whether process `pid` lives and may be the one that made a folder last changed at
    `changed_at`: a process that started after that is a later one given a reused pid (the
    folder's maker started before it made it). Start times are known to a second or so."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _started_at(pid)
    return started is None or started <= changed_at + 2.0


def _started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    boot = _boot_time()
    return None if boot is None else boot + ticks / os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _uid_runs(uid: int) -> bool:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    return True
    return False


def kernel_quota(workspace: Path) -> bool:
    """Whether the workspace is a size-capped tmpfs (the kernel refuses writes past it)."""
    return os.path.ismount(workspace)


def remove_workspace(workspace: Path) -> None:
    """Delete a workspace whatever its job did to it: links in it (or in its place) are removed,
    never followed; folders the job made read-only or unreadable are opened up first (by
    descriptor, so a folder swapped for a link meanwhile is not); any depth of nesting. Every
    step works on descriptors of the folder above, so nothing outside the workspace's parent
    folder is touched. Quiet about entries that vanish meanwhile (a concurrent remover)."""
    try:  # the folder it is in is the host's choice: a link there is followed
        parent = os.open(workspace.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            info = os.stat(workspace.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(workspace.name, dir_fd=parent)
            return
        if kernel_quota(workspace):
            unmount(workspace)
        _remove_folder(parent, workspace.name)
    finally:
        os.close(parent)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DEPTH = 32
"""Folders deeper than this in a workspace are moved up to its top before they are emptied,
so removal holds at most this many descriptors open, whatever the job nested."""


def _remove_folder(parent: int, name: str) -> None:
    """Remove the folder `name` of the folder open as `parent`, and all it holds."""
    top = _open_folder(parent, name)
    if top is None:
        return
    try:
        while _empty(top, top, 0):
            pass  # folders moved up from too deep are emptied on the next pass
    finally:
        os.close(top)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent)


def _empty(folder: int, top: int, depth: int) -> bool:
    """Remove what the folder open as `folder` holds; True when folders were moved up to `top`
    (then not yet emptied)."""
    moved = False
    with os.scandir(folder) as found:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in found]
    for name, is_folder in names:
        if not is_folder:
            try:
                os.unlink(name, dir_fd=folder)
                continue
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                pass  # it became a folder after the listing
        if depth >= _DEPTH:
            os.rename(name, f".td-up-{os.urandom(8).hex()}", src_dir_fd=folder, dst_dir_fd=top)
            moved = True
            continue
        inner = _open_folder(folder, name)
        if inner is None:
            continue
        try:
            moved |= _empty(inner, top, depth + 1)
        finally:
            os.close(inner)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=folder)
    return moved


def _open_folder(parent: int, name: str) -> int | None:
    """A descriptor of the folder `name` under `parent`, its owner's access restored if the job
    took it away; None when it is gone or is no folder (a link: then it is unlinked)."""
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except PermissionError:  # an unreadable folder of this user's own (no job user)
            _open_up(parent, name)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        with contextlib.suppress(FileNotFoundError):  # swapped for a link or a file
            os.unlink(name, dir_fd=parent)
        return None
    if os.fstat(fd).st_mode & stat.S_IRWXU != stat.S_IRWXU and os.geteuid() != 0:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, stat.S_IRWXU)  # so that its entries can be removed
    return fd


def _open_up(parent: int, name: str) -> None:
    """chmod 700 the folder `name` under `parent` without following a link there: through a
    path-only descriptor of it (O_DIRECTORY refuses a link), as glibc's fchmodat does."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
    try:
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IRWXU)
    finally:
        os.close(fd)


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
                try:
                    if os.lstat(path).st_uid != uid:
                        continue
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except FileNotFoundError:
                    continue  # gone since the folder was listed (another process's scratch)
                removed.append(path)
    return removed


def _writable_by(path: str, uid: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and (info.st_uid == uid or bool(info.st_mode & stat.S_IWOTH))


@dataclass
class _Copier:
    """One copy's walk: what it skips, what it may still write, and whether a link that
    leaves the tree or a special file refuses the copy (`strict`) or is left out."""

    tree_root: Path
    budget: CopyBudget
    skipped: frozenset[str]
    strict: bool

    def tree(self, source: Path, destination: Path) -> None:
        for entry in sorted(p for p in source.iterdir() if p.name not in self.skipped):
            self.entry(entry, destination / entry.name)

    def entry(self, source: Path, destination: Path) -> None:
        info = source.lstat()
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            self.symlink(source, destination)
        elif stat.S_ISDIR(mode):
            destination.mkdir()
            self.tree(source, destination)
        elif stat.S_ISREG(mode):
            self.budget.take(info.st_size)
            shutil.copyfile(source, destination, follow_symlinks=False)
            os.chmod(destination, (mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
        elif self.strict:
            raise WorkspaceError(f"refusing to copy a special file: {source}")

    def symlink(self, source: Path, destination: Path) -> None:
        """Relinked relative to the copy, so that nothing written through it reaches the
        original (an absolute link inside the tree would)."""
        root = self.tree_root.resolve()
        try:
            target = source.resolve()
        except (RuntimeError, OSError):  # a loop (`a -> b -> a`), or too deep to follow
            if not self.strict:
                return
            raise WorkspaceError(f"refusing a symlink that resolves nowhere: {source}") from None
        if target != root and root not in target.parents:
            if not self.strict:
                return
            raise WorkspaceError(f"refusing a symlink that leaves the tree: {source} -> {target}")
        destination.symlink_to(os.path.relpath(target, source.parent.resolve()))
