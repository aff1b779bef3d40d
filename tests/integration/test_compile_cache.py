"""torch.compile through the sandbox with an audit's shared compiler cache: the second run of
the same script reads the first one's compiled graph (Inductor's FX graph cache), which is what
makes a fix verification's repeated compiling runs cheap (the time it saves is
`benchmarks/compile_cache.py`'s to print). CPU Inductor (a C++ compiler)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.harness import Harness, HarnessCall
from torchdoctor.sandbox.config import get_sandbox
from torchdoctor.sandbox.models import Job, Outcome
from torchdoctor.sandbox.shared_cache import INDUCTOR_TMP, compile_cache

SCRIPT = """
import torch
from torch._dynamo.utils import counters

@torch.compile
def step(x):
    return torch.nn.functional.gelu(x @ x.T).sum()

step(torch.randn(32, 32))
print("hits", counters["inductor"]["fxgraph_cache_hit"])
"""


def test_the_harness_gives_its_jobs_the_cache(tmp_path: Path) -> None:
    harness = Harness(get_sandbox("local"), RunBudget(), cache=tmp_path)
    job = harness.job(tmp_path, HarnessCall(script="train.py"))
    assert job.cache == tmp_path
    assert job.env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert Harness(get_sandbox("local")).job(tmp_path, HarnessCall(script="t.py")).cache is None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="CPU Inductor needs a C++ compiler")
def test_a_second_compiling_run_reads_the_first_ones_graph(tmp_path: Path) -> None:
    (tmp_path / "compiled.py").write_text(SCRIPT)
    sandbox = get_sandbox("local")
    with compile_cache() as cache:
        assert cache is not None
        harness = Harness(sandbox, RunBudget(memory_mb=8192), cache=cache)
        runs = []
        for _ in range(2):
            job = harness.job(tmp_path, HarnessCall(script="compiled.py"))
            plain = Job(
                workspace=tmp_path,
                command=["python", "compiled.py"],
                # One small graph: Inductor's pool of compile workers (processes that each
                # import torch) would cost more than it saves; the cache is the same.
                env={**job.env, "TORCHINDUCTOR_COMPILE_THREADS": "1"},
                cache=job.cache,
                limits=job.limits.model_copy(update={"wall_s": 240.0}),
            )
            result = sandbox.run(plain)
            assert result.outcome is Outcome.OK, result.stderr[-2000:]
            runs.append(result)
        # Inductor's precompiled C++ headers, kept outside its cache folder, are shared too
        headers = cache / INDUCTOR_TMP / "precompiled_headers"
        assert any(headers.glob("*.h")), sorted(p.name for p in (cache / INDUCTOR_TMP).iterdir())
    assert "hits 0" in runs[0].stdout
    assert "hits 1" in runs[1].stdout, runs[1].stdout
