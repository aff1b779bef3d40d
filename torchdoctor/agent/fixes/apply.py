"""Writing verified fixes to the user's files, and taking them back.

Writes are atomic (a temporary file in the same folder, then `os.replace`, mode preserved).
Before anything is written, the original bytes and their sha256 go to a journal under
`<root>/.torchdoctor/undo/<timestamp>/`, so `undo` restores them byte-exact; it refuses when a
file changed since (its sha256 no longer matches what was written) unless forced.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from torchdoctor.agent.fixes.combine import merge_fixes
from torchdoctor.agent.fixes.diffs import PatchError
from torchdoctor.agent.fixes.gate import fix_gate
from torchdoctor.agent.fixes.models import AppliedFile, ApplyResult, UndoResult
from torchdoctor.agent.models import Finding

JOURNAL_DIR = Path(".torchdoctor") / "undo"
MANIFEST = "manifest.json"
UNDONE_MARK = "UNDONE"
_TOOL_PATHS = (".torchdoctor/", "ISSUES.md")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dirty_reason(root: Path) -> str | None:
    """Why the git work tree holding `root` is dirty (None when clean or not under git)."""
    inside = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        text=True,
        check=False,
    )
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all", "--", "."],
        capture_output=True,
        text=True,
        check=True,
    )
    changed = [
        line[3:]
        for line in status.stdout.splitlines()
        if line and not any(tool in line[3:] for tool in _TOOL_PATHS)
    ]
    if not changed:
        return None
    shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
    return f"the git work tree has uncommitted changes ({shown}): commit them or pass --force"


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` in one step; a crash leaves the old or the new file."""
    mode = stat.S_IMODE(path.stat().st_mode) if mode is None and path.exists() else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_fixes(root: Path, findings: list[Finding], force: bool = False) -> ApplyResult:
    """Write every verified fix the gate allows, together, to the files under `root`."""
    root = root.resolve()
    if not force and (reason := dirty_reason(root)):
        return ApplyResult(refused=reason)
    gate = fix_gate(findings)
    result = ApplyResult()
    candidates: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.phase, -f.severity.rank, f.id)):
        if finding.fix is None:
            continue
        if not finding.fix.verified:
            result.skipped[finding.id] = "its fix is not verified"
        elif finding.id in gate.blocked:
            result.skipped[finding.id] = gate.blocked[finding.id]
        else:
            candidates.append(finding)
    texts: dict[str, str] = {}
    kept: list[Finding] = []
    for finding in candidates:
        try:
            texts = merge_fixes(root, [*kept, finding])
        except PatchError as err:
            result.skipped[finding.id] = f"does not apply to the current files: {err}"
            continue
        kept.append(finding)
    if not texts:
        return result
    journal = _journal(root, texts)
    for relative, text in sorted(texts.items()):
        path = root / relative
        before = path.read_bytes()
        after = text.encode("utf-8")
        atomic_write(path, after)
        result.files.append(
            AppliedFile(path=relative, sha256_before=sha256(before), sha256_after=sha256(after))
        )
    result.applied = [f.id for f in kept]
    result.journal = str(journal)
    return result


def _journal(root: Path, texts: dict[str, str]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    journal = root / JOURNAL_DIR / stamp
    (journal / "files").mkdir(parents=True)
    entries = []
    for relative, text in sorted(texts.items()):
        path = root / relative
        original = path.read_bytes()
        saved = journal / "files" / relative
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(original)
        entries.append(
            {
                "path": relative,
                "mode": stat.S_IMODE(path.stat().st_mode),
                "sha256_before": sha256(original),
                "sha256_after": sha256(text.encode("utf-8")),
            }
        )
    atomic_write(journal / MANIFEST, json.dumps({"files": entries}, indent=2).encode(), 0o644)
    return journal


def undo(root: Path, force: bool = False) -> UndoResult:
    """Restore the files of the latest apply that has not been undone, byte-exact."""
    root = root.resolve()
    base = root / JOURNAL_DIR
    journals = (
        sorted(
            (d for d in base.iterdir() if d.is_dir() and not (d / UNDONE_MARK).exists()),
            reverse=True,
        )
        if base.is_dir()
        else []
    )
    if not journals:
        return UndoResult(refused=f"nothing to undo under {base}")
    journal = journals[0]
    entries = json.loads((journal / MANIFEST).read_text())["files"]
    if not force:
        changed = [
            e["path"]
            for e in entries
            if not (root / e["path"]).exists()
            or sha256((root / e["path"]).read_bytes()) != e["sha256_after"]
        ]
        if changed:
            return UndoResult(
                journal=str(journal),
                refused=f"changed since the fix was applied: {', '.join(changed)} "
                "(pass --force to restore anyway)",
            )
    originals = {e["path"]: (journal / "files" / e["path"]).read_bytes() for e in entries}
    corrupt = [e["path"] for e in entries if sha256(originals[e["path"]]) != e["sha256_before"]]
    if corrupt:
        return UndoResult(
            journal=str(journal), refused=f"the journal copy is corrupt: {', '.join(corrupt)}"
        )
    restored = []
    for entry in entries:
        atomic_write(root / entry["path"], originals[entry["path"]], entry["mode"])
        restored.append(entry["path"])
    (journal / UNDONE_MARK).write_text(datetime.now(UTC).isoformat())
    return UndoResult(restored=restored, journal=str(journal))
