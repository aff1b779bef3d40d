"""pin-memory-off's fix: the loader pinned, and the loop's copies of the batch parts made
non-blocking (a pinned batch copied with a blocking `.to()` still waits for the copy)."""

from __future__ import annotations

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
