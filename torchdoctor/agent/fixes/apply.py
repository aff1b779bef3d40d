"""Writing verified fixes to the user's files, and taking them back.

Every read and write goes through `torchdoctor.agent.safefs` (never through a link, never over
a hard-linked file), atomically, mode preserved. Before anything is written, the original
bytes and their sha256 go to a journal outside the audited tree, under
`$TORCHDOCTOR_HOME/undo/<tree key>/<timestamp>/` (0700): a journal shipped inside a repository
is never read. One journal covers everything one approval wrote: the fixes and the artifacts
(a file an artifact created is journalled as created). `undo` restores the latest journal
byte-exact, removing the files it created, after validating every path in it; it refuses when
a file changed since (its sha256 no longer matches what was written) unless forced.
"""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from torchdoctor.agent.fixes.codemods import fix_order
from torchdoctor.agent.fixes.combine import merge_fixes
from torchdoctor.agent.fixes.diffs import PatchError
from torchdoctor.agent.fixes.models import AppliedFile, ApplyResult, UndoResult
from torchdoctor.agent.gate import fix_gate
from torchdoctor.agent.gitsafe import GitError, changed_paths
from torchdoctor.agent.home import private_dir, torchdoctor_home, tree_key
from torchdoctor.agent.models import Finding
from torchdoctor.agent.safefs import GuardedTree, UnsafePath, checked_relpath, display_name

MANIFEST = "manifest.json"
UNDONE_MARK = "UNDONE"
_TOOL_PATHS = (".torchdoctor/", "ISSUES.md")


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    mode: int = Field(ge=0, le=0o7777)
    sha256_before: str = Field(pattern=r"^[0-9a-f]{64}$")
    sha256_after: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: bool = Field(False, description="the apply created the file: undo removes it")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        try:
            return checked_relpath(value)
        except UnsafePath as err:
            raise ValueError(str(err)) from err


class JournalManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[JournalEntry]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def journal_root(root: Path) -> Path:
    """Where the undo journals of the tree at `root` live (outside the tree)."""
    return torchdoctor_home() / "undo" / tree_key(root)


def dirty_reason(root: Path) -> str | None:
    """Why the git work tree holding `root` is dirty (None when clean or not under git).
    Git runs with the repository's hooks, fsmonitor and filters neutralised."""
    try:
        changed = changed_paths(root)
    except GitError as err:
        return f"cannot read the git state ({err}): pass --force to apply anyway"
    if changed is None:
        return None
    changed = [path for path in changed if not any(tool in path for tool in _TOOL_PATHS)]
    if not changed:
        return None
    shown = ", ".join(display_name(p) for p in changed[:5]) + (" ..." if len(changed) > 5 else "")
    return f"the git work tree has uncommitted changes ({shown}): commit them or pass --force"


def apply_fixes(
    root: Path, findings: list[Finding], force: bool = False, only: set[str] | None = None
) -> ApplyResult:
    """Write every verified fix the gate allows (of those in `only`, when given), together,
    to the files under `root`. The gate sees all `findings`."""
    root = root.resolve()
    if not force and (reason := dirty_reason(root)):
        return ApplyResult(refused=reason)
    result, texts = plan_fixes(root, findings, only)
    write_changes(root, texts, result)
    return result


def plan_fixes(
    root: Path, findings: list[Finding], only: set[str] | None = None
) -> tuple[ApplyResult, dict[str, str]]:
    """The fixes that would be written (their ids in the result) and the files' new texts;
    nothing is written."""
    gate = fix_gate(findings)
    result = ApplyResult()
    candidates: list[Finding] = []
    for finding in sorted(findings, key=fix_order):
        if finding.fix is None:
            continue
        if only is not None and finding.id not in only:
            result.skipped[finding.id] = "not approved"
        elif not finding.fix.verified:
            result.skipped[finding.id] = "its fix is not verified"
        elif finding.id in gate.blocked:
            result.skipped[finding.id] = gate.reasons[finding.id]
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
        result.applied.append(finding.id)
    return result, texts


