"""What the audit graph costs over the bare pipeline: the same audit of a 100-file repository,
run as the graph's nodes called in order without LangGraph (`static_path`, the bare pipeline),
through the compiled graph without a checkpointer, and with the durable SQLite one (a
checkpoint written, synchronously, after every node). Prints the three times (wall clock and
CPU seconds), the overheads and the bytes one audit's checkpoints take (each channel is stored
only in the step that changed it: see `torchdoctor/agent/channel_saver.py`).

The CPU seconds count this process's threads and every process under it (the static engine's
pool workers, reaped by the forkserver): on a shared machine the wall clock mostly measures
the other users' load, the CPU seconds what the audit itself did. The pool workers' CPU varies
from one audit to the next by more than checkpointing costs, so checkpointing's own cost is
measured where it is spent: the CPU of the thread that runs each checkpointer call
(serialisation and SQLite writes), and, as a cross-check that also counts what LangGraph does
around those calls, this process's extra CPU over the same audit without a checkpointer. Both
are printed as a share of the checkpointed audit's CPU.

`--cached` keeps the static pass's result between audits (a re-audit of unchanged code): the
audit then does little besides walking the graph, so the graph's and the checkpoints' own
cost in seconds shows plainly.

    .venv/bin/python benchmarks/graph_overhead.py [--files 100] [--repeat 3] [--cached]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchdoctor.agent.audit import build_context, run_config  # noqa: E402
from torchdoctor.agent.durable import open_store  # noqa: E402
from torchdoctor.agent.graph import build_graph  # noqa: E402
from torchdoctor.agent.options import AuditOptions  # noqa: E402
from torchdoctor.agent.static_path import run_static_path  # noqa: E402
from torchdoctor.agent.studio import graph  # noqa: E402

SOURCES = sorted((REPO / "examples").glob("*.py")) + sorted(
    (REPO / "tests" / "fixtures" / "llm").glob("*.py")
)


def make_repository(root: Path, files: int) -> None:
    """`files` modules: the bundled examples and fixtures, renamed, in a few packages."""
    for index in range(files):
        source = SOURCES[index % len(SOURCES)]
        target = root / f"pkg{index % 7}" / f"m{index:03d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def checkpoint_bytes(database: Path, audit_id: str) -> int:
    """What one audit's checkpoints hold: rows, pending writes and channel blobs."""
    queries = (
        "select sum(length(checkpoint) + length(metadata)) from checkpoints where thread_id = ?",
        "select sum(length(value)) from writes where thread_id = ?",
        "select sum(length(blob)) from checkpoint_blobs where thread_id = ?",
    )
    connection = sqlite3.connect(database)
    try:
        return sum(connection.execute(q, (audit_id,)).fetchone()[0] or 0 for q in queries)
    finally:
        connection.close()


def cpu_seconds() -> float:
    """User + system CPU of this process, its reaped children and everything under its live
    children (Linux `/proc`: a live child's own time plus that of the children it reaped)."""
    mine = os.times()
    total = mine.user + mine.system + mine.children_user + mine.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15]) / tick
    return total


class Stopwatch:
    """Wall and CPU seconds spent inside the checkpointer's reads and writes (less noisy than
    a difference of two audit times on a loaded machine). The CPU is that of the thread each
    call runs in: LangGraph calls the checkpointer from a thread of its own."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0

    def wrap(self, saver: object, names: tuple[str, ...]) -> None:
        for name in names:
            setattr(saver, name, self.timed(getattr(saver, name)))

    def timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu += time.thread_time() - cpu

        return run


class Measure(NamedTuple):
    wall: float
    cpu: float
    own_cpu: float
    findings: int
    in_checkpointer: float
    checkpointer_cpu: float


def own_cpu_seconds() -> float:
    """User + system CPU of this process's threads: all the checkpointing is done here (the
    engine's workers do the same work with and without a checkpointer)."""
    mine = os.times()
    return mine.user + mine.system


