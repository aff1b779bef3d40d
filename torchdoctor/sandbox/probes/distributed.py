"""Per-rank evidence of a run under torchrun (checklist point 6, DDP/FSDP).

Every rank runs the harness and records what only a multi-process run shows: collectives
(count, bytes, time waiting in them), whether DDP synchronised gradients on each backward,
parameters that got no gradient, the order each DistributedSampler produced per epoch and
whether `set_epoch` was called, the files each rank saved and loaded (with the number of
collectives it had passed, which orders rank 0's writes against the other ranks' reads), and a
checksum of the parameters at the end. The host merges the ranks' documents.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from torchdoctor.sandbox.probes.frames import UserFiles

COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
)
SAMPLER_HEAD = 8
MAX_RECORDS = 50


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) when a launcher started this process as one of several ranks."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 else None


def _bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(_bytes(item) for item in obj)
    return 0


def _path(obj: Any) -> str | None:
    return os.path.abspath(os.fspath(obj)) if isinstance(obj, str | os.PathLike) else None


class DistributedProbe:
    def __init__(self, rank: int, world_size: int, user_files: UserFiles) -> None:
        self.user_files = user_files
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self.collectives: dict[str, dict[str, float]] = {}
        self.passed = 0
        self.ddp: dict[str, Any] | None = None
        self.syncs_by_step: dict[int, int] = {}
        self.unused_parameters: list[str] = []
        self.samplers: list[dict[str, Any]] = []
        self.writes: list[dict[str, Any]] = []
        self.reads: list[dict[str, Any]] = []
        self.checksum: float | None = None
        self.backend: str | None = None
        self._set_epoch_calls: dict[int, int] = {}
        self._sampler_sites: dict[int, dict[str, Any]] = {}
        self._originals: list[tuple[Any, str, Callable[..., Any]]] = []

    # --- installation ---------------------------------------------------------------------

    def install(self) -> None:
        for name in COLLECTIVES:
            if hasattr(dist, name):
                self._patch(dist, name, self._collective(name))
        self._patch(torch, "save", self._file_event(self.writes, 1))
        self._patch(torch, "load", self._file_event(self.reads, 0))
        sampler_cls = torch.utils.data.distributed.DistributedSampler
        self._patch(sampler_cls, "__init__", self._sampler_init)
        self._patch(sampler_cls, "__iter__", self._sampler_iter)
        self._patch(sampler_cls, "set_epoch", self._sampler_set_epoch)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals = []

    def _patch(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self._originals.append((owner, name, original))
        setattr(owner, name, wrap(original))

    # --- wrappers ---------------------------------------------------------------------------

    def _collective(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def collective(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    stats = self.collectives.setdefault(
                        name, {"count": 0, "bytes": 0, "wait_s": 0.0}
                    )
                    stats["count"] += 1
                    stats["bytes"] += _bytes(args[0] if args else None)
                    stats["wait_s"] += time.perf_counter() - start
                    self.passed += 1
                    self._note_backend()

            return collective

        return wrap

    def _file_event(
        self, log: list[dict[str, Any]], path_arg: int
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def event(*args: Any, **kwargs: Any) -> Any:
                target = args[path_arg] if len(args) > path_arg else kwargs.get("f")
                path = _path(target)
                if path is not None and len(log) < MAX_RECORDS:
                    log.append(
                        {
                            "path": path,
                            "step": self.step,
                            "collectives": self.passed,
                            **self._where(),
                        }
                    )
                return original(*args, **kwargs)

            return event

        return wrap

    def _sampler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def init(sampler: Any, *args: Any, **kwargs: Any) -> None:
            original(sampler, *args, **kwargs)
            self._sampler_sites[id(sampler)] = self._where()

        return init

    def _sampler_set_epoch(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def set_epoch(sampler: Any, epoch: int) -> Any:
            self._set_epoch_calls[id(sampler)] = self._set_epoch_calls.get(id(sampler), 0) + 1
            return original(sampler, epoch)

        return set_epoch

    def _sampler_iter(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def iterate(sampler: Any) -> Any:
            indices = list(original(sampler))
            if len(self.samplers) < MAX_RECORDS:
                self.samplers.append(
                    {
                        "sampler": id(sampler) % 1_000_003,
                        "epoch": int(getattr(sampler, "epoch", 0)),
                        "shuffle": bool(getattr(sampler, "shuffle", True)),
                        "set_epoch_calls": self._set_epoch_calls.get(id(sampler), 0),
                        "head": indices[:SAMPLER_HEAD],
                        # where it was built: where a static rule and a fix point too
                        **(self._sampler_sites.get(id(sampler)) or self._where()),
                    }
                )
            return iter(indices)

        return iterate

    def _where(self) -> dict[str, Any]:
        """The innermost frame of the user's code (the harness's and torch's are skipped)."""
        location = self.user_files.caller(skip=1)
        return {"file": location.file, "line": location.line} if location else {}

    # --- session callbacks ------------------------------------------------------------------

    def _note_backend(self) -> None:
        if self.backend is None and dist.is_initialized():
            self.backend = str(dist.get_backend())

    def on_root_forward(self, module: torch.nn.Module) -> None:
        """A top-level forward: note DDP's settings and whether this backward will sync."""
        self._note_backend()
        if not isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return
        if self.ddp is None:
            self.ddp = {
                "find_unused_parameters": bool(module.find_unused_parameters),
                **self._where(),
            }
        if torch.is_grad_enabled() and module.require_backward_grad_sync:
            syncs = self.syncs_by_step.get(self.step, 0) + 1
            self.syncs_by_step[self.step] = syncs
            if syncs == 2 and "extra_sync_file" not in self.ddp:
                site = self._where()
                self.ddp["extra_sync_file"] = site.get("file")
                self.ddp["extra_sync_line"] = site.get("line")

    def before_optimizer_step(self, roots: list[torch.nn.Module]) -> None:
        """On the first step: the DDP parameters that the backward left without a gradient."""
        if self.step != 0 or self.unused_parameters:
            return
        for root in roots:
            if isinstance(root, torch.nn.parallel.DistributedDataParallel):
                self.unused_parameters = [
                    name
                    for name, p in root.module.named_parameters()
                    if p.requires_grad and p.grad is None
                ][:MAX_RECORDS]

    def finish(self, model: torch.nn.Module | None) -> None:
        if model is None:
            return
        inner = getattr(model, "module", model)
        with torch.no_grad():
            self.checksum = float(sum(p.detach().double().sum().item() for p in inner.parameters()))

    def report(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "backend": self.backend,
            "collectives": self.collectives,
            "ddp": self.ddp,
            "syncs_by_step": {str(k): v for k, v in sorted(self.syncs_by_step.items())},
            "unused_parameters": self.unused_parameters,
            "samplers": self.samplers,
            "writes": self.writes,
            "reads": self.reads,
            "param_checksum": self.checksum,
        }
