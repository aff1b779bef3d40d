"""Combining fixes: codemods replayed at remapped lines, conflicts dropped with a reason."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.fixes.codemods import codemod_for, fix_order
from torchdoctor.agent.fixes.combine import combine, map_line, merge_fixes, retarget
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixTarget, Patch, RunSignals
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Verification

SCRIPT = """import torch
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"
model = nn.Linear(4, 2).to(device)
criterion = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
for step in range(3):
    optimizer.zero_grad()
    out = model(torch.randn(8, 4, device=device))
    loss = criterion(out, torch.randn(8, 2, device=device))
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(sum(losses))
"""


def codemod_finding(
    rule: str, line: int, end_line: int | None = None, source: str = SCRIPT
) -> Finding:
    """A finding of `rule` on `source`'s lines with its codemod's verified fix."""
    end_line = end_line or line
    codemod = codemod_for(rule)
    assert codemod is not None
    target = FixTarget(rule=rule, file="train.py", line=line, end_line=end_line)
    fixed = codemod.transform(source, target)
    assert fixed is not None, rule
    return Finding(
        id=f"TD-{rule}",
        rule=rule,
        checkpoint=6,
        phase=4,
        severity=Severity.LOW,
        title=rule,
        file="train.py",
        line=line,
        end_line=end_line,
        evidence=[Evidence(source="test", message="m")],
        fix=Fix(diff=unified_diff("train.py", source, fixed), verified=True),
    )


def test_map_line_follows_insertions_and_refuses_edited_lines() -> None:
    before = "a\nb\nc\n"
    after = "a\nnew\nb\nC\n"
    assert map_line(before, after, 1) == 1
    assert map_line(before, after, 2) == 3
    assert map_line(before, after, 3) is None


def test_adjacent_codemod_fixes_merge_although_their_diff_contexts_overlap(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    amp = codemod_finding("no-amp", 9)
    sync = codemod_finding("host-sync-in-step", 15)
    texts = merge_fixes(tmp_path, [amp, sync])
    merged = texts["train.py"]
    assert "with torch.autocast(" in merged
    assert "losses.append(loss.detach())" in merged
    assert "losses = [float(v) for v in losses]" in merged
    compile(merged, "train.py", "exec")


def test_a_conflicting_fix_is_dropped_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    other_edit = SCRIPT.replace("losses.append(loss.item())", "losses.append(float(loss))")
    first = codemod_finding("host-sync-in-step", 15)
    assert first.fix is not None
    first = first.model_copy(update={"fix": first.fix.model_copy(update={"origin": "llm"})})
    second = first.model_copy(
        update={
            "id": "TD-other",
            "fix": Fix(diff=unified_diff("train.py", SCRIPT, other_edit), origin="llm"),
        }
    )
    verifier = Verifier(tmp_path, None, None)
    spec = FixSpec.of(codemod_for("host-sync-in-step"))  # type: ignore[arg-type]
    result, notes = combine(verifier, [(first, spec), (second, spec)])
    assert result.kept == ["TD-host-sync-in-step"]
    assert "conflicts" in result.dropped["TD-other"]
    assert not notes["TD-other"].ok and notes["TD-host-sync-in-step"].ok


class _ClaimRecorder(Verifier):
    """Records the claim a combination is verified under; every check passes."""

    claims: list[Claim]

    def verify(self, patch: Patch, claim: Claim, spec: FixSpec) -> list[Verification]:
        self.claims.append(claim)
        return [Verification(step="smoke-run", ok=True)]


def test_a_combination_is_held_to_its_most_severe_fix(tmp_path: Path) -> None:
    # a LOW fix joining must not turn a LOW finding that a MEDIUM fix's edit brings (e.g.
    # `@torch.no_grad()` -> no-grad-not-inference-mode) into a regression of the whole set
    (tmp_path / "train.py").write_text(SCRIPT)
    medium = codemod_finding("no-amp", 9).model_copy(update={"severity": Severity.MEDIUM})
    low = codemod_finding("host-sync-in-step", 15)
    verifier = _ClaimRecorder(tmp_path, None, None)
    verifier.claims = []
    spec = FixSpec.of(codemod_for("host-sync-in-step"))  # type: ignore[arg-type]
    combination, _ = combine(verifier, [(medium, spec), (low, spec)])
    assert sorted(combination.kept) == sorted([medium.id, low.id])
    assert [c.severity for c in verifier.claims] == [Severity.MEDIUM]


LOADER_SCRIPT = """import torch
from torch.utils.data import DataLoader, TensorDataset

