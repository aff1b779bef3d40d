"""The arguments-swapped codemod on the project pass's findings (a function and a class of
another file, by position and by keyword): each call then passes every variable under the
parameter of its name, and the rule is quiet on the fixed project."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

RULE = "arguments-swapped"
PROJECT = Path(__file__).parents[1] / "fixtures" / "rules" / RULE / "positive_across_files"


def _project() -> dict[str, str]:
    return {str(p.relative_to(PROJECT)): p.read_text() for p in sorted(PROJECT.rglob("*.py"))}


def _findings(files: dict[str, str]) -> list[FixTarget]:
    result = analyse_files(sorted(files.items()), EngineConfig(select=frozenset({RULE})), workers=1)
    return [
        FixTarget(rule=RULE, file=f.file, line=f.line, end_line=f.end_line, data=f.data)
        for f in result.all_findings()
        if f.rule == RULE
    ]


def test_every_swap_across_files_is_fixed() -> None:
    files = _project()
    codemod = codemod_for(RULE)
    assert codemod is not None
    targets = _findings(files)
    assert len(targets) == 3
    for target in sorted(targets, key=lambda t: t.line, reverse=True):
        fixed = codemod.transform(files[target.file], target)
        assert fixed is not None, target
        files[target.file] = fixed
    train = files["train.py"]
    assert "cal_loss(pred, batch.gold, opt.trg_pad_idx, opt.smoothing)" in train
    assert "trg_pad_idx=opt.trg_pad_idx, smoothing=opt.smoothing" in train
    assert "Resizer(opt.height, opt.width)" in train
    assert _findings(files) == []


def test_a_call_already_in_order_is_left_alone() -> None:
    files = _project()
    codemod = codemod_for(RULE)
    assert codemod is not None
    target = _findings(files)[0]
    fixed = codemod.transform(files[target.file], target)
    assert fixed is not None
    assert codemod.transform(fixed, target) is None
