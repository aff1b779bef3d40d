"""Which lines of chosen files a run executed: the proof that a fix's verification run reached
the patched code. Limited to those files, so it stays cheap: `sys.monitoring` (Python 3.12+)
disables each location after its first report and every location in other files; on 3.11 a
`sys.settrace` hook traces only frames whose code comes from the chosen files.

Code that `torch.compile` runs never fires a line event: Dynamo reads the function's bytecode
symbolically and runs the graph it captured instead. The lines Dynamo traces from the chosen
files (inlined callees included) count as executed too, recorded where its instruction
translator starts each line, hooked when `torch._dynamo.symbolic_convert` is imported (never
imported for it: a run that does not compile pays nothing).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import CodeType, FrameType, ModuleType
from typing import Any

TOOL_NAME = "torchdoctor-linetrace"
DYNAMO_TRANSLATOR = "torch._dynamo.symbolic_convert"


class LineTrace:
    """Records executed (file, line) pairs for `files` (paths as the harness sees them)."""

    def __init__(self, files: tuple[str, ...], root: str) -> None:
        self.root = root
        self.wanted = {os.path.realpath(os.path.join(root, f)): f for f in files}
        self.hits: dict[str, set[int]] = {f: set() for f in files}
        self._tool: int | None = None
        self._names: dict[str, str | None] = {}
        self._compiled = CompiledLines(self._traced)

    def start(self) -> None:
        if not self.wanted:
            return
        self._compiled.start()
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is not None:
            self._start_monitoring(monitoring)
        else:
            sys.settrace(self._global)
            threading.settrace(self._global)

    def stop(self) -> None:
        if not self.wanted:
            return
        self._compiled.stop()
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

    def _traced(self, filename: str, line: int) -> None:
        name = self._name_of(filename)
        if name is not None:
            self.hits[name].add(line)

    def _name_of(self, filename: str) -> str | None:
        """The chosen file a code object comes from (resolved once per file name)."""
        if filename not in self._names:
            real = os.path.realpath(filename) if filename[:1] != "<" else ""
            self._names[filename] = self.wanted.get(real)
        return self._names[filename]


class CompiledLines(importlib.abc.MetaPathFinder):
    """Reports each (file, line) Dynamo's instruction translator starts: a wrapper around
    `InstructionTranslatorBase.starts_line` (there since torch 2.1), put in place when the
    module is imported (or at once if it already is) and taken off at `stop`. A torch without
    that method is left alone: its compiled lines stay unreported, as before."""

    def __init__(self, record: Callable[[str, int], None]) -> None:
        self.record = record
        self._patched: tuple[type, Callable[..., Any]] | None = None

    def start(self) -> None:
        module = sys.modules.get(DYNAMO_TRANSLATOR)
        if module is not None:
            self._patch(module)
        else:
            sys.meta_path.insert(0, self)

    def stop(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        if self._patched is not None:
            translator, original = self._patched
            translator.starts_line = original  # type: ignore[attr-defined]
            self._patched = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != DYNAMO_TRANSLATOR:
            return None
        sys.meta_path.remove(self)  # the other finders locate it; this one only wraps
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            execute(module)
            self._patch(module)

        loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec

    def _patch(self, module: ModuleType) -> None:
        translator = getattr(module, "InstructionTranslatorBase", None)
        original = getattr(translator, "starts_line", None)
        if translator is None or original is None or self._patched is not None:
            return
        record = self.record

        def starts_line(tx: Any, lineno: int) -> Any:
            record(tx.f_code.co_filename, lineno)
            return original(tx, lineno)

        translator.starts_line = starts_line
        self._patched = (translator, original)


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
