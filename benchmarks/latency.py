"""How long does a single-file audit take, as a pre-commit hook runs it? Target: <= 0.5 s wall.

Runs `torchdoctor audit FILE --no-ledger --format json` as a fresh process (what pre-commit
does for each invocation), without instrumented runs, a few times each, on a copy of
examples/train_buggy.py in an empty folder (no project config above it): with the peer linters
and their cache warm (the file unchanged since the last audit: most files of a
`pre-commit run --all-files`), with the peers and nothing cached (a file just edited), and
without peers. Prints the median and best wall time and the process tree's CPU time for each,
ruff's own wall time on the same file for scale, then `ok` or `over target` for both peer cases.

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


def series(command: list[str], cwd: Path, env: dict[str, str], repeats: int) -> Series:
    timed(command, cwd, env)  # warm the OS file cache and .pyc files
    runs = [timed(command, cwd, env) for _ in range(repeats)]
    walls = [wall for wall, _ in runs]
    return Series(statistics.median(walls), min(walls), statistics.median(cpu for _, cpu in runs))


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
        env = {**os.environ, "TORCHDOCTOR_HOME": str(Path(scratch) / "home")}
        env.pop("TORCHDOCTOR_LINTERS", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's Python caches bytecode
        for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TORCHDOCTOR_MODEL"):
            env.pop(var, None)
        audit = [sys.executable, "-m", "torchdoctor", "audit", target.name, "--no-ledger"]
        audit += ["--format", "json"]
        print(f"single-file audit of {args.file.name} ({lines} lines), {os.cpu_count()} CPUs")
        with_peers = series(audit, folder, env, args.repeats)
        print(f"  peers, cached  : {with_peers}")
        cold = series(audit, folder, {**env, "TORCHDOCTOR_PEER_CACHE": "0"}, args.repeats)
        print(f"  peers, no cache: {cold}")
        print(f"  no peers       : {series([*audit, '--no-linters'], folder, env, args.repeats)}")
        ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
        if ruff:
            print(
                f"  ruff (scale)   : {series([ruff, 'check', '-q', target.name], folder, env, 3)}"
            )
        for case, measured in (("cached", with_peers), ("no cache", cold)):
            verdict = "ok" if measured.median_s <= TARGET_S else "over target"
            print(f"target <= {TARGET_S} s wall, peers included ({case}): {verdict}")


if __name__ == "__main__":
    main()
