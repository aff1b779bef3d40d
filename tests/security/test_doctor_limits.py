"""`doctor` says how each limit is held on this host (cgroups read, never changed)."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.sandbox.cgroups import cgroup_support
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
    assert any("tmpfs" in line for line in lines) and any("polled" in line for line in lines)
