"""Every codemod against its fixture: the exact fix, idempotence, comments kept, refusals."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import libcst as cst
import pytest

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.fixes.codemods import all_codemods, codemod_for
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

FIXTURES = Path(__file__).parents[1] / "fixtures" / "fixes"


def _findings_of(rule: str, source: str) -> list[RawFinding]:
    """The rule's findings on `source` audited alone as `m.py`."""
    return [
        f for f in analyse_files([("m.py", source)], workers=1).all_findings() if f.rule == rule
    ]


def _target_of(finding: RawFinding) -> FixTarget:
    """What the codemod is handed for `finding` in `m.py` (its place and its rule's data)."""
    return FixTarget(
        rule=finding.rule,
        file="m.py",
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )


def _fixed_until_clean(rule: str, source: str) -> str:
    """`source` after fixing the rule's first finding again and again until none is left;
    every finding on the way must get a fix."""
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = source
    while found := _findings_of(rule, fixed):
        again = codemod.transform(fixed, _target_of(found[0]))
        assert again is not None, f"no fix for line {found[0].line}"
        fixed = again
    return fixed


RULES = sorted(p.name for p in FIXTURES.iterdir() if (p / "before.py").exists())
_COMMENT = re.compile(r"#.*$")


def _target(rule: str, source_dir: Path) -> FixTarget:
    spec = json.loads((source_dir / "target.json").read_text())
    return FixTarget(
        rule=rule,
        file="before.py",
        line=spec["line"],
        end_line=spec["end_line"],
        data=spec.get("data", {}),
    )


def _comments(text: str) -> list[str]:
    return [m.group(0) for line in text.splitlines() if (m := _COMMENT.search(line))]


def test_every_codemod_has_a_fixture() -> None:
    assert sorted(all_codemods()) == RULES


@pytest.mark.parametrize("rule", RULES)
def test_codemod_turns_before_into_after(rule: str) -> None:
    folder = FIXTURES / rule
    fixed = codemod_for(rule).transform((folder / "before.py").read_text(), _target(rule, folder))  # type: ignore[union-attr]
    assert fixed == (folder / "after.py").read_text()
    ast.parse(fixed)


@pytest.mark.parametrize("rule", RULES)
def test_codemod_is_idempotent(rule: str) -> None:
    folder = FIXTURES / rule
    after = (folder / "after.py").read_text()
    codemod = codemod_for(rule)
    assert codemod is not None
    target = _target(rule, folder)
    shifted = after.count("\n") - (folder / "before.py").read_text().count("\n")
    for line in {target.line, target.line + shifted}:
        again = target.model_copy(update={"line": line, "end_line": target.end_line + shifted})
        assert codemod.transform(after, again) in (None, after)


@pytest.mark.parametrize("rule", RULES)
def test_codemod_keeps_every_comment(rule: str) -> None:
    folder = FIXTURES / rule
    kept = _comments((folder / "after.py").read_text())
    for comment in _comments((folder / "before.py").read_text()):
        assert comment in kept


@pytest.mark.parametrize("rule", RULES)
def test_codemod_declares_how_it_is_checked(rule: str) -> None:
    codemod = codemod_for(rule)
    assert codemod is not None and codemod.summary
    if codemod.kind in (FixKind.PRECISION, FixKind.REFACTOR):
        assert codemod.rtol is not None


def test_unparsable_source_is_refused() -> None:
    codemod = codemod_for("zero-grad-missing")
    assert codemod is not None
    target = FixTarget(rule="zero-grad-missing", file="x.py", line=1, end_line=1)
    assert codemod.transform("for x in (:\n", target) is None


def test_torch_load_needs_fix_safe() -> None:
    folder = FIXTURES / "torch-load-unsafe"
    target = _target("torch-load-unsafe", folder).model_copy(update={"data": {}})
    codemod = codemod_for("torch-load-unsafe")
    assert codemod is not None
    assert codemod.transform((folder / "before.py").read_text(), target) is None


def test_double_softmax_keeps_probabilities_used_elsewhere() -> None:
    source = (
        "import torch.nn.functional as F\n"
        "def step(model, x, y):\n"
        "    probs = F.softmax(model(x), dim=1)\n"
        "    loss = F.cross_entropy(probs, y)\n"
        "    return loss, probs.argmax(1)\n"
    )
    target = FixTarget(rule="double-softmax", file="m.py", line=4, end_line=4)
    codemod = codemod_for("double-softmax")
    assert codemod is not None
    assert codemod.transform(source, target) is None


def test_double_softmax_rewrites_a_probabilities_variable_used_once() -> None:
    source = (
        "import torch.nn.functional as F\n"
        "def step(model, x, y):\n"
        "    probs = F.softmax(model(x), dim=1)\n"
        "    return F.cross_entropy(probs, y)\n"
    )
    target = FixTarget(rule="double-softmax", file="m.py", line=4, end_line=4)
    codemod = codemod_for("double-softmax")
    assert codemod is not None
    assert codemod.transform(source, target) == source.replace(
        "F.softmax(model(x), dim=1)", "model(x)"
    )


def test_bce_refused_when_the_criterion_also_takes_probabilities() -> None:
    source = (
        "import torch\nfrom torch import nn\n"
        "criterion = nn.BCELoss()\n"
        "a = criterion(torch.sigmoid(z), y)\n"
        "b = criterion(p, y)\n"
    )
    target = FixTarget(rule="bce-on-sigmoid", file="m.py", line=4, end_line=4)
    codemod = codemod_for("bce-on-sigmoid")
    assert codemod is not None
    assert codemod.transform(source, target) is None


def test_eval_mode_restored_in_finally_when_the_block_returns() -> None:
    source = (
        "import torch\n"
        "def evaluate(model, x):\n"
        "    with torch.no_grad():\n"
        "        return model(x)\n"
    )
    target = FixTarget(rule="eval-without-eval-mode", file="m.py", line=3, end_line=4)
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None
    assert "try:" in fixed and "finally:\n        model.train(was_training)" in fixed
    ast.parse(fixed)


