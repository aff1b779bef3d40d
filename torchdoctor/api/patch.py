"""The audit's approved changes as one unified diff: its pristine copy against its working copy.

Whatever the graph wrote to the submitted files after approval shows here, and nothing else:
torchdoctor's own files (the ledger, the undo journal) are left out, so the patch applies to
the user's tree as submitted.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

TOOL_FILES = frozenset({"ISSUES.md"})
TOOL_DIRS = frozenset({".torchdoctor"})


def _texts(root: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    if not root.is_dir():
        return texts
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in TOOL_DIRS)
        for name in files:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if rel in TOOL_FILES or path.is_symlink():
                continue
            try:
                texts[rel] = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
    return texts


def tree_diff(before: Path, after: Path) -> str:
    """`a/` and `b/` prefixed unified diff, file by file in path order (git apply / patch -p1)."""
    old, new = _texts(before), _texts(after)
    chunks: list[str] = []
    for rel in sorted(old.keys() | new.keys()):
        a, b = old.get(rel), new.get(rel)
        if a == b:
            continue
        lines = difflib.unified_diff(
            (a or "").splitlines(keepends=True),
            (b or "").splitlines(keepends=True),
            fromfile=f"a/{rel}" if a is not None else "/dev/null",
            tofile=f"b/{rel}" if b is not None else "/dev/null",
        )
        for line in lines:
            chunks.append(
                line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            )
    return "".join(chunks)
