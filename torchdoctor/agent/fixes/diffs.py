"""Unified diffs: made with difflib, applied by a strict pure-Python applier.

The applier takes no fuzz and no offsets: a hunk whose context or removed lines do not match
the file exactly is rejected, so a patch verified on one text is never applied to another.
Paths must stay inside the workspace.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

NO_NEWLINE = "\\ No newline at end of file"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(ValueError):
    """The patch is malformed, leaves the workspace, or does not apply."""


def unified_diff(path: str, before: str, after: str) -> str:
    """A git-style unified diff of one file (`a/path`, `b/path`), exact about final newlines."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{path}",
        tofile=f"b/{path}",
    )
    out: list[str] = []
    for line in lines:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(f"{line}\n{NO_NEWLINE}\n")
    return "".join(out)


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_count: int
    lines: list[str] = field(default_factory=list)
    """Diff body lines with their ' ', '-', '+' prefix, newline kept (or dropped per marker)."""


@dataclass
class FilePatch:
    path: str
    hunks: list[Hunk] = field(default_factory=list)


def parse(diff: str) -> list[FilePatch]:
    patches: list[FilePatch] = []
    lines = diff.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("--- "):
            if index + 1 >= len(lines) or not lines[index + 1].startswith("+++ "):
                raise PatchError(f"'---' without '+++' at diff line {index + 1}")
            patches.append(FilePatch(path=_safe_path(lines[index + 1][4:])))
            index += 2
            continue
        match = _HUNK.match(line)
        if match:
            if not patches:
                raise PatchError("hunk before any file header")
            hunk = Hunk(int(match.group(1)), int(match.group(2) or "1"), int(match.group(4) or "1"))
            patches[-1].hunks.append(hunk)
            index += 1
            while index < len(lines) and lines[index][:1] in (" ", "-", "+", "\\"):
                body = lines[index]
                if body.startswith(NO_NEWLINE[:2]):
                    if not hunk.lines:
                        raise PatchError("no-newline marker with no line before it")
                    hunk.lines[-1] = hunk.lines[-1].rstrip("\n")
                elif _complete(hunk):
                    break
                else:
                    hunk.lines.append(body)
                index += 1
            continue
        index += 1
    if not patches:
        raise PatchError("no file in the patch")
    return patches


def _complete(hunk: Hunk) -> bool:
    old = sum(1 for line in hunk.lines if line[0] in " -")
    new = sum(1 for line in hunk.lines if line[0] in " +")
    return old >= hunk.old_count and new >= hunk.new_count


def _safe_path(header: str) -> str:
    raw = header.split("\t")[0].strip()
    if raw == "/dev/null":
        raise PatchError("creating or deleting files is not supported")
    if raw.startswith(("a/", "b/")):
        raw = raw[2:]
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise PatchError(f"path outside the workspace: {raw!r}")
    return str(path)


def apply_to_text(text: str, patch: FilePatch, *, offsets: bool = False) -> str:
    """Apply one file's hunks; any mismatch raises PatchError.

    With `offsets`, a hunk whose lines match exactly elsewhere (the file gained or lost lines
    above it, e.g. from another fix) is applied at the nearest such place; content is never
    fuzzed.
    """
    old = text.splitlines(keepends=True)
    out: list[str] = []
    cursor = 0
    for hunk in patch.hunks:
        start = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        if offsets:
            start = _nearest_match(old, hunk, start, cursor)
        if start < cursor:
            raise PatchError(f"{patch.path}: overlapping hunks at line {hunk.old_start}")
        out.extend(old[cursor:start])
        position = start
        for line in hunk.lines:
            tag, body = line[0], line[1:]
            if tag in " -":
                if position >= len(old) or old[position] != body:
                    found = old[position].rstrip("\n") if position < len(old) else "end of file"
                    raise PatchError(
                        f"{patch.path}:{position + 1}: expected {body.rstrip(chr(10))!r}, "
                        f"found {found!r}"
                    )
                position += 1
                if tag == " ":
                    out.append(body)
            else:
                out.append(body)
        cursor = position
    out.extend(old[cursor:])
    return "".join(out)


def _nearest_match(old: list[str], hunk: Hunk, expected: int, cursor: int) -> int:
    wanted = [line[1:] for line in hunk.lines if line[0] in " -"]
    if not wanted:
        return expected
    starts = [
        i for i in range(cursor, len(old) - len(wanted) + 1) if old[i : i + len(wanted)] == wanted
    ]
    return min(starts, key=lambda i: abs(i - expected)) if starts else expected


def apply_patch(root: Path, diff: str, *, offsets: bool = False) -> list[str]:
    """Apply a diff to the files under `root` (all or nothing); returns the paths touched."""
    patches = parse(diff)
    results: dict[Path, str] = {}
    for patch in patches:
        target = root / patch.path
        if not target.is_file():
            raise PatchError(f"{patch.path}: no such file in the workspace")
        current = results.get(target)
        if current is None:
            current = read_exact(target)
        results[target] = apply_to_text(current, patch, offsets=offsets)
    for target, text in results.items():
        target.write_bytes(text.encode("utf-8"))
    return [p.path for p in patches]


def read_exact(path: Path) -> str:
    """A file's text with its line endings as they are: `read_text` turns CRLF into LF, so a
    diff made from the file's own text (CRLF kept) would not apply to it."""
    return path.read_bytes().decode("utf-8")


def renumber_refs(text: str, files: dict[str, tuple[str, str]]) -> str:
    """`text` with each `path:line` of a file in `files` (path -> (new text, old text))
    renumbered from the new text to the old: a line both hold keeps its place, a line the
    change wrote is counted from where the change starts in the old text, as the fix's diff
    shows it (a line inserted below line 12 is line 13, not line 12 again)."""
    for path, (new, old) in files.items():
        if new == old:
            continue
        text = _renumbered(text, path, line_opcodes(old, new))
    return text


def _renumbered(text: str, path: str, blocks: Sequence[tuple[str, int, int, int, int]]) -> str:
    def old(match: re.Match[str]) -> str:
        return f"{match.group(1)}:{_old_line(blocks, int(match.group(2)))}"

    return re.sub(rf"(?<![\w./-])({re.escape(path)}):(\d+)", old, text)


def _old_line(blocks: Sequence[tuple[str, int, int, int, int]], line: int) -> int:
    for _tag, i1, _i2, j1, j2 in blocks:
        if j1 <= line - 1 < j2:
            return i1 + (line - 1 - j1) + 1
    return line


def line_opcodes(before: str, after: str) -> Sequence[tuple[str, int, int, int, int]]:
    """difflib's opcodes between the two texts' lines (no junk heuristic: code repeats lines)."""
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    return matcher.get_opcodes()


def map_line(before: str, after: str, line: int) -> int | None:
    """Where line `line` of `before` is in `after`; None when an edit replaced or removed it."""
    for tag, i1, i2, j1, _ in line_opcodes(before, after):
        if i1 <= line - 1 < i2:
            return j1 + (line - 1 - i1) + 1 if tag == "equal" else None
    return None


def changed_lines(before: str, after: str) -> set[int]:
    """Lines of `before` (1-based) that `after` replaces or deletes."""
    return {
        line + 1
        for tag, i1, i2, _, _ in line_opcodes(before, after)
        if tag in ("replace", "delete")
        for line in range(i1, i2)
    }
