"""An immutable snapshot of the audited code: what is read once and never edited in place.

Every file that cannot be audited (binary, too large, not decodable, a link leaving the
folder, unreadable) becomes an `InputNote` with the reason, and the rest goes on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from torchdoctor.agent.models import InputNote

SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "env",
        "__pycache__",
        "node_modules",
        "site-packages",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".tox",
        ".nox",
        "build",
        "dist",
        ".torchdoctor",
        ".eggs",
    }
)
MANIFEST_NAMES = ("pyproject.toml", "setup.cfg", "environment.yml", "environment.yaml")


class InputError(ValueError):
    """The target itself cannot be audited (missing, not Python, not readable)."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    """Relative POSIX path (the file's own name when auditing one file)."""
    text: str
    sha256: str


@dataclass
class Workspace:
    root: Path
    kind: str  # "file" | "folder"
    target: Path
    files: list[SourceFile] = field(default_factory=list)
    manifests: dict[str, str] = field(default_factory=dict)
    notes: list[InputNote] = field(default_factory=list)

    def text_of(self, path: str) -> str | None:
        for source in self.files:
            if source.path == path:
                return source.text
        return None

    def pairs(self) -> list[tuple[str, str]]:
        return [(f.path, f.text) for f in self.files]


def _is_excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, pattern) for pattern in patterns)


def _decode(raw: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    return raw.decode(encoding)


def _read_source(path: Path, rel: str, max_bytes: int) -> SourceFile | InputNote:
    try:
        size = path.stat().st_size
    except OSError as err:
        return InputNote(file=rel, reason=f"unreadable: {err.strerror or err}")
    if size > max_bytes:
        return InputNote(
            file=rel,
            reason=f"skipped: {size / 1e6:.1f} MB exceeds the {max_bytes / 1e6:.1f} MB limit "
            "(generated code?)",
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        return InputNote(file=rel, reason=f"unreadable: {err.strerror or err}")
    if b"\0" in raw[:8192]:
        return InputNote(file=rel, reason="skipped: binary content (NUL bytes)")
    try:
        text = _decode(raw)
    except (SyntaxError, UnicodeDecodeError, LookupError) as err:
        return InputNote(
            file=rel, reason=f"skipped: not valid text in its declared encoding ({err})"
        )
    return SourceFile(path=rel, text=text, sha256=hashlib.sha256(raw).hexdigest())


def _walk_python_files(
    root: Path, exclude: list[str]
) -> tuple[list[tuple[Path, str]], list[InputNote]]:
    found: list[tuple[Path, str]] = []
    notes: list[InputNote] = []
    resolved_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=None):
        current = Path(dirpath)
        rel_dir = current.relative_to(root).as_posix()
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIPPED_DIRS
            and not d.startswith(".")
            and not _is_excluded(f"{rel_dir}/{d}".lstrip("./") + "/", exclude)
        )
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = current / name
            rel = path.relative_to(root).as_posix()
            if _is_excluded(rel, exclude):
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    notes.append(InputNote(file=rel, reason="skipped: broken symbolic link"))
                    continue
                if not target.is_relative_to(resolved_root):
                    notes.append(
                        InputNote(file=rel, reason="skipped: link points outside the folder")
                    )
                    continue
            if not path.is_file():
                notes.append(InputNote(file=rel, reason="skipped: not a regular file"))
                continue
            found.append((path, rel))
    return found, notes


def load_workspace(
    target: Path, exclude: list[str] | None = None, max_bytes: int = 2_000_000
) -> Workspace:
    """Snapshot a file or a folder. Raises `InputError` when the target itself is unusable."""
    exclude = exclude or []
    if not target.exists():
        raise InputError(f"{target}: no such file or folder")
    if target.is_file():
        if target.suffix != ".py":
            raise InputError(f"{target}: not a Python file (.py) or a folder")
        ws = Workspace(root=target.parent, kind="file", target=target)
        entry = _read_source(target, target.name, max_bytes)
        if isinstance(entry, InputNote):
            ws.notes.append(entry)
        else:
            ws.files.append(entry)
        return ws
    if not target.is_dir():
        raise InputError(f"{target}: not a regular file or folder")
    ws = Workspace(root=target, kind="folder", target=target)
    paths, ws.notes = _walk_python_files(target, exclude)
    for path, rel in paths:
        entry = _read_source(path, rel, max_bytes)
        if isinstance(entry, InputNote):
            ws.notes.append(entry)
        else:
            ws.files.append(entry)
    for manifest in sorted(target.glob("requirements*.txt")) + [target / n for n in MANIFEST_NAMES]:
        if manifest.is_file() and manifest.stat().st_size <= max_bytes:
            try:
                ws.manifests[manifest.name] = manifest.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                ws.notes.append(InputNote(file=manifest.name, reason=f"unreadable manifest: {err}"))
    if not ws.files:
        ws.notes.append(InputNote(file=".", reason="no Python files to audit in this folder"))
    return ws
