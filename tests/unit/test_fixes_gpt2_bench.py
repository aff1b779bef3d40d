"""The GPT-2 benchmark's pieces on CPU: the naive script runs, every codemod the ~10x needs
applies to it, the fixed script keeps its seeded losses, and the FLOP count is nanoGPT's."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from torchdoctor.agent.fixes.combine import merge_fixes
from torchdoctor.agent.fixes.pipeline import propose_patch
from torchdoctor.agent.fixes.stats import trajectories_match
from torchdoctor.agent.models import Fix

BENCH = Path(__file__).parents[2] / "benchmarks"
NEEDED = {
    "unfused-optimizer",
    "host-sync-in-step",
    "no-amp",
    "tf32-off",
    "no-torch-compile",
    "manual-attention",
    "output-projection-unaligned",
}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt2_fix_bench", BENCH / "gpt2_fix_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(script: Path) -> list[float]:
    # torch.compile is a no-op here: inductor's C++ build on CPU costs more than the rest of
    # this module, and compiling keeps the losses by torch's own contract; what is checked is
    # that the codemods' rewrites (fused optimizer, detach, autocast, SDPA, ...) keep them.
    done = subprocess.run(
        [sys.executable, str(script), "--tiny", "--steps", "4", "--warmup", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "TORCHDYNAMO_DISABLE": "1"},
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[-1]["tokens_per_s"] > 0
    return [entry["loss"] for entry in lines[:-1]]


@pytest.fixture(scope="module")
def fixed_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("gpt2")
    shutil.copy(BENCH / "gpt2_naive_train.py", workspace / "train.py")
    findings = _bench().audit(workspace)
    patched = []
    for finding in findings:
        patch = propose_patch(workspace, finding)
        if patch is not None:
            patched.append(finding.model_copy(update={"fix": Fix(diff=patch.diff)}))
    assert {f.rule for f in patched} == NEEDED
    fixed = workspace / "fixed.py"
    fixed.write_text(merge_fixes(workspace, patched)["train.py"])
    return fixed


def test_the_fixed_script_has_every_fix(fixed_script: Path) -> None:
    text = fixed_script.read_text()
    for marker in (
        "fused=torch.cuda.is_available()",
        "losses.append(loss.detach())",
        "torch.autocast(",
        'torch.set_float32_matmul_precision("high")',
        "model.compile()",
        "F.scaled_dot_product_attention(q, k, v, is_causal=True",
        "return _linear_on_whole_tiles(self.lm_head, self.ln_f(x))",
    ):
        assert marker in text


def test_the_fixed_script_keeps_the_seeded_losses_on_cpu(fixed_script: Path) -> None:
    original = _losses(BENCH / "gpt2_naive_train.py")
    fixed = _losses(fixed_script)
    assert len(original) == 4
    assert trajectories_match(original, fixed, 1e-4)[0]


def test_flops_per_token_matches_nanogpt_for_gpt2_small() -> None:
    bench = _bench()
    # 124,439,808 parameters (tied embeddings), position embeddings left out of 6N
    assert bench.flops_per_token(124_439_808, bench.FULL_SHAPE) == 855_166_464


def test_every_variant_of_gpt2_variants_applies_to_the_fixed_script(fixed_script: Path) -> None:
    """benchmarks/gpt2_variants.py edits the codemods' text: a codemod whose output changes
    must not leave a variant silently 'not applicable'."""
    spec = importlib.util.spec_from_file_location("gpt2_variants", BENCH / "gpt2_variants.py")
    assert spec is not None and spec.loader is not None
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    text = fixed_script.read_text()
    for name, edit in variants.VARIANTS.items():
        changed = edit(text)
        assert changed is not None, f"{name} does not apply to the merged fixes"
        compile(changed, f"{name}.py", "exec")
        assert (changed == text) == (name == "script"), name
