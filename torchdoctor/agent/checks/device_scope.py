"""Device-bound rules drop to `info` in scripts that never touch an accelerator.

A host-device synchronisation, unpinned host memory or an unfused optimizer costs something
only when a device is involved: in a script that never names CUDA (or any device), `.item()`
in the step is a plain read and pinned memory buys nothing. Only scripts stand down (a
`__main__` guard or a loop at module level): a helper module's callers may well put its
tensors on a GPU. The device check is textual and deliberately broad (any mention of cuda, a
device, an accelerator, mps/xla/xpu/hpu keeps the rules as they are). The finding stays, at
`info`, because the same script may be pointed at a GPU later.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.module_text import ModuleText
from torchdoctor.agent.models import Severity

DEVICE_BOUND_RULES = frozenset(
    {
        "host-sync-in-step",
        "pin-memory-off",
        "cpu-then-move",
        "empty-cache-in-loop",
        "float64-on-gpu",
        "no-amp",
        "unfused-optimizer",
        "tf32-off",
        "cudnn-benchmark-off",
    }
)
_ACCELERATOR = re.compile(r"cuda|device|accelerat|\b(?:mps|xla|xpu|hpu|npu)\b|\.half\(")


_ACCELERATOR_TEXT = ("cuda", "device", "accelerat", ".half(")
_ACCELERATOR_WORDS = ("mps", "xla", "xpu", "hpu", "npu")


def touches_accelerator(source: str) -> bool:
    """Whether the module mentions any accelerator or device at all (`_ACCELERATOR`, its
    plain parts asked of the text first: a module's text answers them from its words)."""
    if any(part in source for part in _ACCELERATOR_TEXT):
        return True
    if not any(word in source for word in _ACCELERATOR_WORDS):
        return False  # the rest of the pattern needs one of these words
    if isinstance(source, ModuleText) and source.isascii():
        # the rest is one of them as a whole word (`mps`, not `dumps`), which an ASCII
        # text's word index answers without a search of every line
        return any(source.has_word(word) for word in _ACCELERATOR_WORDS)
    return bool(_ACCELERATOR.search(source))


def is_script(tree: ast.Module) -> bool:
    """A module run as a program: a `__main__` guard or a loop at module level."""
    for node in tree.body:
        if isinstance(node, ast.For | ast.While | ast.AsyncFor):
            return True
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


_ON_CPU = " (info: this script never touches a device, where this costs nothing)"


def stand_down(findings: Sequence[RawFinding], source: str, tree: ast.Module) -> list[RawFinding]:
    """`findings`, the device-bound ones at `info` in a script that never touches a device."""
    if not any(f.rule in DEVICE_BOUND_RULES for f in findings):
        return list(findings)
    if touches_accelerator(source) or not is_script(tree):
        return list(findings)
    return [
        f.model_copy(update={"severity": Severity.INFO, "message": f.message + _ON_CPU})
        if f.rule in DEVICE_BOUND_RULES
        else f
        for f in findings
    ]
