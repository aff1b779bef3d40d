"""The speed benchmark judges the native pass on the files' own CPU, not on `getrusage`
children (pool workers are forkserver grandchildren it never counts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import (
    FileResult,
    StaticResult,
    analyse_files,
    analyse_source,
)
from torchdoctor.agent.checks.registry import enabled_rules

BENCH = Path(__file__).parents[2] / "benchmarks"
BUSY = "import torch\n" + "".join(
    f"def f{i}(x):\n    return torch.relu(x) + {i}\n" for i in range(300)
)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("static_speed", BENCH / "static_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("static_speed", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_file_records_its_own_cpu_time() -> None:
    result = analyse_source("busy.py", BUSY, enabled_rules(), EngineConfig())
    assert result.cpu_seconds > 0.0


def test_pool_workers_report_their_cpu_time_back() -> None:
    files = [(f"m{i}.py", BUSY) for i in range(30)]
    result = analyse_files(files, workers=2)
    assert all(r.cpu_seconds > 0.0 for r in result.files)


def _result(*cpu: float) -> StaticResult:
    files = [FileResult(path=f"{i}.py", cpu_seconds=s) for i, s in enumerate(cpu)]
    return StaticResult(files=files, rules_run=[], seconds=1.0)


def test_judgement_adds_the_workers_cpu_to_this_process_overhead() -> None:
    total, files = _bench().judged_cpu(_result(2.0, 3.0), own_cpu=0.5, in_process=False)
    assert (total, files) == (5.5, 5.0)


def test_judgement_in_process_does_not_count_the_files_twice() -> None:
    total, files = _bench().judged_cpu(_result(2.0, 3.0), own_cpu=5.5, in_process=True)
    assert (total, files) == (5.5, 5.0)
