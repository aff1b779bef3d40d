"""What the audit graph costs over the bare pipeline: the same audit of a 100-file repository,
run as the graph's nodes called in order without LangGraph (`static_path`, the bare pipeline),
through the compiled graph without a checkpointer, and with the durable SQLite one (a
checkpoint written, synchronously, after every node). Prints the three times, the overheads and
the bytes one audit's checkpoints take (each channel is stored only in the step that changed it:
see `torchdoctor/agent/channel_saver.py`).

    .venv/bin/python benchmarks/graph_overhead.py [--files 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class Stopwatch:
    """Seconds spent inside the checkpointer's reads and writes (less noisy than a difference
    of two audit times on a loaded machine)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, saver: object, names: tuple[str, ...]) -> None:
        for name in names:
            setattr(saver, name, self.timed(getattr(saver, name)))

    def timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return run


def one_audit(options: AuditOptions, how: str, audit_id: str) -> tuple[float, int, float]:
    """`how`: bare (the nodes without LangGraph), graph, or durable (SQLite checkpoints).
    Returns the audit's seconds, its findings and the seconds spent in the checkpointer."""
    context = build_context(options)
    watch = Stopwatch()
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
    return time.perf_counter() - started, len(state["report"].findings), watch.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="td-graph-overhead-") as tmp:
        os.environ["TORCHDOCTOR_HOME"] = str(Path(tmp) / "home")
        os.environ["TORCHDOCTOR_LINTERS"] = "0"
        root = Path(tmp) / "repo"
        make_repository(root, args.files)
        options = AuditOptions(target=root, write_ledger=False)
        one_audit(options, "graph", audit_id="warm-up")
        times: dict[str, list[float]] = {"bare": [], "graph": [], "durable": []}
        counts: set[int] = set()
        inside: list[float] = []
        for n in range(args.repeat):  # interleaved, so machine load hits all alike
            for how, seconds_of in times.items():
                seconds, findings, saving = one_audit(options, how, audit_id=f"{how}-{n}")
                seconds_of.append(seconds)
                counts.add(findings)
                if how == "durable":
                    inside.append(saving / seconds)
        assert len(counts) == 1, f"the three ways disagree on the findings: {counts}"
        database = Path(tmp) / "home" / "checkpoints.sqlite"
        size = max(checkpoint_bytes(database, f"durable-{n}") for n in range(args.repeat))
    bare, plain, durable = (min(times[how]) for how in ("bare", "graph", "durable"))
    print(f"repository: {args.files} files, {counts.pop()} findings; best of {args.repeat}")
    print(f"bare pipeline (nodes, no LangGraph):    {bare:7.3f} s")
    print(f"audit graph, no checkpointer:           {plain:7.3f} s")
    print(f"audit graph, SQLite after every node:   {durable:7.3f} s")
    print(
        f"graph + checkpoints over the bare run:  {(durable - bare) / bare * 100:+6.1f} %  (<= 5 %)"
    )
    print(f"checkpointing alone:                    {(durable - plain) / plain * 100:+6.1f} %")
    print(f"time inside the checkpointer:           {min(inside) * 100:6.1f} % of the audit")
    print(f"checkpoints of one audit:               {size / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
