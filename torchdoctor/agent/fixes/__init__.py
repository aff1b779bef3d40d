"""Fixes that are proven: codemods propose, the sandbox verifies, apply/undo write atomically.

Entry points (imported from their modules, so that reading a fix's models does not load the
codemods' libcst):
- `pipeline.propose_and_verify(root, findings, sandbox, run_command=..., steps=...)` ->
  findings with `fix` filled (verified only after a smoke run);
- `apply.apply_fixes(root, findings, force)` -> ApplyResult (verified, gate-allowed fixes only);
- `apply.undo(root, force)` -> UndoResult;
- `pipeline.verify_patch(root, finding, patch, kind, sandbox, ...)` for a patch from elsewhere
  (LLM).
"""
