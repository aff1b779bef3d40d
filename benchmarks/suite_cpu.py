"""Where the test suite's CPU goes, per test module, the servers it starts included.

The suite's own processes account for little of its CPU: sandbox jobs, `torchdoctor`
subprocesses, PostgreSQL, Ray, uvicorn, tmux and Chromium do the rest, and a server's CPU is
never in `pytest --durations` nor in the worker's `RUSAGE_CHILDREN` (it is not waited for
until it stops, and a sandbox job's parent is not always the worker). So the run goes into a
control group of its own, and each xdist worker moves itself into its module's group before
the module's first test (this file is also the pytest plugin that does it): what a module
starts from then on is charged to it, a server kept up for later modules included. CPU left
in the run's own group is collection and start-up. Prints CPU seconds per module, costliest
first, the total, the wall time and the load average; on a shared machine compare CPU, not
wall. Needs root and a writable `cpuacct` (cgroup v1) or `cpu` (cgroup v2) hierarchy.

    sudo python benchmarks/suite_cpu.py [--top 40] [--json OUT] [-- PYTEST ARGS]

Without PYTEST ARGS it runs the suite as scripts/test.sh does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GROUP_ENV = "TORCHDOCTOR_SUITE_CPU_GROUP"
SUITE_ARGS = ["-n", "3", "--dist", "loadfile", "--no-loadscope-reorder", "-q"]
"""scripts/test.sh's pytest arguments."""


def cpu_root(mounts: str | None = None) -> Path | None:
    """The cgroup hierarchy that counts CPU: v1's `cpuacct` mount, else the v2 mount."""
    text = mounts if mounts is not None else Path("/proc/mounts").read_text()
    unified = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup" and "cpuacct" in fields[3].split(","):
            return Path(fields[1])
        if fields[2] == "cgroup2":
            unified = Path(fields[1])
    return unified


def usage_s(group: Path) -> float:
    """CPU seconds used in `group` and the groups below it."""
    v1 = group / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for line in (group / "cpu.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no CPU usage in {group}")


def module_group(nodeid: str) -> str:
    """The group name of a test's module: `m_` and its path, `/` written `+` (`module_of`)."""
    return "m_" + nodeid.split("::", 1)[0].replace("/", "+")


def module_of(group: str) -> str:
    return group.removeprefix("m_").replace("+", "/")


def table(run_group: Path) -> dict[str, Any]:
    """Per-module CPU seconds (costliest first), the total, and what no module was charged."""
    modules = {
        module_of(child.name): usage_s(child)
        for child in run_group.iterdir()
        if child.is_dir() and child.name.startswith("m_")
    }
    total = usage_s(run_group)
    return {
        "total_cpu_s": round(total, 1),
        "unattributed_cpu_s": round(total - sum(modules.values()), 1),
        "modules": {
            name: round(seconds, 1)
            for name, seconds in sorted(modules.items(), key=lambda item: -item[1])
        },
    }


def _remove(run_group: Path) -> list[str]:
    """Remove the groups; those still holding a process (a server left running) stay, named."""
    left = []
    for group in [*sorted(run_group.glob("m_*")), run_group]:
        try:
            group.rmdir()
        except OSError:
            left.append(str(group))
    return left


# The pytest plugin half (`-p suite_cpu`, loaded in every xdist worker).
_current: dict[str, str] = {}


def pytest_runtest_setup(item: Any) -> None:
    base = os.environ.get(GROUP_ENV)
    if not base:
        return
    name = module_group(item.nodeid)
    if _current.get("module") == name:
        return
    _current["module"] = name
    group = Path(base) / name
    group.mkdir(exist_ok=True)
    (group / "cgroup.procs").write_text(str(os.getpid()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path, help="write the whole table here")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    root = cpu_root()
    if root is None:
        print("no cgroup hierarchy counts CPU here", file=sys.stderr)
        return 2
    run_group = root / f"torchdoctor-suite-{os.getpid()}"
    run_group.mkdir()
    # Only this module joins the path (benchmarks/ holds other top-level names).
    plugin_dir = Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    (plugin_dir / "suite_cpu.py").symlink_to(Path(__file__).resolve())
    own = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        GROUP_ENV: str(run_group),
        "PYTHONPATH": f"{plugin_dir}{os.pathsep}{own}" if own else str(plugin_dir),
    }

    def enter() -> None:
        (run_group / "cgroup.procs").write_text(str(os.getpid()))

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "suite_cpu", *(args.pytest_args or SUITE_ARGS)],
        cwd=REPO,
        env=env,
        preexec_fn=enter,
        check=False,
    )
    wall = time.monotonic() - started
    time.sleep(1)  # the last servers' exits
    result = {
        **table(run_group),
        "wall_s": round(wall, 1),
        "load_average": os.getloadavg(),
        "pytest_exit": done.returncode,
    }
    left = _remove(run_group)
    if left:
        result["groups_left"] = left
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"\n{'CPU s':>8}  module (costliest {args.top})")
    for name, seconds in list(result["modules"].items())[: args.top]:
        print(f"{seconds:8.1f}  {name}")
    print(
        f"total {result['total_cpu_s']} CPU-s ({result['unattributed_cpu_s']} outside any "
        f"module: collection, start-up), wall {result['wall_s']} s, load "
        f"{' '.join(f'{x:.1f}' for x in result['load_average'])}, pytest exit {done.returncode}"
    )
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