def test_unfused_optimizer_left_alone_in_a_cpu_only_script() -> None:
    source = "import torch\nopt = torch.optim.Adam(params, lr=1e-3)\n"
    target = FixTarget(rule="unfused-optimizer", file="m.py", line=2, end_line=2)
    codemod = codemod_for("unfused-optimizer")
    assert codemod is not None
    assert codemod.transform(source, target) is None


def test_host_sync_refused_when_the_accumulator_is_read_in_the_loop() -> None:
    source = "total = 0.0\nfor step in range(3):\n    total += loss.item()\n    print(total)\n"
    target = FixTarget(rule="host-sync-in-step", file="m.py", line=3, end_line=3)
    codemod = codemod_for("host-sync-in-step")
    assert codemod is not None
    assert codemod.transform(source, target) is None


HAND_STEP = """import torch


def train(model, batches, lr):
{head}    total_loss = 0.0
    for batch, (x, y) in enumerate(batches):
        loss = model(x, y)
        loss.backward()
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        total_loss += loss.item()
        if batch % 200 == 0 and batch > 0:
            print(total_loss / 200)
            total_loss = 0
{after}"""


@pytest.mark.parametrize(
    ("head", "after", "converted"),
    [("", "", False), ("", "    return total_loss\n", True), ("    global total_loss\n", "", True)],
)
def test_host_sync_converts_back_after_the_loop_only_what_is_read_there(
    head: str, after: str, converted: bool
) -> None:
    """pytorch/examples' word language model: `total_loss` is a local that `train()` never
    reads after its loop, so `total_loss = float(total_loss)` there was a dead store."""
    source = HAND_STEP.format(head=head, after=after)
    line = source.splitlines().index("        total_loss += loss.item()") + 1
    target = FixTarget(rule="host-sync-in-step", file="m.py", line=line, end_line=line)
    codemod = codemod_for("host-sync-in-step")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None and "total_loss += loss.detach()" in fixed
    assert "print(float(total_loss) / 200)" in fixed
    assert ("    total_loss = float(total_loss)\n" in fixed) is converted


def test_manual_attention_refused_when_weights_are_returned() -> None:
    source = (
        (FIXTURES / "manual-attention" / "before.py")
        .read_text()
        .replace("return self.c_proj(y)", "return self.c_proj(y), att")
    )
    target = _target("manual-attention", FIXTURES / "manual-attention")
    codemod = codemod_for("manual-attention")
    assert codemod is not None
    assert codemod.transform(source, target) is None


def test_seed_adds_numpy_seeding_when_the_program_draws_from_numpy() -> None:
    source = "import numpy as np\nimport torch\n\nx = torch.randn(2)\n"
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None
    data = {"generators": ["numpy"]}
    target = FixTarget(rule="no-torch-seed", file="m.py", line=1, end_line=1, data=data)
    fixed = codemod.transform(source, target)
    assert fixed is not None and "np.random.seed(0)" in fixed and "torch.manual_seed(0)" in fixed
    unused = FixTarget(rule="no-torch-seed", file="m.py", line=1, end_line=1)
    fixed = codemod.transform(source, unused)
    assert fixed is not None and "np.random" not in fixed and "torch.manual_seed(0)" in fixed


@pytest.mark.parametrize("rule", RULES)
def test_rule_fires_on_before_and_not_on_after(rule: str) -> None:
    if rule not in rules_by_id():
        pytest.skip(f"{rule} has no static rule")
    folder = FIXTURES / rule
    release = json.loads((folder / "target.json").read_text()).get("target_torch")
    config = EngineConfig(
        select=frozenset({rule}), target_torch=tuple(release) if release else None
    )

    def flagged(name: str) -> list[int]:
        text = (folder / name).read_text()
        found = analyse_files([("m.py", text)], config, workers=1).all_findings()
        return [f.line for f in found if f.rule == rule]

    assert _target(rule, folder).line in flagged("before.py")
    assert flagged("after.py") == []


def test_validation_with_grad_decorates_an_evaluation_function() -> None:
    source = (
        "import torch\n\n\ndef evaluate(model, loader):\n    return [model(x) for x in loader]\n"
    )
    target = FixTarget(rule="validation-with-grad", file="m.py", line=5, end_line=5)
    codemod = codemod_for("validation-with-grad")
    assert codemod is not None
    assert codemod.transform(source, target) == source.replace(
        "def evaluate", "@torch.no_grad()\ndef evaluate"
    )


def test_seeding_fixes_are_judged_by_two_unseeded_runs() -> None:
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None and codemod.reproducibility
    base = SmokeRun(ok=True, losses=[1.0, 0.5])
    same = SmokeRun(ok=True, losses=[1.0, 0.5], signals={"repeat_losses": [1.0, 0.5]})
    differ = SmokeRun(ok=True, losses=[1.0, 0.5], signals={"repeat_losses": [1.0, 0.6]})
    assert codemod.symptom_gone(base, same)[0]
    assert not codemod.symptom_gone(base, differ)[0]
    assert not codemod.symptom_gone(base, base)[0]


def test_zero_grad_symptom_is_the_gradient_norm_no_longer_accumulating() -> None:
    codemod = codemod_for("zero-grad-missing")
    assert codemod is not None
    grown = SmokeRun(ok=True, losses=[1.0], signals={"grad_norms": [1.0, 2.0, 3.0]})
    cleared = SmokeRun(ok=True, losses=[1.0], signals={"grad_norms": [1.0, 1.1, 0.9]})
    assert codemod.symptom_gone(grown, cleared)[0]
    assert not codemod.symptom_gone(cleared, grown)[0]


