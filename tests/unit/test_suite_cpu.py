"""benchmarks/suite_cpu.py: the suite's CPU per test module, read from control groups (the
reading and the table here on folders laid out as the kernel lays them out; the run itself
needs root and a writable hierarchy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def suite_cpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("suite_cpu", BENCH / "suite_cpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


V1_MOUNTS = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def test_the_hierarchy_that_counts_cpu_is_v1_cpuacct_before_the_unified_one(
    suite_cpu: ModuleType,
) -> None:
    assert suite_cpu.cpu_root(V1_MOUNTS) == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert suite_cpu.cpu_root(V2_MOUNTS) == Path("/sys/fs/cgroup")
    assert suite_cpu.cpu_root("proc /proc proc rw 0 0\n") is None


def test_a_module_path_survives_its_group_name(suite_cpu: ModuleType) -> None:
    name = suite_cpu.module_group("tests/unit/test_peer_pool.py::test_x[a/b]")
    assert "/" not in name
    assert suite_cpu.module_of(name) == "tests/unit/test_peer_pool.py"


def _v1_group(path: Path, nanoseconds: int) -> None:
    path.mkdir(parents=True)
    (path / "cpuacct.usage").write_text(f"{nanoseconds}\n")


def test_modules_are_listed_costliest_first_and_the_rest_is_unattributed(
    suite_cpu: ModuleType, tmp_path: Path
) -> None:
    run = tmp_path / "torchdoctor-suite-1"
    _v1_group(run, 100_000_000_000)  # v1 usage counts the groups below
    _v1_group(run / suite_cpu.module_group("tests/api/test_api.py::t"), 20_000_000_000)
    _v1_group(run / suite_cpu.module_group("tests/cluster/test_ray.py::t"), 70_000_000_000)
    assert suite_cpu.table(run) == {
        "total_cpu_s": 100.0,
        "unattributed_cpu_s": 10.0,
        "modules": {"tests/cluster/test_ray.py": 70.0, "tests/api/test_api.py": 20.0},
    }


def test_cgroup_v2_usage_is_read_from_cpu_stat(suite_cpu: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert suite_cpu.usage_s(tmp_path) == 2.5
