"""How the script's run ended, as the evidence document states it."""

from __future__ import annotations

import copy
import traceback
from typing import Any, Literal

from torchdoctor.sandbox.probes.frames import UserFiles

OutcomeKind = Literal[
    "completed-steps",
    "script-finished",
    "script-error",
    "sys-exit",
    "time-budget",
    "no-optimizer",
    "no-model",
    "harness-error",
]
TRACEBACK_LINES = 30


def outcome(kind: OutcomeKind, detail: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "detail": detail,
        "exit_code": None,
        "error_type": None,
        "traceback": None,
        "file": None,
        "line": None,
        "entry_line": None,
        **extra,
    }


def from_exception(exc: BaseException, user_files: UserFiles) -> dict[str, Any]:
    """A script error: type, message, the user's innermost frame (the deepest in the audited
    tree: a local package that raises while the script imports it is blamed at its own line),
    the script's innermost frame when that is another (`entry_line`, the import line), and a
    traceback excerpt that keeps the user's frames and the frame that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    kept = [f for f in frames if user_files.contains(f.filename)]
    if frames and (not kept or kept[-1] is not frames[-1]):
        kept.append(frames[-1])
    shown = [
        traceback.FrameSummary(user_files.relpath(f.filename), f.lineno, f.name, line=f.line)
        if user_files.contains(f.filename)
        else f
        for f in kept
    ]
    place = _uncompiled(exc, user_files)
    shown_exc = exc
    if place is not None:  # the script's own exception is left as it was
        shown_exc = copy.copy(exc)
        shown_exc.filename = place[0]  # type: ignore[attr-defined]
    lines = traceback.format_list(shown) + traceback.format_exception_only(
        type(shown_exc), shown_exc
    )
    excerpt = "".join(lines).splitlines()[-TRACEBACK_LINES:]
    user = [f for f in frames if user_files.contains(f.filename)]
    if place is None and user:
        place = (user_files.relpath(user[-1].filename), user[-1].lineno)
    script = [f for f in user if user_files.is_script(f.filename)]
    entry = script[-1] if script else None
    if entry is not None and place == (user_files.relpath(entry.filename), entry.lineno):
        entry = None  # the failure is at the script's own line
    return outcome(
        "script-error",
        f"{type(exc).__name__}: {exc}"[:500],
        error_type=type(exc).__name__,
        traceback="\n".join(excerpt),
        file=place[0] if place else None,
        line=place[1] if place else None,
        entry_line=entry.lineno if entry is not None else None,
    )


def _uncompiled(exc: BaseException, user_files: UserFiles) -> tuple[str, int | None] | None:
    """A user file that does not compile (a TabError, a SyntaxError): no frame of it ran, so
    the error itself names the place."""
    if not isinstance(exc, SyntaxError) or not exc.filename:
        return None
    if not user_files.contains(exc.filename):
        return None
    return user_files.relpath(exc.filename), exc.lineno


def from_exit(exc: SystemExit) -> dict[str, Any]:
    code = exc.code
    exit_code = code if isinstance(code, int) else (0 if code is None else 1)
    return outcome("sys-exit", f"sys.exit({code!r})", exit_code=exit_code)
