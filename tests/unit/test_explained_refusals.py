"""An audit's fix stage says why a rule that has a codemod got no fix.

Shape from an educational transformer (held out): six hand-written attentions whose scores go
through an in-place mask helper; the codemod declines each with a reason the audit's report
never showed (the benchmark pipeline did)."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.fixing import explained_refusals
from torchdoctor.agent.models import Evidence, Finding, Severity
from torchdoctor.agent.state import FixRecord

SOURCE = """import torch
import torch.nn.functional as F


def mask_(matrices, maskval=0.0):
    matrices[..., 0] = maskval


def attend(queries, keys, values):
    dot = torch.bmm(queries, keys.transpose(1, 2))
    mask_(dot, maskval=float("-inf"))
    dot = F.softmax(dot, dim=2)
    return torch.bmm(dot, values)
"""


def _finding(id_: str, rule: str, line: int, phase: int = 4) -> Finding:
    return Finding(
        id=id_,
        rule=rule,
        checkpoint=6,
        phase=phase,
        severity=Severity.LOW,
        title="t",
        file="modules.py",
        line=line,
        end_line=line,
        evidence=[Evidence(source="torchdoctor-static", message="m")],
    )


def test_a_declined_codemod_leaves_its_reason_on_the_finding(tmp_path: Path) -> None:
    (tmp_path / "modules.py").write_text(SOURCE, encoding="utf-8")
    declined = _finding("TD-1", "manual-attention", 12)
    proposed = _finding("TD-2", "manual-attention", 12)
    other_phase = _finding("TD-3", "manual-attention", 12, phase=3)
    no_codemod = _finding("TD-4", "no-ml-tests", 9)
    record = FixRecord(
        finding_id="TD-2",
        phase=4,
        rule="manual-attention",
        origin="codemod",
        kind="precision",
        diff="",
    )

    explained = explained_refusals(
        tmp_path, [declined, proposed, other_phase, no_codemod], 4, [record]
    )

    (finding,) = explained
    assert finding.id == "TD-1"
    note = finding.evidence[-1]
    assert note.source == "torchdoctor-codemod"
    assert note.message.startswith("no automatic fix: `dot` is handed to `mask_(...)`")
