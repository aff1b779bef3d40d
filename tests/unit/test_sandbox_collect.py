"""Collecting result files: regular files only, no symlink followed, contents capped."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.sandbox.collect import collect_files


def test_matching_files_come_back_with_their_size(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"loss": 1}')
    (tmp_path / "train.py").write_text("x")
    files = collect_files(tmp_path, ["out/*.json"], cap=100)
    assert [(f.path, f.size, f.content) for f in files] == [
        ("out/metrics.json", 11, b'{"loss": 1}')
    ]


def test_contents_are_capped_and_marked(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"a" * 1000)
    (collected,) = collect_files(tmp_path, ["*.log"], cap=10)
    assert collected.content == b"a" * 10
    assert collected.truncated and collected.size == 1000


def test_symlinked_files_and_folders_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "result.txt").symlink_to(outside / "secret.txt")
    (workspace / "out").symlink_to(outside)
    (workspace / "loop").symlink_to(workspace)
    assert collect_files(workspace, ["*", "**/*.txt", "out/*"], cap=100) == []


def test_the_number_of_files_is_bounded(tmp_path: Path) -> None:
    for index in range(30):
        (tmp_path / f"{index:02}.txt").write_text("x")
    assert len(collect_files(tmp_path, ["*.txt"], cap=10, max_files=5)) == 5


def test_no_pattern_collects_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    assert collect_files(tmp_path, [], cap=10) == []
