"""The unified-diff maker and the strict applier."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.fixes.diffs import (
    PatchError,
    apply_patch,
    apply_to_text,
    parse,
    unified_diff,
)

BEFORE = "a\nb\nc\nd\ne\nf\ng\nh\n"


def test_diff_round_trips_through_the_applier() -> None:
    after = BEFORE.replace("c\n", "c\nC\n").replace("g\n", "")
    diff = unified_diff("pkg/m.py", BEFORE, after)
    assert diff.startswith("--- a/pkg/m.py\n+++ b/pkg/m.py\n")
    (patch,) = parse(diff)
    assert patch.path == "pkg/m.py"
    assert apply_to_text(BEFORE, patch) == after


def test_missing_final_newline_is_kept_exact() -> None:
    before, after = "x = 1\ny = 2", "x = 1\ny = 3"
    diff = unified_diff("m.py", before, after)
    assert "\\ No newline at end of file" in diff
    assert apply_to_text(before, parse(diff)[0]) == after


def test_a_hunk_that_does_not_match_is_rejected() -> None:
    diff = unified_diff("m.py", BEFORE, BEFORE.replace("d\n", "D\n"))
    with pytest.raises(PatchError, match="expected 'd'"):
        apply_to_text(BEFORE.replace("d\n", "changed\n"), parse(diff)[0])


def test_offsets_find_a_hunk_after_lines_were_added_above() -> None:
    diff = unified_diff("m.py", BEFORE, BEFORE.replace("g\n", "G\n"))
    shifted = "new\nlines\n" + BEFORE
    with pytest.raises(PatchError):
        apply_to_text(shifted, parse(diff)[0])
    assert apply_to_text(shifted, parse(diff)[0], offsets=True) == "new\nlines\n" + BEFORE.replace(
        "g\n", "G\n"
    )


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "a/../../x.py"])
def test_paths_outside_the_workspace_are_refused(path: str) -> None:
    diff = f"--- {path}\n+++ {path}\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(PatchError, match="outside the workspace"):
        parse(diff)


def test_apply_patch_is_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text(BEFORE)
    (tmp_path / "two.py").write_text(BEFORE)
    good = unified_diff("one.py", BEFORE, BEFORE.replace("a\n", "A\n"))
    bad = unified_diff("two.py", "zzz\n", "yyy\n")
    with pytest.raises(PatchError):
        apply_patch(tmp_path, good + bad)
    assert (tmp_path / "one.py").read_text() == BEFORE
    assert apply_patch(tmp_path, good) == ["one.py"]
    assert (tmp_path / "one.py").read_text().startswith("A\n")


def test_a_removed_line_that_looks_like_a_header_is_body() -> None:
    before, after = "x\n-- y\nz\n", "x\nz\n"
    diff = unified_diff("m.py", before, after)
    assert apply_to_text(before, parse(diff)[0]) == after


def test_a_file_with_windows_line_endings_is_patched_and_keeps_them(tmp_path: Path) -> None:
    """Held-out pytorchTutorial: 14_cnn.py has CRLF endings; the codemod's diff (made from the
    file's bytes) was refused: "expected 'import torch\\r', found 'import torch'"."""
    before = "import torch\r\nx = 1\r\n"
    after = "import torch\r\n\r\ntorch.manual_seed(0)\r\nx = 1\r\n"
    (tmp_path / "m.py").write_bytes(before.encode())
    apply_patch(tmp_path, unified_diff("m.py", before, after))
    assert (tmp_path / "m.py").read_bytes() == after.encode()
