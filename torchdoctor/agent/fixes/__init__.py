"""Fixes that are proven: codemods propose, the sandbox verifies, apply/undo write atomically.

Entry points:
- `propose_and_verify(root, findings, sandbox, run_command=..., steps=...)` -> findings with
  `fix` filled (verified only after a smoke run);
- `apply_fixes(root, findings, force)` -> ApplyResult (verified, gate-allowed fixes only);
- `undo(root, force)` -> UndoResult;
- `verify_patch(root, finding, patch, kind, sandbox, ...)` for a patch from elsewhere (LLM).
"""

from agent.fixes.apply import apply_fixes, undo
from agent.fixes.gate import fix_gate
from agent.fixes.models import ApplyResult, FixKind, Patch, UndoResult
from agent.fixes.pipeline import propose_and_verify, verify_patch

__all__ = [
    "ApplyResult",
    "FixKind",
    "Patch",
    "UndoResult",
    "apply_fixes",
    "fix_gate",
    "propose_and_verify",
    "undo",
    "verify_patch",
]
