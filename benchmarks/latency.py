"""How long does a single-file audit take, as a pre-commit hook runs it? Target: <= 0.5 s wall.

Runs the hook on a copy of examples/train_buggy.py in an empty folder (no project config above
it), as a fresh process each time (what pre-commit does for each invocation), without
instrumented runs, a few times each:

- cold: `torchdoctor audit --static-only` in its own process (the hook with no daemon yet, or
  with `TORCHDOCTOR_DAEMON=0`), which imports torchdoctor and starts every peer linter;
- first call: `torchdoctor-hook` with no daemon: it audits in its own process and starts the
  daemon, whose warm-up competes for the same CPUs;
- warm: `torchdoctor-hook` answered by the running daemon (a forked worker, peers forked).

Each with the peer linters and their cache warm (the file unchanged since the last audit: most
files of a `pre-commit run --all-files`), with the peers and nothing cached (a file just
edited), and without peers. Prints the median and best wall time and the CPU time of every
process involved (the client's tree, plus the daemon's workers for the warm figures), ruff's
own wall time for scale, the load average, then `ok` or `over target` per case.

    python benchmarks/latency.py [--repeats N] [--file PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torchdoctor.agent.daemon import client, runtime
from torchdoctor.agent.daemon.server import POLL_S

TARGET_S = 0.5
REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the children's CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


@dataclass(frozen=True)
class Series:
    median_s: float
    best_s: float
    cpu_s: float

    def __str__(self) -> str:
        return (
            f"median {self.median_s:.2f} s, best {self.best_s:.2f} s wall; "
            f"cpu {self.cpu_s:.2f} s (all processes)"
        )


def series(
    command: list[str], cwd: Path, env: dict[str, str], repeats: int, daemon: int | None = None
) -> Series:
    """`repeats` timed runs after one untimed; with `daemon`, its workers' CPU is added."""
    timed(command, cwd, env)  # warm the OS file cache and .pyc files
    before = daemon_cpu(daemon) if daemon else 0.0
    runs = [timed(command, cwd, env) for _ in range(repeats)]
    served = (daemon_cpu(daemon) - before) / repeats if daemon else 0.0
    walls = [wall for wall, _ in runs]
    cpu = statistics.median(cpu for _, cpu in runs) + served
    return Series(statistics.median(walls), min(walls), cpu)


def daemon_cpu(pid: int) -> float:
    """CPU seconds of the daemon and of the workers it has reaped (it reaps within POLL_S)."""
    time.sleep(POLL_S + 0.5)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def wait_for_daemon() -> int:
    """The pid of this environment's daemon, once it answers."""
    for _ in range(600):
        reply = client.ask("ping")
        if reply is not None and reply["fingerprint"] == runtime.code_fingerprint():
            return reply["pid"]
        time.sleep(0.1)
    sys.exit("the daemon did not start within 60 s")


def verdicts(cases: dict[str, Series]) -> None:
    for case, measured in cases.items():
        verdict = "ok" if measured.median_s <= TARGET_S else "over target"
        print(f"target <= {TARGET_S} s wall, {case}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--file", type=Path, default=REPO / "examples" / "train_buggy.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "project"
        folder.mkdir()
        target = folder / args.file.name
        shutil.copyfile(args.file, target)
        lines = len(target.read_text(encoding="utf-8").splitlines())
        os.environ[runtime.RUNTIME_ENV] = str(Path(scratch) / "run")  # a daemon of its own
        env = {**os.environ, "TORCHDOCTOR_HOME": str(Path(scratch) / "home")}
        env.pop("TORCHDOCTOR_LINTERS", None)
        env.pop(runtime.DISABLE_ENV, None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's Python caches bytecode
        for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TORCHDOCTOR_MODEL"):
            env.pop(var, None)
        uncached = {**env, "TORCHDOCTOR_PEER_CACHE": "0", "TORCHDOCTOR_RESULT_CACHE": "0"}
        bin_folder = Path(sys.executable).parent
        options = [target.name, "--no-ledger", "--format", "json", "-q"]
        cold = [str(bin_folder / "torchdoctor"), "audit", "--static-only", *options]
        hook = [str(bin_folder / "torchdoctor-hook"), *options]
        load = os.getloadavg()[0]
        print(f"single-file audit of {args.file.name} ({lines} lines), {os.cpu_count()} CPUs")
        print(f"load average (1 min) at the start: {load:.1f}")
        print("cold (torchdoctor audit --static-only, no daemon):")
        results = {
            "cold, peers cached": series(cold, folder, env, args.repeats),
            "cold, peers not cached": series(cold, folder, uncached, args.repeats),
            "cold, no peers": series([*cold, "--no-linters"], folder, env, args.repeats),
        }
        for case, measured in results.items():
            print(f"  {case.removeprefix('cold, '):<16}: {measured}")
        first = timed(hook, folder, uncached)
        print(
            f"first hook call (audits itself, starts the daemon): {first[0]:.2f} s wall, "
            f"cpu {first[1]:.2f} s (the client's tree; the daemon's warm-up not counted)"
        )
        pid = wait_for_daemon()
        try:
            print(f"warm (torchdoctor-hook answered by daemon {pid}):")
            warm = {
                "warm, peers cached": series(hook, folder, env, args.repeats, pid),
                "warm, peers not cached": series(hook, folder, uncached, args.repeats, pid),
                "warm, no peers": series([*hook, "--no-linters"], folder, env, args.repeats, pid),
            }
            for case, measured in warm.items():
                print(f"  {case.removeprefix('warm, '):<16}: {measured}")
        finally:
            client.ask("stop")
        ruff = shutil.which("ruff", path=str(bin_folder)) or shutil.which("ruff")
        if ruff:
            print(
                f"ruff (scale)      : {series([ruff, 'check', '-q', target.name], folder, env, 3)}"
            )
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
        verdicts({**results, **warm})


if __name__ == "__main__":
    main()
