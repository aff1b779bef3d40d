"""How fast is the native static pass? Measured on the installed torch package's own sources.

One run prints, over the same ~2,300 files (1.2M lines): bare `ast.parse` (one process), the
native pass (`analyse_files`, every enabled rule, all cores), TorchFix (flake8 --select=TOR, all
cores with -j) and ruff (its default rules, its own threads); files/s and lines/s for each; the
ratios the targets are about (issue 14: the native pass within 1.5x of bare parsing, judged on
the work of one process, the per-file times summed over the workers, against the one-process
parse, so extra cores do not flatter it; >= 10x TorchFix's throughput);
the slowest files and the longest per-file time (the engine stops a file at its deadline).
The parse ratio is judged on CPU seconds, which other load on the machine does not inflate the
way it does wall time: the native pass's CPU is each file's own (`FileResult.cpu_seconds`, the
thread time of its parse, walk and rules, measured in whichever process ran it) summed, plus
this process's CPU outside that work (sharding, results coming back, the project rules). The
pool's workers are forkserver grandchildren that `getrusage(RUSAGE_CHILDREN)` never counts, so
the files' own figures are the only honest measure of their work; the workers' start-up
(imports) is left out, as bare parsing leaves out the interpreter's. The wall ratios follow.
A last line prints the floor: the engine run with no rule at all (parsing, its one walk, the
parent map and node index every rule reads), against the same bare parse.
It exits 1 if any file raised, hit the deadline, or failed to parse.

    PYTHONPATH=. python benchmarks/static_speed.py [--limit N] [--workers N] [--per-rule N]
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig, Rule
from torchdoctor.agent.checks.engine import (
    PARALLEL_THRESHOLD,
    StaticResult,
    analyse_files,
    analyse_source,
)
from torchdoctor.agent.checks.linters.process import (
    ToolMissing,
    ToolTimeout,
    resolve_executable,
    run_tool,
)
from torchdoctor.agent.checks.linters.torchfix import FORMAT, TorchFixAdapter
from torchdoctor.agent.checks.registry import enabled_rules

TOOL_TIMEOUT_S = 1800.0
TARGET_PARSE_RATIO = 1.5
REPEATS = 2
TARGET_TORCHFIX_SPEEDUP = 10.0


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float
    files: int
    lines: int

    def row(self) -> str:
        return (
            f"{self.name:<34} {self.seconds:8.2f}s {self.files / self.seconds:10.0f} files/s "
            f"{self.lines / self.seconds:12.0f} lines/s"
        )


def torch_sources(limit: int | None) -> tuple[Path, list[tuple[str, str]]]:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("torch is not installed in this interpreter")
    root = Path(spec.origin).parent
    files = []
    for path in sorted(root.rglob("*.py")):
        try:
            files.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return root, files[:limit] if limit else files


def cpu_seconds() -> float:
    """User + system CPU of this process (not its pool's workers: see the module docstring)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def judged_cpu(result: StaticResult, own_cpu: float, in_process: bool) -> tuple[float, float]:
    """(the pass's CPU seconds, the part that is the files' own work summed).

    `own_cpu`: this process's CPU during the pass. With a pool it is all overhead (the files
    ran in the workers) and adds to the files' sum; run `in_process` it already holds the
    files' work, so only what exceeds their sum is added.
    """
    files = sum(r.cpu_seconds for r in result.files)
    overhead = max(0.0, own_cpu - files) if in_process else own_cpu
    return files + overhead, files


def time_bare_parse(
    files: Sequence[tuple[str, str]], lines: int
) -> tuple[Timing, float, list[str]]:
    """The wall timing, the CPU seconds, the files the parser rejects."""
    failures = []
    started, cpu = time.perf_counter(), cpu_seconds()
    for path, text in files:
        try:
            ast.parse(text, filename=path)
        except (SyntaxError, ValueError):
            failures.append(path)
    wall = Timing("ast.parse (1 process)", time.perf_counter() - started, len(files), lines)
    return wall, cpu_seconds() - cpu, failures


def engine_floor_cpu(files: Sequence[tuple[str, str]]) -> float:
    """CPU seconds of the engine with no rule (parse, walk, parent map and node index), in
    this process: the part of the ratio no rule can remove."""
    config = EngineConfig(file_deadline_s=3600)
    started = cpu_seconds()
    for path, text in files:
        analyse_source(path, text, (), config)
    return cpu_seconds() - started


def time_tool(name: str, argv: list[str], cwd: Path, files: int, lines: int) -> Timing | str:
    try:
        output = run_tool(argv, cwd, TOOL_TIMEOUT_S)
    except (ToolMissing, ToolTimeout) as err:
        return f"{name}: not measured ({err})"
    if output.returncode not in (0, 1) or output.crashed:
        return f"{name}: not measured (exit {output.returncode}: {output.stderr_tail(200)})"
    return Timing(name, output.seconds, files, lines)


def count_lines(files: Sequence[tuple[str, str]]) -> int:
    return sum(text.count("\n") + 1 for _, text in files)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--per-rule",
        type=int,
        default=0,
        metavar="N",
        help="also time each rule alone on N evenly spread files and list the costliest",
    )
    parser.add_argument(
        "--torchfix-sample",
        type=int,
        default=60,
        help="files TorchFix is timed on (every k-th file): libcst makes it ~100x slower",
    )
    args = parser.parse_args()
    cores = args.workers

    root, files = torch_sources(args.limit)
    lines = count_lines(files)
    print(f"corpus: {root} — {len(files)} files, {lines} lines")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average before: {load()}; "
        f"Python {platform.python_version()}; {len(enabled_rules())} native rules enabled"
    )

    bare, bare_cpu, parse_failures = time_bare_parse(files, lines)
    started, cpu = time.perf_counter(), cpu_seconds()
    result = analyse_files(files, workers=cores)
    elapsed, own_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    in_process = cores == 1 or len(files) < PARALLEL_THRESHOLD
    native_cpu, files_cpu = judged_cpu(result, own_cpu, in_process)
    native = Timing(f"torchdoctor native ({cores} procs)", elapsed, len(files), lines)

    measured: list[Timing | str] = [bare, native]
    flake8 = resolve_executable("flake8")
    if flake8 and TorchFixAdapter().available():
        sample = files[:: max(1, len(files) // args.torchfix_sample)][: args.torchfix_sample]
        argv = [flake8, "--isolated", "--select=TOR", f"--format={FORMAT}", "-j", str(cores)]
        label = f"TorchFix -j {cores} ({len(sample)}-file sample)"
        argv += [path for path, _ in sample]
        measured.append(time_tool(label, argv, root, len(sample), count_lines(sample)))
    else:
        measured.append("TorchFix: not installed (pip install torchfix)")
    ruff = resolve_executable("ruff")
    if ruff:
        argv = [ruff, "check", "--isolated", "--no-cache", "--exit-zero", "--quiet"]
        argv += [path for path, _ in files]
        measured.append(time_tool("ruff (default rules, threads)", argv, root, len(files), lines))
    else:
        measured.append("ruff: not installed")

    print()
    for entry in measured:
        print(entry.row() if isinstance(entry, Timing) else entry)
    print()
    work = sum(r.seconds for r in result.files)
    report_ratios(bare, native, work, [m for m in measured if isinstance(m, Timing)])
    cpu_ratio = native_cpu / bare_cpu
    verdict = "PASS" if cpu_ratio <= TARGET_PARSE_RATIO else "MISS"
    print(
        f"judged on CPU: native {native_cpu:.2f} CPU-s (per-file CPU summed {files_cpu:.2f} + "
        f"this process's {native_cpu - files_cpu:.2f}) / bare parse {bare_cpu:.2f} CPU-s = "
        f"{cpu_ratio:.2f}x (target <= {TARGET_PARSE_RATIO:g}x) {verdict}"
    )
    floor = engine_floor_cpu(files) / bare_cpu
    print(f"floor: the engine with no rule (parse, walk, parent map) = {floor:.2f}x the bare parse")

    slowest = sorted(result.files, key=lambda r: r.seconds, reverse=True)[:5]
    deadline = EngineConfig().file_deadline_s
    print(f"\nmax per-file time: {slowest[0].seconds * 1000:.0f} ms (deadline {deadline:g} s)")
    for file_result in slowest:
        print(f"  {file_result.seconds * 1000:8.1f} ms  {file_result.path}")
    overran = [r for r in result.files if r.seconds > deadline and not r.note]
    if overran:
        print(
            f"warning: {len(overran)} file(s) ran past the {deadline:g} s deadline without being "
            "stopped (the engine checks it during the walk and between rules' finish() phases, "
            "so one long finish() can overrun)"
        )
    findings = result.all_findings()
    rules_fired = len({f.rule for f in findings})
    print(f"\nnative findings on torch itself: {len(findings)} from {rules_fired} rules")
    print(f"load average after: {load()}")

    if args.per_rule:
        sample = files[:: max(1, len(files) // args.per_rule)][: args.per_rule]
        print_rule_costs(sample)

    if parse_failures:
        print(f"\nnot valid Python {platform.python_version()} (the parser itself rejects them):")
        for path in parse_failures:
            print(f"  {path}")
    problems = [f"{r.path}: {r.note}" for r in result.files if r.note]
    problems += [
        f"{f.file}: {f.message}"
        for f in findings
        if f.rule == "syntax-error" and f.file not in parse_failures
    ]
    if problems:
        print(f"\n{len(problems)} file(s) not fully analysed:")
        for problem in problems[:20]:
            print(f"  {problem}")
        return 1
    print("\nevery file analysed without an exception, a parse failure or a deadline stop")
    return 0


def report_ratios(bare: Timing, native: Timing, work: float, timings: list[Timing]) -> None:
    """`work`: the per-file times summed over the workers, what one process would take."""

    def rate(t: Timing) -> float:
        return t.lines / t.seconds

    print(
        f"native work ({work:.2f}s wall summed over the workers) / one-process bare parse: "
        f"{work / bare.seconds:.2f}x"
    )
    wall_ratio = native.seconds / bare.seconds
    print(f"native wall, all workers, / one-process bare parse: {wall_ratio:.2f}x")
    for timing in timings:
        if timing.name.startswith("TorchFix"):
            speedup = rate(native) / rate(timing)
            verdict = "PASS" if speedup >= TARGET_TORCHFIX_SPEEDUP else "MISS"
            print(
                f"native vs TorchFix throughput (lines/s): {speedup:.1f}x "
                f"(target >= {TARGET_TORCHFIX_SPEEDUP:g}x) {verdict}"
            )
        if timing.name.startswith("ruff"):
            print(f"native vs ruff throughput (lines/s): {rate(native) / rate(timing):.2f}x")


def print_rule_costs(sample: Sequence[tuple[str, str]]) -> None:
    """Each rule's own cost: a pass with only that rule minus a pass with no rule at all.

    A rule's cost includes the shared analyses (loops, data flow) it is the first to ask for,
    so rules that share one each show its cost; the best of two passes is kept. CPU seconds
    (this thread's), so other load on the machine does not swamp the differences.
    """
    config = EngineConfig(file_deadline_s=3600)
    gc.collect()
    gc.freeze()  # the corpus and the full run's results stay out of every collection timed here

    def pass_seconds(rules: tuple[type[Rule], ...]) -> float:
        best = float("inf")
        for _ in range(REPEATS):
            started = time.thread_time()
            for path, text in sample:
                analyse_source(path, text, rules, config)
            best = min(best, time.thread_time() - started)
        return best

    baseline = pass_seconds(())
    parse = time_bare_parse(sample, count_lines(sample))[1]
    costs = sorted(
        ((max(0.0, pass_seconds((rule,)) - baseline), rule.id) for rule in enabled_rules()),
        reverse=True,
    )
    print(
        f"\nper-rule CPU cost on {len(sample)} files (bare parse {parse:.2f}s, parse+walk "
        f"{baseline:.2f}s, sum of rule costs {sum(c for c, _ in costs):.2f}s):"
    )
    for seconds, rule_id in costs[:12]:
        print(f"  {seconds:7.2f}s  {seconds / parse:6.1f}x parse  {rule_id}")


if __name__ == "__main__":
    sys.exit(main())