def test_amp_wraps_the_step_function_the_loop_calls() -> None:
    source = (
        "import torch\n\n\n"
        "def train_step(model, opt, x, y):\n"
        "    opt.zero_grad()\n"
        "    loss = torch.nn.functional.mse_loss(model(x), y)\n"
        "    loss.backward()\n"
        "    opt.step()\n\n\n"
        "for x, y in batches:\n"
        "    train_step(model, opt, x.cuda(), y.cuda())\n"
    )
    target = FixTarget(rule="no-amp", file="m.py", line=11, end_line=11)
    codemod = codemod_for("no-amp")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None
    assert "    with torch.autocast(" in fixed
    assert "        loss = torch.nn.functional.mse_loss(model(x), y)\n    loss.backward()" in fixed


def test_inference_eval_goes_after_the_model_is_built_in_a_main_block() -> None:
    source = (
        "import torch\nimport torchvision\n\n"
        'if __name__ == "__main__":\n'
        "    net = torchvision.models.resnet18(weights=None)\n"
        "    print(net(torch.randn(1, 3, 8, 8)))\n"
    )
    target = FixTarget(rule="inference-no-eval", file="m.py", line=6, end_line=6)
    codemod = codemod_for("inference-no-eval")
    assert codemod is not None
    assert codemod.transform(source, target) == source.replace(
        "    print(", "    net.eval()\n    print("
    )


def test_eval_mode_around_an_inference_mode_function_body() -> None:
    source = (
        "import torch\n\n\n"
        "@torch.inference_mode()\n"
        "def score(net, batch):\n"
        "    return net(batch).softmax(-1)\n"
    )
    target = FixTarget(rule="eval-without-eval-mode", file="m.py", line=6, end_line=6)
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None and fixed.endswith(
        "    net.eval()\n    try:\n        return net(batch).softmax(-1)\n"
        "    finally:\n        net.train(was_training)\n"
    )


def test_eval_mode_around_an_evaluation_loop_without_no_grad() -> None:
    source = (
        "from torch import nn\n\n\n"
        "class Trainer:\n"
        "    def __init__(self):\n"
        "        self.model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.1))\n\n"
        "    def evaluate(self, loader):\n"
        "        for x in loader:\n"
        "            print(self.model(x))\n"
    )
    target = FixTarget(rule="eval-without-eval-mode", file="m.py", line=10, end_line=10)
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None
    assert "        self.model.eval()\n        for x in loader:" in fixed
    assert fixed.endswith("        self.model.train(was_training)\n")


def test_eval_mode_around_a_held_out_loop_inside_the_epoch_loop() -> None:
    source = (
        "def fit(model, opt, train_loader, test_loader):\n"
        "    for epoch in range(3):\n"
        "        model.train()\n"
        "        for x in train_loader:\n"
        "            model(x).sum().backward()\n"
        "            opt.step()\n"
        "        for x in test_loader:\n"
        "            print(model(x))\n"
    )
    target = FixTarget(rule="eval-without-eval-mode", file="m.py", line=8, end_line=8)
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    fixed = codemod.transform(source, target)
    assert fixed is not None
    assert "            opt.step()\n        was_training = model.training\n" in fixed
    assert "        model.eval()\n        for x in test_loader:" in fixed
    assert fixed.endswith("            print(model(x))\n        model.train(was_training)\n")


def test_eval_mode_is_refused_around_a_block_that_deletes_the_model() -> None:
    """A checkpoint converter's check (lit-llama's convert_hf_checkpoint): the converted
    model runs once, is deleted, and the reference model loads in its place; a
    `model.train(was_training)` after the block would raise NameError."""
    source = (
        "import gc\n\n"
        "def convert(model, reference, tokens, verify):\n"
        "    if verify:\n"
        "        out = model(tokens)\n"
        "        del model\n"
        "        gc.collect()\n"
        "        assert (out - reference(tokens)).abs().max() < 1e-5\n"
    )
    target = FixTarget(rule="eval-without-eval-mode", file="m.py", line=5, end_line=5)
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    assert codemod.transform(source, target) is None
    reason = codemod.explain(source, target)
    assert reason is not None and reason.startswith("the block deletes `model`")
    kept = source.replace("        del model\n", "")  # near miss: the model outlives the block
    fixed = codemod.transform(kept, target)
    assert fixed is not None and fixed.endswith("    model.train(was_training)\n")


# What a person's edit would not leave behind: unused imports, unused assignments, imports out
# of their block or out of isort order (issue 13, item 9).
RUFF_CLEAN = "F401,F811,F841,E402,I001,E9,F63,F7"


