"""What the audit graph costs over the bare pipeline: the same audit of a 100-file repository,
run as the graph's nodes called in order without LangGraph (`static_path`, the bare pipeline),
through the compiled graph without a checkpointer, and with the durable SQLite one (a
checkpoint written, synchronously, after every node). Prints the three times and the overheads.

    .venv/bin/python benchmarks/graph_overhead.py [--files 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

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


def one_audit(options: AuditOptions, how: str, audit_id: str) -> tuple[float, int]:
    """`how`: bare (the nodes without LangGraph), graph, or durable (SQLite checkpoints)."""
    context = build_context(options)
    started = time.perf_counter()
    first = {"audit_id": audit_id, "options": options}
    if how == "bare":
        state = run_static_path(first, context)
    elif how == "durable":
        with open_store() as store:
            state = build_graph(store.saver).invoke(
                first, run_config(audit_id), context=context, durability="sync"
            )
    else:
        state = graph.invoke(first, {"recursion_limit": 10_000}, context=context)
    return time.perf_counter() - started, len(state["report"].findings)


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
        for n in range(args.repeat):  # interleaved, so machine load hits all alike
            for how, seconds_of in times.items():
                seconds, findings = one_audit(options, how, audit_id=f"{how}-{n}")
                seconds_of.append(seconds)
                counts.add(findings)
        assert len(counts) == 1, f"the three ways disagree on the findings: {counts}"
        size = (Path(tmp) / "home" / "checkpoints.sqlite").stat().st_size
    bare, plain, durable = (min(times[how]) for how in ("bare", "graph", "durable"))
    print(f"repository: {args.files} files, {counts.pop()} findings; best of {args.repeat}")
    print(f"bare pipeline (nodes, no LangGraph):    {bare:7.3f} s")
    print(f"audit graph, no checkpointer:           {plain:7.3f} s")
    print(f"audit graph, SQLite after every node:   {durable:7.3f} s")
    print(
        f"graph + checkpoints over the bare run:  {(durable - bare) / bare * 100:+6.1f} %  (<= 5 %)"
    )
    print(f"checkpointing alone:                    {(durable - plain) / plain * 100:+6.1f} %")
    print(f"checkpoint file after {args.repeat} audits:        {size / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
