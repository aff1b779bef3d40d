"""pin-memory-off's fix: the loader pinned, and the loop's copies of the batch parts made
non-blocking (a pinned batch copied with a blocking `.to()` still waits for the copy)."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

LOOPS = """import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

train_loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=4)
eval_loader = DataLoader(eval_set, batch_size=32)
for epoch in range(3):
    for step, (images, (labels, weights)) in enumerate(tqdm(train_loader)):
        images = images.to(device)
        labels, weights = labels.cuda(), weights.to(device, non_blocking=False)
        step_tensor = torch.tensor(step).to(device)
    for images, labels in eval_loader:
        images = images.to(device)
"""

WHOLE_BATCH = """from torch.utils.data import DataLoader

loader = DataLoader(token_set, batch_size=8)
for batch in loader:
    batch = batch.to(device)
    for key in batch:
        batch[key].to(device)
"""


def fixed(source: str, line: int) -> str:
    codemod = codemod_for("pin-memory-off")
    assert codemod is not None
    result = codemod.transform(
        source, FixTarget(rule="pin-memory-off", file="t.py", line=line, end_line=line)
    )
    assert result is not None
    return result


def test_the_parts_of_the_flagged_loaders_batches_are_copied_without_blocking() -> None:
    out = fixed(LOOPS, 5)
    assert "num_workers=4, pin_memory=torch.cuda.is_available())" in out
    assert "images = images.to(device, non_blocking=True)" in out
    assert "labels.cuda(non_blocking=True)" in out
    assert "weights.to(device, non_blocking=False)" in out  # the author's choice is kept
    assert "torch.tensor(step).to(device)\n" in out  # not a batch part
    # the other loader is not the flagged one: its loop is left alone
    assert out.rstrip().endswith("images = images.to(device)")


def test_a_batch_kept_whole_is_pinned_but_its_copy_left_blocking() -> None:
    # a whole batch may be a custom object (a tokenizer's encoding) whose .to() has no
    # non_blocking argument
    out = fixed(WHOLE_BATCH, 3)
    assert "pin_memory=" in out
    assert "non_blocking" not in out


# A names classifier: a test loader built before the training loader, both unpinned; the
# rule reports the project's pin-memory advice once, at the first, naming the other.
TWO_LOADERS = """import torch
from torch.utils.data import DataLoader

test_loader = DataLoader(test_names, batch_size=256, shuffle=True)
train_loader = DataLoader(train_names, batch_size=256, shuffle=True)
model = torch.nn.Linear(8, 4).cuda()
optimizer = torch.optim.Adam(model.parameters())
for epoch in range(2):
    for x, y in train_loader:
        x, y = x.cuda(), y.cuda()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def _pin_findings(source: str) -> list[RawFinding]:
    result = analyse_files([("train.py", source)], EngineConfig(), workers=1)
    return [f for f in result.all_findings() if f.rule == "pin-memory-off"]


def test_the_fix_pins_every_loader_the_finding_names() -> None:
    (finding,) = _pin_findings(TWO_LOADERS)
    assert "also: train.py:5" in finding.message
    codemod = codemod_for("pin-memory-off")
    assert codemod is not None
    target = FixTarget(
        rule=finding.rule,
        file=finding.file,
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )

    fixed = codemod.transform(TWO_LOADERS, target)

    assert fixed is not None
    assert fixed.count("pin_memory=torch.cuda.is_available()") == 2
    assert _pin_findings(fixed) == []  # the rule is cleared, not moved to the other loader
