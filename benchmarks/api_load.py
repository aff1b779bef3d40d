"""The REST API under load: N concurrent offline audits of the bundled examples, submitted
over loopback to a real `torchdoctor serve` (SQLite, the default worker pool, peer linters on
as `serve` runs them).

Run: `PYTHONPATH=. python benchmarks/api_load.py [--audits 20] [--audit-workers N]
[--cache off|on]`.

Two fresh servers (each with its own empty state and caches), so neither measure profits from
the other. Each first runs one throw-away audit of a file that is not an example (its fork
server booted, as on a server that has been up a while). On the first, each bundled example is
audited alone, one after the other, then each again. On the second, the concurrent batch,
which cycles through the examples: throughput, p50/p95 time from submission to completion and
where it went (queued, running, until the client saw the end), errors (target 0), the CPU
spent by the server, by the audits and by this client (on the same cores), and the peak RSS of
the server with its workers, and the batch's CPU floor: all the CPU it spent over the usable
cores, the soonest any schedule on these cores could end it.
Completion is seen on the audit's event stream, as `torchdoctor submit --wait` sees it;
where the time went is read from each audit's status once the batch is over (a read during the
batch would compete with the audits still running).
Every audit's report is then fetched (after the timings and CPU are taken) and checked against
the first single audit of its example: the same report, its provenance (ids, times) aside; any
difference counts as an error, and any error makes the benchmark exit non-zero.

On what terms single and concurrent audits compare (target: p95 <= 3x a single audit):
`--cache off` (the default): no result is reused anywhere, so every audit, alone or in the
batch, does all its work. `--cache on`, as a server runs: the batch's first audit of each
example computes, the others reuse its results; it is compared with the examples' first audits
alone (cold) and with their second (warm), the two bounds of what it mixes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.api.server import Server, events
from torchdoctor.agent.cpus import usable_cpus

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
WARM_UP = "import torch\n\nprint(torch.zeros(1))\n"


@dataclass
class Followed:
    """One audit, from the client's submission to the end it saw on the event stream."""

    audit_id: str
    submitted: float
    seen: float

    @property
    def total(self) -> float:
        return self.seen - self.submitted


@dataclass
class Timing:
    """Where a followed audit's time went."""

    total: float
    queued: float  # submitted -> a worker started it
    running: float  # started -> its outcome recorded
    noticed: float  # recorded -> the client saw it


def audit_files(client: httpx.Client, files: dict[str, str]) -> Followed:
    """Raises on any error."""
    submitted = time.time()
    answer = client.post("/v1/audits", json={"files": files, "options": {"offline": True}})
    answer.raise_for_status()
    audit_id = answer.json()["id"]
    state = None
    for _id, kind, data in events(client, audit_id):
        if kind == "state":
            state = data.get("state")
    seen = time.time()
    if state != "done":
        raise RuntimeError(f"audit {audit_id} ended {state}")
    return Followed(audit_id, submitted, seen)


def timing(client: httpx.Client, followed: Followed) -> Timing:
    """The audit's times as its status records them (read once it is over)."""
    status = client.get(f"/v1/audits/{followed.audit_id}").json()
    started, finished = status["started_at"], status["finished_at"]
    return Timing(
        followed.total,
        started - followed.submitted,
        finished - started,
        followed.seen - finished,
    )


def report_of(client: httpx.Client, audit_id: str) -> dict[str, Any]:
    """The audit's JSON report without its provenance (its id, times, whether it was reused):
    what two audits of the same code must agree on."""
    answer = client.get(f"/v1/audits/{audit_id}/report", params={"format": "json"})
    answer.raise_for_status()
    report: dict[str, Any] = answer.json()
    report.pop("provenance", None)
    return report


