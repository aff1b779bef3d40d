"""Submissions are checked whole before anything is written: hostile archives are refused
with a one-line reason and leave nothing behind."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from torchdoctor.api.intake import (
    IntakeLimits,
    SubmissionRejected,
    copy_server_folder,
    unpack_archive,
    write_file_map,
)

LIMITS = IntakeLimits(max_files=10, max_bytes=100_000, max_ratio=50.0)


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for info, data in entries:
            bundle.writestr(info, data)
    buffer.seek(0)
    return buffer


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buffer.seek(0)
    return buffer


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _symlink_zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_a_plain_zip_and_tar_unpack(tmp_path: Path) -> None:
    zipped = _zip([("pkg/train.py", b"import torch\n"), ("README.md", b"hi\n")])
    assert unpack_archive(zipped, tmp_path / "z", LIMITS) == 2
    assert (tmp_path / "z" / "pkg" / "train.py").read_bytes() == b"import torch\n"
    tarred = _tar([(_info("pkg/train.py"), b"x = 1\n")])
    assert unpack_archive(tarred, tmp_path / "t", LIMITS) == 1
    assert (tmp_path / "t" / "pkg" / "train.py").read_text() == "x = 1\n"


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (lambda: _zip([("../evil.py", b"x")]), r"'\.\.' in a path"),
        (lambda: _zip([("a/../../evil.py", b"x")]), r"'\.\.' in a path"),
        (lambda: _zip([("/etc/evil.py", b"x")]), "absolute paths"),
        (lambda: _zip([("C:/evil.py", b"x")]), "absolute paths"),
        (lambda: _zip([("a\\..\\evil.py", b"x")]), "not a plain relative path"),
        (lambda: _zip([(_symlink_zip_entry("link"), b"/etc/passwd")]), "links are refused"),
        (lambda: _zip([("a.py", b"x"), ("./a.py", b"y")]), "appears twice"),
        (lambda: _zip([(f"f{i}.py", b"x") for i in range(11)]), "more than 10 files"),
        (lambda: _zip([("big.py", os.urandom(100_001))]), "more than 100000 bytes"),
        (lambda: _zip([("bomb.py", b"\0" * 90_000)]), "zip bomb"),
        (lambda: _tar([(_info("../evil.py"), b"x")]), r"'\.\.' in a path"),
        (lambda: _tar([(_info("link", tarfile.SYMTYPE, "/etc/passwd"), b"")]), "links are refused"),
        (lambda: _tar([(_info("hard", tarfile.LNKTYPE, "/etc/passwd"), b"")]), "links are refused"),
        (lambda: _tar([(_info("dev", tarfile.CHRTYPE), b"")]), "device files"),
        (lambda: _tar([(_info("fifo", tarfile.FIFOTYPE), b"")]), "device files"),
        (lambda: _tar([(_info("bomb.py"), b"\0" * 90_000)]), "zip bomb"),
        (lambda: io.BytesIO(b"not an archive at all"), "not a readable zip or tar"),
    ],
)
def test_hostile_archives_are_refused_before_writing(
    tmp_path: Path, archive: object, reason: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SubmissionRejected, match=reason) as refused:
        unpack_archive(archive(), dest, LIMITS)  # type: ignore[operator]
    assert "\n" not in str(refused.value)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.py").exists()


def test_sizes_that_lie_in_headers_are_still_capped(tmp_path: Path) -> None:
    """A zip whose header under-declares a member's size is stopped by the byte budget."""
    data = os.urandom(60_000)
    buffer = _zip([("a.py", data)])
    raw = bytearray(buffer.getvalue())
    limits = IntakeLimits(max_files=10, max_bytes=50_000, max_ratio=50.0)
    # The local and central headers both say 10 bytes; the stream holds 60 000.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        raw[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    with pytest.raises(SubmissionRejected, match=r"unreadable zip|more than 50000 bytes"):
        unpack_archive(io.BytesIO(bytes(raw)), tmp_path, limits)


def test_file_maps_get_the_same_checks(tmp_path: Path) -> None:
    assert write_file_map({"pkg/a.py": "x = 1\n"}, tmp_path / "ok", LIMITS) == 1
    with pytest.raises(SubmissionRejected, match=r"'\.\.' in a path"):
        write_file_map({"../a.py": "x"}, tmp_path / "bad", LIMITS)
    with pytest.raises(SubmissionRejected, match="a file and a folder"):
        write_file_map({"a": "x", "a/b.py": "y"}, tmp_path / "clash", LIMITS)


def test_server_paths_only_under_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    (root / "project").mkdir(parents=True)
    (root / "project" / "train.py").write_text("x = 1\n")
    (root / "project" / "escape").symlink_to("/etc")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(SubmissionRejected, match="no allowed roots"):
        copy_server_folder(root / "project", [], tmp_path / "a", LIMITS)
    with pytest.raises(SubmissionRejected, match="not under an allowed root"):
        copy_server_folder(outside, [root], tmp_path / "b", LIMITS)
    with pytest.raises(SubmissionRejected, match="not under an allowed root"):
        copy_server_folder(root / "project" / "escape", [root], tmp_path / "c", LIMITS)
    assert copy_server_folder(root / "project", [root], tmp_path / "d", LIMITS) == 1
    assert (tmp_path / "d" / "escape").is_symlink()  # copied as a link, never followed
