"""The one guarded door through which torchdoctor reads and writes an audited tree on the host.

The tree belongs to an attacker: any name in it may be a symbolic link to a host file, a hard
link to one, a FIFO that blocks a reader forever or a device. Every operation here walks the
path one component at a time from a directory descriptor with `O_NOFOLLOW`, so a link is never
followed (not even one swapped in after a check), and opens only regular files with a single
link (a hard link may be a host file under another name). A link that
stays inside the tree is resolved by name and then opened the same strict way; one that leaves
it is refused. Writes go to a temporary file created `O_EXCL` in the same folder and renamed
over the target, which must be a regular file with a single link. A crash leaves only
`.td-*.tmp` files behind, which `clean_stale_temps` removes on the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEMP_PREFIX = ".td-"
TEMP_SUFFIX = ".tmp"
_LEGACY_TEMP = re.compile(r"^\.ISSUES\..*\.tmp$")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SkipDir = Callable[[str], bool]
"""Decides, from a folder's relative path, to leave it out of a walk."""


class UnsafePath(OSError):
    """A path in the audited tree that torchdoctor refuses to read or write, and why."""


def display_name(name: str) -> str:
    """A file name made printable: control characters and undecodable bytes as `\\xNN`."""
    raw = name.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def name_problem(name: str) -> str | None:
    """Why a file name cannot be carried into reports and the ledger as is, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if _CONTROL.search(name):
        return "its name contains control characters (newline, escape, ...)"
    return None


def checked_relpath(relative: str) -> str:
    """A normalised relative POSIX path that stays inside the tree, or `UnsafePath`."""
    if not relative or relative.startswith("/") or "\\" in relative or "\0" in relative:
        raise UnsafePath(f"not a relative path inside the tree: {display_name(relative)}")
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise UnsafePath(f"path leaves the tree: {display_name(relative)}")
    return normal


@dataclass(frozen=True)
class Entry:
    """One name met while walking the tree: a regular file, or why it was refused."""

    relpath: str
    refused: str | None = None


class GuardedTree:
    """Reads and writes under `root`, never following a link out of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real = os.path.realpath(root)

    # --- opening ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _parent_fd(self, relative: str) -> Iterator[tuple[int, str]]:
        """A descriptor of the folder holding `relative` (reached without following any link)
        and the last component's name."""
        parts = checked_relpath(relative).split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    raise self._refusal(relative, err) from err
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _refusal(self, relative: str, err: OSError) -> OSError:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            return UnsafePath(f"{display_name(relative)}: a symbolic link in the path is refused")
        return err

    def resolve(self, relative: str) -> str:
        """`relative` with links inside the tree resolved; `UnsafePath` if one leaves it."""
        relative = checked_relpath(relative)
        real = os.path.realpath(os.path.join(self._real, relative))
        if real != self._real and not real.startswith(self._real + os.sep):
            raise UnsafePath(f"{display_name(relative)}: a link leads outside the folder")
        return checked_relpath(os.path.relpath(real, self._real).replace(os.sep, "/"))

    def lstat(self, relative: str) -> os.stat_result:
        with self._parent_fd(relative) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def read_bytes(self, relative: str, max_bytes: int | None = None) -> bytes:
        """The bytes of a regular file of the tree (links inside the tree resolved first)."""
        target = self.resolve(relative)
        with self._parent_fd(target) as (dir_fd, name):
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except OSError as err:
                raise self._refusal(relative, err) from err
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePath(f"{display_name(relative)}: not a regular file")
            if info.st_nlink > 1:
                raise UnsafePath(f"{display_name(relative)}: has other hard links")
            if max_bytes is not None and info.st_size > max_bytes:
                raise UnsafePath(
                    f"{display_name(relative)}: {info.st_size / 1e6:.1f} MB exceeds the "
                    f"{max_bytes / 1e6:.1f} MB limit"
                )
            limit = -1 if max_bytes is None else max_bytes + 1
            data = handle.read(limit)
            if max_bytes is not None and len(data) > max_bytes:
                raise UnsafePath(f"{display_name(relative)}: grew past the size limit")
            return data

    def read_text(self, relative: str, max_bytes: int | None = None) -> str:
        return self.read_bytes(relative, max_bytes).decode("utf-8")

    def is_file(self, relative: str) -> bool:
        """A regular file (not a link, whatever it points to)."""
        try:
            return stat.S_ISREG(self.lstat(relative).st_mode)
        except OSError:
            return False

    def exists(self, relative: str) -> bool:
        try:
            self.lstat(relative)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True

    # --- writing ---------------------------------------------------------------------------

    def write_bytes(self, relative: str, data: bytes, mode: int | None = None) -> None:
        """Replace `relative` atomically. The old entry, if any, must be a regular file with
        one link: never a link (symbolic or hard), FIFO or device."""
        with self._parent_fd(relative) as (dir_fd, name):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                info = None
            if info is not None:
                if stat.S_ISLNK(info.st_mode):
                    raise UnsafePath(f"{display_name(relative)}: is a symbolic link")
                if not stat.S_ISREG(info.st_mode):
                    raise UnsafePath(f"{display_name(relative)}: not a regular file")
                if info.st_nlink > 1:
                    raise UnsafePath(f"{display_name(relative)}: has other hard links")
                mode = stat.S_IMODE(info.st_mode) if mode is None else mode
            temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fchmod(handle.fileno(), 0o644 if mode is None else mode)
                    os.fsync(handle.fileno())
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
                raise

    def write_text(self, relative: str, text: str, mode: int | None = None) -> None:
        self.write_bytes(relative, text.encode("utf-8"), mode)

    def remove(self, relative: str) -> None:
        """Unlink `relative` (a regular file; a link is refused, not followed)."""
        with self._parent_fd(relative) as (dir_fd, name):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePath(f"{display_name(relative)}: not a regular file")
            os.unlink(name, dir_fd=dir_fd)

    def clean_stale_temps(self) -> list[str]:
        """Remove the temporary files an interrupted write left in the tree's top folder."""
        removed = []
        with os.scandir(self.root) as found:
            for entry in found:
                is_temp = entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)
                if (is_temp or _LEGACY_TEMP.match(entry.name)) and entry.is_file(
                    follow_symlinks=False
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed.append(entry.name)
        return removed

    # --- walking ---------------------------------------------------------------------------

    def walk(self, skip_dir: SkipDir | None = None) -> Iterator[Entry]:
        """Every file name under the tree, sorted, without following links to folders: regular
        files (and links to regular files inside the tree) as relative paths, everything else
        with the reason it is refused. Symlink loops and unreadable folders become refusals."""
        yield from self._walk("", skip_dir or (lambda _rel: False))

    def _walk(self, prefix: str, skip_dir: SkipDir) -> Iterator[Entry]:
        folder = os.path.join(self.root, prefix) if prefix else str(self.root)
        try:
            with os.scandir(folder) as found:
                entries = sorted(found, key=lambda e: e.name)
        except OSError as err:
            yield Entry(prefix or ".", f"unreadable folder: {err.strerror or err}")
            return
        for entry in entries:
            relative = f"{prefix}/{entry.name}" if prefix else entry.name
            problem = name_problem(entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_link = entry.is_symlink()
            except OSError as err:
                yield Entry(relative, f"unreadable: {err.strerror or err}")
                continue
            if is_dir:
                if skip_dir(relative):
                    continue
                if problem:
                    yield Entry(relative, f"skipped folder: {problem}")
                    continue
                yield from self._walk(relative, skip_dir)
            elif problem:
                yield Entry(relative, f"skipped: {problem}")
            elif is_link:
                yield Entry(relative, self._link_problem(relative))
            elif entry.is_file(follow_symlinks=False):
                yield Entry(relative)
            else:
                yield Entry(relative, "skipped: not a regular file (FIFO, socket or device)")

    def _link_problem(self, relative: str) -> str | None:
        try:
            target = self.resolve(relative)
        except UnsafePath:
            return "skipped: link points outside the folder"
        except (OSError, RuntimeError):
            return "skipped: symbolic link loop"
        try:
            info = self.lstat(target)
        except FileNotFoundError:
            return "skipped: broken symbolic link"
        except OSError:
            return "skipped: symbolic link loop"
        if stat.S_ISLNK(info.st_mode):
            return "skipped: symbolic link loop"
        if stat.S_ISDIR(info.st_mode):
            return "skipped: link to a folder (not followed)"
        if not stat.S_ISREG(info.st_mode):
            return "skipped: link to something that is not a regular file"
        return None


def file_tree(path: Path) -> tuple[GuardedTree, str]:
    """The guarded folder holding `path` and `path`'s name in it (for one file given by
    the user: its folder is trusted, the name itself is not followed if it is a link)."""
    return GuardedTree(path.parent), path.name