def differences(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """'' when the reports agree, else what differs (the findings' rules and places first)."""
    if got == expected:
        return ""
    if got.get("findings") != expected.get("findings"):

        def places(report: dict[str, Any]) -> list[str]:
            return [f"{f['rule']}@{f['file']}:{f['line']}" for f in report.get("findings", [])]

        return f"findings {places(got)} instead of {places(expected)}"
    keys = sorted(k for k in {*expected, *got} if expected.get(k) != got.get(k))
    return f"the report differs in {', '.join(keys)}"


def audit_example(client: httpx.Client, example: Path) -> Followed:
    return audit_files(client, {example.name: example.read_text()})


@contextlib.contextmanager
def fresh_server(args: argparse.Namespace) -> Iterator[tuple[Server, httpx.Client]]:
    """A server on new, empty state, its fork server booted by one throw-away audit; the
    state is removed once the server has stopped."""
    home = Path(tempfile.mkdtemp(prefix="td-api-load-"))
    settings = {
        "TORCHDOCTOR_MAX_RUNNING_PER_TENANT": str(args.audits),
        "TORCHDOCTOR_RATE_LIMIT_PER_MINUTE": "100000",
        "TORCHDOCTOR_LINTERS": "1",  # as `torchdoctor serve` runs: peers on
        "TORCHDOCTOR_RESULT_CACHE": "1" if args.cache == "on" else "0",
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
        shutil.rmtree(home, ignore_errors=True)


class Cpu:
    """CPU seconds since `start` of the server process itself (HTTP, store, dispatch), of the
    audits (every process under it: its fork server, the long-lived peer pool, the workers
    still exiting, and what each reaped), and of this client (its threads submit and follow
    the audits on the same cores, so they count too)."""

    def __init__(self, server: Server) -> None:
        assert server.process is not None
        self.process = psutil.Process(server.process.pid)
        self.server, self.audits, self.client = self._now()

    def _now(self) -> tuple[float, float, float]:
        own = self.process.cpu_times()
        audits = 0.0
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = child.cpu_times()
                audits += times.user + times.system + times.children_user + times.children_system
        return own.user + own.system, audits, time.process_time()

    def spent(self) -> tuple[float, float, float]:
        server, audits, client = self._now()
        return server - self.server, audits - self.audits, client - self.client


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


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def cpu_line(
    server_cpu: float, audits_cpu: float, client_cpu: float, count: int, elapsed: float
) -> str:
    return (
        f"cpu: server {server_cpu:.2f} s, audits {audits_cpu:.2f} s "
        f"({(server_cpu + audits_cpu) / count:.2f} s an audit, all told), "
        f"client {client_cpu:.2f} s, over {elapsed:.1f} s"
    )


def single_audits(
    args: argparse.Namespace,
) -> tuple[float, float, dict[Path, dict[str, Any]], list[str]]:
    """Each example alone, then each again: the mean time of each round, the first round's
    reports (what every later audit of the example must report) and what went wrong."""
    with fresh_server(args) as (server, client):
        rounds = []
        expected: dict[Path, dict[str, Any]] = {}
        errors: list[str] = []
        for name in ("first", "second"):
            cpu, started = Cpu(server), time.perf_counter()
            followed = [audit_example(client, example) for example in EXAMPLES]
            elapsed = time.perf_counter() - started
            spent = cpu.spent()
            times = [f.total for f in followed]
            alone = ", ".join(f"{e.stem} {t:.2f}" for e, t in zip(EXAMPLES, times, strict=True))
            print(f"  {name} audit of each: {alone} s; mean {statistics.mean(times):.2f} s")
            print(f"    {cpu_line(*spent, len(times), elapsed)}")
            rounds.append(statistics.mean(times))
            for example, audit in zip(EXAMPLES, followed, strict=True):
                report = report_of(client, audit.audit_id)
                expected.setdefault(example, report)
                if problem := differences(expected[example], report):
                    errors.append(f"{name} audit of {example.name}: {problem}")
    return rounds[0], rounds[1], expected, errors


def batch(
    args: argparse.Namespace, expected: dict[Path, dict[str, Any]]
) -> tuple[float, float, list[str]]:
    """The concurrent batch's p95, its CPU floor (the CPU it spent, server and client
    included, over the usable cores: no schedule on these cores ends the batch sooner, and
    with the repeats reusing results, p95 waits for the last example's first audit) and
    what went wrong (errors, and reports that differ from the single audits' of the same
    example)."""
    with fresh_server(args) as (server, client):
        assert server.process is not None
        cpu = Cpu(server)
        rss = PeakRss(server.process.pid)
        rss.start()
        errors: list[str] = []
        audited: list[tuple[Path, Followed]] = []

        def one(index: int) -> None:
            example = EXAMPLES[index % len(EXAMPLES)]
            try:
                audited.append((example, audit_example(client, example)))
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.audits) as pool:
            list(pool.map(one, range(args.audits)))
        elapsed = time.perf_counter() - started
        rss.stopped.set()
        server_cpu, audits_cpu, client_cpu = cpu.spent()
        timings: list[Timing] = []
        for example, audit in audited:  # once everything is measured
            timings.append(timing(client, audit))
            if problem := differences(expected[example], report_of(client, audit.audit_id)):
                errors.append(f"audit {audit.audit_id} of {example.name}: {problem}")
    workers = args.audit_workers or "default"
    print(f"{args.audits} concurrent audits (fresh server), {workers} workers:")
    print(f"  throughput: {len(timings) / elapsed * 60:.1f} audits/min ({elapsed:.1f} s)")
    if timings:
        for part in ("total", "queued", "running", "noticed"):
            values = [getattr(t, part) for t in timings]
            print(f"  {part:>8}: p50 {statistics.median(values):.2f} s, p95 {p95(values):.2f} s")
    print(
        f"  {cpu_line(server_cpu, audits_cpu, client_cpu, args.audits, elapsed)} "
        f"on {usable_cpus()} usable CPUs"
    )
    if errors:
        print(f"  errors: {len(errors)} (first: {errors[0]})")
    else:
        print(f"  errors: 0; {len(audited)} reports, each its example's single audit's")
    print(f"  peak RSS, server and workers: {rss.peak_mb:.0f} MiB")
    floor = (server_cpu + audits_cpu + client_cpu) / usable_cpus()
    high = p95([t.total for t in timings]) if timings else float("nan")
    return high, floor, errors


def load_average() -> str:
    """The host's 1, 5 and 15 minute load averages: the wall times of two runs compare only
    where these are alike (the CPU figures do not depend on them)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audits", type=int, default=20)
    parser.add_argument("--audit-workers", type=int, default=0, help="default: the server's")
    parser.add_argument("--cache", choices=("off", "on"), default="off")
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    print(f"result cache {args.cache}; one audit alone (fresh server):")
    first, second, expected, single_errors = single_audits(args)
    for error in single_errors:
        print(f"  error: {error}")
    print(f"load average before the batch: {load_average()}")
    high, floor, errors = batch(args, expected)
    print(
        f"CPU floor of the batch: {floor:.2f} s ({floor / first:.1f}x the mean single audit; "
        f"p95 is {high / floor:.2f}x the floor)"
    )
    if args.cache == "off":
        print(f"p95 / mean single: {high / first:.1f}x (target <= 3x; every audit computes)")
    else:
        print(
            f"p95 / mean single: {high / first:.1f}x of a first audit, {high / second:.1f}x of "
            "a second (target <= 3x; the batch computes each example once)"
        )
    print(f"load average after: {load_average()}")
    if single_errors or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