data = TensorDataset(torch.randn(64, 4), torch.randn(64, 2))
loader = DataLoader(
    data,
    batch_size=8,
    shuffle=True,
)
if __name__ == "__main__":  # workers need the guard (no-main-guard-workers)
    for x, y in loader:
        print(x.sum(), y.sum())
"""


def loader_finding(rule: str) -> Finding:
    return codemod_finding(rule, 5, 9, LOADER_SCRIPT)


def test_two_fixes_of_one_call_merge_the_second_found_in_the_rewritten_call(
    tmp_path: Path,
) -> None:
    # num_workers then pin_memory on the same DataLoader: the second codemod is re-run on the
    # call as the first rewrote it (it used to be dropped as a conflict)
    (tmp_path / "train.py").write_text(LOADER_SCRIPT)
    merged = merge_fixes(
        tmp_path, [loader_finding("dataloader-sync"), loader_finding("pin-memory-off")]
    )["train.py"]
    assert "num_workers=min(4, os.cpu_count() or 1)" in merged
    assert "pin_memory=torch.cuda.is_available()" in merged
    assert merged.count("DataLoader(") == 1
    compile(merged, "train.py", "exec")


def test_retarget_follows_rewritten_lines_and_refuses_removed_ones() -> None:
    before = "a\nb\nc\nd\n"
    after = "a\nB1\nB2\nd\n"  # b, c rewritten as two other lines
    target = FixTarget(rule="r", file="f.py", line=2, end_line=3)
    moved = retarget(before, after, target)
    assert moved is not None and (moved.line, moved.end_line) == (2, 3)
    assert retarget(before, "a\nd\n", target) is None
    shifted = retarget(
        before, "new\n" + before, FixTarget(rule="r", file="f.py", line=4, end_line=4)
    )
    assert shifted is not None and shifted.line == 5


def test_fixes_that_compile_come_last_in_their_phase() -> None:
    compile_fix = codemod_finding("no-amp", 9).model_copy(
        update={"id": "TD-0", "rule": "no-torch-compile"}
    )
    amp = codemod_finding("no-amp", 9).model_copy(update={"id": "TD-9"})
    earlier_phase = amp.model_copy(update={"id": "TD-z", "phase": 3})
    ordered = sorted([compile_fix, amp, earlier_phase], key=fix_order)
    assert [f.id for f in ordered] == ["TD-z", "TD-9", "TD-0"]


def test_a_bottleneck_the_baseline_measured_is_relieved_first_in_its_phase() -> None:
    # the ResNet benchmark on the H200: its DataLoader (a LOW static finding) was verified after
    # five MEDIUM ones and cut by the fix stage's deadline, though the step waited on data
    medium = codemod_finding("no-amp", 9).model_copy(
        update={"id": "TD-a", "severity": Severity.MEDIUM}
    )
    loader = loader_finding("dataloader-sync").model_copy(update={"phase": medium.phase})
    assert sorted([loader, medium], key=fix_order)[0] is medium
    waiting = RunSignals(data_wait_share=0.78)
    assert sorted([medium, loader], key=lambda f: fix_order(f, waiting))[0] is loader
    barely = RunSignals(data_wait_share=0.05)
    assert sorted([loader, medium], key=lambda f: fix_order(f, barely))[0] is medium


class _SpecRecorder(Verifier):
    """Records the spec a combination is verified under; every check passes."""

    specs: list[FixSpec]

    def verify(self, patch: Patch, claim: Claim, spec: FixSpec) -> list[Verification]:
        self.specs.append(spec)
        return [Verification(step="smoke-run", ok=True)]


def test_a_combination_with_a_seeding_fix_repeats_without_the_harness_seed(
    tmp_path: Path,
) -> None:
    """no-torch-seed is judged by two unseeded runs agreeing; a combination holding it must
    make them too, or its symptom finds no repeat and the seeding fix is always dropped."""
    (tmp_path / "train.py").write_text(SCRIPT)
    seed = codemod_finding("no-torch-seed", 1)
    amp = codemod_finding("no-amp", 9)
    verifier = _SpecRecorder(tmp_path, None, None)
    verifier.specs = []
    specs = {f.rule: FixSpec.of(codemod_for(f.rule)) for f in (seed, amp)}  # type: ignore[arg-type]
    combination, _ = combine(verifier, [(seed, specs[seed.rule]), (amp, specs[amp.rule])])
    assert sorted(combination.kept) == sorted([seed.id, amp.id])
    (joint,) = verifier.specs
    assert joint.unseeded_repeat and joint.kind.value == "correctness"
    verifier.specs = []
    combine(
        verifier,
        [(amp, specs[amp.rule]), (codemod_finding("host-sync-in-step", 15), specs[amp.rule])],
    )
    assert not verifier.specs[0].unseeded_repeat


# A tutorial-style script: a module ending in a sigmoid trained with BCELoss, the loss printed
# with .item() every step. An earlier phase's seed fix inserts seven lines at the top, and a
# later phase's analysis of that working copy reports the BCE call.
SIGMOID_SCRIPT = """from torch import nn, optim
import numpy as np

