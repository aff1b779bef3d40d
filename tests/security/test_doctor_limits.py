"""`doctor` says how each limit is held on this host; a job's cgroup is made, limits it and is
removed, and a process that joins it is reached by `kill_all`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from torchdoctor.sandbox.cgroups import JobCgroup, cgroup_support
from torchdoctor.sandbox.doctor import limit_lines


def test_cgroup_v2_with_memory_and_pids_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    found = cgroup_support(tmp_path)
    assert found.version == "v2" and found.controllers == ("cpu", "memory", "pids")


def test_no_cgroup_filesystem_says_what_holds_the_limits(tmp_path: Path) -> None:
    found = cgroup_support(tmp_path / "absent")
    assert found.version == "none" and "RSS watch" in found.summary


def test_doctor_lists_every_limit() -> None:
    lines = limit_lines()
    assert lines[0].startswith(("cgroup", "no cgroup"))
    assert any("tmpfs" in line for line in lines)
    assert any(line.startswith("workspace disk quota") for line in lines)
    assert any("/proc/net/unix" in line for line in lines)


def test_a_job_cgroup_limits_kills_and_goes_away() -> None:
    job = JobCgroup.create(memory_mb=64, processes=8)
    if job is None:
        pytest.skip(f"no per-job cgroup here: {cgroup_support().summary}")
    try:
        child = subprocess.Popen(["sleep", "60"], preexec_fn=job.join)
        assert job.pids() == [child.pid]
        limit = job.groups["memory"] / (
            "memory.max" if job.version == "v2" else "memory.limit_in_bytes"
        )
        assert int(limit.read_text()) == 64 * 2**20
        job.kill_all()
        assert child.wait(timeout=10) == -9
    finally:
        job.remove()
    assert not any(group.exists() for group in job.groups.values())
