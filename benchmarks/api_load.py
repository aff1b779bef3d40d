"""The REST API under load: N concurrent offline audits of the bundled examples, submitted
over loopback to a real `torchdoctor serve` (SQLite, the default worker pool, peer linters on
as `serve` runs them).

Run: `PYTHONPATH=. python benchmarks/api_load.py [--audits 20] [--audit-workers N]
[--no-result-cache]`.

Two fresh servers (each with its own empty state and caches), so neither measure profits from
the other. Each first runs one throw-away audit of a file that is not an example (its fork
server booted, as on a server that has been up a while). On the first, each bundled example is
audited alone, one after the other: cold (nothing of its code seen before), then the first
example again, warm. On the second, the concurrent batch, which cycles through the examples
(so its first audit of each example is cold and the others reuse the result caches, as a
service audited the same code again would): throughput, p50/p95 time from submission to
completion, errors (target 0), the CPU spent by the server and by the audits, and the peak RSS
of the server with its workers. Completion is seen on the audit's event stream, as
`torchdoctor submit --wait` sees it. Target: p95 <= 3x the mean cold single audit.
`--no-result-cache` runs every peer and the static analysis again in every audit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from tests.api.server import Server, events

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
WARM_UP = "import torch\n\nprint(torch.zeros(1))\n"


def audit_files(client: httpx.Client, files: dict[str, str]) -> float:
    """Seconds from submitting `files` to a finished audit (its event stream's last state);
    raises on any error."""
    started = time.perf_counter()
    answer = client.post("/v1/audits", json={"files": files, "options": {"offline": True}})
    answer.raise_for_status()
    audit_id = answer.json()["id"]
    state = None
    for _id, kind, data in events(client, audit_id):
        if kind == "state":
            state = data.get("state")
    if state != "done":
        raise RuntimeError(f"audit {audit_id} ended {state}")
    return time.perf_counter() - started


def audit_example(client: httpx.Client, example: Path) -> float:
    return audit_files(client, {example.name: example.read_text()})


@contextlib.contextmanager
def fresh_server(args: argparse.Namespace) -> Iterator[tuple[Server, httpx.Client]]:
    """A server on new, empty state, its fork server booted by one throw-away audit."""
    home = Path(tempfile.mkdtemp(prefix="td-api-load-"))
    settings = {
        "TORCHDOCTOR_MAX_RUNNING_PER_TENANT": str(args.audits),
        "TORCHDOCTOR_RATE_LIMIT_PER_MINUTE": "100000",
        "TORCHDOCTOR_LINTERS": "1",  # as `torchdoctor serve` runs: peers on
        "TORCHDOCTOR_RESULT_CACHE": "0" if args.no_result_cache else "1",
    }
    if args.audit_workers:
        settings["TORCHDOCTOR_AUDIT_WORKERS"] = str(args.audit_workers)
    server = Server(home, f"sqlite:///{home / 'api.sqlite'}", settings)
    server.start()
    try:
        client = server.client(server.key("load"))
        audit_files(client, {"warm_up.py": WARM_UP})
        yield server, client
    finally:
        server.stop()


def cpu_split(server: psutil.Process) -> tuple[float, float]:
    """CPU seconds so far of the server process itself (HTTP, store, dispatch) and of the
    audits (workers and the peers they ran; the fork server reaps the workers)."""
    own = server.cpu_times()
    audits = 0.0
    for child in server.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            audits += times.children_user + times.children_system
    return own.user + own.system, audits


class PeakRss(threading.Thread):
    """Samples the server's process tree (workers and sandbox jobs included)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_mb, self.stopped = psutil.Process(pid), 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)


def single_audits(args: argparse.Namespace) -> tuple[list[float], float]:
    """(each example's time alone, cold), and the first example's again (warm)."""
    with fresh_server(args) as (_server, client):
        cold = [audit_example(client, example) for example in EXAMPLES]
        warm = audit_example(client, EXAMPLES[0])
    return cold, warm


def batch(args: argparse.Namespace, single: float) -> None:
    with fresh_server(args) as (server, client):
        assert server.process is not None
        server_process = psutil.Process(server.process.pid)
        cpu_before = cpu_split(server_process)
        rss = PeakRss(server.process.pid)
        rss.start()
        errors: list[str] = []
        times: list[float] = []

        def one(index: int) -> None:
            try:
                times.append(audit_example(client, EXAMPLES[index % len(EXAMPLES)]))
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.audits) as pool:
            list(pool.map(one, range(args.audits)))
        elapsed = time.perf_counter() - started
        rss.stopped.set()
        cpu_after = cpu_split(server_process)
    server_cpu, audits_cpu = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)] if times else float("nan")
    workers = args.audit_workers or "default"
    cache = "off" if args.no_result_cache else "on"
    print(f"{args.audits} concurrent audits (fresh server), {workers} workers, cache {cache}:")
    print(f"  throughput: {len(times) / elapsed * 60:.1f} audits/min ({elapsed:.1f} s)")
    if times:
        print(f"  time to completion: p50 {statistics.median(times):.2f} s, p95 {p95:.2f} s")
        print(f"  p95 / mean cold single: {p95 / single:.1f}x (target <= 3x)")
    print(
        f"  cpu: server {server_cpu:.1f} s, audits {audits_cpu:.1f} s "
        f"({audits_cpu / args.audits:.2f} s each) over {elapsed:.1f} s on "
        f"{psutil.cpu_count()} CPUs"
    )
    print(f"  errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"  peak RSS, server and workers: {rss.peak_mb:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audits", type=int, default=20)
    parser.add_argument("--audit-workers", type=int, default=0, help="default: the server's")
    parser.add_argument("--no-result-cache", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cold, warm = single_audits(args)
    mean_cold = statistics.mean(cold)
    alone = ", ".join(f"{e.stem} {t:.2f}" for e, t in zip(EXAMPLES, cold, strict=True))
    print(f"one audit alone (fresh server), cold: {alone} s; mean {mean_cold:.2f} s")
    print(f"  warm (first example again): {warm:.2f} s")
    batch(args, mean_cold)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
