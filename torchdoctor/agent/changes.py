"""PR mode (`--changed-since REF`): keep the findings on lines changed since a git ref.

The whole audit runs first (cross-file facts need every file); only the report is narrowed.
The old side of each file is read from git's object store and compared with the file on disk
in Python, so no git diff machinery (external diff, textconv, filters) runs on the repository.
"""

from __future__ import annotations

import difflib
import io
import os
import tokenize
from collections import Counter
from pathlib import Path

from torchdoctor.agent.gitsafe import GitError, run_git
from torchdoctor.agent.models import AuditReport, Finding
from torchdoctor.agent.workspace import InputError

ChangedLines = dict[str, set[int] | None]
"""File (relative to the audited root) -> changed line numbers; None: the whole file is new."""


def _decode(raw: bytes) -> list[str]:
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding, "replace").splitlines()
    except (SyntaxError, LookupError):
        return raw.decode("utf-8", "replace").splitlines()


def changed_in(old: list[str], new: list[str]) -> set[int]:
    """1-based lines of `new` that differ from `old`; a deletion marks the lines around it."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            changed.update(range(j1 + 1, j2 + 1))
        elif tag == "delete":
            changed.update(line for line in (j1, j1 + 1) if 1 <= line <= len(new))
    return changed


def _old_blobs(repo_root: Path, ref: str, paths: list[str]) -> dict[str, bytes | None]:
    """Each repo-relative path's content at `ref` (None when it did not exist there)."""
    request = "".join(f"{ref}:{path}\n" for path in paths).encode()
    out = run_git(repo_root, ["cat-file", "--batch"], stdin=request)
    blobs: dict[str, bytes | None] = {}
    cursor = 0
    for path in paths:
        end = out.index(b"\n", cursor)
        header = out[cursor:end].split()
        cursor = end + 1
        blobs[path] = None
        if len(header) == 3:  # "<oid> <type> <size>", then the content and a newline
            size = int(header[2])
            if header[1] == b"blob":
                blobs[path] = out[cursor : cursor + size]
            cursor += size + 1
    return blobs


def changed_lines(root: Path, ref: str, files: list[str]) -> ChangedLines:
    """Lines of `files` (relative to `root`) changed on disk since `ref`."""
    if ref.startswith("-") or not ref.strip() or any(c in ref for c in "\n\0"):
        raise InputError(f"--changed-since {ref!r}: not a git revision")
    try:
        top = Path(
            run_git(root, ["rev-parse", "--show-toplevel"]).decode("utf-8", "replace").strip()
        )
        commit = (
            run_git(root, ["rev-parse", "--verify", "--end-of-options", ref + "^{commit}"])
            .decode()
            .strip()
        )
    except GitError as err:
        raise InputError(f"--changed-since {ref}: {err}") from None
    base = Path(os.path.realpath(root))
    unique = sorted(set(files))
    top_real = Path(os.path.realpath(top))
    repo_paths = {
        f: (base / f).relative_to(top_real).as_posix()
        for f in unique
        if (base / f).is_relative_to(top_real)
    }
    try:
        blobs = _old_blobs(top, commit, list(repo_paths.values()))
    except GitError as err:
        raise InputError(f"--changed-since {ref}: {err}") from None
    changes: ChangedLines = {}
    for file, repo_path in repo_paths.items():
        old = blobs.get(repo_path)
        try:
            new = _decode((base / file).read_bytes())
        except OSError:
            continue
        changes[file] = None if old is None else changed_in(_decode(old), new)
    return changes


def touches(finding: Finding, changes: ChangedLines) -> bool:
    if finding.file not in changes:
        return False
    lines = changes[finding.file]
    return lines is None or any(
        line in lines for line in range(finding.line, max(finding.line, finding.end_line) + 1)
    )


def restrict_to_changes(report: AuditReport, changes: ChangedLines, ref: str) -> AuditReport:
    """The report with only the findings on changed lines, its counts recomputed."""
    kept = [f for f in report.findings if touches(f, changes)]
    summary = report.summary.model_copy(
        update={
            "total": len(kept),
            "by_severity": dict(Counter(f.severity.value for f in kept)),
            "by_point": {str(k): v for k, v in sorted(Counter(f.checkpoint for f in kept).items())},
            "by_status": dict(Counter(f.status.value for f in kept)),
            "notes": [
                *report.summary.notes,
                f"changed since {ref}: {len(kept)} of {len(report.findings)} finding(s) "
                "on changed lines",
            ],
        }
    )
    return report.model_copy(update={"findings": kept, "summary": summary})
