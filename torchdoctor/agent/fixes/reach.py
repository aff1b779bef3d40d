"""Does a run reach a file? The static import graph of the audited tree, from a run's script:
the tree's own modules it imports (absolute from the script's folder or the tree's root,
relative within packages, the packages' `__init__` on the way), followed transitively. A
verification run that never imports the patched file proves nothing about the fix, so the run
chosen for a file's fixes is one that reaches it, and the report says through which imports.
"""

from __future__ import annotations

import ast
import posixpath
from collections import deque
from collections.abc import Callable, Iterator


def _modules(tree: ast.AST, path: str) -> Iterator[tuple[str, int]]:
    """(dotted name, relative level) of every module an import in the file may load."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if base:
                yield base, node.level
            for alias in node.names:
                yield (f"{base}.{alias.name}" if base else alias.name), node.level


def _candidates(dotted: str, level: int, importer: str, roots: list[str]) -> Iterator[str]:
    """The tree's files an import may resolve to, its parent packages' `__init__` included."""
    parts = dotted.split(".")
    if level:
        folder = posixpath.dirname(importer)
        for _ in range(level - 1):
            folder = posixpath.dirname(folder)
        bases = [folder]
    else:
        bases = roots
    for base in bases:
        for depth in range(1, len(parts) + 1):
            stem = posixpath.join(base, *parts[:depth]) if base else posixpath.join(*parts[:depth])
            yield posixpath.normpath(f"{stem}.py")
            yield posixpath.normpath(posixpath.join(stem, "__init__.py"))


def import_path(text_of: Callable[[str], str | None], script: str, target: str) -> list[str] | None:
    """The files from `script` to `target` through imports (both included), or None when the
    script never imports it. `text_of` gives an audited file's text (None: not in the tree)."""
    roots = sorted({posixpath.dirname(script), ""})
    parent: dict[str, str | None] = {script: None}
    queue = deque([script])
    while queue:
        current = queue.popleft()
        if current == target:
            chain = [current]
            while (previous := parent[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        text = text_of(current)
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            continue
        for dotted, level in _modules(tree, current):
            for candidate in _candidates(dotted, level, current, roots):
                if candidate not in parent and text_of(candidate) is not None:
                    parent[candidate] = current
                    queue.append(candidate)
    return None
