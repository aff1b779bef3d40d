"""GPU-only probes: CUDA sync debug mode, MFU, allocator fragmentation, bf16 data flow.

Run on a CUDA machine: `PYTHONPATH=. pytest tests/integration/test_probes_gpu.py -m gpu`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.evidence.probes import probe_findings

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "probes"


def run_probes(tmp_path: Path, script: str, *options: str) -> ProbeDocument:
    out = tmp_path / "evidence.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchdoctor.sandbox.probes",
            str(FIXTURES / script),
            "--out",
            str(out),
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.exists(), done.stderr[-3000:]
    document = ProbeDocument.model_validate(json.loads(out.read_text()))
    assert document.probe_errors == [], document.probe_errors
    assert document.device.cuda_used
    return document


def test_sync_debug_mode_attributes_implicit_syncs_to_the_users_line(tmp_path: Path) -> None:
    doc = run_probes(tmp_path, "gpu_sync_in_condition.py", "--steps", "12")
    assert doc.syncs.cuda_sync_debug
    assert doc.syncs.cuda_syncs_per_step >= 1
    assert (doc.syncs.cuda_syncs[0].file, doc.syncs.cuda_syncs[0].line) == (
        "gpu_sync_in_condition.py",
        15,
    )
    assert "probe-host-sync" in {f.rule for f in probe_findings(doc, "t.py").findings}


def test_flops_and_mfu_are_measured_against_the_gpus_peak(tmp_path: Path) -> None:
    doc = run_probes(tmp_path, "gpu_matmul_bf16.py", "--steps", "12")
    flops = doc.flops
    assert flops is not None and flops.flops_per_step is not None
    # 2 FLOPs per multiply-add; 4 layers x (forward, grad input, grad weight) matmuls of
    # 8192 x 4096 x 4096, less the first layer's grad input (its input needs no gradient)
    assert flops.flops_per_step == pytest.approx((4 * 3 - 1) * 2 * 8192 * 4096 * 4096, rel=0.05)
    assert doc.timing.source == "cuda-events"
    assert flops.achieved_tflops is not None and flops.achieved_tflops > 10
    if flops.peak_bf16_tflops is not None:
        assert flops.mfu is not None and 0 < flops.mfu < 1
    print(f"{flops.device_name}: {flops.achieved_tflops:.0f} TFLOP/s, MFU {flops.mfu}")


def test_split_segments_are_reported_as_fragmentation(tmp_path: Path) -> None:
    doc = run_probes(tmp_path, "gpu_fragmentation.py", "--steps", "5")
    vram = doc.vram
    assert vram is not None
    assert vram.inactive_split_bytes >= 24 * 40 * 2**20 * 0.9
    assert vram.reserved_bytes > vram.allocated_bytes
    assert vram.fragmented and "expandable_segments:True" in vram.advice
    assert "probe-vram-fragmentation" in {f.rule for f in probe_findings(doc, "t.py").findings}


def test_bf16_into_float32_layer_is_dtype_mixing_in_the_map(tmp_path: Path) -> None:
    doc = run_probes(tmp_path, "gpu_dtype_mixing.py", "--steps", "3")
    calls = {c.type: c for c in doc.dataflow.calls}
    assert calls["Linear"].outputs[0].dtype == "bfloat16"
    assert calls["Linear"].outputs[0].device.startswith("cuda")
    assert [m.type for m in doc.dtype_mixing] == ["Scale"]
    assert doc.memory.source == "cuda-allocated"


def test_overhead_of_cheap_probes_stays_within_budget() -> None:
    # the paired ratio of the benchmark's defaults: 40 rounds of short blocks side by side
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "probe_overhead.py")],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    print(done.stdout)
    ratio_line = next(x for x in done.stdout.splitlines() if x.startswith("overhead ratio"))
    ratio = float(ratio_line.split(":")[1].split("x")[0])
    assert ratio <= 1.15
