"""A sanity check for model-written unified diffs before they become `Fix` proposals.

This is not the verification (`agent.fixes` applies, parses, re-checks and runs every patch,
codemod or LLM alike); it only rejects diffs that cannot be meant for this code: unknown
files, malformed hunks, or old lines that do not occur in the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torchdoctor.agent.fixes.models import Patch
from torchdoctor.agent.models import Finding

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


class DiffRejected(ValueError):
    pass


def check_diff(diff: str, files: Sequence[str], read: Callable[[str], list[str] | None]) -> str:
    """Return the diff (newline-terminated) if every hunk's old side occurs in its file."""
    lines = diff.strip("\n").splitlines()
    if not any(line.startswith("@@") for line in lines):
        raise DiffRejected("no hunk")
    current: str | None = None
    old_block: list[str] = []
    seen_file = False

    def flush() -> None:
        if current is None or not old_block:
            return
        source = read(current) or []
        if not _contains(source, old_block):
            raise DiffRejected(f"a hunk's old lines do not occur in {current}")

    for line in lines:
        if line.startswith("--- "):
            flush()
            old_block = []
            current = _path(line[4:])
            if current not in files:
                raise DiffRejected(f"unknown file {current!r}")
            seen_file = True
        elif line.startswith("+++ "):
            if _path(line[4:]) != current:
                raise DiffRejected("old and new file names differ")
        elif line.startswith("@@"):
            if not _HUNK.match(line) or current is None:
                raise DiffRejected(f"malformed hunk header {line!r}")
            flush()
            old_block = []
        elif line.startswith((" ", "-")) or line == "":
            old_block.append(line[1:] if line else "")
        elif not line.startswith(("+", "\\")):
            raise DiffRejected(f"unexpected diff line {line[:40]!r}")
    flush()
    if not seen_file:
        raise DiffRejected("no file header")
    return "\n".join(lines) + "\n"


def _path(header: str) -> str:
    path = header.split("\t")[0].strip()
    for prefix in ("a/", "b/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _contains(source: list[str], block: list[str]) -> bool:
    wanted = [line.rstrip() for line in block]
    have = [line.rstrip() for line in source]
    size = len(wanted)
    return any(have[i : i + size] == wanted for i in range(len(have) - size + 1))


def llm_patch(finding: Finding) -> Patch | None:
    """The finding's LLM fix as the fix pipeline's `Patch` (None for no fix or a codemod's),
    so it goes through exactly the verification a codemod's patch does."""
    if finding.fix is None or finding.fix.origin != "llm":
        return None
    files = sorted(
        {_path(line[4:]) for line in finding.fix.diff.splitlines() if line.startswith("--- ")}
    )
    return Patch(
        finding_id=finding.id, rule=finding.rule, origin="llm", diff=finding.fix.diff, files=files
    )
