"""Which lines of chosen files a run executed: the proof that a fix's verification run reached
the patched code. Limited to those files, so it stays cheap: `sys.monitoring` (Python 3.12+)
disables each location after its first report and every location in other files; on 3.11 a
`sys.settrace` hook traces only frames whose code comes from the chosen files.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from types import CodeType, FrameType
from typing import Any

TOOL_NAME = "torchdoctor-linetrace"


class LineTrace:
    """Records executed (file, line) pairs for `files` (paths as the harness sees them)."""

    def __init__(self, files: tuple[str, ...], root: str) -> None:
        self.root = root
        self.wanted = {os.path.realpath(os.path.join(root, f)): f for f in files}
        self.hits: dict[str, set[int]] = {f: set() for f in files}
        self._tool: int | None = None
        self._names: dict[str, str | None] = {}

    def start(self) -> None:
        if not self.wanted:
            return
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is not None:
            self._start_monitoring(monitoring)
        else:
            sys.settrace(self._global)
            threading.settrace(self._global)

    def stop(self) -> None:
        if not self.wanted:
            return
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is not None and self._tool is not None:
            monitoring.set_events(self._tool, 0)
            monitoring.register_callback(self._tool, monitoring.events.LINE, None)
            monitoring.free_tool_id(self._tool)
            self._tool = None
        else:
            sys.settrace(None)
            threading.settrace(None)

    def report(self) -> dict[str, list[int]]:
        return {name: sorted(lines) for name, lines in self.hits.items()}

    # -- Python 3.12+ ----------------------------------------------------------------------

    def _start_monitoring(self, monitoring: Any) -> None:
        for tool in range(6):
            if monitoring.get_tool(tool) is None:
                self._tool = tool
                break
        if self._tool is None:
            return
        monitoring.use_tool_id(self._tool, TOOL_NAME)
        disable = monitoring.DISABLE

        def on_line(code: CodeType, line: int) -> Any:
            name = self._name_of(code.co_filename)
            if name is not None:
                self.hits[name].add(line)
            return disable

        monitoring.register_callback(self._tool, monitoring.events.LINE, on_line)
        monitoring.set_events(self._tool, monitoring.events.LINE)

    # -- Python 3.11 -----------------------------------------------------------------------

    def _global(self, frame: FrameType, event: str, arg: object) -> Any:
        name = self._name_of(frame.f_code.co_filename)
        if name is None:
            return None
        lines = self.hits[name]

        def local(frame: FrameType, event: str, arg: object) -> Any:
            if event == "line":
                lines.add(frame.f_lineno)
            return local

        return local

    def _name_of(self, filename: str) -> str | None:
        """The chosen file a code object comes from (resolved once per file name)."""
        if filename not in self._names:
            real = os.path.realpath(filename) if filename[:1] != "<" else ""
            self._names[filename] = self.wanted.get(real)
        return self._names[filename]


def import_untraced(name: str) -> None:
    """Import `name` now with the 3.11 trace hook paused: the script's lines are not traced
    meanwhile, but every call of a large import (torch._dynamo: the first optimizer imports
    it) would reach the hook, which costs more than the small runs fixes are verified on."""
    if name in sys.modules:
        return
    tracer = sys.gettrace()
    sys.settrace(None)
    try:
        importlib.import_module(name)
    finally:
        sys.settrace(tracer)
