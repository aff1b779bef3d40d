"""Findings that only a multi-process run proves (checklist item 6.8, DDP/FSDP).

The harness writes one document per rank; the host hands them all here. Each check compares
what the ranks did: parameters that should agree after N synchronised steps, a sampler that
repeats its order because `set_epoch` is never called, gradients all-reduced on every
micro-batch of an accumulation, parameters without gradients, every rank writing the same
checkpoint, and a rank reading what rank 0 wrote before any collective ordered the two.
"""

from __future__ import annotations

import posixpath
import statistics
from typing import Any, Protocol

from torchdoctor.agent.evidence.probe_schema import DistributedRank, ProbeDocument
from torchdoctor.agent.models import Severity, Verdict

CHECKSUM_RTOL = 1e-6
STRAGGLER_RATIO = 1.5
ITEM = "6.8"


class FindingSink(Protocol):
    """What the probe analysis offers a check: report a finding, or a coverage verdict."""

    def find(
        self,
        rule: str,
        checkpoint: int,
        severity: Severity,
        title: str,
        message: str,
        items: list[str],
        code: str,
        file: str | None = None,
        line: int | None = None,
        **data: Any,
    ) -> None: ...

    def hint(self, item: str, verdict: Verdict, how: str, reason: str) -> None: ...


class _RuleCollector:
    """A sink that keeps only which rules fired (what fix verification compares)."""

    def __init__(self) -> None:
        self.rules: list[str] = []

    def find(self, rule: str, *args: Any, **data: Any) -> None:
        self.rules.append(rule)

    def hint(self, item: str, verdict: Verdict, how: str, reason: str) -> None:
        return None


def distributed_rules(ranks: list[ProbeDocument]) -> list[str]:
    """The probe rules a multi-rank run fires (empty for a single-process run)."""
    collector = _RuleCollector()
    check_distributed(collector, ranks)
    return sorted(set(collector.rules))


def _short(path: str) -> str:
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def check_distributed(sink: FindingSink, ranks: list[ProbeDocument]) -> None:
    views = sorted((d.distributed for d in ranks if d.distributed), key=lambda r: r.rank)
    if not views:
        return
    found = 0
    for check in (_diverged, _sampler_order, _sync_per_micro_batch, _unused, _saves, _reads):
        found += check(sink, views)
    _straggler(sink, ranks)
    if not found:
        collectives = sum(s.count for v in views for s in v.collectives.values())
        sink.hint(
            ITEM,
            "pass",
            f"probe: {len(views)} ranks instrumented",
            f"{len(views)} ranks agreed after the run, samplers reshuffled, one gradient "
            f"all-reduce per step, no write/read race ({collectives} explicit collectives)",
        )


def _diverged(sink: FindingSink, views: list[DistributedRank]) -> int:
    sums = [(v.rank, v.param_checksum) for v in views if v.param_checksum is not None]
    if len(sums) < 2:
        return 0
    reference = sums[0][1]
    tolerance = CHECKSUM_RTOL * max(abs(reference), 1.0)
    apart = [(rank, value) for rank, value in sums[1:] if abs(value - reference) > tolerance]
    if not apart:
        return 0
    ranks = ", ".join(str(rank) for rank, _ in apart)
    sink.find(
        "probe-ddp-ranks-diverged",
        6,
        Severity.HIGH,
        "Ranks end the run with different parameters",
        f"after the same number of steps the parameters of rank(s) {ranks} differ from rank "
        f"0's (checksums {', '.join(f'{v:.6g}' for _, v in sums)}): gradients are not "
        "synchronised — a forward through `model.module` bypasses DDP, or the model is not "
        "wrapped at all — so each rank trains its own model",
        [ITEM, "4.3"],
        "ranks-diverged",
        checksums=[v for _, v in sums],
    )
    return 1


def _sampler_order(sink: FindingSink, views: list[DistributedRank]) -> int:
    for view in views:
        by_sampler: dict[int, list[Any]] = {}
        for epoch in view.samplers:
            by_sampler.setdefault(epoch.sampler, []).append(epoch)
        for epochs in by_sampler.values():
            shuffled = [e for e in epochs if e.shuffle and e.head]
            if len(shuffled) < 2 or any(e.set_epoch_calls for e in shuffled):
                continue
            if len({tuple(e.head) for e in shuffled}) > 1:
                continue
            where = shuffled[0]
            sink.find(
                "probe-ddp-sampler-no-set-epoch",
                6,
                Severity.MEDIUM,
                "DistributedSampler repeats the same order every epoch",
                f"rank {view.rank}'s DistributedSampler produced the same order in "
                f"{len(shuffled)} epochs (first indices {shuffled[0].head}): `set_epoch(epoch)` "
                "is never called, so shuffle=True reshuffles nothing; call "
                "`sampler.set_epoch(epoch)` at the start of each epoch",
                [ITEM],
                "sampler-no-set-epoch",
                file=where.file,
                line=where.line,
            )
            return 1
    return 0