def one_audit(options: AuditOptions, how: str, audit_id: str) -> Measure:
    """`how`: bare (the nodes without LangGraph), graph, or durable (SQLite checkpoints)."""
    context = build_context(options)
    watch = Stopwatch()
    cpu, own = cpu_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    first = {"audit_id": audit_id, "options": options}
    if how == "bare":
        state = run_static_path(first, context)
    elif how == "durable":
        with open_store() as store:
            watch.wrap(store.saver, ("put", "put_writes", "get_tuple"))
            state = build_graph(store.saver).invoke(
                first, run_config(audit_id), context=context, durability="sync"
            )
    else:
        state = graph.invoke(first, {"recursion_limit": 10_000}, context=context)
    wall = time.perf_counter() - started
    return Measure(
        wall,
        cpu_seconds() - cpu,
        own_cpu_seconds() - own,
        len(state["report"].findings),
        watch.seconds,
        watch.cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cached", action="store_true", help="keep the static pass's result")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="td-graph-overhead-") as tmp:
        os.environ["TORCHDOCTOR_HOME"] = str(Path(tmp) / "home")
        os.environ["TORCHDOCTOR_LINTERS"] = "0"
        # by default every audit analyses, as the first audit of the code does
        os.environ["TORCHDOCTOR_RESULT_CACHE"] = "1" if args.cached else "0"
        root = Path(tmp) / "repo"
        make_repository(root, args.files)
        options = AuditOptions(target=root, write_ledger=False)
        one_audit(options, "graph", audit_id="warm-up")
        measures: dict[str, list[Measure]] = {"bare": [], "graph": [], "durable": []}
        for n in range(args.repeat):  # interleaved, so machine load hits all alike
            for how, measured in measures.items():
                measured.append(one_audit(options, how, audit_id=f"{how}-{n}"))
        counts = {m.findings for measured in measures.values() for m in measured}
        assert len(counts) == 1, f"the three ways disagree on the findings: {counts}"
        database = Path(tmp) / "home" / "checkpoints.sqlite"
        size = max(checkpoint_bytes(database, f"durable-{n}") for n in range(args.repeat))
    inside = min(m.in_checkpointer / m.wall for m in measures["durable"])
    kept = ", static pass kept" if args.cached else ""
    print(f"repository: {args.files} files{kept}, {counts.pop()} findings; best of {args.repeat}")
    print(f"load average (1 min) at the end:        {os.getloadavg()[0]:7.2f}")
    for unit in ("wall", "cpu"):
        bare, plain, durable = (
            min(getattr(m, unit) for m in measures[how]) for how in ("bare", "graph", "durable")
        )
        print(f"-- {'wall clock' if unit == 'wall' else 'CPU seconds, all processes'}")
        print(f"bare pipeline (nodes, no LangGraph):    {bare:7.3f} s")
        print(f"audit graph, no checkpointer:           {plain:7.3f} s")
        print(f"audit graph, SQLite after every node:   {durable:7.3f} s")
        print(f"graph over the bare run:                {(plain - bare) / bare * 100:+6.1f} %")
        alone = (durable - plain) / plain * 100
        print(f"checkpointing alone:                    {alone:+6.1f} %")
    own = {how: statistics.median(m.own_cpu for m in measures[how]) for how in measures}
    print("-- this process's CPU (medians; the pool workers' work is the same in all three)")
    print(f"bare pipeline (nodes, no LangGraph):    {own['bare']:7.3f} s")
    print(f"audit graph, no checkpointer:           {own['graph']:7.3f} s")
    print(f"audit graph, SQLite after every node:   {own['durable']:7.3f} s")
    durable_cpu = statistics.median(m.cpu for m in measures["durable"])
    inside_cpu = statistics.median(m.checkpointer_cpu for m in measures["durable"])
    print("-- as a share of the checkpointed audit's CPU (all processes, median)")
    graph_cost = own["graph"] - own["bare"]
    print(f"LangGraph (graph minus bare):           {graph_cost / durable_cpu * 100:+6.1f} %")
    extra = own["durable"] - own["graph"]
    print(f"checkpointing (durable minus graph):    {extra / durable_cpu * 100:+6.1f} %")
    share = inside_cpu / durable_cpu * 100
    print(f"CPU in the checkpointer's calls:        {share:6.1f} %  (<= 5 %)")
    print(f"wall time inside the checkpointer:      {inside * 100:6.1f} % of the audit")
    print(f"checkpoints of one audit:               {size / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
