"""A CUDA job in the local sandbox sees the GPU, and limits and timeouts still hold there."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchdoctor.sandbox.config import LocalConfig
from torchdoctor.sandbox.local import LocalSandbox
from torchdoctor.sandbox.models import Job, Limits, Outcome

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

JOBS = Path(__file__).resolve().parent / "gpu_jobs"
GPU_LIMITS = Limits(wall_s=180, cpu_s=180, memory_mb=16_384, processes=512, open_files=4096)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LocalSandbox]:
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None
    run_root = Path(tempfile.mkdtemp(prefix="td-gpu-test-"))
    os.chmod(run_root, 0o711)
    site = Path(spec.origin).resolve().parent.parent
    yield LocalConfig(read_only=[site], run_root=run_root).build()


def _job(script: str, limits: Limits = GPU_LIMITS) -> Job:
    return Job(workspace=JOBS, command=["python", script], limits=limits, gpu=True)


def test_a_cuda_matmul_runs_inside_the_sandbox(sandbox: LocalSandbox) -> None:
    result = sandbox.run(_job("matmul.py"))
    assert result.outcome is Outcome.OK, result.stderr[-2000:]
    assert result.isolation.gpu
    assert '"tflops"' in result.stdout
    assert result.isolation.network == "none" or result.isolation.degraded


def test_a_gpu_busy_loop_ends_at_the_wall_clock_limit(sandbox: LocalSandbox) -> None:
    result = sandbox.run(_job("gpu_forever.py", GPU_LIMITS.model_copy(update={"wall_s": 20})))
    assert result.outcome is Outcome.TIMEOUT
    assert result.usage.wall_s < 30


def test_host_memory_is_capped_for_a_cuda_job(sandbox: LocalSandbox) -> None:
    limits = GPU_LIMITS.model_copy(update={"memory_mb": 6144})
    result = sandbox.run(_job("gpu_host_memory_bomb.py", limits))
    assert result.outcome is Outcome.MEMORY_LIMIT, result.stderr[-2000:]