def write_changes(
    root: Path, texts: dict[str, str], result: ApplyResult, created: frozenset[str] = frozenset()
) -> None:
    """Journal, then write, `texts` (path -> new text; `created`: paths that are new files)
    under `root`; the written files and the journal go to `result`, a refusal to its
    `refused` with nothing written to the tree."""
    if not texts:
        return
    tree = GuardedTree(root.resolve())
    try:
        journal = _journal(root.resolve(), tree, texts, created)
        for relative, text in sorted(texts.items()):
            before = b"" if relative in created else tree.read_bytes(relative)
            after = text.encode("utf-8")
            tree.write_bytes(relative, after)
            result.files.append(
                AppliedFile(path=relative, sha256_before=sha256(before), sha256_after=sha256(after))
            )
    except UnsafePath as err:
        result.refused = f"refusing to write: {err}"
        result.applied = []
        return
    result.journal = str(journal)


def _journal(root: Path, tree: GuardedTree, texts: dict[str, str], created: frozenset[str]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    journal = private_dir(journal_root(root) / stamp)
    saved = GuardedTree(private_dir(journal / "files"))
    entries = []
    for relative, text in sorted(texts.items()):
        after = sha256(text.encode("utf-8"))
        if relative in created:
            entries.append(
                JournalEntry(
                    path=checked_relpath(relative),
                    mode=0o644,
                    sha256_before=sha256(b""),
                    sha256_after=after,
                    created=True,
                )
            )
            continue
        original = tree.read_bytes(relative)
        entries.append(
            JournalEntry(
                path=checked_relpath(relative),
                mode=stat.S_IMODE(tree.lstat(relative).st_mode),
                sha256_before=sha256(original),
                sha256_after=after,
            )
        )
        for parent in Path(relative).parents:
            if str(parent) != ".":
                private_dir(journal / "files" / parent)
        saved.write_bytes(relative, original, 0o600)
    manifest = JournalManifest(files=entries).model_dump_json(indent=2)
    GuardedTree(journal).write_text(MANIFEST, manifest, 0o600)
    return journal


def undo(root: Path, force: bool = False) -> UndoResult:
    """Restore the files of the latest apply that has not been undone, byte-exact."""
    root = root.resolve()
    base = journal_root(root)
    journals = (
        sorted(
            (d for d in base.iterdir() if d.is_dir() and not (d / UNDONE_MARK).exists()),
            reverse=True,
        )
        if base.is_dir()
        else []
    )
    if not journals:
        return UndoResult(refused=f"nothing to undo for {display_name(str(root))}")
    journal = journals[0]
    try:
        entries = JournalManifest.model_validate_json((journal / MANIFEST).read_bytes()).files
    except (OSError, ValidationError) as err:
        return UndoResult(journal=str(journal), refused=f"the journal is not valid: {err}")
    tree, saved = GuardedTree(root), GuardedTree(journal / "files")
    try:
        return _restore(tree, saved, journal, entries, force)
    except UnsafePath as err:
        return UndoResult(journal=str(journal), refused=f"refusing to write: {err}")


def _restore(
    tree: GuardedTree, saved: GuardedTree, journal: Path, entries: list[JournalEntry], force: bool
) -> UndoResult:
    if not force:
        changed = [
            e.path
            for e in entries
            if not tree.exists(e.path) or sha256(tree.read_bytes(e.path)) != e.sha256_after
        ]
        if changed:
            return UndoResult(
                journal=str(journal),
                refused=f"changed since the fix was applied: {', '.join(changed)} "
                "(pass --force to restore anyway)",
            )
    originals = {e.path: saved.read_bytes(e.path) for e in entries if not e.created}
    before = {e.path: e.sha256_before for e in entries}
    corrupt = [path for path, data in originals.items() if sha256(data) != before[path]]
    if corrupt:
        return UndoResult(
            journal=str(journal), refused=f"the journal copy is corrupt: {', '.join(corrupt)}"
        )
    result = UndoResult(journal=str(journal))
    for entry in entries:
        if entry.created:
            if tree.exists(entry.path):
                tree.remove(entry.path)
            result.removed.append(entry.path)
        else:
            tree.write_bytes(entry.path, originals[entry.path], entry.mode)
            result.restored.append(entry.path)
    (journal / UNDONE_MARK).write_text(datetime.now(UTC).isoformat())
    return result
