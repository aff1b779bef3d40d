"""Source locations for runtime objects: a module's class, its `forward`, the line where a
parameter's owner is assigned (`self.head = nn.Linear(...)`).

Classes defined in the script run as `__main__` cannot be found through `inspect` once the
harness's own `__main__` is back in `sys.modules`, so locations come from the code objects
of the class's functions, which always name their file.
"""

from __future__ import annotations

import linecache
import re
from types import CodeType
from typing import Any

import torch

from torchdoctor.sandbox.probes.frames import Location, UserFiles


def _codes(cls: type) -> list[CodeType]:
    codes = []
    for value in vars(cls).values():
        function = getattr(value, "__func__", value)
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType):
            codes.append(code)
    return codes


def _class_source(cls: type, user_files: UserFiles) -> tuple[str, int, list[str]] | None:
    """(file, class line, the class's lines) for a class defined in a user file."""
    codes = [c for c in _codes(cls) if user_files.contains(c.co_filename)]
    if not codes:
        return None
    filename = codes[0].co_filename
    lines = linecache.getlines(filename)
    first = min(c.co_firstlineno for c in codes if c.co_filename == filename)
    header = re.compile(rf"^\s*class\s+{re.escape(cls.__name__)}\b")
    start = next((n for n in range(first, 0, -1) if header.match(lines[n - 1])), first)
    indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
    end = start
    while end < len(lines):
        text = lines[end]
        if text.strip() and len(text) - len(text.lstrip()) <= indent:
            break
        end += 1
    return filename, start, lines[start - 1 : end]


def class_location(module: torch.nn.Module, user_files: UserFiles) -> Location | None:
    found = _class_source(type(module), user_files)
    if found is None:
        return None
    return Location(user_files.relpath(found[0]), found[1], type(module).__name__)


def forward_location(module: torch.nn.Module, user_files: UserFiles) -> Location | None:
    code: Any = getattr(type(module).forward, "__code__", None)
    if isinstance(code, CodeType) and user_files.contains(code.co_filename):
        return Location(user_files.relpath(code.co_filename), code.co_firstlineno, "forward")
    return class_location(module, user_files)


def attribute_location(
    root: torch.nn.Module, dotted: str, user_files: UserFiles
) -> Location | None:
    """Where the submodule or parameter named `dotted` (relative to `root`) is assigned in its
    owner's class (`self.<attr> =`); else the owner's class line."""
    parts = dotted.split(".")
    owners = [root]
    for part in parts[:-1]:
        child = getattr(owners[-1], part, None)
        if not isinstance(child, torch.nn.Module):
            break
        owners.append(child)
    # walk up from the innermost owner to the first one whose class is the user's
    for depth in range(len(owners) - 1, -1, -1):
        found = _class_source(type(owners[depth]), user_files)
        if found is None:
            continue
        filename, start, lines = found
        attribute = parts[depth]
        pattern = re.compile(rf"\bself\.{re.escape(attribute)}\s*[:=]")
        for offset, text in enumerate(lines):
            if pattern.search(text):
                return Location(user_files.relpath(filename), start + offset, attribute)
        return Location(user_files.relpath(filename), start, type(owners[depth]).__name__)
    return None