@pytest.fixture(scope="module")
def ruff_on_fixture_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """`ruff check` once over every codemod's output and input: file -> codes reported."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    folder = tmp_path_factory.mktemp("codemod-outputs")
    for rule in RULES:
        source = FIXTURES / rule
        fixed = codemod_for(rule).transform(
            (source / "before.py").read_text(), _target(rule, source)
        )  # type: ignore[union-attr]
        assert fixed is not None
        (folder / f"{rule.replace('-', '_')}_after.py").write_text(fixed)
        (folder / f"{rule.replace('-', '_')}_before.py").write_text(
            (source / "before.py").read_text()
        )
    done = subprocess.run(
        [ruff, "check", "--isolated", "--select", RUFF_CLEAN, "--output-format", "json", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[str, set[str]] = {}
    for item in json.loads(done.stdout):
        found.setdefault(Path(item["filename"]).name, set()).add(item["code"])
    return found


@pytest.mark.parametrize("rule", RULES)
def test_codemod_output_passes_ruff_like_a_hand_edit(
    rule: str, ruff_on_fixture_outputs: dict[str, set[str]]
) -> None:
    stem = rule.replace("-", "_")
    introduced = ruff_on_fixture_outputs.get(f"{stem}_after.py", set()) - (
        ruff_on_fixture_outputs.get(f"{stem}_before.py", set())
    )
    assert introduced == set(), f"{rule}: the fix leaves {sorted(introduced)}"


def test_an_added_standard_library_import_opens_the_import_block() -> None:
    source = '"""Doc."""\n\nimport torch\nfrom torch import nn\n\nmodel = nn.Linear(2, 2)\n'
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None
    data = {"generators": ["random"]}
    target = FixTarget(rule="no-torch-seed", file="m.py", line=3, end_line=3, data=data)
    fixed = codemod.transform(source, target)
    assert fixed is not None and fixed.startswith('"""Doc."""\n\nimport random\n\nimport torch\n')


def test_an_import_the_fix_orphaned_is_removed_and_the_users_own_is_kept() -> None:
    from torchdoctor.agent.fixes.codemods.base import without_orphaned_imports

    before = "import os\nimport torch.nn.functional as F\nx = F.relu(y)\n"
    after = without_orphaned_imports(
        before, cst.parse_module("import os\nimport torch.nn.functional as F\nx = y\n")
    )
    assert after.code == "import os\nx = y\n"


def test_worker_seed_fix_declines_a_dataset_that_keeps_its_own_generator() -> None:
    rules = FIXTURES.parent / "rules" / "dataloader-worker-seed"
    source = (rules / "positive_generator_object_copied_to_workers.py").read_text()
    codemod = codemod_for("dataloader-worker-seed")
    assert codemod is not None
    state = {"state": "generator-object"}
    target = FixTarget(rule="dataloader-worker-seed", file="m.py", line=20, end_line=20, data=state)
    assert codemod.transform(source, target) is None
    assert codemod.transform(source, target.model_copy(update={"data": {}})) is not None


def test_one_torch_load_finding_for_both_branches_fixes_both_loads() -> None:
    """The same checkpoint loaded in the two branches of an `if` is one finding naming the
    other load; its fix adds weights_only=True to both, so the rule is cleared."""
    source = (
        "import torch\n\n\n"
        "def resume(model, args):\n"
        "    torch.save(model.state_dict(), args.resume)\n"
        "    if args.gpu is None:\n"
        "        checkpoint = torch.load(args.resume)\n"
        "    else:\n"
        '        checkpoint = torch.load(args.resume, map_location=f"cuda:{args.gpu}")\n'
        "    model.load_state_dict(checkpoint)\n"
    )

    (finding,) = _findings_of("torch-load-unsafe", source)
    assert [place["line"] for place in finding.data["related"]] == [9]
    target = _target_of(finding)
    fixed = codemod_for("torch-load-unsafe").transform(source, target)  # type: ignore[union-attr]
    assert fixed is not None and fixed.count("weights_only=True") == 2
    assert _findings_of("torch-load-unsafe", fixed) == []


def test_a_checkpoint_used_as_whole_modules_is_reported_as_one_and_not_given_weights_only() -> None:
    """No `torch.save` in sight: how the loaded object is used says it holds pickled modules
    (`decoder.eval()` on an entry, through `.to(device)`), so `weights_only=True` would fail
    to load it; the finding says so and the codemod leaves the load alone."""
    source = (
        "import torch\n\n\n"
        "def evaluate(path, device):\n"
        "    checkpoint = torch.load(path)\n"
        '    decoder = checkpoint["decoder"]\n'
        "    decoder = decoder.to(device)\n"
        "    decoder.eval()\n"
        "    return decoder\n"
    )
    (finding,) = _findings_of("torch-load-unsafe", source)
    assert finding.data["provenance"] == "module" and finding.data["fix_safe"] is False
    assert "`decoder.eval()` on line 8" in finding.message
    target = _target_of(finding)
    assert codemod_for("torch-load-unsafe").transform(source, target) is None  # type: ignore[union-attr]

    weights = (
        "import torch\n\n\n"
        "def fit(model, loader):\n"
        "    model.train()\n\n\n"
        "def resume(path, build_model, loader):\n"
        "    checkpoint = torch.load(path)\n"
        '    weights = checkpoint["model"]\n'
        "    model = build_model()\n"
        "    model.load_state_dict(weights)\n"
        "    fit(model, loader)\n"
    )
    (entries,) = _findings_of("torch-load-unsafe", weights)
    assert entries.data["provenance"] == "unknown"  # entries handed to modules, not modules


def test_a_state_dict_named_like_a_network_is_saved_as_weights() -> None:
    """`crt_net = crt_model.state_dict()` then `torch.save(crt_net, path)`: the name says
    'net', its binding says weights (ESRGAN's model conversion script)."""
    source = (
        "import torch\n\n"
        "crt_net = build().state_dict()\n"
        "torch.save(crt_net, 'converted.pth')\n"
        "weights = torch.load('converted.pth')\n"
    )
    (finding,) = _findings_of("torch-load-unsafe", source)
    assert finding.data["provenance"] == "weights" and finding.data["fix_safe"] is True


def test_losses_collected_and_never_read_are_a_dropped_term_not_a_memory_leak() -> None:
    """An actor-critic update that sums `policy_loss` twice: `value_loss` is filled and never
    read. The finding says the term trains nothing, and detaching it (the memory fix) is
    declined, since it would only hide the dropped term."""
    path = FIXTURES.parent / "rules" / "loss-graph-accumulation"
    source = (path / "positive_value_losses_collected_and_never_used.py").read_text()
    (finding,) = _findings_of("loss-graph-accumulation", source)
    assert finding.data["unread"] is True and "nothing reads it" in finding.message
    target = _target_of(finding)
    codemod = codemod_for("loss-graph-accumulation")
    assert codemod is not None and codemod.transform(source, target) is None
    assert "dropped" in (codemod.explain(source, target) or "")


def test_a_stored_tuple_is_declined_not_given_a_detach_it_lacks() -> None:
    """`outs.append((mu, log_var))` in a prediction loop (a VAE encoder's outputs): a tuple has
    no `.detach()`, so the fix says what to do by hand instead of writing a crash."""
    source = (
        "import torch\n"
        "def encode_all(encoder, loader):\n"
        "    stats = []\n"
        "    for x, _ in loader:\n"
        "        mu, log_var = encoder(x)\n"
        "        stats.append((mu, log_var))\n"
        "    return stats\n"
    )
    (finding,) = _findings_of("outputs-stored-with-grad", source)
    target = _target_of(finding)
    codemod = codemod_for("outputs-stored-with-grad")
    assert codemod is not None and codemod.transform(source, target) is None
    assert "container" in (codemod.explain(source, target) or "")
    single = source.replace("stats.append((mu, log_var))", "stats.append(mu)")
    assert "stats.append(mu.detach())" in (codemod.transform(single, target) or "")


def test_a_model_saved_whole_after_a_state_dict_round_trip_keeps_its_load_unfixed() -> None:
    """DeepCTR-Torch's test helper saves `model.state_dict()`, loads it, then saves the model
    itself and loads that: a name bound by `torch.load(...)` holds whatever was pickled, not a
    tensor, so the second file is a whole module and gets no weights_only=True (which would
    refuse to load it); the first still does."""
    source = (
        "import torch\n\n\n"
        "def round_trip(model, name):\n"
        "    torch.save(model.state_dict(), name + '_weights.h5')\n"
        "    model.load_state_dict(torch.load(name + '_weights.h5'))\n"
        "    torch.save(model, name + '.h5')\n"
        "    model = torch.load(name + '.h5')\n"
        "    return model\n"
    )
    weights, whole = sorted(_findings_of("torch-load-unsafe", source), key=lambda f: f.line)
    assert "whole pickled module" in whole.message and whole.line == 8
    codemod = codemod_for("torch-load-unsafe")
    assert codemod is not None
    for finding, fixable in ((weights, True), (whole, False)):
        target = _target_of(finding)
        assert (codemod.transform(source, target) is not None) is fixable


def test_an_element_unpacked_after_a_models_first_output_is_not_given_a_detach() -> None:
    """A batch-norm tutorial's net returns `out, layer_inputs, pre_acts` (two lists): storing
    `layer_inputs` keeps graphs, but `.detach()` on a list crashes; the first output (a tensor)
    is still fixed."""
    source = (
        "import torch\n"
        "def snapshot(nets, x):\n"
        "    inputs, preds = [], []\n"
        "    for net in nets:\n"
        "        pred, layer_inputs, pre_acts = net(x)\n"
        "        inputs.append(layer_inputs)\n"
        "        preds.append(pred)\n"
        "    return inputs, preds\n"
    )
    stored = {f.line: f for f in _findings_of("outputs-stored-with-grad", source)}
    codemod = codemod_for("outputs-stored-with-grad")
    assert codemod is not None and sorted(stored) == [6, 7]
    assert codemod.transform(source, _target_of(stored[6])) is None
    assert "element 1" in (codemod.explain(source, _target_of(stored[6])) or "")
    assert "preds.append(pred.detach())" in (codemod.transform(source, _target_of(stored[7])) or "")


SCHEDULED_STEP = """
import torch

def fit(model, loader, optimizer, scheduler, warmup):
    for step, (x, y) in enumerate(loader):
{before}
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def _scheduler_fix(body: str) -> tuple[str | None, str | None]:
    """The scheduler codemod's result on `SCHEDULED_STEP` with `body` before the forward pass,
    driven by the rule's own finding; (fixed source, refusal)."""
    source = SCHEDULED_STEP.format(before=body)
    (finding,) = _findings_of("scheduler-before-optimizer", source)
    codemod = codemod_for("scheduler-before-optimizer")
    assert codemod is not None
    target = _target_of(finding)
    return codemod.transform(source, target), codemod.explain(source, target)


def test_scheduler_step_moves_after_the_optimizer_step_with_its_guard() -> None:
    fixed, _ = _scheduler_fix("        if scheduler is not None:\n            scheduler.step()")
    assert fixed is not None
    assert fixed.index("optimizer.step()") < fixed.index("if scheduler is not None:")
    assert not _findings_of("scheduler-before-optimizer", fixed)


def test_scheduler_step_stays_when_warm_up_sets_the_rate_after_it() -> None:
    warm_up = (
        "        scheduler.step()\n"
        "        if step < warmup:\n"
        "            for group in optimizer.param_groups:\n"
        "                group['lr'] = 0.1 * step / warmup"
    )
    fixed, why = _scheduler_fix(warm_up)
    assert fixed is None
    assert why is not None and "sets a learning rate by hand" in why


CLEARED_BEFORE_STEP = """
import torch

def fit(model, loader, optimizer, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.zero_grad(set_to_none=True)
            optimizer.step()
"""


def test_a_clear_between_backward_and_step_moves_after_the_step() -> None:
    (finding,) = _findings_of("zero-grad-order", CLEARED_BEFORE_STEP)
    codemod = codemod_for("zero-grad-order")
    assert codemod is not None
    fixed = codemod.transform(CLEARED_BEFORE_STEP, _target_of(finding))
    assert fixed is not None
    assert fixed.index("optimizer.step()") < fixed.index("optimizer.zero_grad(set_to_none=True)")
    assert not _findings_of("zero-grad-order", fixed)


def test_a_clear_in_another_loop_than_the_step_is_not_moved() -> None:
    source = CLEARED_BEFORE_STEP.replace(
        "            optimizer.step()",
        "            for _ in range(1):\n                optimizer.step()",
    )
    codemod = codemod_for("zero-grad-order")
    assert codemod is not None
    target = FixTarget(
        rule="zero-grad-order", file="m.py", line=9, end_line=9, data={"step_line": 11}
    )
    assert codemod.transform(source, target) is None
    assert "different loops" in (codemod.explain(source, target) or "")


def _run_with_norms(norms: list[float]) -> SmokeRun:
    return SmokeRun(ok=True, losses=[1.0, 0.9], signals={"grad_norms": norms})


def test_zero_grad_order_symptom_is_the_gradient_the_step_sees() -> None:
    codemod = codemod_for("zero-grad-order")
    assert codemod is not None
    cleared, restored = _run_with_norms([]), _run_with_norms([0.8, 0.7])
    assert codemod.symptom_gone(cleared, restored)[0]
    assert not codemod.symptom_gone(cleared, _run_with_norms([]))[0]
    one_micro_batch, summed = _run_with_norms([0.2, 0.25]), _run_with_norms([0.8, 0.9])
    assert codemod.symptom_gone(one_micro_batch, summed)[0]
    assert not codemod.symptom_gone(summed, one_micro_batch)[0]


RULE_FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules"


@pytest.mark.parametrize(
    "case", ["positive_lstm_tuple_state", "positive_state_kept_between_step_calls"]
)
def test_detached_state_clears_the_rule_on_its_own_positive_fixtures(case: str) -> None:
    """A `(h, c)` pair carried by a loop, and `self.hidden` kept between step calls."""
    source = (RULE_FIXTURES / "rnn-hidden-not-detached" / f"{case}.py").read_text()
    fixed = _fixed_until_clean("rnn-hidden-not-detached", source)
    assert not _findings_of("rnn-hidden-not-detached", fixed)
    assert fixed.count("def detach_state(") == 1


def test_train_mode_is_not_restored_by_hand_when_evaluation_precedes_training() -> None:
    source = """
import torch

def fit(model, loader, val_loader, optimizer, epochs):
    for epoch in range(epochs):
        model.eval()
        with torch.no_grad():
            score = sum(model(x).sum().item() for x, _ in val_loader)
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
"""
    (finding,) = _findings_of("train-mode-not-restored", source)
    codemod = codemod_for("train-mode-not-restored")
    assert codemod is not None
    assert codemod.transform(source, _target_of(finding)) is None
    assert "before the training" in (codemod.explain(source, _target_of(finding)) or "")


def test_inline_evaluation_after_training_restores_the_mode_at_the_top_of_the_loop() -> None:
    source = (
        RULE_FIXTURES / "train-mode-not-restored" / "positive_validate_in_loop.py"
    ).read_text()
    fixed = _fixed_until_clean("train-mode-not-restored", source)
    assert (
        "        validate(model, loader)  # expect: train-mode-not-restored\n        model.train()"
        in fixed
    )
    assert (
        "    for epoch in range(epochs):\n        model.train()\n        for x, y in loader:"
        in fixed
    )


def test_super_init_is_left_to_the_author_on_another_base_class() -> None:
    source = """
import torch.nn as nn

class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.width = width

class Wide(Block):
    def __init__(self):
        self.fc = nn.Linear(8, 8)
"""
    (finding,) = _findings_of("missing-super-init", source)
    codemod = codemod_for("missing-super-init")
    assert codemod is not None
    assert codemod.transform(source, _target_of(finding)) is None
    assert "is built on Block" in (codemod.explain(source, _target_of(finding)) or "")


def test_nll_loss_fed_raw_logits_gets_their_log_softmax_over_the_class_dimension() -> None:
    source = (RULE_FIXTURES / "nll-loss-input" / "positive_raw_logits.py").read_text()
    (finding,) = _findings_of("nll-loss-input", source)
    codemod = codemod_for("nll-loss-input")
    assert codemod is not None
    fixed = codemod.transform(source, _target_of(finding))
    assert fixed is not None and "criterion(model(features).log_softmax(dim=1), labels)" in fixed
    assert not _findings_of("nll-loss-input", fixed)


def test_nll_loss_fed_probabilities_from_elsewhere_is_declined() -> None:
    source = """
import torch.nn.functional as F
from helpers import to_probabilities

def step(model, x, y):
    probs = F.softmax(model(x), dim=1)
    probs = to_probabilities(model(x))
    return F.nll_loss(probs, y)
"""
    codemod = codemod_for("nll-loss-input")
    assert codemod is not None
    target = FixTarget(
        rule="nll-loss-input",
        file="m.py",
        line=8,
        end_line=8,
        data={"received": "softmax", "input": "probs", "softmax_lines": [6, 7]},
    )
    assert codemod.transform(source, target) is None
    assert "CrossEntropyLoss" in (codemod.explain(source, target) or "")


def test_every_unguarded_divisor_of_the_rule_fixture_gets_an_epsilon() -> None:
    """`/ x.std()`, `/= x.norm(...)` and `/ torch.sqrt(x.var(0))`, each from its own finding."""
    source = (RULE_FIXTURES / "divide-by-std-no-eps" / "positive_no_eps.py").read_text()
    fixed = _fixed_until_clean("divide-by-std-no-eps", source)
    assert "/ (adv.std() + 1e-8)" in fixed
    assert "x /= x.norm(dim=-1, keepdim=True) + 1e-8" in fixed
    assert "/ (torch.sqrt(x.var(0)) + 1e-8)" in fixed


def test_a_divisor_written_with_other_quotes_than_the_rules_is_found() -> None:
    """The rule names the divisor as `ast.unparse` writes it (`p='fro'`); denoiser's spectral
    convergence loss writes `p="fro"` and was refused as 'no single division'."""
    source = (
        RULE_FIXTURES / "divide-by-std-no-eps" / "positive_spectral_convergence_loss.py"
    ).read_text()
    fixed = _fixed_until_clean("divide-by-std-no-eps", source)
    assert '/ (torch.norm(y_mag, p="fro") + 1e-8)' in fixed


def test_the_log_method_of_a_sigmoid_becomes_logsigmoid() -> None:
    """`torch.sigmoid(m).log()` (a mixture-of-logistics CDF at the top bin) had no fix and no
    reason; a log of probabilities kept in a variable is refused, saying why."""
    source = (
        "import torch\n\n\ndef log_cdf(m):\n    cdf = torch.sigmoid(m)\n"
        "    return torch.sigmoid(m).log(), torch.log(cdf)\n"
    )
    codemod = codemod_for("log-of-probabilities")
    assert codemod is not None
    method = _target_of(next(f for f in _findings_of("log-of-probabilities", source)))
    fixed = codemod.transform(source, method)
    assert fixed is not None and "torch.nn.functional.logsigmoid(m), torch.log(cdf)" in fixed
    through = FixTarget(
        rule="log-of-probabilities",
        file="m.py",
        line=6,
        end_line=6,
        data={"activation": "sigmoid", "direct": False},
    )
    kept = source.replace("torch.sigmoid(m).log(), ", "")
    assert codemod.transform(kept, through) is None
    assert "through a variable" in (codemod.explain(kept, through) or "")


def test_a_loss_term_made_a_python_number_is_left_to_the_author() -> None:
    source = (
        RULE_FIXTURES / "detached-loss-input" / "positive_loss_term_made_a_number.py"
    ).read_text()
    (finding,) = _findings_of("detached-loss-input", source)
    codemod = codemod_for("detached-loss-input")
    assert codemod is not None
    assert codemod.transform(source, _target_of(finding)) is None
    assert "Python number" in (codemod.explain(source, _target_of(finding)) or "")


def test_an_epoch_schedule_stepped_in_the_batch_loop_moves_after_it() -> None:
    source = (
        RULE_FIXTURES / "epoch-scheduler-per-batch" / "positive_step_in_batch_loop.py"
    ).read_text()
    (finding,) = _findings_of("epoch-scheduler-per-batch", source)
    codemod = codemod_for("epoch-scheduler-per-batch")
    assert codemod is not None
    fixed = codemod.transform(source, _target_of(finding))
    assert fixed is not None
    after_the_batches = (
        "            optimizer.step()\n        decay.step()  # expect: epoch-scheduler"
    )
    assert after_the_batches in fixed
    assert not _findings_of("epoch-scheduler-per-batch", fixed)


GLOBAL_MODEL_EVALUATED_IN_A_STEP = """
import torch
import torch.nn.functional as F

model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
optimizer = torch.optim.Adam(model.parameters())

def train(epoch, x, y):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    model.eval()
    return F.cross_entropy(model(x), y).item()

for epoch in range(10):
    print(train(epoch, torch.randn(4, 8), torch.zeros(4, dtype=torch.long)))
"""


def test_a_global_model_a_local_step_evaluates_is_set_back_to_train_after_the_call() -> None:
    """pyGAT's shape: `train(epoch)` ends with `model.eval()` on the script's global model."""
    (finding,) = _findings_of("train-mode-not-restored", GLOBAL_MODEL_EVALUATED_IN_A_STEP)
    codemod = codemod_for("train-mode-not-restored")
    assert codemod is not None
    fixed = codemod.transform(GLOBAL_MODEL_EVALUATED_IN_A_STEP, _target_of(finding))
    assert fixed is not None
    assert "zeros(4, dtype=torch.long)))\n    model.train()\n" in fixed
    assert not _findings_of("train-mode-not-restored", fixed)


STEP_FUNCTION_WITHOUT_CLEAR = """
import torch
import torch.nn.functional as F

model = torch.nn.Linear(8, 2)
optimizer = torch.optim.Adam(model.parameters())

def train(epoch, x, y):
    output = model(x)
    loss = F.cross_entropy(output, y)
    loss.backward()
    optimizer.step()
    return loss.item()

for epoch in range(10):
    train(epoch, torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
"""


def test_a_step_function_called_once_an_epoch_clears_before_its_backward() -> None:
    """pyGAT's shape: the epoch loop calls `train(epoch)`, which never clears gradients."""
    codemod = codemod_for("zero-grad-missing")
    assert codemod is not None
    (finding,) = _findings_of("zero-grad-missing", STEP_FUNCTION_WITHOUT_CLEAR)
    fixed = codemod.transform(STEP_FUNCTION_WITHOUT_CLEAR, _target_of(finding))
    assert fixed is not None
    assert "optimizer.zero_grad(set_to_none=True)\n    loss.backward()" in fixed
    assert not _findings_of("zero-grad-missing", fixed)
    two_passes = STEP_FUNCTION_WITHOUT_CLEAR.replace(
        "    loss.backward()\n", "    loss.backward(retain_graph=True)\n    loss.backward()\n"
    )
    (finding,) = _findings_of("zero-grad-missing", two_passes)
    assert codemod.transform(two_passes, _target_of(finding)) is None
    assert "several backward()" in (codemod.explain(two_passes, _target_of(finding)) or "")


def test_batch_reductions_of_the_rule_fixtures_move_to_the_class_dimension() -> None:
    """Keyword and positional dims, method and function forms; a CTC output permuted in the
    same statement is left alone (its classes are last, not at dim 1)."""
    source = (
        RULE_FIXTURES / "reduction-over-batch-dim" / "positive_mnist_test_loop.py"
    ).read_text()
    codemod = codemod_for("reduction-over-batch-dim")
    assert codemod is not None
    fixed = _fixed_until_clean("reduction-over-batch-dim", source)
    assert "output.argmax(dim=1, keepdim=True)" in fixed
    assert "F.log_softmax(logits, 1)" in fixed
    assert "torch.max(logits.detach(), 1)" in fixed
    ctc = (
        RULE_FIXTURES / "reduction-over-batch-dim" / "positive_softmax_over_the_batch_of_a_step.py"
    ).read_text()
    permuted = next(f for f in _findings_of("reduction-over-batch-dim", ctc) if "permute" in f.code)
    assert codemod.transform(ctc, _target_of(permuted)) is None
    assert "rearranged" in (codemod.explain(ctc, _target_of(permuted)) or "")


def test_a_clear_before_each_counted_micro_batch_moves_after_the_step() -> None:
    """pytorch-cifar100's accumulation by countdown (`if remaining > 1: continue`)."""
    source = (
        RULE_FIXTURES / "zero-grad-order" / "positive_cleared_before_each_counted_micro_batch.py"
    ).read_text()
    fixed = _fixed_until_clean("zero-grad-order", source)
    assert "        optimizer.step()\n        optimizer.zero_grad()  # expect" in fixed
    assert "            opt.step()\n            opt.zero_grad(set_to_none=True)  # expect" in fixed


def test_a_clip_continued_over_two_lines_moves_after_the_backward() -> None:
    """Conv-TasNet's solver wraps its clip call over two lines, inside `if not cross_valid:`."""
    source = """
import torch

def run_epoch(model, optimizer, loader, cross_valid, max_norm):
    for mixture, source in loader:
        loss = torch.nn.functional.mse_loss(model(mixture), source)
        if not cross_valid:
            optimizer.zero_grad()
            torch.nn.utils.clip_grad_norm_(model.parameters(),
                                           max_norm)
            loss.backward()
            optimizer.step()
"""
    (finding,) = _findings_of("clip-grad-order", source)
    codemod = codemod_for("clip-grad-order")
    assert codemod is not None
    fixed = codemod.transform(source, _target_of(finding))
    assert fixed is not None
    assert "loss.backward()\n            torch.nn.utils.clip_grad_norm_(" in fixed
    assert not _findings_of("clip-grad-order", fixed)


def test_the_evaluation_fix_switches_the_model_the_rule_names() -> None:
    """Two networks run in the block; the rule names the one whose forward it flagged."""
    source = """
import torch

def validate(model, reference_model, loader, metrics):
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            baseline = reference_model(images)
            metrics.update(labels, outputs.argmax(1), baseline.argmax(1))
    return metrics.compute()
"""
    found = _findings_of("eval-without-eval-mode", source)
    named = next(f for f in found if f.data.get("model") == "model")
    codemod = codemod_for("eval-without-eval-mode")
    assert codemod is not None
    fixed = codemod.transform(source, _target_of(named))
    assert fixed is not None and "    model.eval()\n" in fixed
    unnamed = _target_of(named).model_copy(update={"data": {"mode_dependent_layers": "unknown"}})
    assert codemod.transform(source, unnamed) is None  # two candidates: no guess


SERVED_FROM_ANOTHER_FILE = [
    (
        "models.py",
        "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.fc = nn.Linear(4, 2)\n"
        "        self.drop = nn.Dropout(0.5)\n\n    def forward(self, x):\n"
        "        return self.fc(self.drop(x))\n",
    ),
    (
        "serve.py",
        "import torch\nfrom models import Net\n\nnet = Net()\n\n\ndef predict(x):\n"
        "    with torch.no_grad():\n        return net(x).argmax(1)\n",
    ),
]


def test_inference_fix_names_the_model_and_says_why_it_declines() -> None:
    """The rule names the served model by its variable (it named the class, which the
    codemod took for one); a refusal says why."""
    (finding,) = [
        f
        for f in analyse_files(SERVED_FROM_ANOTHER_FILE, workers=1).all_findings()
        if f.rule == "inference-no-eval"
    ]
    assert finding.data.get("model") == "net"
    codemod = codemod_for("inference-no-eval")
    assert codemod is not None
    target = FixTarget(
        rule=finding.rule,
        file=finding.file,
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )
    source = dict(SERVED_FROM_ANOTHER_FILE)["serve.py"]
    fixed = codemod.transform(source, target)
    assert fixed is not None and "    net.eval()\n    with torch.no_grad():" in fixed
    warmed = source.replace(
        "    with torch", "    if x is None:\n        net.eval()\n    with torch"
    )
    shifted = target.model_copy(update={"line": target.line + 2, "end_line": target.end_line + 2})
    assert codemod.transform(warmed, shifted) is None
    assert "already called here" in (codemod.explain(warmed, shifted) or "")


def test_a_log_softmax_over_the_batch_feeding_nll_is_taken_over_the_classes() -> None:
    """In `forward` (keyword dim) and inline (method form, positional dim)."""
    source = (RULE_FIXTURES / "nll-loss-input" / "positive_log_softmax_over_nodes.py").read_text()
    fixed = _fixed_until_clean("nll-loss-input", source)
    assert "return F.log_softmax(self.out(h), dim=1)" in fixed
    assert "F.nll_loss(logits.log_softmax(1), labels)" in fixed


def test_host_sync_stored_into_a_container_says_where_it_goes() -> None:
    """Held-out VAE-CVAE-MNIST: `tracker[id]['x'] = z[i, 0].item()` (latents kept for a plot
    after the epoch) was refused as "used by host code in the step itself (a condition, a
    computation, a control value)": it is a store, whose readers are elsewhere."""
    source = (
        "import torch\n"
        "def train(vae, loader, optimizer, tracker):\n"
        "    for x, y in loader:\n"
        "        recon, z = vae(x)\n"
        "        for i, yi in enumerate(y):\n"
        "            tracker[len(tracker)]['x'] = z[i, 0].item()\n"
        "        loss = ((recon - x) ** 2).mean()\n"
        "        optimizer.zero_grad()\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
    )
    (finding,) = _findings_of("host-sync-in-step", source)
    codemod = codemod_for("host-sync-in-step")
    assert codemod is not None
    target = _target_of(finding)
    assert codemod.transform(source, target) is None
    why = codemod.explain(source, target)
    assert why is not None and "stored into `tracker[len(tracker)]['x']`" in why, why


def test_train_loader_codemod_leaves_options_that_set_shuffle() -> None:
    codemod = codemod_for("train-loader-no-shuffle")
    assert codemod is not None
    target = FixTarget(rule="train-loader-no-shuffle", file="x.py", line=3, end_line=3)
    source = (
        "from torch.utils.data import DataLoader\n"
        "params = {'batch_size': 8, 'shuffle': False}\n"
        "loader = DataLoader(ds, **params)\n"
    )
    assert codemod.transform(source, target) is None
    why = codemod.explain(source, target)
    assert why is not None and "options set `shuffle`" in why, why
    plain = source.replace(", 'shuffle': False", "")
    assert codemod.transform(plain, target) == plain.replace("**params)", "**params, shuffle=True)")


def test_train_loader_codemod_turns_a_literal_shuffle_off_on() -> None:
    codemod = codemod_for("train-loader-no-shuffle")
    assert codemod is not None
    target = FixTarget(rule="train-loader-no-shuffle", file="x.py", line=2, end_line=2)
    source = "from torch.utils.data import DataLoader\nloader = DataLoader(ds, 8, shuffle=False)\n"
    assert codemod.transform(source, target) == source.replace("False", "True")
    computed = source.replace("shuffle=False", "shuffle=args.shuffle")
    assert codemod.transform(computed, target) is None
