"""Peer linters (TorchFix, ruff, bandit, detect-secrets, mypy, pip-audit) as evidence.

`run_linters(root, files)` runs the installed ones and returns their `Evidence` and coverage
notes; `merge_linter_evidence` folds what they report into the native findings that already
cover it.
"""

from torchdoctor.agent.checks.linters.base import LinterAdapter, LinterResult
from torchdoctor.agent.checks.linters.merge import NativeKey, merge_linter_evidence, native_key
from torchdoctor.agent.checks.linters.runner import (
    CoverageNote,
    LinterRun,
    default_adapters,
    run_linters,
)

__all__ = [
    "CoverageNote",
    "LinterAdapter",
    "LinterResult",
    "LinterRun",
    "NativeKey",
    "default_adapters",
    "merge_linter_evidence",
    "native_key",
    "run_linters",
]
