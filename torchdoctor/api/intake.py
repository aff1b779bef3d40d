"""What a submission may put on the server: archives and file maps are checked whole before
anything is written, then written under the audit's own folder only.

Refused (`SubmissionRejected`, one line): `..` or absolute paths, links (symbolic or hard),
device files and FIFOs, duplicate names, too many files, too many bytes once unpacked, a
compression ratio only a bomb has. The byte limit holds while writing too, whatever the headers
claim.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from torchdoctor.agent.workspace import SKIPPED_DIRS

CHUNK = 1 << 16


class SubmissionRejected(ValueError):
    """The submission cannot be accepted; the message is the one-line reason."""


@dataclass(frozen=True)
class IntakeLimits:
    max_files: int
    max_bytes: int
    max_ratio: float


def checked_path(name: str) -> PurePosixPath:
    """A relative POSIX path with no `..`, no absolute root, no drive, no odd characters."""
    if not name or "\x00" in name or "\\" in name:
        raise SubmissionRejected(f"{name!r}: not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise SubmissionRejected(f"{name!r}: absolute paths are refused")
    if any(part == ".." for part in path.parts):
        raise SubmissionRejected(f"{name!r}: '..' in a path is refused")
    clean = PurePosixPath(*[p for p in path.parts if p not in ("", ".")])
    if not clean.parts:
        raise SubmissionRejected(f"{name!r}: empty path")
    return clean


class _Tally:
    def __init__(self, limits: IntakeLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self.names: set[PurePosixPath] = set()

    def add(self, path: PurePosixPath, size: int) -> None:
        if path in self.names:
            raise SubmissionRejected(f"{path}: appears twice")
        self.names.add(path)
        self.files += 1
        self.bytes += size
        if self.files > self.limits.max_files:
            raise SubmissionRejected(f"more than {self.limits.max_files} files")
        if self.bytes > self.limits.max_bytes:
            raise SubmissionRejected(f"more than {self.limits.max_bytes} bytes once unpacked")

    def ratio(self, packed: int) -> None:
        if packed > 0 and self.bytes / packed > self.limits.max_ratio:
            raise SubmissionRejected(
                f"compression ratio {self.bytes / packed:.0f}:1 exceeds "
                f"{self.limits.max_ratio:.0f}:1 (zip bomb?)"
            )


def unpack_archive(archive: IO[bytes], dest: Path, limits: IntakeLimits) -> int:
    """Check then unpack a zip or tar(.gz) (a seekable file) into `dest`; files written."""
    packed = archive.seek(0, os.SEEK_END)
    archive.seek(0)
    if zipfile.is_zipfile(archive):
        archive.seek(0)
        return _unpack_zip(archive, packed, dest, limits)
    archive.seek(0)
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            return _unpack_tar(tar, packed, dest, limits)
    except (tarfile.TarError, EOFError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SubmissionRejected(f"not a readable zip or tar(.gz) archive ({first})") from None


def _unpack_zip(archive: IO[bytes], packed: int, dest: Path, limits: IntakeLimits) -> int:
    tally = _Tally(limits)
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                path = checked_path(info.filename.rstrip("/") or info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind == stat.S_IFLNK:
                    raise SubmissionRejected(f"{path}: links are refused")
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise SubmissionRejected(f"{path}: device files and FIFOs are refused")
                if info.is_dir():
                    continue
                if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                    raise SubmissionRejected(
                        f"{path}: compression ratio {info.file_size / info.compress_size:.0f}:1 "
                        f"exceeds {limits.max_ratio:.0f}:1 (zip bomb?)"
                    )
                tally.add(path, info.file_size)
                members.append((info, path))
            tally.ratio(packed)
            budget = _Budget(limits.max_bytes)
            for info, path in members:
                with bundle.open(info) as source:
                    _write(dest, path, source, budget)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as err:
        raise SubmissionRejected(f"unreadable zip archive: {err}") from None
    return len(members)


def _unpack_tar(tar: tarfile.TarFile, packed: int, dest: Path, limits: IntakeLimits) -> int:
    tally = _Tally(limits)
    members: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    for info in tar:
        path = checked_path(info.name.rstrip("/") or info.name)
        if info.issym() or info.islnk():
            raise SubmissionRejected(f"{path}: links are refused")
        if info.isdev() or info.isfifo():
            raise SubmissionRejected(f"{path}: device files and FIFOs are refused")
        if info.isdir():
            continue
        if not info.isreg():
            raise SubmissionRejected(f"{path}: only regular files and folders are accepted")
        tally.add(path, info.size)
        members.append((info, path))
    tally.ratio(packed)
    budget = _Budget(limits.max_bytes)
    for info, path in members:
        source = tar.extractfile(info)
        if source is None:
            raise SubmissionRejected(f"{path}: unreadable member")
        with source:
            _write(dest, path, source, budget)
    return len(members)


def write_file_map(files: dict[str, str], dest: Path, limits: IntakeLimits) -> int:
    """Check then write a JSON map of relative path -> text."""
    tally = _Tally(limits)
    checked = []
    for name, content in files.items():
        path = checked_path(name)
        data = content.encode("utf-8", errors="surrogatepass")
        tally.add(path, len(data))
        checked.append((path, data))
    for path, data in checked:
        target = _target(dest, path)
        target.write_bytes(data)
    return len(checked)


def copy_server_folder(
    source: Path, allowed_roots: list[Path], dest: Path, limits: IntakeLimits
) -> int:
    """Copy a folder already on the server, only when it lies under an allowed root; links
    are not followed (the audit reports the ones that would leave the tree)."""
    if not allowed_roots:
        raise SubmissionRejected("this server audits no server-side paths (no allowed roots)")
    resolved = source.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        raise SubmissionRejected(f"{source}: not under an allowed root")
    if not resolved.is_dir():
        raise SubmissionRejected(f"{source}: not a folder")
    tally = _Tally(limits)
    for folder, dirs, files in os.walk(resolved):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            full = Path(folder, name)
            info = full.lstat()
            if stat.S_ISREG(info.st_mode):
                tally.add(PurePosixPath(full.relative_to(resolved).as_posix()), info.st_size)
    shutil.copytree(
        resolved,
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns(*SKIPPED_DIRS),
        dirs_exist_ok=True,
    )
    return tally.files


class _Budget:
    """Bytes left to write: headers may lie about sizes, the writer does not trust them."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise SubmissionRejected(f"more than {self.limit} bytes once unpacked")


def _target(dest: Path, path: PurePosixPath) -> Path:
    target = dest.joinpath(*path.parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise SubmissionRejected(f"{path}: a file and a folder of the same name") from None
    if target.is_dir() or target.is_symlink():
        raise SubmissionRejected(f"{path}: a file and a folder of the same name")
    return target


def _write(dest: Path, path: PurePosixPath, source: IO[bytes], budget: _Budget) -> None:
    with open(_target(dest, path), "wb") as out:
        while chunk := source.read(CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)


@contextmanager
def fresh_folder(path: Path) -> Iterator[Path]:
    """A new folder that is removed again if the intake fails."""
    path.mkdir(parents=True, mode=0o700)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def prepare_workdir(workdir: Path, fill: Callable[[Path], object]) -> None:
    """Fill `workdir/src` (checked), then keep a pristine copy for the patch."""
    with fresh_folder(workdir):
        source = workdir / "src"
        source.mkdir(mode=0o700)
        fill(source)
        shutil.copytree(source, workdir / "original", symlinks=True)