def _sync_per_micro_batch(sink: FindingSink, views: list[DistributedRank]) -> int:
    view = views[0]
    if view.ddp is None:
        return 0
    heavy = {step: n for step, n in view.syncs_by_step.items() if n > 1}
    if not heavy:
        return 0
    per_step = max(heavy.values())
    sink.find(
        "probe-ddp-sync-every-micro-batch",
        6,
        Severity.MEDIUM,
        "DDP all-reduces gradients on every micro-batch of an accumulation",
        f"DDP synchronised gradients {per_step} times within one optimizer step: under "
        "gradient accumulation, run all but the last micro-batch's forward and backward "
        "inside `with model.no_sync():` so the all-reduce happens once per step",
        [ITEM, "4.1"],
        "sync-every-micro-batch",
        file=view.ddp.extra_sync_file or view.ddp.file,
        line=view.ddp.extra_sync_line or view.ddp.line,
        syncs_per_step=per_step,
    )
    return 1


def _unused(sink: FindingSink, views: list[DistributedRank]) -> int:
    view = views[0]
    if not view.unused_parameters or view.ddp is None:
        return 0
    names = ", ".join(view.unused_parameters[:5])
    extra = (
        ""
        if view.ddp.find_unused_parameters
        else (
            " and DDP was built without find_unused_parameters=True, so the next iteration's "
            "reduction fails"
        )
    )
    sink.find(
        "probe-ddp-unused-parameters",
        6,
        Severity.MEDIUM if view.ddp.find_unused_parameters else Severity.HIGH,
        "DDP parameters receive no gradient",
        f"{len(view.unused_parameters)} parameter(s) of the DDP model got no gradient in the "
        f"first step ({names}){extra}; find_unused_parameters=True then costs a graph "
        "traversal every step: remove or freeze the unused layers (`requires_grad_(False)`)",
        [ITEM, "4.3"],
        "unused-parameters",
        file=view.ddp.file,
        line=view.ddp.line,
        parameters=view.unused_parameters,
    )
    return 1


def _saves(sink: FindingSink, views: list[DistributedRank]) -> int:
    writers: dict[str, list[int]] = {}
    where: dict[str, Any] = {}
    for view in views:
        for event in view.writes:
            writers.setdefault(event.path, [])
            if view.rank not in writers[event.path]:
                writers[event.path].append(view.rank)
            where.setdefault(event.path, event)
    shared = {path: ranks for path, ranks in writers.items() if len(ranks) > 1}
    if not shared:
        return 0
    path, ranks = next(iter(shared.items()))
    event = where[path]
    sink.find(
        "probe-ddp-every-rank-saves",
        6,
        Severity.MEDIUM,
        "Every rank writes the same checkpoint",
        f"ranks {', '.join(map(str, ranks))} all saved {_short(path)}: the writes race and "
        "cost I/O; save from rank 0 only (`if dist.get_rank() == 0:`), then `dist.barrier()` "
        "before any rank reads it",
        [ITEM, "4.1"],
        f"every-rank-saves:{posixpath.basename(path)}",
        file=event.file,
        line=event.line,
    )
    return 1


def _reads(sink: FindingSink, views: list[DistributedRank]) -> int:
    # Collectives order the ranks: a write after which rank 0 completed fewer collectives
    # than the reader had is before the read, one with more is after it; with the same count
    # nothing orders the two.
    writes = {(e.path, e.collectives): e for e in views[0].writes}
    for view in views[1:]:
        for read in view.reads:
            written = writes.get((read.path, read.collectives))
            if written is None:
                continue
            sink.find(
                "probe-ddp-read-before-barrier",
                6,
                Severity.HIGH,
                "A rank reads what rank 0 writes with no barrier between",
                f"rank {view.rank} loaded {_short(read.path)} while rank 0 may still be writing "
                f"it: no collective orders the two (each had passed {read.collectives}), so "
                "it can read a partial or stale file; put `dist.barrier()` between rank 0's "
                "save and the other ranks' load",
                [ITEM],
                f"read-before-barrier:{posixpath.basename(read.path)}",
                file=read.file,
                line=read.line,
            )
            return 1
    return 0


def _straggler(sink: FindingSink, ranks: list[ProbeDocument]) -> None:
    medians = {
        d.distributed.rank: d.timing.median_step_ms
        for d in ranks
        if d.distributed is not None and d.timing.median_step_ms
    }
    if len(medians) < 2:
        return
    slow_rank = max(medians, key=lambda r: medians[r])
    ratio = medians[slow_rank] / statistics.median(medians.values())
    if ratio < STRAGGLER_RATIO:
        return
    sink.find(
        "probe-ddp-straggler",
        6,
        Severity.LOW,
        "One rank is much slower than the others",
        f"rank {slow_rank}'s median step took {medians[slow_rank]:.1f} ms, {ratio:.1f}× the "
        "ranks' median: every collective waits for it (uneven data, extra work on one rank, "
        "or a slower device)",
        [ITEM],
        "straggler",
        medians_ms=medians,
    )
