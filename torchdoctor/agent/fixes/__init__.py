"""Fixes that are proven: codemods propose, the sandbox verifies, apply/undo write atomically.

Entry points:
- `propose_and_verify(root, findings, sandbox, run_command=..., steps=...)` -> findings with
  `fix` filled (verified only after a smoke run);
- `apply_fixes(root, findings, force)` -> ApplyResult (verified, gate-allowed fixes only);
- `undo(root, force)` -> UndoResult;
- `verify_patch(root, finding, patch, kind, sandbox, ...)` for a patch from elsewhere (LLM).
"""

from torchdoctor.agent.fixes.apply import apply_fixes, undo
from torchdoctor.agent.fixes.models import ApplyResult, FixKind, Patch, UndoResult
from torchdoctor.agent.fixes.pipeline import propose_and_verify, verify_patch
from torchdoctor.agent.gate import fix_gate

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
