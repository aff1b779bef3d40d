"""host-sync-in-step's per-step log fix against logging habits seen in public training code.

Fixtures in tests/fixtures/logging_shapes reproduce the shapes (named in their headers; the
code is written here). `NAME.after.py`: the exact fix; `NAME.reason`: refused with that reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

SHAPES = Path(__file__).parents[1] / "fixtures" / "logging_shapes"
FIXABLE = sorted(p.name.removesuffix(".after.py") for p in SHAPES.glob("*.after.py"))
REFUSED = sorted(p.stem for p in SHAPES.glob("*.reason"))


def _target(source: str) -> FixTarget:
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "# target" in text)
    return FixTarget(rule="host-sync-in-step", file="m.py", line=line, end_line=line)


def _codemod():  # type: ignore[no-untyped-def]
    codemod = codemod_for("host-sync-in-step")
    assert codemod is not None
    return codemod


@pytest.mark.parametrize("name", FIXABLE)
def test_per_step_log_is_thinned_out(name: str) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    fixed = _codemod().transform(source, _target(source))
    assert fixed == (SHAPES / f"{name}.after.py").read_text()
    ast.parse(fixed)
    assert _codemod().transform(fixed, _target(fixed)) is None  # idempotent


@pytest.mark.parametrize("name", REFUSED)
def test_log_without_counter_is_refused_with_its_reason(name: str) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    assert _codemod().transform(source, _target(source)) is None
    reason = _codemod().explain(source, _target(source))
    assert reason is not None and (SHAPES / f"{name}.reason").read_text().strip() in reason


@pytest.mark.parametrize("name", [*FIXABLE, *REFUSED])
def test_the_rule_reports_the_sync_and_not_once_it_is_fixed(name: str) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    found = analyse_files([("m.py", source)], workers=1).all_findings()
    lines = [f.line for f in found if f.rule == "host-sync-in-step"]
    assert _target(source).line in lines
    if name in FIXABLE:
        fixed = (SHAPES / f"{name}.after.py").read_text()
        after = analyse_files([("m.py", fixed)], workers=1).all_findings()
        # a step with two syncs (an epoch sum and a log) keeps the one not fixed; a fix may
        # take several marked syncs of one value at once (a smoothed loss's two updates)
        fixed_here = source.count("# target")
        assert len([f for f in after if f.rule == "host-sync-in-step"]) == len(lines) - fixed_here


def test_the_smoothed_loss_kept_on_the_device_is_the_number_it_was() -> None:
    """tqdm_loss_ema before and after its fix, run on a tiny model: the per-epoch smoothed
    losses agree (float32 on the device against Python floats)."""
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x: object, c: object) -> object:
            return ((self.lin(x).squeeze(-1) - c) ** 2).mean()

    histories = []
    for name in ("tqdm_loss_ema.py", "tqdm_loss_ema.after.py"):
        namespace: dict[str, object] = {"__name__": "shape_loss_ema"}
        exec(compile((SHAPES / name).read_text(), name, "exec"), namespace)  # our own fixture
        torch.manual_seed(0)
        model = Tiny()
        data = [(torch.randn(4, 3), torch.randn(4)) for _ in range(60)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        histories.append(namespace["train"](model, data, optimizer, 2))  # type: ignore[operator]
    assert all(isinstance(v, float) for v in histories[1])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_a_periodic_read_of_the_sum_prints_the_same_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """periodic_sum_plain_print before and after its fix, run on a tiny model: the bare
    `print(..., running_loss / 100)` prints the same number, not a tensor's repr."""
    torch = pytest.importorskip("torch")

    def printed(name: str) -> list[str]:
        namespace: dict[str, object] = {"__name__": "shape_plain_print"}
        exec(compile((SHAPES / name).read_text(), name, "exec"), namespace)  # our own fixture
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(200)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        criterion = torch.nn.CrossEntropyLoss()
        namespace["train"](model, data, optimizer, criterion)  # type: ignore[operator]
        return capsys.readouterr().out.splitlines()

    before = printed("periodic_sum_plain_print.py")
    after = printed("periodic_sum_plain_print.after.py")
    assert len(before) == 2 and all("tensor" not in line for line in after)
    assert [line.split()[:3] for line in before] == [line.split()[:3] for line in after]
    assert [float(line.split()[-1]) for line in before] == pytest.approx(
        [float(line.split()[-1]) for line in after], rel=1e-5
    )


def test_both_appends_of_an_amp_switch_fixed_one_after_the_other_convert_once() -> None:
    """amp_branches_append: the fix of the first branch's append, then of the second's on its
    output, reads the list back once after the loop; run on a tiny model (the plain branch)
    both versions return the same average."""
    torch = pytest.importorskip("torch")
    first = (SHAPES / "amp_branches_append.after.py").read_text()
    line = next(
        i
        for i, text in enumerate(first.splitlines(), 1)
        if "train_loss.append(loss.item())" in text
    )
    target = FixTarget(rule="host-sync-in-step", file="m.py", line=line, end_line=line)
    both = _codemod().transform(first, target)
    assert both is not None and "loss.item()" not in both
    assert both.count("train_loss = [float(v) for v in train_loss]") == 1

    averages = []
    for text in ((SHAPES / "amp_branches_append.py").read_text(), both):
        namespace: dict[str, object] = {"__name__": "shape_amp_branches"}
        exec(compile(text, "amp_branches_append.py", "exec"), namespace)  # our own fixture
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(20)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        criterion = torch.nn.CrossEntropyLoss()
        train = namespace["train_epoch"]
        averages.append(train(model, data, optimizer, criterion, None, False))  # type: ignore[operator]
    assert averages[0] == pytest.approx(averages[1], rel=1e-6)
