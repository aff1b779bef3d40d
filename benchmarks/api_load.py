"""The REST API under load: N concurrent offline audits of the bundled examples, submitted
over loopback to a real `torchdoctor serve` (SQLite, the default worker pool, peer linters on
as `serve` runs them).

Run: `PYTHONPATH=. python benchmarks/api_load.py [--audits 20] [--audit-workers 2]
[--no-peer-cache]`. Once the server has run one throw-away audit of a file that is not an
example (its fork server booted, as on a server that has been up a while), prints one audit's
time alone, cold (nothing of its code cached) and warm (the same code again), then for the
concurrent batch: throughput, p50/p95 time from submission to completion, errors (target 0),
and the peak RSS of the server with its workers. Target: p95 <= 3x the cold single audit.

The batch cycles through the bundled examples, so most of its audits submit code the server
has already audited: the peer linters' results are then reused (the peer cache, keyed by
content). `--no-peer-cache` measures the same batch with every peer run again.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from tests.api.server import Server

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


WARM_UP = "import torch\n\nprint(torch.zeros(1))\n"


def audit_once(client: httpx.Client, example: Path) -> float:
    """Seconds from submission to a finished audit; raises on any error."""
    return audit_files(client, {example.name: example.read_text()})


def audit_files(client: httpx.Client, files: dict[str, str]) -> float:
    """Seconds from submitting `files` to a finished audit; raises on any error."""
    started = time.perf_counter()
    answer = client.post("/v1/audits", json={"files": files, "options": {"offline": True}})
    answer.raise_for_status()
    audit_id = answer.json()["id"]
    while True:
        state = client.get(f"/v1/audits/{audit_id}").raise_for_status().json()["state"]
        if state == "done":
            return time.perf_counter() - started
        if state in ("failed", "cancelled"):
            raise RuntimeError(f"audit {audit_id} {state}")
        time.sleep(0.25)


def cpu_split(server: psutil.Process) -> tuple[float, float]:
    """CPU seconds so far of the server process itself (HTTP, store, dispatch) and of the
    audits (workers and the peers they ran; the fork server reaps the workers)."""
    own = server.cpu_times()
    audits = sum(
        child.cpu_times().children_user + child.cpu_times().children_system
        for child in server.children()
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audits", type=int, default=20)
    parser.add_argument("--audit-workers", type=int, default=2)
    parser.add_argument("--no-peer-cache", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="td-api-load-"))
    server = Server(
        home,
        f"sqlite:///{home / 'api.sqlite'}",
        {
            "TORCHDOCTOR_AUDIT_WORKERS": str(args.audit_workers),
            "TORCHDOCTOR_MAX_RUNNING_PER_TENANT": str(args.audits),
            "TORCHDOCTOR_RATE_LIMIT_PER_MINUTE": "100000",
            "TORCHDOCTOR_LINTERS": "1",  # as `torchdoctor serve` runs: peers on
            "TORCHDOCTOR_PEER_CACHE": "0" if args.no_peer_cache else "1",
        },
    )
    server.start()
    try:
        assert server.process is not None
        client = server.client(server.key("load"))
        audit_files(client, {"warm_up.py": WARM_UP})
        single = audit_once(client, EXAMPLES[0])
        again = audit_once(client, EXAMPLES[0])
        print(f"one audit alone: {single:.2f} s cold, {again:.2f} s warm (same code again)")
        server_process = psutil.Process(server.process.pid)
        cpu_before = cpu_split(server_process)
        rss = PeakRss(server.process.pid)
        rss.start()
        errors: list[str] = []
        times: list[float] = []

        def one(index: int) -> None:
            try:
                times.append(audit_once(client, EXAMPLES[index % len(EXAMPLES)]))
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
        cache = "off" if args.no_peer_cache else "on"
        print(f"{args.audits} concurrent audits, {args.audit_workers} workers, peer cache {cache}:")
        print(f"  throughput: {len(times) / elapsed * 60:.1f} audits/min ({elapsed:.1f} s)")
        print(f"  time to completion: p50 {statistics.median(times):.2f} s, p95 {p95:.2f} s")
        print(f"  p95 / cold single: {p95 / single:.1f}x (target <= 3x)")
        print(
            f"  cpu: server {server_cpu:.1f} s, audits {audits_cpu:.1f} s "
            f"({audits_cpu / args.audits:.2f} s each) over {elapsed:.1f} s on "
            f"{psutil.cpu_count()} CPUs"
        )
        print(f"  errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        print(f"  peak RSS, server and workers: {rss.peak_mb:.0f} MiB")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