x = np.zeros((4, 3), dtype=np.float32)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.fc(x))


net = Net()
criterion = nn.BCELoss()
optimizer = optim.SGD(net.parameters(), lr=0.1)
for step in range(5):
    pred = net(x)
    loss = criterion(pred, x[:, :1])
    print(loss.item())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""
SEEDED = SIGMOID_SCRIPT.replace(
    "import numpy as np\n",
    "import numpy as np\nimport random\nimport torch\n\ntorch.manual_seed(0)\n"
    "random.seed(0)\nnp.random.seed(0)\n",
)


def _raw(rule: str, text: str) -> RawFinding:
    from torchdoctor.agent.checks.engine import analyse_files

    (result,) = analyse_files([("train.py", text)]).files
    return next(raw for raw in result.findings if raw.rule == rule)


def test_a_finding_on_the_working_copy_reads_as_on_the_users_file() -> None:
    from torchdoctor.agent.fixes.combine import finding_on_original

    on_copy = _raw("bce-on-sigmoid", SEEDED)
    on_original = _raw("bce-on-sigmoid", SIGMOID_SCRIPT)
    assert on_copy.line == on_original.line + 6  # the working copy's numbering differs

    mapped = finding_on_original(on_copy, SEEDED, SIGMOID_SCRIPT)

    assert mapped is not None
    assert (mapped.line, mapped.end_line) == (on_original.line, on_original.end_line)
    # the excerpt's numbers and the line the message names are the user's
    assert mapped.excerpt == on_original.excerpt
    assert mapped.message == on_original.message
    assert f"> {on_original.line} |" in mapped.excerpt


def test_excerpt_context_a_fix_inserted_is_not_shown_as_the_users_code() -> None:
    from torchdoctor.agent.fixes.combine import finding_on_original

    # the fix's lines sit right above the reported line, inside the excerpt's context
    copy = SIGMOID_SCRIPT.replace(
        "    print(loss.item())\n", "    torch.manual_seed(0)\n    print(loss.item())\n"
    )
    original_line = SIGMOID_SCRIPT.splitlines().index("    print(loss.item())") + 1
    on_copy = _raw("host-sync-in-step", copy)

    mapped = finding_on_original(on_copy, copy, SIGMOID_SCRIPT)

    assert mapped is not None and mapped.line == original_line
    assert "manual_seed" not in mapped.excerpt
    assert f"> {original_line} |     print(loss.item())" in mapped.excerpt


def test_a_finding_on_a_line_a_fix_wrote_has_no_place_on_the_users_file() -> None:
    from torchdoctor.agent.fixes.combine import finding_on_original

    copy = SIGMOID_SCRIPT.replace("    print(loss.item())\n", "    print(loss.item(), 1)\n")
    on_copy = _raw("host-sync-in-step", copy)

    assert finding_on_original(on_copy, copy, SIGMOID_SCRIPT) is None


def test_retarget_maps_the_other_lines_a_finding_names() -> None:
    """A seq2seq tutorial (held out): the seed fix added three lines above the vocabulary;
    the vocabulary fix, replayed on that text, looked for its set at the old `set_line` and
    was dropped as a conflict with the fixes before it."""
    original = "a = 1\nwords = ['x']\nvocab = list(set(words))\nindex = {w: i for i, w in ...}\n"
    current = "import random\nrandom.seed(0)\n\n" + original
    target = FixTarget(
        rule="vocabulary-in-set-order",
        file="t.py",
        line=4,
        end_line=4,
        data={"set": "set(words)", "set_line": 3, "softmax_lines": [1, 3], "flag": True},
    )

    moved = retarget(original, current, target)

    assert moved is not None and (moved.line, moved.end_line) == (7, 7)
    assert moved.data == {
        "set": "set(words)",
        "set_line": 6,
        "softmax_lines": [4, 6],
        "flag": True,
    }
    removed = original.replace("vocab = list(set(words))\n", "")
    assert retarget(original, removed, target.model_copy(update={"line": 2, "end_line": 2})) is None
