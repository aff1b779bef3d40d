"""What the local sandbox's watch costs the service while a job runs: its own CPU per second of
a job that only sleeps, listing the job's processes from the job's cgroup (what runs where a
per-job cgroup and uid exist) against a scan of every process on the host (what runs elsewhere,
and what ran everywhere before), with more idle processes on the host each time.

Every 50 ms the watch lists the job's processes, then reads their CPU time and resident memory;
the scan reads the owner of every `/proc/PID`, so it grows with the host's process count (a
test suite with servers, browsers and clusters up has hundreds). Needs root and usable cgroups
(`torchdoctor doctor` says); prints CPU milliseconds per job second, per case, paired in one
process, and the load average.

    sudo python benchmarks/sandbox_watch.py [--seconds 10] [--repeats 3] [--idle 0 300]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from torchdoctor.sandbox import core
from torchdoctor.sandbox.cgroups import JobCgroup, cgroup_support
from torchdoctor.sandbox.outcome import Outcome
from torchdoctor.sandbox.processes import JobIdentity, job_pids

MEMBERS = core._members


def by_scan(identity: JobIdentity, cgroup: JobCgroup | None) -> Callable[[], list[int]]:
    """The job's processes by a scan of the host's, whatever the job's cgroup."""
    return lambda: job_pids(identity)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def job_cpu_ms(runner: core.LocalRunner, source: Path, seconds: float, repeats: int) -> float:
    """The median of `repeats` runs: this process's CPU milliseconds per second of the job."""
    per_second = []
    for _ in range(repeats):
        before = own_cpu()
        report = runner.execute(source, [runner.python, "job.py"], {}, core.RunLimits(wall_s=60))
        if report.outcome is not Outcome.OK:
            sys.exit(f"the job did not run: {report.reason} {report.stderr[-500:]}")
        per_second.append((own_cpu() - before) * 1000 / report.wall_s)
    return statistics.median(per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle", type=int, nargs="+", default=[0, 300])
    args = parser.parse_args()
    if os.geteuid() != 0 or not cgroup_support().usable:
        sys.exit("needs root and usable cgroups: without them the watch always scans")
    runner = core.LocalRunner(python=sys.executable)
    print(f"mechanism: {runner.mechanism}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        (source / "job.py").write_text(f"import time\ntime.sleep({args.seconds})\n")
        for idle in args.idle:
            sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(idle)]
            try:
                host = sum(1 for entry in os.scandir("/proc") if entry.name.isdigit())
                results = {}
                for mode, members in (("scan", by_scan), ("cgroup", MEMBERS)):
                    core._members = members
                    results[mode] = job_cpu_ms(runner, source, args.seconds, args.repeats)
                core._members = MEMBERS
            finally:
                for sleeper in sleepers:
                    sleeper.kill()
                    sleeper.wait()
            load = os.getloadavg()[0]
            print(
                f"{host} host processes (load {load:.1f}): watch CPU per job second "
                f"{results['scan']:.1f} ms by scan, {results['cgroup']:.1f} ms from the cgroup"
            )


if __name__ == "__main__":
    main()
