"""An immutable snapshot of the audited code: what is read once and never edited in place.

Every file that cannot be audited (binary, too large, not decodable, a link leaving the
folder, a FIFO or device, a name with control characters or invalid UTF-8, unreadable) becomes
an `InputNote` with the reason, and the rest goes on. Every read goes through
`torchdoctor.agent.safefs`, which never follows a link out of the tree.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tokenize
from dataclasses import dataclass, field, replace
from pathlib import Path

from torchdoctor.agent.models import InputNote
from torchdoctor.agent.notebooks import CellSpan, NotebookError, notebook_source
from torchdoctor.agent.safefs import GuardedTree, UnsafePath, display_name, file_tree

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
_ALWAYS_NOTED = ("folder", "name", "loop")
MANIFEST_NAMES = (
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "environment.yml",
    "environment.yaml",
)
DOCUMENT_NAMES = (
    "README.md",
    "README.rst",
    "README.txt",
    "README",
    "MODEL_CARD.md",
    "MODELCARD.md",
    "model_card.md",
    "ModelCard.md",
)
"""Top-level documents rules may read (a model card, a README's card sections)."""


class InputError(ValueError):
    """The target itself cannot be audited (missing, not Python, not readable)."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    """Relative POSIX path (the file's own name when auditing one file)."""
    text: str
    sha256: str
    cells: tuple[CellSpan, ...] = ()
    """For a notebook: which lines of `text` (its code cells, concatenated) are which cell."""


@dataclass
class Workspace:
    root: Path
    kind: str  # "file" | "folder"
    target: Path
    files: list[SourceFile] = field(default_factory=list)
    manifests: dict[str, str] = field(default_factory=dict)
    documents: dict[str, str] = field(default_factory=dict)
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
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError as err:
        if not str(err).startswith("unknown encoding"):
            raise
        # a codec a package registers at run time (`# coding: future_fstrings`, pyxl): it
        # rewrites UTF-8 source, so the bytes are UTF-8 text (not valid UTF-8: still a note)
        return raw.decode("utf-8")
    return raw.decode(encoding)


AUDITED_SUFFIXES = (".py", ".ipynb")
NOTEBOOK_BYTES_FACTOR = 10
"""A notebook's outputs (images, tables) are dropped: it may be this many times larger."""


def _read_source(
    tree: GuardedTree, relpath: str, rel: str, max_bytes: int
) -> tuple[SourceFile | None, list[InputNote]]:
    """The file as audited (None when it cannot be), and what was left out of it and why."""
    read = _read_whole(tree, relpath, rel, max_bytes)
    if isinstance(read, InputNote):
        return None, [read]
    source, unparsed = read
    notes = [
        InputNote(file=rel, reason=f"cell {cell} not audited (the rest is): {why}")
        for cell, why in unparsed
    ]
    return source, notes


def _read_whole(
    tree: GuardedTree, relpath: str, rel: str, max_bytes: int
) -> tuple[SourceFile, tuple[tuple[int, str], ...]] | InputNote:
    notebook = rel.endswith(".ipynb")
    if notebook:
        max_bytes *= NOTEBOOK_BYTES_FACTOR
    try:
        raw = tree.read_bytes(relpath, max_bytes)
    except UnsafePath as err:
        reason = str(err).split(": ", 1)[-1]
        prefix = "skipped" if "limit" in reason else "refused"
        if "limit" in reason:
            reason += " (generated code?)"
        return InputNote(file=rel, reason=f"{prefix}: {reason}")
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
    digest = hashlib.sha256(raw).hexdigest()
    if notebook:
        try:
            converted = notebook_source(text)
        except NotebookError as err:
            return InputNote(file=rel, reason=f"notebook not audited: {err}")
        source = SourceFile(path=rel, text=converted.text, sha256=digest, cells=converted.cells)
        return source, converted.unparsed
    return SourceFile(path=rel, text=text, sha256=digest), ()


def _walk_python_files(
    tree: GuardedTree, exclude: list[str], prefix: str = ""
) -> tuple[list[str], list[InputNote]]:
    found: list[str] = []
    notes: list[InputNote] = []

    def skip(rel_dir: str) -> bool:
        name = rel_dir.rsplit("/", 1)[-1]
        return (
            name in SKIPPED_DIRS
            or name.startswith(".")
            or _is_excluded(prefix + rel_dir + "/", exclude)
        )

    for entry in tree.walk(skip):
        if not entry.relpath.endswith(AUDITED_SUFFIXES) and not entry.refused:
            continue
        if _is_excluded(prefix + entry.relpath, exclude):
            continue
        if entry.refused:
            if entry.relpath.endswith(AUDITED_SUFFIXES) or any(
                w in entry.refused for w in _ALWAYS_NOTED
            ):
                notes.append(InputNote(file=display_name(entry.relpath), reason=entry.refused))
            continue
        found.append(entry.relpath)
    return found, notes


def load_workspace(
    target: Path,
    exclude: list[str] | None = None,
    max_bytes: int = 2_000_000,
    *,
    exclude_prefix: str = "",
) -> Workspace:
    """Snapshot a file or a folder. Raises `InputError` when the target itself is unusable.

    `exclude` patterns match `exclude_prefix` + the path relative to `target` (the prefix says
    where `target` sits in the project whose configuration wrote the patterns)."""
    exclude = exclude or []
    if not target.exists():
        raise InputError(f"{display_name(str(target))}: no such file or folder")
    if target.is_file():
        if target.suffix not in AUDITED_SUFFIXES:
            raise InputError(
                f"{display_name(str(target))}: not a Python file (.py), a notebook (.ipynb) "
                "or a folder"
            )
        tree, name = file_tree(target)
        ws = Workspace(root=target.parent, kind="file", target=target)
        ws.documents = read_documents(tree, max_bytes)
        source, notes = _read_source(tree, name, name, max_bytes)
        ws.notes += notes
        ws.files += [source] if source is not None else []
        return ws
    if not target.is_dir():
        raise InputError(f"{display_name(str(target))}: not a regular file or folder")
    ws = Workspace(root=target, kind="folder", target=target)
    tree = GuardedTree(target)
    paths, ws.notes = _walk_python_files(tree, exclude, exclude_prefix)
    for rel in paths:
        source, notes = _read_source(tree, rel, rel, max_bytes)
        ws.notes += notes
        ws.files += [source] if source is not None else []
    ws.manifests = read_manifests(tree, max_bytes, ws.notes)
    ws.documents = read_documents(tree, max_bytes)
    if not ws.files:
        ws.notes.append(InputNote(file=".", reason="no Python files to audit in this folder"))
    return ws


def read_manifests(tree: GuardedTree, max_bytes: int, notes: list[InputNote]) -> dict[str, str]:
    """The top folder's requirements files and manifests, read without following links."""
    names = sorted(
        entry.relpath
        for entry in tree.walk(lambda _rel: True)
        if fnmatch.fnmatch(entry.relpath, "requirements*.txt")
    )
    found: dict[str, str] = {}
    for name in [*names, *MANIFEST_NAMES]:
        if not tree.exists(name):
            continue
        try:
            found[name] = tree.read_text(name, max_bytes)
        except (OSError, UnicodeDecodeError) as err:
            notes.append(InputNote(file=display_name(name), reason=f"unreadable manifest: {err}"))
    return found


def read_documents(tree: GuardedTree, max_bytes: int) -> dict[str, str]:
    """The top folder's README and model card, read without following links; one that cannot
    be read is left out (it is not code: nothing is lost from the audit)."""
    found: dict[str, str] = {}
    for name in DOCUMENT_NAMES:
        try:
            if tree.is_file(name):
                found[name] = tree.read_text(name, max_bytes)
        except (OSError, UnicodeDecodeError, UnsafePath):
            continue
    return found


def common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every path (a file counts by its folder), lexically."""
    folders = [os.path.abspath(p if p.is_dir() else p.parent) for p in paths]
    return Path(os.path.commonpath(folders))


def load_paths(
    paths: list[Path],
    exclude: list[str] | None = None,
    max_bytes: int = 2_000_000,
    *,
    exclude_prefix: str = "",
    force_exclude: bool = False,
) -> Workspace:
    """Snapshot several files and folders as one folder workspace rooted at their common root.

    Files named on the command line are audited even when `exclude` matches them, unless
    `force_exclude` (what a pre-commit hook wants: the project's excludes hold for the
    filenames it passes). Folders contribute their files and their dependency manifests."""
    exclude = exclude or []
    for path in paths:
        if not path.exists():
            raise InputError(f"{display_name(str(path))}: no such file or folder")
        if path.is_file() and path.suffix not in AUDITED_SUFFIXES:
            raise InputError(
                f"{display_name(str(path))}: not a Python file (.py), a notebook (.ipynb) "
                "or a folder"
            )
        if not path.is_file() and not path.is_dir():
            raise InputError(f"{display_name(str(path))}: not a regular file or folder")
    root = common_root(paths)
    ws = Workspace(root=root, kind="folder", target=root)
    seen: set[str] = set()
    for path in paths:
        rel_base = Path(os.path.abspath(path)).relative_to(root).as_posix()
        rel_base = "" if rel_base == "." else rel_base + "/"
        if path.is_file():
            rel = rel_base.rstrip("/")
            if rel in seen or (force_exclude and _is_excluded(exclude_prefix + rel, exclude)):
                continue
            seen.add(rel)
            tree, name = file_tree(path)
            source, notes = _read_source(tree, name, rel, max_bytes)
            ws.notes += notes
            ws.files += [source] if source is not None else []
            continue
        sub = load_workspace(path, exclude, max_bytes, exclude_prefix=exclude_prefix + rel_base)
        for source in sub.files:
            rel = rel_base + source.path
            if rel not in seen:
                seen.add(rel)
                ws.files.append(replace(source, path=rel))  # a notebook keeps its cell map
        ws.notes += [
            InputNote(file=rel_base + n.file if n.file != "." else rel_base or ".", reason=n.reason)
            for n in sub.notes
            if n.reason != "no Python files to audit in this folder"
        ]
        ws.manifests.update({rel_base + name: text for name, text in sub.manifests.items()})
        ws.documents.update({rel_base + name: text for name, text in sub.documents.items()})
    ws.files.sort(key=lambda f: f.path)
    if not ws.files:
        ws.notes.append(InputNote(file=".", reason="no Python files to audit in these paths"))
    return ws
