"""DataLoader settings and the share of step time spent waiting for the next batch (6.6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch.utils.data
import torch.utils.data.dataloader as dataloader_module

from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.groups import GroupMetrics
from torchdoctor.sandbox.probes.values import ValueRanges


class DataLoaderProbe:
    def __init__(self, user_files: UserFiles, values: ValueRanges) -> None:
        self.user_files = user_files
        self.values = values
        self.sampled = True
        """The step fetching batches now is a sampled one: their value ranges are taken."""
        self.groups: GroupMetrics | None = None
        self.loaders: list[dict[str, Any]] = []
        self._index: dict[int, int] = {}
        self.wait_by_step: dict[int, float] = {}
        self.step = 0
        self._originals: list[tuple[Any, str, Callable[..., Any]]] = []

    def install(self) -> None:
        probe = self
        loader_cls = torch.utils.data.DataLoader
        iter_cls = dataloader_module._BaseDataLoaderIter
        original_init = loader_cls.__init__
        original_iter_init = iter_cls.__init__
        original_next = iter_cls.__next__

        def init(loader: Any, *args: Any, **kwargs: Any) -> None:
            original_init(loader, *args, **kwargs)
            probe._record(loader)

        def new_iterator(iterator: Any, loader: Any) -> None:
            # one per epoch begun (a persistent loader resets its first one instead)
            original_iter_init(iterator, loader)
            index = probe._index.get(id(loader.dataset))
            if index is not None:
                probe.loaders[index]["iterators"] += 1

        def next_batch(iterator: Any) -> Any:
            start = time.perf_counter()
            batch = None
            try:
                batch = original_next(iterator)
                return batch
            finally:
                waited = time.perf_counter() - start
                probe.wait_by_step[probe.step] = probe.wait_by_step.get(probe.step, 0.0) + waited
                index = probe._index.get(id(iterator._dataset))
                if index is not None:
                    probe.loaders[index]["batches"] += 1
                    probe.loaders[index]["wait_s"] += waited
                    if probe.groups is not None:
                        probe.groups.on_batch(batch)
                    if probe.sampled and batch is not None:
                        loader = probe.loaders[index]
                        probe.values.on_batch(
                            loader["dataset"], loader["file"], loader["line"], batch
                        )

        self._originals = [
            (loader_cls, "__init__", original_init),
            (iter_cls, "__init__", original_iter_init),
            (iter_cls, "__next__", original_next),
        ]
        setattr(loader_cls, "__init__", init)  # noqa: B010 - patched on purpose
        setattr(iter_cls, "__init__", new_iterator)  # noqa: B010
        setattr(iter_cls, "__next__", next_batch)  # noqa: B010

    def uninstall(self) -> None:
        for owner, name, original in self._originals:
            setattr(owner, name, original)
        self._originals = []

    def _record(self, loader: Any) -> None:
        location = self.user_files.caller(skip=2)
        self._index[id(loader.dataset)] = len(self.loaders)
        self.loaders.append(
            {
                "file": location.file if location else None,
                "line": location.line if location else None,
                "dataset": type(loader.dataset).__name__,
                "batch_size": loader.batch_size,
                "num_workers": loader.num_workers,
                "pin_memory": bool(loader.pin_memory),
                "persistent_workers": bool(loader.persistent_workers),
                "prefetch_factor": loader.prefetch_factor,
                "batches_per_epoch": _length(loader),
                "batches": 0,
                "iterators": 0,
                "wait_s": 0.0,
            }
        )

    def report(self, step_seconds: dict[int, float]) -> dict[str, Any]:
        steady = [s for s in step_seconds if s >= 1]
        waited = sum(self.wait_by_step.get(s, 0.0) for s in steady)
        total = sum(step_seconds[s] for s in steady)
        return {
            "loaders": self.loaders,
            "wait_share": waited / total if total > 0 else None,
            "first_step_wait_s": self.wait_by_step.get(0, 0.0),
        }


def _length(loader: Any) -> int | None:
    """`len(loader)`: batches in one epoch, unknown for an iterable dataset without a length."""
    try:
        return len(loader)
    except TypeError:
        return None
