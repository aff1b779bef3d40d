"""Which source files are the user's, and where in them a call came from.

Every probe that attributes an event to a line (a host sync, a forward in train mode, a
synchronising CUDA call) asks this module for the innermost frame that lies in the user's
files, so library frames (torch, this harness) never appear in evidence.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

_LIBRARY_ROOTS = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]}
    | {sysconfig.get_paths()["platlib"]}
)
_HARNESS_ROOT = os.path.dirname(os.path.realpath(__file__))


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    function: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "function": self.function}


class UserFiles:
    """Files of the audited tree, minus installed libraries and this harness. The tree is the
    folder the run starts in (the sandbox starts it at the workspace's root) when the script
    lies inside it, else the script's folder: a package beside the script's folder
    (`scripts/train.py` importing `mypkg/`) is the user's code as much as the script is."""

    def __init__(self, script: str, tree: str | None = None) -> None:
        self.script = os.path.realpath(script)
        self.root = os.path.dirname(self.script)
        start = os.path.realpath(tree if tree is not None else os.getcwd())
        self.tree = start if self.script.startswith(start + os.sep) else self.root
        self.known: dict[str, bool] = {}
        """Each file name `contains` has classified: whether it is the user's."""

    def contains(self, filename: str) -> bool:
        known = self.known.get(filename)
        if known is None:
            real = os.path.realpath(filename)
            known = (
                not filename.startswith("<")  # `<frozen runpy>`, `<string>`: no file; as a
                # path it resolves under the working folder, inside the tree
                and real.startswith(self.tree + os.sep)
                and not real.startswith(_HARNESS_ROOT)
                and not real.startswith(_LIBRARY_ROOTS)
                and "site-packages" not in real
            )
            self.known[filename] = known
        return known

    def relpath(self, filename: str) -> str:
        """Relative to the script's folder (`../mypkg/__init__.py` for a package beside it)."""
        return os.path.relpath(os.path.realpath(filename), self.root)

    def is_script(self, filename: str) -> bool:
        return os.path.realpath(filename) == self.script

    def caller(self, skip: int = 1) -> Location | None:
        """The innermost user frame above the caller of this function, if any."""
        return self.caller_from(sys._getframe(skip + 1))

    def caller_from(self, frame: FrameType | None) -> Location | None:
        """The innermost user frame from `frame` up, if any."""
        while frame is not None:
            code = frame.f_code
            if self.contains(code.co_filename):
                return Location(self.relpath(code.co_filename), frame.f_lineno, code.co_name)
            frame = frame.f_back
        return None

    def first_script_line(self) -> Location:
        return Location(self.relpath(self.script), 1, "<module>")
