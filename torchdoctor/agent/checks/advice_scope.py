"""Project-wide advice is said once per project, a legacy idiom once per file, a problem with
one cause elsewhere once per cause, not per line.

Advice rules (no mixed precision, no `torch.compile`, unfused optimizers, unpinned or
non-persistent loader workers, unverified downloads, `DataParallel` rather than DDP...)
describe a habit of the project, not a defect of one line: the same advice on every
`DataLoader(...)` of forty example scripts buries the findings that are bugs. Each such rule
keeps one finding per project, where it matters most (not stood down to info, then outside the
tests, then the shallowest path, path order, line), and lists the other places as related
locations: nothing is hidden and the kept finding's fingerprint is stable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.smoke_tests import is_test_module
from torchdoctor.agent.models import Severity

ONCE_PER_PROJECT = frozenset(
    {
        "no-amp",
        "no-torch-compile",
        "unfused-optimizer",
        "pin-memory-off",
        "persistent-workers-off",
        "unverified-download",
        "tf32-off",
        "cudnn-benchmark-off",
        "dataparallel-not-ddp",
    }
)
# Legacy idioms (`Variable(...)`, `torch.FloatTensor(...)`, `.data`) repeat on every line of an
# old file and have one fix per file: said once per file. So do a model file's building habits:
# a biased conv before every norm of forty blocks (weiaicunzai's pytorch-cifar100 models), a
# block whose forward calls each layer's `.forward(...)` (bearpaw's ResNeXt). So do a script's
# module-level loaders with workers and no `__main__` guard: one guard fixes them all
# (outlier-exposure's test scripts build a dozen loaders each).
ONCE_PER_FILE = frozenset(
    {
        "no-main-guard-workers",
        "autograd-variable-legacy",
        "legacy-tensor-ctor",
        "data-attribute-idiom",
        "type-cast-legacy",
        "tensor-constructor",
        "bias-before-norm",
        "direct-forward-call",
    }
)
# A loss fed by a sigmoid applied elsewhere (a discriminator's last layer) has its cause, and
# its one fix, at that sigmoid: every loss it feeds is the same problem, said once per sigmoid
# (the key names the line of the cause, in the finding's file). A sigmoid inside the loss call
# is that call's own fix, and stays a finding of its own.
ONCE_PER_CAUSE = {"bce-on-sigmoid": "sigmoid_line", "sigmoid-into-logits-loss": "sigmoid_line"}
MAX_RELATED = 10


def _entry_order(finding: RawFinding) -> tuple[bool, int, bool, int, str, int]:
    """Where the advice matters most: not stood down to info, then the gravest (a
    `Variable(x, volatile=True)` that leaves autograd on outranks a plain `Variable(x)` earlier
    in the file: its message is the one said), then outside the tests (litgpt's
    `tests/test_lora.py` is shallower than its `litgpt/finetune/lora.py`), then the most
    entry-like file."""
    return (
        finding.severity is Severity.INFO,
        -finding.severity.rank,
        is_test_module(finding.file),
        finding.file.count("/"),
        finding.file,
        finding.line,
    )


def _related(finding: RawFinding) -> dict[str, Any]:
    return {
        "file": finding.file,
        "line": finding.line,
        "end_line": finding.end_line,
        "message": "same advice here",
        "excerpt": finding.excerpt,
    }


def consolidate(findings: Iterable[RawFinding]) -> dict[int, RawFinding | None]:
    """What becomes of each advice finding repeated in its scope, by `id()`: None (dropped)
    or its rule's representative naming the other places. Findings not listed stay as they are.
    """
    groups: dict[tuple[str, str, int | None], list[RawFinding]] = {}
    for finding in findings:
        cause = finding.data.get(ONCE_PER_CAUSE.get(finding.rule, ""))
        if finding.rule in ONCE_PER_PROJECT:
            groups.setdefault((finding.rule, "", None), []).append(finding)
        elif finding.rule in ONCE_PER_FILE:
            groups.setdefault((finding.rule, finding.file, None), []).append(finding)
        elif isinstance(cause, int) and cause != finding.line:
            groups.setdefault((finding.rule, finding.file, cause), []).append(finding)
    outcome: dict[int, RawFinding | None] = {}
    for (_, file, cause), group in groups.items():
        if len(group) < 2:
            continue
        keeper, *others = sorted(group, key=_entry_order)
        lead = "same cause, also" if cause else f"{'file' if file else 'project'}-wide, also"
        outcome[id(keeper)] = _representative(keeper, others, lead)
        outcome.update((id(other), None) for other in others)
    return outcome


def _representative(finding: RawFinding, others: list[RawFinding], lead: str) -> RawFinding:
    places = {(finding.file, finding.line)}
    distinct: list[RawFinding] = []  # one line with two `FloatTensor(...)`s is one place
    for other in others:
        if (other.file, other.line) not in places:
            places.add((other.file, other.line))
            distinct.append(other)
    if not distinct:
        return finding
    shown = distinct[:MAX_RELATED]
    more = len(distinct) - len(shown)
    where = ", ".join(f"{f.file}:{f.line}" for f in shown) + (f" and {more} more" if more else "")
    related = list(finding.data.get("related", [])) + [_related(f) for f in shown]
    return finding.model_copy(
        update={
            "message": f"{finding.message} ({lead}: {where})",
            "data": {**finding.data, "related": related},
        }
    )
